"""pgpool's public benchmark: every asyncio PostgreSQL pool side by side, in one run.

Contenders (see contenders.py): pgpool, raw aiopg.Pool (the baseline every ratio is
relative to), psycopg_pool, asyncpg with and without its reset on release,
sprockets-postgres 1.8.1, and ``pgbench`` (C, libpq, one thread, the same SQL) as the
limit a client can reach on this machine. Workloads W1-W3 (contenders.py) at 1/16/64/200
tasks on a pool of 10 and 16 tasks on a pool of 16 (every task has its own connection),
under asyncio's loop and uvloop; then the HTTP leg (bench_http.py).

Each cell runs every contender once per round, the order rotating round by round, and
reports the median over rounds of: ops/s, the ratio to aiopg in the same round, p50/p99
latency, max/median ops per task (fairness) and client CPU µs per op. Results go to
``--out`` as results.md, results.json and PNG charts.

    python benchmarks/bench.py --quick            # < 2 minutes (CI runs it as a smoke test)
    python benchmarks/bench.py --full --out benchmarks/results   # < 10 minutes

Uses PGPOOL_TEST_DSN, or starts a throwaway PostgreSQL like the test suite does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import contenders as pools

Op = Callable[[], Awaitable[Any]]
WORKLOADS = {"W1": "select1", "W2": "rows", "W3": "update"}
LOOPS = ("asyncio", "uvloop")
#: pgbench's select-only script runs in the cell of the goal that compares with it only:
#: a reference, not a contender (it keeps the full mode under 10 minutes).
PGBENCH_SELECT_ONLY_CELL = "W1 c=16 pool 10"
PGBENCH_SCRIPTS = {
    "W1": "SELECT 1;\n",
    "W2": pools.W2_SQL + ";\n",
    "W3": "\\set id random(0, 999)\nBEGIN;\n" + pools.W3_SQL.replace("%s", ":id") + ";\nCOMMIT;\n",
}


@dataclasses.dataclass(frozen=True)
class Cell:
    workload: str
    tasks: int
    pool: int

    @property
    def key(self) -> str:
        return f"{self.workload} c={self.tasks} pool {self.pool}"


@dataclasses.dataclass(frozen=True)
class Mode:
    cells: tuple[Cell, ...]
    rounds: int
    seconds: float
    http_connections: tuple[int, ...]
    http_apps: tuple[str, ...]
    http_seconds: float


def _grid() -> tuple[Cell, ...]:
    cells = [Cell(w, c, 10) for w in WORKLOADS for c in (1, 16, 64, 200)]
    return tuple(cells + [Cell(w, 16, 16) for w in WORKLOADS])


MODES = {
    "quick": Mode(
        cells=tuple(Cell(w, 16, 10) for w in WORKLOADS),
        rounds=3,
        seconds=0.3,
        http_connections=(16,),
        http_apps=("pgpool",),
        http_seconds=1.0,
    ),
    "full": Mode(
        cells=_grid(),
        rounds=5,
        seconds=0.3,
        http_connections=(16, 64),
        http_apps=("pgpool", "sprockets-postgres"),
        http_seconds=1.0,
    ),
}


@dataclasses.dataclass
class Run:
    """One contender, one cell, one round."""

    rate: float
    p50: float
    p99: float
    spread: float  # max / median ops per task
    cpu_us: float  # client CPU per op

    @classmethod
    def of(
        cls, ops: int, elapsed: float, *, latencies: list[float], per_task: list[int], cpu: float
    ) -> Run:
        latencies.sort()
        return cls(
            rate=ops / elapsed,
            p50=percentile(latencies, 0.50),
            p99=percentile(latencies, 0.99),
            spread=max(per_task) / max(statistics.median(per_task), 1),
            cpu_us=cpu / max(ops, 1) * 1e6,
        )


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_for(op: Op, tasks: int, seconds: float) -> Run:
    """``op`` in ``tasks`` concurrent loops for ``seconds``."""
    # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds.
    clock = time.perf_counter
    latencies: list[float] = []
    per_task = [0] * tasks
    cpu0, started = time.process_time(), clock()
    stop_at = started + seconds

    async def worker(n: int) -> None:
        while (t0 := clock()) < stop_at:
            await op()
            latencies.append(clock() - t0)
            per_task[n] += 1

    await asyncio.gather(*(worker(n) for n in range(tasks)))
    elapsed, cpu = clock() - started, time.process_time() - cpu0
    return Run.of(sum(per_task), elapsed, latencies=latencies, per_task=per_task, cpu=cpu)


async def pgbench(
    binary: str, url: str, cell: Cell, seconds: float, workdir: Path, *, select_only: bool = False
) -> Run:
    """``pgbench`` with the cell's SQL as its script (or its built-in ``-S``, a primary-key
    SELECT on pgbench_accounts), ``cell.tasks`` clients on one thread."""
    script, prefix = _pgbench_files(workdir, cell.workload)
    how = ["-S"] if select_only else ["-f", str(script)]
    duration = max(1, round(seconds))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        binary, "-n", "-M", "simple", "-c", str(cell.tasks), "-j", "1", "-T", str(duration),
        *how, "-l", "--log-prefix", str(prefix), url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err.decode(errors='replace').strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    latencies, per_client = _pgbench_log(workdir, cell.tasks)
    tps = next(
        (float(line.split()[2]) for line in out.decode().splitlines() if line.startswith("tps = ")),
        None,
    )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = Run.of(len(latencies), duration, latencies=latencies, per_task=per_client, cpu=cpu)
    if tps is not None:  # pgbench's own rate excludes its connection set-up
        run.rate = tps
    return run


def _pgbench_files(workdir: Path, workload: str) -> tuple[Path, Path]:
    """The workload's script, and the log prefix with no logs of an earlier run left."""
    script = workdir / f"{workload}.sql"
    script.write_text(PGBENCH_SCRIPTS[workload])
    for old in workdir.glob("log.*"):
        old.unlink()
    return script, workdir / "log"


