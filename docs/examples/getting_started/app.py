"""A first sprockets.http service on pgpool.

Run it with ``POSTGRES_URL=postgresql://user@host/db python app.py``; it serves on
port 8000 (``PORT`` changes that). Ctrl-C stops it and closes the pool.
"""

import asyncio
import json
from typing import Any

import sprockets.http
from sprockets.http import app
from tornado import web

import pgpool_sprockets
from pgpool_core import PoolClosedError, PoolUnavailableError

SCHEMA = """
CREATE TABLE IF NOT EXISTS fruit (
    name text PRIMARY KEY,
    stock int NOT NULL CHECK (stock >= 0)
)
"""


class Application(pgpool_sprockets.ApplicationMixin, app.Application):
    """The mixin opens the pool when the runner starts and closes it when it stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema_ready = asyncio.Event()
        self.runner_callbacks["on_start"].append(self.create_schema)

    async def create_schema(self, _app: Any, _io_loop: Any) -> None:
        await self.postgres_started.wait()  # the pool's own on_start callback is done
        # 78 once the pool refused its settings: the service is stopping, nothing to do.
        while self.postgres_pool is not None and not self.postgres_exit_status:
            try:
                await self.postgres_pool.execute(SCHEMA)
            except PoolUnavailableError:  # the database is down: try again once it is back
                await asyncio.sleep(1)
                continue
            except PoolClosedError:  # stopped before the database came back
                return
            self.schema_ready.set()
            return


class FruitHandler(pgpool_sprockets.RequestHandlerMixin, web.RequestHandler):
    async def post(self) -> None:
        body = json.loads(self.request.body)
        result = await self.postgres_execute(
            "INSERT INTO fruit (name, stock) VALUES (%(name)s, %(stock)s) RETURNING name, stock",
            {"name": body["name"], "stock": body["stock"]},
            "fruit-create",  # the metric name: timings and error logs carry it
        )
        self.set_status(201)
        self.write(result.row)


class OneFruitHandler(pgpool_sprockets.RequestHandlerMixin, web.RequestHandler):
    async def get(self, name: str) -> None:
        result = await self.postgres_execute(
            "SELECT name, stock FROM fruit WHERE name = %s", [name], "fruit-get", timeout=2.0
        )
        if result.row is None:
            raise web.HTTPError(404)
        self.write(result.row)


class TakeHandler(pgpool_sprockets.RequestHandlerMixin, web.RequestHandler):
    async def post(self, name: str) -> None:
        wanted = int(json.loads(self.request.body)["quantity"])
        # BEGIN ... COMMIT; any exception leaving the block (a 404 or 409 here) rolls back.
        async with self.postgres_transaction(timeout=5.0) as tx:
            found = await tx.execute(
                "SELECT stock FROM fruit WHERE name = %s FOR UPDATE", [name], "fruit-lock"
            )
            if found.row is None:
                raise web.HTTPError(404)
            if found.row["stock"] < wanted:
                raise web.HTTPError(409, reason="Not enough in stock")
            result = await tx.execute(
                "UPDATE fruit SET stock = stock - %s WHERE name = %s RETURNING name, stock",
                [wanted, name],
                "fruit-take",
            )
        self.write(result.row)


def make_app(**settings: Any) -> Application:
    return Application(
        [
            (r"/status", pgpool_sprockets.StatusRequestHandler),
            (r"/fruit", FruitHandler),
            (r"/fruit/(\w+)", OneFruitHandler),
            (r"/fruit/(\w+)/take", TakeHandler),
        ],
        service="fruit-shop",  # shown by /status
        **settings,  # postgres_url here, else the POSTGRES_URL environment variable
    )


if __name__ == "__main__":
    sprockets.http.run(
        make_app,
        settings={"number_of_procs": 1},  # one process, one pool
        log_config={
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "root": {"handlers": ["console"], "level": "INFO"},
        },
    )
