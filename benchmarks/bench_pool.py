"""PoolManager versus raw aiopg.Pool, interleaved A/B rounds in one process.

Workloads (pool size 10 unless said):
  W1  SELECT 1 including acquire/release, at 1, 16 and 64 concurrent tasks
  W2  100 rows x 5 columns returned as dicts, 16 tasks
  W3  BEGIN / UPDATE a random row / COMMIT, 16 tasks
  W3 xid  W3 with ``resolve_commit=True`` (BEGIN reads the transaction id, so that a lost
      COMMIT can be resolved by txid_status): the cost of that option
  starved  200 tasks on a pool of 10: latency p50/p99 and tasks that completed nothing

Each round runs A then B (order alternating) for a fixed time; the reported ratio is the
median over rounds of PoolManager ops/s divided by aiopg ops/s. Uses PGPOOL_TEST_DSN, or
starts a throwaway server like the test suite does.

    python benchmarks/bench_pool.py [--rounds 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiopg
import psycopg2.extras

from pgpool_core import PoolManager
from pgpool_core.testing import start_first_available

Op = Callable[[], Awaitable[None]]

TARGETS = {"W1 c=16": 1.5, "W2": 1.0, "W3": 1.1}


async def run_for(op: Op, tasks: int, seconds: float) -> tuple[int, list[float], list[int]]:
    """Run ``op`` in ``tasks`` loops for ``seconds``; return ops, latencies, ops per task."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    latencies: list[float] = []
    per_task = [0] * tasks

    async def worker(n: int) -> None:
        while loop.time() < stop_at:
            started = loop.time()
            await op()
            latencies.append(loop.time() - started)
            per_task[n] += 1

    await asyncio.gather(*(worker(n) for n in range(tasks)))
    return sum(per_task), latencies, per_task


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Raw:
    """The baseline: aiopg.Pool, the way its users write it (async with pool.cursor() is
    broken in aiopg 1.4, so acquire + cursor)."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self.pool = pool

    async def select1(self) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT 1")
            await cur.fetchall()

    async def rows(self) -> None:
        async with (
            self.pool.acquire() as conn,
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            await cur.execute("SELECT a, b, c, d, e FROM bench_rows")
            await cur.fetchall()

    async def update(self) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute(
                "UPDATE bench_tx SET n = n + 1 WHERE id = %s", [random.randrange(1000)]
            )
            await cur.execute("COMMIT")

    update_xid = update  # the baseline has no such option


class Ours:
    def __init__(self, pool: PoolManager) -> None:
        self.pool = pool

    async def select1(self) -> None:
        await self.pool.execute("SELECT 1")

    async def rows(self) -> None:
        await self.pool.execute("SELECT a, b, c, d, e FROM bench_rows")

    async def update(self) -> None:
        async with self.pool.transaction() as tx:
            await tx.execute(
                "UPDATE bench_tx SET n = n + 1 WHERE id = %s", [random.randrange(1000)]
            )

    async def update_xid(self) -> None:
        async with self.pool.transaction(resolve_commit=True) as tx:
            await tx.execute(
                "UPDATE bench_tx SET n = n + 1 WHERE id = %s", [random.randrange(1000)]
            )


async def prepare(url: str) -> None:
    async with PoolManager(url, min_size=1, max_size=1) as pool:
        await pool.execute("DROP TABLE IF EXISTS bench_rows, bench_tx")
        await pool.execute(
            "CREATE TABLE bench_rows AS SELECT g AS a, g * 2 AS b, 'row ' || g AS c,"
            " now() AS d, g % 2 = 0 AS e FROM generate_series(1, 100) AS g"
        )
        await pool.execute(
            "CREATE TABLE bench_tx AS SELECT g AS id, 0 AS n FROM generate_series(0, 999) AS g"
        )
        await pool.execute("ALTER TABLE bench_tx ADD PRIMARY KEY (id)")


async def compare(url: str, rounds: int, seconds: float) -> list[str]:
    """W1-W3 as interleaved A/B rounds; prints a table, returns summary parts."""
    raw_pool = await aiopg.create_pool(url, minsize=10, maxsize=10, timeout=60)
    ours_pool = PoolManager(url, min_size=10, max_size=10, acquire_timeout=60)
    await ours_pool.start()
    raw, ours = Raw(raw_pool), Ours(ours_pool)
    cases: list[tuple[str, str, int]] = [
        ("W1 c=1", "select1", 1),
        ("W1 c=16", "select1", 16),
        ("W1 c=64", "select1", 64),
        ("W2", "rows", 16),
        ("W3", "update", 16),
        ("W3 xid", "update_xid", 16),
    ]
    for side in (raw, ours):  # warm both pools: connections open, caches hot
        await run_for(side.select1, 10, 0.3)
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    rates: dict[str, dict[str, list[float]]] = {
        name: {"aiopg": [], "pgpool": []} for name, _, _ in cases
    }
    for r in range(rounds):
        for name, method, tasks in cases:
            order: list[tuple[str, Raw | Ours]] = [("aiopg", raw), ("pgpool", ours)]
            if r % 2:
                order.reverse()
            got: dict[str, float] = {}
            for label, side in order:
                done, _, _ = await run_for(getattr(side, method), tasks, seconds)
                got[label] = done / seconds
                rates[name][label].append(got[label])
            ratios[name].append(got["pgpool"] / got["aiopg"])
    print(f"{'workload':10} {'aiopg ops/s':>12} {'pgpool ops/s':>13} {'ratio':>7} {'target':>7}")
    summary = []
    for name, _, _ in cases:
        ratio = statistics.median(ratios[name])
        target = TARGETS.get(name)
        mark = "" if target is None else ("ok" if ratio >= target else "MISS")
        print(
            f"{name:10} {statistics.median(rates[name]['aiopg']):12.0f}"
            f" {statistics.median(rates[name]['pgpool']):13.0f} {ratio:7.2f}"
            f" {'' if target is None else f'>={target}':>7} {mark}"
        )
        summary.append(f"{name} {ratio:.2f}x")
    await raw_pool.clear()
    raw_pool.close()
    await raw_pool.wait_closed()
    await ours_pool.stop()
    return summary


async def starvation(url: str, seconds: float) -> list[str]:
    """200 tasks on 10 connections, each statement holding one ~1 ms."""
    duration = max(seconds * 3, 2.0)
    parts = []
    for label in ("aiopg", "pgpool"):
        if label == "aiopg":
            pool_raw = await aiopg.create_pool(url, minsize=10, maxsize=10, timeout=60)

            async def op_raw(pool_raw: aiopg.Pool = pool_raw) -> None:
                async with pool_raw.acquire() as conn, conn.cursor() as cur:
                    await cur.execute("SELECT pg_sleep(0.001)")

            _, lat, per_task = await run_for(op_raw, 200, duration)
            pool_raw.close()
            await pool_raw.wait_closed()
        else:
            async with PoolManager(url, min_size=10, max_size=10, acquire_timeout=60) as pool:

                async def op_ours(pool: PoolManager = pool) -> None:
                    await pool.execute("SELECT pg_sleep(0.001)")

                _, lat, per_task = await run_for(op_ours, 200, duration)
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        starved = sum(1 for n in per_task if n == 0)
        print(
            f"starved {label:7} p50={p50 * 1000:7.1f} ms p99={p99 * 1000:7.1f} ms"
            f" p99/p50={p99 / p50:5.2f} tasks with 0 ops={starved}"
        )
        parts.append(f"{label} p99/p50 {p99 / p50:.2f} starved {starved}")
    return parts


async def main(rounds: int, seconds: float) -> int:
    server, problems = start_first_available()
    if server is None:
        print("no PostgreSQL for the benchmark:", "; ".join(problems), file=sys.stderr)
        return 1
    try:
        print(f"postgres: {server.source.value} {server.version}; {rounds} rounds x {seconds} s")
        await prepare(server.url)
        summary = await compare(server.url, rounds, seconds)
        starved = await starvation(server.url, seconds)
        print("summary: " + "; ".join(summary) + "; starved: " + "; ".join(starved))
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    started = time.monotonic()
    code = asyncio.run(main(args.rounds, args.seconds))
    print(f"benchmark took {time.monotonic() - started:.0f} s")
    sys.exit(code)
