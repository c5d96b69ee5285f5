"""HTTP leg: a sprockets.http application whose ``GET /value?v=x`` runs one
``SELECT %s::TEXT AS value`` through its database mixin, against ``GET /nodb?v=x`` in the
same process (the same handler stack without the database: the ceiling).

Apps: ``pgpool`` (pgpool_sprockets) and ``sprockets-postgres`` (1.8.1, what it replaces).
The pgpool app also answers ``GET /bare?v=x`` with the same query on bare psycopg2 async
connections, with nothing around them (no pool logic, timeouts, hooks or metrics): the
floor, what any pool on psycopg2 and this loop pays for a round trip. One server process
per app and event loop; the load comes from another process: wrk (one thread) when
installed, else a small keep-alive HTTP/1.1 client on asyncio. Each round runs the paths
back to back, the order rotating; a ratio is the median of the paired ratios to ``/nodb``.
App CPU per request is the server process's CPU time over the requests.

    python benchmarks/bench_http.py [--rounds 5] [--seconds 1] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import multiprocessing.synchronize
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

PATHS = {"nodb": "/nodb?v=x", "db": "/value?v=x", "bare": "/bare?v=x"}
SQL = "SELECT %s::TEXT AS value"


class BarePsycopg2:
    """The floor: ``size`` psycopg2 async connections, each with its reader registered on
    the loop for good, handed out from a list; a statement is its send, one wake-up and its
    rows. No timeouts, health checks, hooks, metrics or error handling: nothing a pool adds."""

    def __init__(self) -> None:
        self._free: list[_BareConnection] = []
        self._waiters: collections.deque[asyncio.Future[_BareConnection]] = collections.deque()

    async def open(self, url: str, size: int) -> None:
        for _ in range(size):
            self._free.append(await _BareConnection.connect(url))

    async def fetch_one(self, sql: str, params: list[str]) -> dict[str, Any]:
        if self._free:
            conn = self._free.pop()
        else:  # FIFO: a returned connection goes straight to the oldest waiter
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            conn = await waiter
        try:
            return await conn.fetch_one(sql, params)
        finally:
            while self._waiters and self._waiters[0].done():
                self._waiters.popleft()
            if self._waiters:
                self._waiters.popleft().set_result(conn)
            else:
                self._free.append(conn)


class _BareConnection:
    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._cursor = raw.cursor()
        self._loop = asyncio.get_running_loop()
        self._fd = raw.fileno()
        self._done: asyncio.Future[None] | None = None
        self._loop.add_reader(self._fd, self._ready)

    @classmethod
    async def connect(cls, url: str) -> _BareConnection:
        import psycopg2
        import psycopg2.extensions

        raw = psycopg2.connect(url, async_=1)
        loop, fd = asyncio.get_running_loop(), raw.fileno()
        while (state := raw.poll()) != psycopg2.extensions.POLL_OK:
            ready = loop.create_future()
            watch, stop = (
                (loop.add_writer, loop.remove_writer)
                if state == psycopg2.extensions.POLL_WRITE
                else (loop.add_reader, loop.remove_reader)
            )
            watch(fd, ready.set_result, None)
            try:
                await ready
            finally:
                stop(fd)
        return cls(raw)

    def _ready(self) -> None:
        import psycopg2.extensions

        done = self._done
        try:
            state = self._raw.poll()
        except Exception as exc:  # the floor reports any driver error as is
            if done is not None and not done.done():
                done.set_exception(exc)
            return
        if state == psycopg2.extensions.POLL_WRITE:
            self._loop.add_writer(self._fd, self._flushed)
        elif state == psycopg2.extensions.POLL_OK and done is not None and not done.done():
            done.set_result(None)

    def _flushed(self) -> None:
        self._loop.remove_writer(self._fd)
        self._ready()

    async def fetch_one(self, sql: str, params: list[str]) -> dict[str, Any]:
        self._done = self._loop.create_future()
        self._cursor.execute(sql, params)
        self._ready()  # flushes the query; the reader does the rest
        await self._done
        names = [column[0] for column in self._cursor.description]
        return dict(zip(names, self._cursor.fetchone(), strict=True))


def serve(
    app_kind: str, loop_kind: str, port: int, url: str, *, ready: Any, pool_size: int
) -> None:
    """The server process: one sprockets.http application on ``loop_kind``."""
    import logging

    # wrk hangs up mid-request when it stops: those 499s are the only access-log lines at
    # WARNING, and would flood the benchmark's output.
    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    from sprockets.http import app as sprockets_app
    from tornado import httpserver, ioloop, web

    if app_kind == "pgpool":
        import pgpool_sprockets as mixins
    else:
        import sprockets_postgres as mixins

    class Application(mixins.ApplicationMixin, sprockets_app.Application):  # type: ignore[misc]
        pass

    class ValueHandler(mixins.RequestHandlerMixin, web.RequestHandler):  # type: ignore[misc]
        async def get(self) -> None:
            result = await self.postgres_execute(SQL, [self.get_argument("v")], "value")
            self.write(result.row or {})

    class NoDatabaseHandler(mixins.RequestHandlerMixin, web.RequestHandler):  # type: ignore[misc]
        async def get(self) -> None:
            self.write({"value": self.get_argument("v")})

    bare = BarePsycopg2()

    class BareHandler(web.RequestHandler):
        async def get(self) -> None:
            self.write(await bare.fetch_one(SQL, [self.get_argument("v")]))

    async def main() -> None:
        app = Application(
            [(r"/value", ValueHandler), (r"/nodb", NoDatabaseHandler), (r"/bare", BareHandler)],
            postgres_url=url,
            postgres_max_pool_size=pool_size,
            postgres_min_pool_size=pool_size,
        )
        if app_kind == "pgpool":
            await app.postgres_start(wait=True)
            await bare.open(url, pool_size)
        else:
            await app._postgres_on_start(app, ioloop.IOLoop.current())
        server = httpserver.HTTPServer(app)
        server.listen(port, address="127.0.0.1")
        ready.set()
        await asyncio.Event().wait()

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(port: int, path: str, connections: int, seconds: float) -> tuple[int, list[float]]:
    """Keep-alive HTTP/1.1 GETs on ``connections`` sockets for ``seconds``."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    latencies: list[float] = []

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        while loop.time() < stop_at:
            started = loop.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head, re.I)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
            latencies.append(loop.time() - started)
            done += 1
        writer.close()
        return done

    counts = await asyncio.gather(*(one() for _ in range(connections)))
    return sum(counts), latencies


