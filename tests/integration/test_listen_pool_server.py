"""pool.listen() and the Tornado adapter's postgres_listen() on a real server: delivery,
a server restart (notifications sent after it arrive, one missed-window event), the
listener closed with the pool/app (no backend left in pg_stat_activity)."""

from __future__ import annotations

import time

import pytest
from sprockets.http import app as sprockets_app
from sprockets.http import testing as sprockets_testing
from tornado import web

import pgpool_sprockets
import pgpool_tornado
from pgpool_core import Notification, NotificationsMissed, PoolManager
from pgpool_core.testing import PostgresServer

from db_support import database_of, wait_for_condition

Event = Notification | NotificationsMissed


def listeners(server: PostgresServer, database: str) -> list[dict[str, object]]:
    return [a for a in server.activity(database) if str(a["query"] or "").startswith("LISTEN")]


async def test_pool_listener_survives_a_server_restart(
    restartable_server: PostgresServer, postgres_db_url: str
) -> None:
    database = database_of(postgres_db_url)
    events: list[Event] = []
    async with PoolManager(postgres_db_url, min_size=1) as pool:
        listener = await pool.listen("jobs", on_notify=events.append, on_missed=events.append)
        await wait_for_condition(lambda: listener.connected)
        await pool.notify("jobs", "before")
        await wait_for_condition(lambda: len(events) == 1)
        restartable_server.restart()
        restarted = time.monotonic()
        await wait_for_condition(
            lambda: any(isinstance(e, NotificationsMissed) for e in events), timeout=10
        )
        recovered = time.monotonic() - restarted
        await pool.execute("SELECT 1", idempotent=True)  # the pool's own connection is back too
        await pool.notify("jobs", "after")
        await wait_for_condition(lambda: len(events) == 3)
        print(f"\nlistener LISTENing again {recovered:.3f} s after the restart completed")
        assert [type(e).__name__ for e in events] == [
            "Notification",
            "NotificationsMissed",
            "Notification",
        ]
        assert [e.payload for e in events if isinstance(e, Notification)] == ["before", "after"]
        assert len(listeners(restartable_server, database)) == 1
    # stop() closed it: no listener backend left.
    await wait_for_condition(lambda: not listeners(restartable_server, database))


class App(pgpool_tornado.ApplicationMixin, web.Application):
    pass


async def test_tornado_app_routes_notifications_to_a_callback(
    postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    database = database_of(postgres_db_url)
    app = App([], postgres_url=postgres_db_url)
    await app.postgres_start(wait=True)
    fanned_out: list[str] = []
    try:
        await app.postgres_listen("chat", on_notify=lambda n: fanned_out.append(n.payload))
        assert app.postgres_pool is not None
        await app.postgres_pool.notify("chat", "hello")
        await wait_for_condition(lambda: fanned_out == ["hello"])
        assert len(listeners(postgres_server, database)) == 1
    finally:
        await app.postgres_stop()
    await wait_for_condition(lambda: not listeners(postgres_server, database))


class SprocketsApp(pgpool_sprockets.ApplicationMixin, sprockets_app.Application):
    pass


class TestSprocketsListener(sprockets_testing.SprocketsHttpTestCase):
    """``postgres_listen`` in the settings: listening starts with the application and
    ends with it."""

    @pytest.fixture(autouse=True)
    def _database(self, postgres_db_url: str, postgres_server: PostgresServer) -> None:
        self.db_url = postgres_db_url
        self.server = postgres_server
        self.heard: list[str] = []

    def get_app(self) -> SprocketsApp:
        self.app = SprocketsApp(
            [],
            postgres_url=self.db_url,
            postgres_listen={"chat": lambda n: self.heard.append(n.payload)},
        )
        return self.app

    def test_listening_starts_and_stops_with_the_app(self) -> None:
        self.io_loop.run_sync(self.app.postgres_started.wait, timeout=10)
        database = database_of(self.db_url)
        pool = self.app.postgres_pool
        assert pool is not None

        async def notify_and_hear() -> None:
            await wait_for_condition(lambda: len(listeners(self.server, database)) == 1)
            await pool.notify("chat", "hi")
            await wait_for_condition(lambda: self.heard == ["hi"])

        self.io_loop.run_sync(notify_and_hear, timeout=10)
        self.app.stop(self.io_loop, self.shutdown_limit, self.wait_timeout)
        self.io_loop.start()
        assert not listeners(self.server, database)
