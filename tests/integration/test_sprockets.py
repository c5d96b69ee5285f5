"""pgpool_sprockets in a sprockets.http application (SprocketsHttpTestCase) against a real
PostgreSQL: runner callbacks open and close the pool; misconfiguration stops the app
once; a database down at boot only means 503 until it is back."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sprockets.http import app as sprockets_app
from sprockets.http import testing
from tornado import web

import pgpool_sprockets
from pgpool_core.testing import PostgresServer, TcpProxy
from pgpool_core.testing._server import replace_url


class Application(pgpool_sprockets.ApplicationMixin, sprockets_app.Application):
    pass


class CountHandler(pgpool_sprockets.RequestHandlerMixin, web.RequestHandler):
    async def get(self) -> None:
        result = await self.postgres_execute("SELECT count(*) AS n FROM pg_class", metric_name="n")
        self.write(result.row or {})


ROUTES: list[Any] = [("/count", CountHandler), ("/status", pgpool_sprockets.StatusRequestHandler)]


class SprocketsCase(testing.SprocketsHttpTestCase):
    settings: dict[str, Any]

    @pytest.fixture(autouse=True)
    def _database(self, postgres_db_url: str, postgres_server: PostgresServer) -> None:
        self.db_url = postgres_db_url
        self.server = postgres_server

    def app_settings(self) -> dict[str, Any]:
        return {"postgres_url": self.db_url, "service": "demo"}

    def get_app(self) -> Application:
        self.app = Application(ROUTES, **self.app_settings())
        self.stop_calls: list[Any] = []
        self.real_stop = self.app.stop
        self.app.stop = lambda *args, **kwargs: self.stop_calls.append(args)  # type: ignore[method-assign]
        return self.app

    def wait_started(self) -> None:
        # on_start callbacks are fire-and-forget; the mixin signals when it is done.
        self.io_loop.run_sync(self.app.postgres_started.wait, timeout=10)

    def tearDown(self) -> None:
        self.app.stop = self.real_stop  # type: ignore[method-assign]
        super().tearDown()


class TestLifecycle(SprocketsCase):
    def test_pool_opens_on_start_and_closes_on_shutdown(self) -> None:
        """on_start opens the pool; requests work; shutdown closes it with no backend left."""
        self.wait_started()
        response = self.fetch("/count")
        assert response.code == 200
        assert json.loads(response.body)["n"] > 0
        status = json.loads(self.fetch("/status").body)
        assert status["status"] == "ok"
        assert status["application"] == "demo"
        assert self.stop_calls == []
        pool = self.app.postgres_pool
        assert pool is not None
        self.app.stop = self.real_stop  # type: ignore[method-assign]
        self.app.stop(self.io_loop, 2.0, 0.05)
        self.io_loop.start()  # runs the shutdown callbacks, then stops
        assert self.app.postgres_pool is None
        assert pool.state.value == "closed"
        database = self.db_url.rsplit("/", 1)[1]
        assert self.server.activity(database) == []


class TestMissingUrl(SprocketsCase):
    def app_settings(self) -> dict[str, Any]:
        return {"service": "demo"}

    def test_missing_url_logs_critical_and_stops_once(self) -> None:
        """No postgres_url: CRITICAL naming the setting, and stop() exactly once."""
        with self.assertLogs("sprockets-postgres", "CRITICAL") as logs:
            self.wait_started()
        assert "postgres_url" in logs.output[0]
        assert len(self.stop_calls) == 1


class TestBadSetting(SprocketsCase):
    def app_settings(self) -> dict[str, Any]:
        return {"postgres_url": self.db_url, "postgres_max_pool_size": "lots"}

    def test_bad_setting_logs_critical_and_stops_once(self) -> None:
        """A bad setting: CRITICAL naming key and value, stop() once."""
        with self.assertLogs("sprockets-postgres", "CRITICAL") as logs:
            self.wait_started()
        assert "postgres_max_pool_size" in logs.output[0]
        assert "'lots'" in logs.output[0]
        assert len(self.stop_calls) == 1


class TestWrongPassword(SprocketsCase):
    def app_settings(self) -> dict[str, Any]:
        with self.server.connect() as conn, conn.cursor() as cur:
            cur.execute("DROP ROLE IF EXISTS pgpool_sprockets_app")
            cur.execute("CREATE ROLE pgpool_sprockets_app LOGIN PASSWORD 'right-one'")
        url = replace_url(self.db_url, user="pgpool_sprockets_app", password="wrong-one")
        return {"postgres_url": url}

    def test_authentication_failure_logs_critical_and_stops_once(self) -> None:
        """The server refusing the password is a configuration error: CRITICAL, stop once,
        and the password is not in the log."""
        with self.assertLogs("sprockets-postgres", "CRITICAL") as logs:
            self.wait_started()
        assert "password authentication failed" in logs.output[0]
        assert "wrong-one" not in "".join(logs.output)
        assert len(self.stop_calls) == 1


class TestDatabaseDownAtBoot(SprocketsCase):
    def setUp(self) -> None:
        port = int(self.db_url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.proxy = TcpProxy("127.0.0.1", port).start()
        self.proxy.refuse()
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        self.proxy.close()

    def app_settings(self) -> dict[str, Any]:
        return {"postgres_url": self.proxy.rewrite(self.db_url), "postgres_acquire_timeout": 2}

    def test_keeps_running_with_503_until_the_database_is_back(self) -> None:
        """Unreachable at boot: WARNING, no stop; 503 + Retry-After; 200 once it is back."""
        with self.assertLogs("sprockets-postgres", "WARNING") as logs:
            self.wait_started()
        assert "unavailable at start" in logs.output[0]
        assert self.stop_calls == []
        down = self.fetch("/count")
        assert down.code == 503
        assert down.headers["Retry-After"] == "1"
        assert self.fetch("/status").code == 503
        self.proxy.heal()
        healed = time.monotonic()
        codes = []
        while time.monotonic() - healed < 3:  # bounded by the reconnect interval (0.5 s)
            codes.append(self.fetch("/count").code)
            if codes[-1] == 200:
                break
        assert codes[-1] == 200
        assert time.monotonic() - healed < 1.5
        assert self.fetch("/status").code == 200