def _client(port: int, path: str, connections: int, seconds: float, results: Any) -> None:
    count, latencies = asyncio.run(load(port, path, connections, seconds))
    latencies.sort()
    results.put((count, latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]))


def run_load(port: int, path: str, connections: int, seconds: float) -> tuple[int, float, float]:
    """(requests, elapsed seconds, p99 seconds) from wrk if installed, else the asyncio
    client in another process."""
    wrk = shutil.which("wrk")
    if wrk:
        duration = max(1, round(seconds))
        out = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        count = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", out)
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        assert count is not None, out
        assert p99 is not None, out
        elapsed = float(count.group(2)) * (1e-3 if count.group(3) == "ms" else 1.0)
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p99.group(2)]
        return int(count.group(1)), elapsed, float(p99.group(1)) * scale
    queue: multiprocessing.Queue[tuple[int, float]] = multiprocessing.Queue()
    client = multiprocessing.Process(
        target=_client, args=(port, path, connections, seconds, queue), daemon=True
    )
    client.start()
    count, p99 = queue.get(timeout=seconds + 30)
    client.join(5)
    return count, seconds, p99


def http_leg(
    url: str, loop_kind: str, *, apps: tuple[str, ...], connections: tuple[int, ...],
    rounds: int, seconds: float, pool_size: int = 10,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every app on ``loop_kind``: one row per (app, connections) with medians."""
    from pgpool_core.testing._server import free_port

    rows = []
    for app_kind in apps:
        port = free_port()
        ready = multiprocessing.Event()
        server = multiprocessing.Process(
            target=serve,
            args=(app_kind, loop_kind, port, url),
            kwargs={"ready": ready, "pool_size": pool_size},
            daemon=True,
        )
        server.start()
        try:
            if not ready.wait(30):
                raise RuntimeError(f"the {app_kind} application did not start")
            names = ("nodb", "db", "bare") if app_kind == "pgpool" else ("nodb", "db")
            for leg in names[1:]:  # warm up
                run_load(port, PATHS[leg], max(connections), 1.0)
            for conns in connections:
                legs: dict[str, list[tuple[float, float, float]]] = {leg: [] for leg in names}
                for round_no in range(rounds):
                    turn = round_no % len(names)
                    for leg in names[turn:] + names[:turn]:
                        cpu0 = process_cpu(server.pid)  # type: ignore[arg-type]
                        count, elapsed, p99 = run_load(port, PATHS[leg], conns, seconds)
                        cpu = process_cpu(server.pid) - cpu0  # type: ignore[arg-type]
                        legs[leg].append((count / elapsed, p99, cpu / max(count, 1) * 1e6))
                row: dict[str, Any] = {"loop": loop_kind, "app": app_kind, "connections": conns}
                for leg, values in legs.items():
                    row[f"{leg}_ratio"] = statistics.median(
                        v[0] / n[0] for v, n in zip(values, legs["nodb"], strict=True)
                    )
                    row[f"{leg}_rate"] = statistics.median(v[0] for v in values)
                    row[f"{leg}_p99"] = statistics.median(v[1] for v in values)
                    row[f"{leg}_cpu_us"] = statistics.median(v[2] for v in values)
                rows.append(row)
                floor = (
                    f"; bare psycopg2 {row['bare_ratio']:.2f}, {row['bare_cpu_us']:.0f} us/req"
                    if "bare_rate" in row
                    else ""
                )
                print(
                    f"  {loop_kind:7} HTTP {app_kind:18} c={conns:<3} {row['db_rate']:6.0f} req/s"
                    f" = {row['db_ratio']:.2f} of {row['nodb_rate']:.0f}; app CPU"
                    f" {row['db_cpu_us']:.0f} vs {row['nodb_cpu_us']:.0f} us/req{floor}"
                )
        finally:
            server.terminate()
            server.join(5)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--apps", default="pgpool,sprockets-postgres")
    args = parser.parse_args()

    from pgpool_core.testing import start_first_available

    server = None
    url = os.environ.get("PGPOOL_TEST_DSN")
    if not url:
        server, problems = start_first_available()
        if server is None:
            print("no PostgreSQL:", "; ".join(problems))
            return 1
        url = server.url
    try:
        http_leg(
            url, args.loop, apps=tuple(args.apps.split(",")), connections=(16, 64),
            rounds=args.rounds, seconds=args.seconds,
        )  # fmt: skip
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"benchmark took {time.monotonic() - started:.0f} s")
    sys.exit(code)
