"""Streaming 1,000,000 rows vs one plain ``execute`` of the same rows: throughput and the
client's memory. Each run is its own process (so one run's memory cannot hide another's),
modes alternate, medians over the rounds.

    python benchmarks/stream.py [--rows 1000000] [--rounds 3] [--batch 2000]

Uses ``POSTGRES_URL`` when set, else a throwaway server from the pytest plugin's sources.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SQL = "SELECT n, md5(n::text) AS h FROM generate_series(1, %s) AS n"


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one_run(url: str, mode: str, rows: int, batch: int) -> dict[str, float]:
    from pgpool_core import PoolManager

    async with PoolManager(url, min_size=1, query_timeout=600) as pool:
        await pool.execute("SELECT 1")
        before = rss_kib()
        samples: list[int] = []
        started = time.perf_counter()
        count = 0
        if mode == "stream":
            async for _row in pool.stream(SQL, [rows], batch=batch):
                count += 1
                if count % 50_000 == 0:
                    samples.append(rss_kib())
        else:
            result = await pool.execute(SQL, [rows])
            count = len(result.rows)
            samples.append(rss_kib())
            del result
        seconds = time.perf_counter() - started
    assert count == rows, (count, rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "rows_per_s": rows / seconds,
        "rss_growth_mib": (peak - before) / 1024,
        "rss_spread_mib": (max(samples) - min(samples)) / 1024 if samples else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--child", choices=["stream", "execute"])
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(one_run(args.url, args.child, args.rows, args.batch))))
        return
    server = None
    url = os.environ.get("POSTGRES_URL", "")
    if not url:
        from pgpool_core.testing import start_first_available

        server, problems = start_first_available()
        if server is None:
            sys.exit(f"no PostgreSQL: {problems}")
        url = server.url
    try:
        runs: dict[str, list[dict[str, float]]] = {"stream": [], "execute": []}
        for round_ in range(args.rounds):
            order = ["stream", "execute"] if round_ % 2 == 0 else ["execute", "stream"]
            for mode in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--url", url,
                     "--rows", str(args.rows), "--batch", str(args.batch)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for mode, results in runs.items():
            rates = [r["rows_per_s"] for r in results]
            growth = [r["rss_growth_mib"] for r in results]
            spread = [r["rss_spread_mib"] for r in results]
            print(
                f"{mode:8} {args.rows:,} rows: median {statistics.median(rates):,.0f} rows/s"
                f" (range {min(rates):,.0f}-{max(rates):,.0f}); client RSS growth"
                f" {statistics.median(growth):.1f} MiB (range {min(growth):.1f}-{max(growth):.1f});"
                f" RSS spread while reading {statistics.median(spread):.1f} MiB"
            )
        ratio = statistics.median(
            s["rows_per_s"] / e["rows_per_s"]
            for s, e in zip(runs["stream"], runs["execute"], strict=True)
        )
        print(f"stream / execute throughput, paired median: {ratio:.2f}")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
