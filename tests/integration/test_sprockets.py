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

    #: PostgreSQL refused the configuration: the shutdown ends with SystemExit(78).
    misconfigured = False

    def tearDown(self) -> None:
        self.app.stop = self.real_stop  # type: ignore[method-assign]
        if not self.misconfigured:
            super().tearDown()
            return
        self.app.stop(self.io_loop, self.shutdown_limit, self.wait_timeout)
        with pytest.raises(SystemExit) as exited:
            self.io_loop.start()
        assert exited.value.code == pgpool_sprockets.EXIT_MISCONFIGURED
        assert self.app.postgres_pool is None  # the shutdown ran before the exit
        super(testing.SprocketsHttpTestCase, self).tearDown()


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
    misconfigured = True

    def app_settings(self) -> dict[str, Any]:
        return {"service": "demo"}

    def test_missing_url_logs_critical_and_stops_once(self) -> None:
        """No postgres_url: CRITICAL naming the setting, and stop() exactly once."""
        with self.assertLogs("sprockets-postgres", "CRITICAL") as logs:
            self.wait_started()
        assert "postgres_url" in logs.output[0]
        assert len(self.stop_calls) == 1


class TestBadSetting(SprocketsCase):
    misconfigured = True

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
    misconfigured = True

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


APP_SCRIPT = """
import logging, sys
import sprockets.http
from sprockets.http import app
import pgpool_sprockets

class Application(pgpool_sprockets.ApplicationMixin, app.Application):
    pass

def make_app(**settings):
    return Application([], **settings)

sprockets.http.run(
    make_app,
    settings={"postgres_url": sys.argv[1], "number_of_procs": 1, "port": 0},
    log_config={"version": 1, "disable_existing_loggers": False,
                "handlers": {"err": {"class": "logging.StreamHandler"}},
                "root": {"handlers": ["err"], "level": "INFO"}},
)
print("run() returned", flush=True)
"""


def test_refused_configuration_exits_non_zero(
    postgres_db_url: str, postgres_server: PostgresServer, tmp_path: Any
) -> None:
    """A sprockets.http service whose database refuses the password logs CRITICAL, shuts
    down cleanly, and the process exits 78 (EX_CONFIG), so a supervisor sees the failure."""
    import subprocess
    import sys

    with postgres_server.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS pgpool_exit_app")
        cur.execute("CREATE ROLE pgpool_exit_app LOGIN PASSWORD 'right-one'")
    url = replace_url(postgres_db_url, user="pgpool_exit_app", password="wrong-one")
    script = tmp_path / "service.py"
    script.write_text(APP_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == pgpool_sprockets.EXIT_MISCONFIGURED == 78, done.stderr
    assert "password authentication failed" in done.stderr
    assert "PostgreSQL is misconfigured, stopping" in done.stderr
    assert "run() returned" not in done.stdout
    assert "wrong-one" not in done.stderr + done.stdout
    assert [r for r in postgres_server.activity() if r["usename"] == "pgpool_exit_app"] == []
