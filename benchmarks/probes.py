"""How long the health probes take to answer, end to end over HTTP on loopback (a Tornado
app with a started pool on a throwaway server): p50 and p99 of N requests each.

    python benchmarks/probes.py [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time

from tornado import httpclient, httpserver, web

import pgpool_tornado


class App(pgpool_tornado.ApplicationMixin, web.Application):
    pass


async def measure(url: str, requests: int) -> None:
    app = App(
        [
            ("/livez", pgpool_tornado.LivenessRequestHandler),
            ("/readyz", pgpool_tornado.ReadinessRequestHandler),
            ("/startupz", pgpool_tornado.StartupRequestHandler),
        ],
        postgres_url=url,
        postgres_min_pool_size=2,
    )
    await app.postgres_start(wait=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    client = httpclient.AsyncHTTPClient(force_instance=True)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        for path in ("/livez", "/readyz", "/startupz"):
            took = []
            for _ in range(requests):
                started = time.perf_counter()
                response = await client.fetch(base + path, raise_error=False)
                took.append(time.perf_counter() - started)
                assert response.code == 200, (path, response.code, response.body)
            took.sort()
            print(
                f"{path:10} {requests} requests: p50 {statistics.median(took) * 1e3:.2f} ms,"
                f" p99 {took[int(len(took) * 0.99) - 1] * 1e3:.2f} ms (client included)"
            )
    finally:
        client.close()
        server.stop()
        await app.postgres_stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    server = None
    url = os.environ.get("POSTGRES_URL", "")
    if not url:
        from pgpool_core.testing import start_first_available

        server, problems = start_first_available()
        if server is None:
            sys.exit(f"no PostgreSQL: {problems}")
        url = server.url
    try:
        asyncio.run(measure(url, args.requests))
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
