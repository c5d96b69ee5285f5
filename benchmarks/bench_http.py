"""HTTP leg: a Tornado handler doing ``SELECT %s::TEXT AS value`` through pgpool_tornado's
RequestHandlerMixin, against the same handler without the database call (the ceiling).

One server process; the load comes from another process: wrk when installed, else a small
keep-alive HTTP/1.1 client on asyncio. Reports median req/s, p99 and the fraction
of the no-database ceiling (median of paired rounds; target >= 0.70) at 16 and 64
connections.

    python benchmarks/bench_http.py [--seconds 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

TARGET = 0.70
PATHS = {"nodb": "/nodb?v=x", "db": "/value?v=x"}


def serve(
    port: int, url: str, ready: multiprocessing.synchronize.Event, pool_size: int = 10
) -> None:
    from tornado import httpserver, ioloop, web

    import pgpool_tornado

    class Application(pgpool_tornado.ApplicationMixin, web.Application):
        pass

    class ValueHandler(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
        async def get(self) -> None:
            result = await self.postgres_execute(
                "SELECT %s::TEXT AS value", [self.get_argument("v")], "value"
            )
            self.write(result.row or {})

    class NoDatabaseHandler(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
        async def get(self) -> None:
            self.write({"value": self.get_argument("v")})

    async def main() -> None:
        app = Application(
            [(r"/value", ValueHandler), (r"/nodb", NoDatabaseHandler)],
            postgres_url=url,
            postgres_max_pool_size=pool_size,
            postgres_min_pool_size=pool_size,
        )
        await app.postgres_start(wait=True)
        server = httpserver.HTTPServer(app)
        server.listen(port, address="127.0.0.1")
        ready.set()
        await asyncio.Event().wait()

    ioloop.IOLoop.current().run_sync(main)


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
            length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(loop.time() - started)
            done += 1
        writer.close()
        return done

    counts = await asyncio.gather(*(one() for _ in range(connections)))
    return sum(counts), latencies


def run_load(port: int, path: str, connections: int, seconds: float) -> tuple[float, float]:
    """(req/s, p99 seconds) from wrk if installed, else the asyncio client."""
    wrk = shutil.which("wrk")
    url = f"http://127.0.0.1:{port}{path}"
    if wrk:
        out = subprocess.run(
            [wrk, "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        assert p99 is not None
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p99.group(2)]
        return rate, float(p99.group(1)) * scale
    results: multiprocessing.Queue[tuple[int, float]] = multiprocessing.Queue()
    client = multiprocessing.Process(
        target=_client, args=(port, path, connections, seconds, results), daemon=True
    )
    client.start()
    count, p99 = results.get(timeout=seconds + 30)
    client.join(5)
    return count / seconds, p99


def _client(
    port: int,
    path: str,
    connections: int,
    seconds: float,
    results: multiprocessing.Queue[tuple[int, float]],
) -> None:
    count, latencies = asyncio.run(load(port, path, connections, seconds))
    latencies.sort()
    results.put((count, latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args()

    from pgpool_core.testing import start_first_available
    from pgpool_core.testing._server import free_port

    server = None
    url = os.environ.get("PGPOOL_TEST_DSN")
    if not url:
        server, problems = start_first_available()
        if server is None:
            print("no PostgreSQL:", "; ".join(problems))
            return 1
        url = server.url
    port = free_port()
    ready = multiprocessing.Event()
    app = multiprocessing.Process(
        target=serve, args=(port, url, ready, args.pool_size), daemon=True
    )
    app.start()
    try:
        if not ready.wait(30):
            print("the application did not start")
            return 1
        client = "wrk" if shutil.which("wrk") else "asyncio keep-alive client"
        print(f"one server process; load from {client}; {args.rounds} x {args.seconds:.0f} s")
        run_load(port, PATHS["db"], 16, 1.0)  # warm up
        summary = []
        header = ("conns", "no-db req/s", "p99 ms", "db req/s", "p99 ms", "ratio")
        print("{:>5} {:>12} {:>7} {:>9} {:>7} {:>6}".format(*header))
        for connections in (16, 64):
            rates: dict[str, list[float]] = {"nodb": [], "db": []}
            p99s: dict[str, list[float]] = {"nodb": [], "db": []}
            for round_no in range(args.rounds):
                order = ("nodb", "db") if round_no % 2 == 0 else ("db", "nodb")
                for leg in order:
                    rate, p99 = run_load(port, PATHS[leg], connections, args.seconds)
                    rates[leg].append(rate)
                    p99s[leg].append(p99)
            nodb, db = statistics.median(rates["nodb"]), statistics.median(rates["db"])
            # Adjacent legs share the machine's state: the paired ratio is the stable number.
            ratio = statistics.median(
                d / n for d, n in zip(rates["db"], rates["nodb"], strict=True)
            )
            verdict = "ok" if ratio >= TARGET else "BELOW"
            print(
                f"{connections:>5} {nodb:>12.0f} {statistics.median(p99s['nodb']) * 1e3:>7.1f}"
                f" {db:>9.0f} {statistics.median(p99s['db']) * 1e3:>7.1f} {ratio:>6.2f}"
                f"  (target >= {TARGET:.2f} {verdict})"
            )
            summary.append(f"c={connections} {db:.0f} req/s = {ratio:.2f} of {nodb:.0f}")
        print("summary:", "; ".join(summary))
    finally:
        app.terminate()
        app.join(5)
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"benchmark took {time.monotonic() - started:.0f} s")
    sys.exit(code)
