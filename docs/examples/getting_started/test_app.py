"""The first tests: each starts the service against a fresh database of the pgpool
plugin (``postgres_db_url``) and talks to it over real HTTP."""

import json
from collections.abc import AsyncIterator

import app
import pytest
import pytest_asyncio
import tornado_app
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port


class Client:
    """Requests to the service under test; never raises for an error status."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def __call__(self, method: str, path: str, body: object = None) -> HTTPResponse:
        return await AsyncHTTPClient().fetch(
            self.base + path,
            method=method,
            body=None if body is None else json.dumps(body),
            raise_error=False,
        )


@pytest_asyncio.fixture
async def shop(postgres_db_url: str) -> AsyncIterator[Client]:
    """The sprockets.http service of app.py, started as its runner starts it."""
    application = app.make_app(postgres_url=postgres_db_url)
    application.start(IOLoop.current())  # runs the on_start callbacks: the pool opens
    await application.schema_ready.wait()
    sock, port = bind_unused_port()
    server = HTTPServer(application)
    server.add_sockets([sock])
    yield Client(port)
    server.stop()
    await application.postgres_stop()  # what the runner's shutdown callback does


@pytest.mark.asyncio
async def test_create_then_read(shop: Client) -> None:
    created = await shop("POST", "/fruit", {"name": "apple", "stock": 3})
    assert created.code == 201
    assert json.loads(created.body) == {"name": "apple", "stock": 3}
    found = await shop("GET", "/fruit/apple")
    assert (found.code, json.loads(found.body)) == (200, {"name": "apple", "stock": 3})
    assert (await shop("GET", "/fruit/pear")).code == 404


@pytest.mark.asyncio
async def test_take_commits_or_rolls_back_as_a_whole(shop: Client) -> None:
    await shop("POST", "/fruit", {"name": "apple", "stock": 3})
    taken = await shop("POST", "/fruit/apple/take", {"quantity": 2})
    assert (taken.code, json.loads(taken.body)) == (200, {"name": "apple", "stock": 1})
    refused = await shop("POST", "/fruit/apple/take", {"quantity": 5})
    assert refused.code == 409  # raised inside the transaction: rolled back
    assert json.loads((await shop("GET", "/fruit/apple")).body)["stock"] == 1


@pytest.mark.asyncio
async def test_a_duplicate_is_a_409_problem_document(shop: Client) -> None:
    await shop("POST", "/fruit", {"name": "apple", "stock": 3})
    again = await shop("POST", "/fruit", {"name": "apple", "stock": 1})
    assert again.code == 409
    assert again.headers["Content-Type"] == "application/problem+json"
    assert json.loads(again.body) == {
        "status": 409,
        "title": "Unique Violation",
        "sqlstate": "23505",
    }


@pytest.mark.asyncio
async def test_status(shop: Client) -> None:
    response = await shop("GET", "/status")
    status = json.loads(response.body)
    assert (response.code, status["status"], status["application"]) == (200, "ok", "fruit-shop")
    assert status["postgres"]["pool_size"] >= 1


@pytest.mark.asyncio
async def test_the_plain_tornado_app(postgres_db_url: str) -> None:
    application = tornado_app.make_app(postgres_url=postgres_db_url)
    await application.postgres_start()
    sock, port = bind_unused_port()
    server = HTTPServer(application)
    server.add_sockets([sock])
    try:
        response = await Client(port)("GET", "/clock")
        assert response.code == 200
        assert json.loads(response.body)["database"] == postgres_db_url.rsplit("/", 1)[1]
    finally:
        server.stop()
        await application.postgres_stop()
