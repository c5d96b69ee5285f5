"""sprockets-postgres users switch by changing one import: upstream's own example
application (docs/example.rst of 1.8.1) and its ``PostgresConnector.cursor`` escape hatch,
against a real PostgreSQL."""

from __future__ import annotations

import json
import types
from typing import Any

import psycopg2
import pytest
from sprockets.http import testing

from pgpool_core import PoolManager, TransactionUsageError

from db_support import database_of

#: docs/example.rst of sprockets-postgres 1.8.1, verbatim but for the marked lines: the
#: import (the switch), and two slips of the upstream text that keep it from running at
#: all (``web`` is never imported; the route names ``FooRequestHandler``, the class is
#: ``RequestHandler``).
UPSTREAM_EXAMPLE = '''
import sprockets.http
import pgpool_sprockets as postgres  # was: import sprockets_postgres as postgres
from sprockets.http import app
from tornado import web  # missing upstream


class RequestHandler(postgres.RequestHandlerMixin, web.RequestHandler):

    GET_SQL = """\\
    SELECT foo_id, bar, baz, qux
      FROM public.foo
     WHERE foo_id = %(foo_id)s;"""

    async def get(self, foo_id: str) -> None:
        result = await self.postgres_execute(self.GET_SQL, {'foo_id': foo_id})
        await self.finish(result.row)


class Application(postgres.ApplicationMixin, app.Application):
    """
    The :class:`sprockets_postgres.ApplicationMixin` provides the foundation
    for the :class:`sprockets_postgres.RequestHandlerMixin` to properly function
    and will automatically setup the pool to connect to PostgreSQL and will
    shutdown the connections cleanly when the application stops.

    It should be used in conjunction with :class:`sprockets.http.app.Application`
    and not directly with :class:`tornado.web.Application`.

    """


def make_app(**settings):
    return Application([
       web.url(r'/foo/(?P<foo_id>.*)', RequestHandler)  # upstream: FooRequestHandler
    ], **settings)


if __name__ == '__main__':
    sprockets.http.run(make_app)
'''


def _example() -> types.ModuleType:
    module = types.ModuleType("sprockets_postgres_example")
    exec(compile(UPSTREAM_EXAMPLE, "example.rst", "exec"), module.__dict__)
    return module


class TestUpstreamExample(testing.SprocketsHttpTestCase):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_db_url: str, postgres_server: Any) -> None:
        self.db_url = postgres_db_url
        self.server = postgres_server
        with postgres_server.connect(database_of(postgres_db_url)) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE public.foo (foo_id text PRIMARY KEY, bar int, baz text,"
                        " qux boolean)")  # fmt: skip
            cur.execute("INSERT INTO public.foo VALUES ('a1', 7, 'x', true)")

    def get_app(self) -> Any:
        self.app = _example().make_app(postgres_url=self.db_url)
        return self.app

    def test_example_serves_a_row_and_stops_clean(self) -> None:
        self.io_loop.run_sync(self.app.postgres_started.wait, timeout=10)
        response = self.fetch("/foo/a1")
        assert response.code == 200
        assert json.loads(response.body) == {"foo_id": "a1", "bar": 7, "baz": "x", "qux": True}
        pool = self.app.postgres_pool
        self.app.stop(self.io_loop, 2.0, 0.05)
        self.io_loop.start()  # the runner's shutdown callbacks close the pool
        assert pool.state.value == "closed"
        assert self.server.activity(database_of(self.db_url)) == []


async def test_connector_cursor_is_an_aiopg_cursor_with_dict_rows(postgres_db_url: str) -> None:
    """``connector.cursor`` runs statements on the connector's own connection (inside its
    transaction) with dict rows, and the connection comes back clean."""
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        async with pool.transaction() as tx:
            await tx.execute("CREATE TABLE t (id int)")
            cursor = tx.cursor
            assert cursor is tx.cursor  # one per connector
            await cursor.execute("INSERT INTO t VALUES (%s), (%s)", (1, 2))
            await cursor.execute("SELECT id FROM t ORDER BY id")
            assert await cursor.fetchall() == [{"id": 1}, {"id": 2}]
            own = await tx.execute("SELECT pg_backend_pid() AS pid, now() = now() AS same")
            assert own.row is not None
        committed = await pool.execute("SELECT count(*) AS n FROM t")
        assert committed.row == {"n": 2}
        assert pool.stats()["pool_available"] == 1
        status = await pool.execute(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        assert status.rows == []  # one connection: nothing else, nothing idle in transaction


async def test_cursor_mixes_with_the_connectors_own_statements(postgres_db_url: str) -> None:
    """The pool's statements leave nothing that blocks the cursor, and back."""
    async with (
        PoolManager(postgres_db_url, min_size=1, max_size=1) as pool,
        pool.connector() as connector,
    ):
        cursor = connector.cursor
        await connector.execute("SELECT 2")
        await cursor.execute("SELECT 3 AS x")
        assert await cursor.fetchone() == {"x": 3}
        assert (await connector.execute("SELECT 4 AS y")).row == {"y": 4}
        await connector.cursor.execute("SELECT 5 AS z")
        assert await connector.cursor.fetchall() == [{"z": 5}]


async def test_cursor_after_the_block_is_closed(postgres_db_url: str) -> None:
    """A cursor kept past its block cannot run anything on the connection, which now
    belongs to the pool (or to another request): it is closed, as upstream closed it."""
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE TABLE t (id int)")
        async with pool.connector() as connector:
            stale = connector.cursor
        with pytest.raises(psycopg2.InterfaceError, match="cursor already closed"):
            await stale.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(TransactionUsageError, match="block has ended"):
            _ = connector.cursor
        assert (await pool.execute("SELECT count(*) AS n FROM t")).row == {"n": 0}
        assert pool.stats()["pool_available"] == 1
