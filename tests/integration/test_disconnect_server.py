"""A request's database work ends with its client, on a real Tornado server and a real
PostgreSQL: the client sends GET and hangs up; the statement it waited for is cancelled
on the server, a transaction in progress rolls back, the pool has its connection back."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado import httpserver, web

import pgpool_tornado
from pgpool_core.testing import PostgresServer

from db_support import database_of, wait_for_condition


class App(pgpool_tornado.ApplicationMixin, web.Application):
    pass


class OwnConnectorApp(App):
    """Overrides postgres_connector (as sprockets-postgres apps may): postgres_transaction
    goes through it, and is watched for a client that hangs up all the same."""

    def postgres_connector(self, *args: Any, **kwargs: Any) -> Any:
        return super().postgres_connector(*args, **kwargs)


class Sleep(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    async def get(self) -> None:
        await self.postgres_execute("SELECT pg_sleep(10)")
        self.write("done")


class SleepInTransaction(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    async def get(self) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute("INSERT INTO marks VALUES (1)")
            await tx.execute("SELECT pg_sleep(10)")
        self.write("done")


class KeepRunning(Sleep):
    postgres_cancel_on_disconnect = False


@pytest.fixture
async def served(
    postgres_db_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[App, int]]:
    app = getattr(request, "param", App)(
        [("/sleep", Sleep), ("/sleep-tx", SleepInTransaction), ("/keep", KeepRunning)],
        postgres_url=postgres_db_url,
    )
    await app.postgres_start(wait=True)
    assert app.postgres_pool is not None
    await app.postgres_pool.execute("CREATE TABLE marks (n int)")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    yield app, sock.getsockname()[1]
    server.stop()
    await app.postgres_stop(1)


async def hang_up_after(port: int, path: str, seconds: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(seconds)  # the client gives up after this long
    writer.close()
    await writer.wait_closed()
    del reader


def sleeping(server: PostgresServer, database: str) -> list[dict[str, Any]]:
    return [
        a
        for a in server.activity(database)
        if "pg_sleep" in str(a["query"]) and a["state"] == "active"
    ]


@pytest.mark.parametrize(
    ("path", "served"),
    [("/sleep", App), ("/sleep-tx", App), ("/sleep-tx", OwnConnectorApp)],
    ids=["execute", "transaction", "transaction-own-connector"],
    indirect=["served"],
)
async def test_a_client_that_hangs_up_ends_its_statement(
    served: tuple[App, int], postgres_server: PostgresServer, postgres_db_url: str, path: str
) -> None:
    app, port = served
    pool = app.postgres_pool
    assert pool is not None
    database = database_of(postgres_db_url)
    await hang_up_after(port, path, 0.2)
    assert sleeping(postgres_server, database) or pool.in_use == 0
    gone = time.monotonic()
    await wait_for_condition(
        lambda: (
            pool.in_use == 0
            and not sleeping(postgres_server, database)
            and all(a["state"] == "idle" for a in postgres_server.activity(database))
        ),
        timeout=5,
    )
    took = time.monotonic() - gone
    print(f"\n{path}: backend idle and connection back {took:.3f} s after the client left")
    assert took < 1.0
    assert (await pool.execute("SELECT count(*) AS n FROM marks")).row == {"n": 0}


async def test_a_handler_may_keep_running_after_its_client_left(
    served: tuple[App, int], postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    _app, port = served
    database = database_of(postgres_db_url)
    await hang_up_after(port, "/keep", 0.2)
    await asyncio.sleep(0.5)  # observing that nothing happens needs time to pass
    assert sleeping(postgres_server, database)  # still running: nobody cancelled it
    postgres_server.query(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)'"
    )