def _pgbench_log(workdir: Path, clients: int) -> tuple[list[float], list[int]]:
    """Latencies (seconds) and transactions per client from pgbench's ``-l`` log."""
    latencies: list[float] = []
    per_client = [0] * clients
    for log in workdir.glob("log.*"):
        for line in log.read_text().splitlines():
            client, _, micros = line.split()[:3]
            per_client[int(client)] += 1
            latencies.append(int(micros) / 1e6)
    return latencies, per_client


async def prepare(url: str, pgbench_binary: str | None) -> None:
    """The workloads' tables, and pgbench's own (scale 1) for its ``-S``."""
    from pgpool_core import PoolManager

    if pgbench_binary:
        proc = await asyncio.create_subprocess_exec(
            pgbench_binary, "-i", "-s", "1", "-q", url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {err.decode(errors='replace').strip()}")

    async with PoolManager(url, min_size=1, max_size=1) as pool:
        await pool.execute("DROP TABLE IF EXISTS bench_rows, bench_tx")
        await pool.execute(
            "CREATE TABLE bench_rows AS SELECT g AS a, g * 2 AS b, 'row ' || g AS c,"
            " now() AS d, g % 2 = 0 AS e FROM generate_series(1, 100) AS g"
        )
        await pool.execute(
            "CREATE TABLE bench_tx AS SELECT g AS id, 0 AS n"
            f" FROM generate_series(0, {pools.W3_ROWS - 1}) AS g"
        )
        await pool.execute("ALTER TABLE bench_tx ADD PRIMARY KEY (id)")
        await pool.execute("VACUUM ANALYZE bench_rows, bench_tx")


Results = dict[tuple[str, str, str], list[Run]]  # (loop, cell key, contender) -> runs


async def pool_pass(
    loop_kind: str, url: str, mode: Mode, *, kinds: list[type[Any]], results: Results,
    pgbench_binary: str | None, workdir: Path,
) -> None:  # fmt: skip
    """Every cell of ``mode`` on the running loop, pools opened once per pool size."""
    for size in sorted({cell.pool for cell in mode.cells}):
        opened = []
        try:
            for kind in kinds:
                contender = kind()
                await contender.open(url, size)
                opened.append(contender)
            for contender in opened:  # warm: connections open, caches and statements hot
                for method in WORKLOADS.values():
                    await run_for(getattr(contender, method), size, 0.1)
            for cell in (c for c in mode.cells if c.pool == size):
                for round_no in range(mode.rounds):
                    order: list[Any] = [
                        c for c in opened if cell.tasks <= getattr(c, "max_tasks", cell.tasks)
                    ]
                    if pgbench_binary and cell.pool == 10:  # pgbench has no pool: once per c
                        order.append("pgbench")
                        if cell.key == PGBENCH_SELECT_ONLY_CELL:
                            order.append("pgbench -S")
                    turn = round_no % len(order)
                    for contender in order[turn:] + order[:turn]:
                        if isinstance(contender, str):
                            assert pgbench_binary is not None
                            run = await pgbench(
                                pgbench_binary, url, cell, mode.seconds, workdir,
                                select_only=contender == "pgbench -S",
                            )  # fmt: skip
                            results.setdefault((loop_kind, cell.key, contender), []).append(run)
                            continue
                        op = getattr(contender, WORKLOADS[cell.workload])
                        run = await run_for(op, cell.tasks, mode.seconds)
                        results.setdefault((loop_kind, cell.key, contender.name), []).append(run)
                line = summary_line(results, loop_kind, cell.key)
                print(f"  {loop_kind:7} {cell.key:20} {line}")
        finally:
            for contender in opened:
                await contender.close()


def summary_line(results: Results, loop_kind: str, key: str) -> str:
    base = results.get((loop_kind, key, "aiopg"))
    parts = []
    for (lk, ck, name), runs in results.items():
        if lk == loop_kind and ck == key and base and name != "aiopg":
            parts.append(f"{name} {paired_ratio(runs, base):.2f}")
    return ", ".join(parts)


def paired_ratio(runs: list[Run], base: list[Run]) -> float:
    """Median over rounds of this contender's rate / aiopg's rate in the same round."""
    return statistics.median(r.rate / b.rate for r, b in zip(runs, base, strict=False))


def med(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def machine() -> dict[str, str]:
    model = "unknown CPU"
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("pgpool", "aiopg", "psycopg2-binary", "psycopg", "psycopg-pool", "asyncpg",
                 "sprockets-postgres", "uvloop", "tornado"):  # fmt: skip
        with contextlib.suppress(Exception):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cpu": f"{model}, {os.cpu_count()} cores (client and server share them)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", dest="mode", const="quick")
    group.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP leg")
    parser.add_argument("--rounds", type=int, help="override the mode's rounds")
    parser.add_argument("--loops", default=",".join(LOOPS), help="event loops to run on")
    args = parser.parse_args()
    mode_name = args.mode or "quick"
    mode = MODES[mode_name]
    if args.rounds:
        mode = dataclasses.replace(mode, rounds=args.rounds)
    started = time.monotonic()

    server, url, version = postgres()
    if url is None:
        return 1
    kinds, skipped = pools.available()
    wanted = args.loops.split(",")
    loops = [k for k in wanted if k == "asyncio" or importlib.util.find_spec(k) is not None]
    pgbench_binary = find_pgbench()
    notes = [f"skipped {s}" for s in skipped]
    if "uvloop" in wanted and "uvloop" not in loops:
        notes.append("uvloop not installed: asyncio only")
    if pgbench_binary is None:
        notes.append("pgbench not found: no C limit")
    print(f"{mode_name} mode: PostgreSQL {version}; loops {', '.join(loops)}; "
          f"{mode.rounds} rounds x {mode.seconds} s; " + "; ".join(notes))  # fmt: skip
    results: Results = {}
    http: list[dict[str, Any]] = []
    try:
        asyncio.run(prepare(url, pgbench_binary))
        with tempfile.TemporaryDirectory() as tmp:
            for loop_kind in loops:
                runner = run_on(loop_kind)
                runner(
                    pool_pass(
                        loop_kind, url, mode, kinds=kinds, results=results,
                        pgbench_binary=pgbench_binary, workdir=Path(tmp),
                    )
                )  # fmt: skip
        if not args.no_http:
            import bench_http

            for loop_kind in loops:
                http += bench_http.http_leg(
                    url, loop_kind, apps=mode.http_apps, connections=mode.http_connections,
                    rounds=mode.rounds, seconds=mode.http_seconds,
                )  # fmt: skip
    finally:
        if server is not None:
            server.close()
    took = time.monotonic() - started
    import report

    report.write(
        args.out,
        report.Report(
            mode_name=mode_name, mode=mode, machine=machine(), postgres=version, notes=notes,
            results=results, http=http, took=took,
            command=" ".join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
        ),
    )  # fmt: skip
    print(f"benchmark took {took:.0f} s; results in {args.out}/results.md")
    return 0


def postgres() -> tuple[Any, str | None, str]:
    """PGPOOL_TEST_DSN's server, or a throwaway one: (server to close or None, URL, version)."""
    from pgpool_core.testing import start_first_available

    url = os.environ.get("PGPOOL_TEST_DSN")
    if url:
        return None, url, "(given by PGPOOL_TEST_DSN)"
    server, problems = start_first_available()
    if server is None:
        print("no PostgreSQL for the benchmark:", "; ".join(problems), file=sys.stderr)
        return None, None, ""
    return server, server.url, f"{server.version} ({server.source.value})"


def run_on(loop_kind: str) -> Callable[[Awaitable[None]], None]:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    return None


if __name__ == "__main__":
    sys.exit(main())
