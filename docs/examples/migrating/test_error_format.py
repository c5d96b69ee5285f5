"""How database errors answer: pgpool's problem+json (the default), sprockets-postgres
1.8.1's answers (``postgres_error_format = "sprockets-postgres"``), and a handler's own
``on_postgres_error``, over real HTTP against a fresh database of the pgpool plugin."""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg2.errors
import pytest
import pytest_asyncio
from sprockets.http import app
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port

import pgpool_sprockets as sprockets_postgres  # was: import sprockets_postgres

#: What the server answers for a serialization failure (SQLSTATE 40001), raised on demand.
CONFLICT = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"


class Application(sprockets_postgres.ApplicationMixin, app.Application):
    pass


class FruitHandler(sprockets_postgres.RequestHandlerMixin, web.RequestHandler):
    async def post(self, name: str) -> None:
        await self.postgres_execute("INSERT INTO fruit VALUES (%s)", [name], "fruit-create")
        self.set_status(201)


class ConflictHandler(sprockets_postgres.RequestHandlerMixin, web.RequestHandler):
    async def post(self) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute(CONFLICT, metric_name="conflict")


class IdempotentFruitHandler(FruitHandler):
    """An override as written for sprockets-postgres: it keeps working unchanged."""

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        if isinstance(exc, psycopg2.errors.UniqueViolation):
            return None  # swallowed: postgres_execute returns None
        return super().on_postgres_error(metric_name, exc)

    async def post(self, name: str) -> None:
        created = await self.postgres_execute(
            "INSERT INTO fruit VALUES (%s)", [name], "fruit-create"
        )
        self.set_status(200 if created is None else 201)


Post = Callable[[str], Awaitable[HTTPResponse]]
Serve = Callable[..., Awaitable[Post]]


@pytest_asyncio.fixture
async def serve(postgres_db_url: str) -> AsyncIterator[Serve]:
    """``post = await serve(**settings)``: the application on a port of its own."""
    started: list[tuple[HTTPServer, Application]] = []

    async def start(**settings: Any) -> Post:
        application = Application(
            [
                (r"/fruit/(\w+)", FruitHandler),
                (r"/idempotent/(\w+)", IdempotentFruitHandler),
                (r"/conflict", ConflictHandler),
            ],
            postgres_url=postgres_db_url,
            **settings,
        )
        application.start(IOLoop.current())  # the runner's on_start callbacks
        await application.postgres_started.wait()
        await application.postgres_pool.execute(
            "CREATE TABLE IF NOT EXISTS fruit (name text UNIQUE)"
        )
        sock, port = bind_unused_port()
        server = HTTPServer(application)
        server.add_sockets([sock])
        started.append((server, application))

        def post(path: str) -> Awaitable[HTTPResponse]:
            url = f"http://127.0.0.1:{port}{path}"
            return AsyncHTTPClient().fetch(url, method="POST", body="", raise_error=False)

        return post

    yield start
    for server, application in started:
        server.stop()
        await application.postgres_stop()


@pytest.mark.asyncio
async def test_problem_json_by_default(serve: Serve) -> None:
    post = await serve()
    assert (await post("/fruit/apple")).code == 201
    duplicate = await post("/fruit/apple")
    assert duplicate.code == 409
    assert duplicate.headers["Content-Type"] == "application/problem+json"
    assert "Retry-After" not in duplicate.headers
    body = {"status": 409, "title": "Unique Violation", "sqlstate": "23505"}
    assert json.loads(duplicate.body) == body

    conflict = await post("/conflict")  # sprockets-postgres answered 503 here
    assert (conflict.code, conflict.headers["Retry-After"]) == (409, "1")
    body = {"status": 409, "title": "Transaction Conflict", "sqlstate": "40001"}
    assert json.loads(conflict.body) == body


@pytest.mark.asyncio
async def test_sprockets_postgres_answers(serve: Serve) -> None:
    post = await serve(postgres_error_format="sprockets-postgres")
    assert (await post("/fruit/apple")).code == 201
    duplicate = await post("/fruit/apple")
    assert duplicate.code == 409
    assert duplicate.headers["Content-Type"].startswith("text/html")  # Tornado's error page

    conflict = await post("/conflict")  # an OperationalError to sprockets-postgres
    assert conflict.code == 503
    assert conflict.headers["Content-Type"].startswith("text/html")
    assert "Retry-After" not in conflict.headers


@pytest.mark.asyncio
async def test_an_override_of_on_postgres_error(serve: Serve) -> None:
    post = await serve()
    assert (await post("/idempotent/apple")).code == 201
    assert (await post("/idempotent/apple")).code == 200  # swallowed, as upstream
