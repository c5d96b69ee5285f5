"""The pgpool demo: a sprockets.http service with ``/status``, a small ``/items`` API and
``/metrics``.

Run it with ``nox -s demo`` (or ``python demo/service.py``). It serves on
http://127.0.0.1:8000 (``PORT`` overrides the port) against ``POSTGRES_URL`` when set,
else against a throwaway PostgreSQL started for it and removed when it stops (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import sys
from typing import Any

from sprockets.http import app as sprockets_app
from sprockets.http import runner
from tornado import httpserver, web

import pgpool_sprockets

LOGGER = logging.getLogger("demo")
HOST = "127.0.0.1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


class Application(pgpool_sprockets.ApplicationMixin, sprockets_app.Application):
    """The pool opens on start (then the schema is created) and closes on shutdown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runner_callbacks["on_start"].append(self._create_schema)

    async def _create_schema(self, _app: Any, _loop: Any) -> None:
        await self.postgres_started.wait()  # on_start callbacks run concurrently
        if self.postgres_pool is not None:
            try:
                await self.postgres_pool.execute(SCHEMA)
            except Exception as exc:  # the database may still be coming up
                LOGGER.warning("schema not created yet: %s", exc)
            else:
                LOGGER.info("schema ready")


class JSONHandler(pgpool_sprockets.RequestHandlerMixin, web.RequestHandler):
    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, reason="Body must be JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise web.HTTPError(400, reason='Body must be {"name": "<text>"}')
        return data

    def send(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, default=str))


class ItemsHandler(JSONHandler):
    async def get(self) -> None:
        result = await self.postgres_execute(
            "SELECT id, name, created_at FROM items ORDER BY id", metric_name="items-list"
        )
        self.send(result.rows)

    async def post(self) -> None:
        result = await self.postgres_execute(
            "INSERT INTO items (name) VALUES (%(name)s) RETURNING id, name, created_at",
            {"name": self.body()["name"]},
            "items-create",
        )
        self.set_header("Location", f"/items/{result.row['id']}")  # type: ignore[index]
        self.send(result.row, 201)


class ItemHandler(JSONHandler):
    async def get(self, item_id: str) -> None:
        result = await self.postgres_execute(
            "SELECT id, name, created_at FROM items WHERE id = %s", [int(item_id)], "items-get"
        )
        if result.row is None:
            raise web.HTTPError(404)
        self.send(result.row)

    async def put(self, item_id: str) -> None:
        name = self.body()["name"]
        async with self.postgres_transaction() as tx:
            found = await tx.execute(
                "SELECT id FROM items WHERE id = %s FOR UPDATE", [int(item_id)], "items-lock"
            )
            if found.row is None:
                raise web.HTTPError(404)
            result = await tx.execute(
                "UPDATE items SET name = %s WHERE id = %s RETURNING id, name, created_at",
                [name, int(item_id)],
                "items-update",
            )
        self.send(result.row)

    async def delete(self, item_id: str) -> None:
        result = await self.postgres_execute(
            "DELETE FROM items WHERE id = %s", [int(item_id)], "items-delete"
        )
        if result.row_count == 0:
            raise web.HTTPError(404)
        self.set_status(204)


def make_app(**settings: Any) -> Application:
    return Application(
        [
            (r"/status", pgpool_sprockets.StatusRequestHandler),
            (r"/livez", pgpool_sprockets.LivenessRequestHandler),
            (r"/readyz", pgpool_sprockets.ReadinessRequestHandler),
            (r"/startupz", pgpool_sprockets.StartupRequestHandler),
            (r"/metrics", pgpool_sprockets.MetricsRequestHandler),
            (r"/items", ItemsHandler),
            (r"/items/(\d+)", ItemHandler),
        ],
        service="pgpool-demo",
        environment=os.environ.get("ENVIRONMENT", "development"),
        version="0.1.0",
        postgres_prometheus=True,
        **settings,
    )


class LoopbackRunner(runner.Runner):  # type: ignore[misc]
    """sprockets.http's runner, listening on 127.0.0.1 only, in one process."""

    def start_server(self, port_number: int, number_of_procs: int = 0) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.server = httpserver.HTTPServer(self.application.tornado_application)
        self.server.listen(port_number, address=HOST)


def use_uvloop() -> str:
    """Run on uvloop when it is installed (``pgpool[uvloop]``); say which loop runs."""
    try:
        import uvloop
    except ImportError:
        return "asyncio's event loop"
    # The runner makes its loop through the policy; uvloop.run() cannot reach it.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    port = int(os.environ.get("PORT", "8000"))
    throwaway = None
    settings: dict[str, Any] = {}
    if not os.environ.get("POSTGRES_URL"):
        from pgpool_core.testing import start_first_available

        throwaway, problems = start_first_available()
        if throwaway is None:
            LOGGER.error("no PostgreSQL available: %s; set POSTGRES_URL", "; ".join(problems))
            return 1
        LOGGER.info(
            "throwaway PostgreSQL %s (%s) in %s",
            throwaway.version,
            throwaway.source.value,
            throwaway.directory,
        )
        settings["postgres_url"] = throwaway.url
    try:
        app = make_app(**settings)
        LOGGER.info("serving on http://%s:%d on %s (Ctrl-C stops)", HOST, port, use_uvloop())
        LoopbackRunner(app).run(port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        LOGGER.error("port %d on %s is already in use; set PORT to another port", port, HOST)
        return 1
    finally:
        if throwaway is not None:
            throwaway.close()
            LOGGER.info("throwaway PostgreSQL removed")
    LOGGER.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
