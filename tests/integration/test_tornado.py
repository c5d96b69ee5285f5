"""pgpool_tornado over real HTTP against a real PostgreSQL: results, error mapping,
hooks, status and recovery, each produced by a real database condition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import psycopg2
import pytest
from tornado import httpclient, httpserver, web

import pgpool_sprockets
import pgpool_tornado
from pgpool_core import PoolState
from pgpool_core.testing import PostgresServer
from pgpool_tornado import (
    ApplicationMixin,
    QueryResult,
    RequestHandlerMixin,
    StatusRequestHandler,
)

from db_support import database_of, wait_for_condition


class Application(ApplicationMixin, web.Application):
    pass


class Handler(RequestHandlerMixin, web.RequestHandler):
    def send(self, result: QueryResult | None) -> None:
        if result is None:  # swallowed by on_postgres_error, as in sprockets-postgres
            self.write({"result": None})
            return
        self.write({"row_count": result.row_count, "rows": result.rows, "row": result.row})


class ItemsHandler(Handler):
    async def get(self) -> None:
        self.send(
            await self.postgres_execute("SELECT id, name FROM items ORDER BY id", None, "list")
        )

    async def post(self) -> None:
        body = json.loads(self.request.body)
        self.send(
            await self.postgres_execute(
                "INSERT INTO items (id, name) VALUES (%(id)s, %(name)s)", body, "create"
            )
        )


class ItemHandler(Handler):
    async def get(self, item: str) -> None:
        self.send(await self.postgres_execute("SELECT * FROM items WHERE id = %s", [int(item)]))

    async def put(self, item: str) -> None:
        self.send(
            await self.postgres_execute(
                "UPDATE items SET name = %s WHERE id = %s", [self.get_argument("name"), int(item)]
            )
        )


class ChildHandler(Handler):
    async def post(self, item: str) -> None:
        self.send(await self.postgres_execute("INSERT INTO child VALUES (1, %s)", [int(item)]))


class DivideHandler(Handler):
    async def get(self) -> None:
        self.send(await self.postgres_execute("SELECT 1/0 AS x", metric_name="divide"))


class SleepHandler(Handler):
    async def get(self) -> None:
        self.send(await self.postgres_execute("SELECT pg_sleep(5)", timeout=0.2))


class HoldHandler(Handler):
    release: asyncio.Event

    async def get(self) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute("SELECT 1")
            await type(self).release.wait()
        self.write({"held": True})


class FailingTransactionHandler(Handler):
    async def post(self) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (100, 'rolled back')")
            await tx.execute("INSERT INTO items VALUES (100, 'duplicate')")


class CaughtErrorTransactionHandler(Handler):
    """Catches the duplicate inside the transaction and goes on (used to report success
    while PostgreSQL silently rolled everything back)."""

    async def post(self) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (200, 'kept?')")
            with contextlib.suppress(psycopg2.IntegrityError):
                await tx.execute("INSERT INTO items VALUES (200, 'duplicate')")
        self.write({"committed": True})


class SwallowingTransactionHandler(CaughtErrorTransactionHandler):
    """on_postgres_error returning None swallows statement errors, never the outcome."""

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return None


class SlowTransactionHandler(Handler):
    """Application work past the transaction's timeout before leaving the block."""

    async def post(self) -> None:
        async with self.postgres_transaction(timeout=0.2) as tx:
            await tx.execute("INSERT INTO items VALUES (300, 'late')")
            await asyncio.sleep(0.25)
        self.write({"committed": True})


class ProcHandler(Handler):
    async def get(self) -> None:
        self.send(await self.postgres_callproc("add_one", [41], "add-one"))


class AppNameHandler(Handler):
    async def get(self) -> None:
        self.send(await self.postgres_execute("SELECT current_setting('application_name') AS a"))


class SwallowHandler(DivideHandler):
    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return None


class TeapotHandler(DivideHandler):
    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return web.HTTPError(418, reason=f"custom for {metric_name}")


class InfluxHandler(Handler):
    timings: list[tuple[str, float]]

    class influxdb:
        @staticmethod
        def set_field(name: str, value: float) -> None:
            InfluxHandler.timings.append((name, value))

    async def get(self) -> None:
        self.send(await self.postgres_execute("SELECT 1 AS one", metric_name="influx-query"))


class MetricsHandler(Handler):
    timings: list[tuple[float, str]]

    def record_timing(self, duration: float, *path: str) -> None:
        MetricsHandler.timings.append((duration, *path))

    async def get(self) -> None:
        self.send(await self.postgres_execute("SELECT 1 AS one", metric_name="metrics-query"))


ROUTES: list[Any] = [
    (r"/items", ItemsHandler),
    (r"/items/(\d+)", ItemHandler),
    (r"/items/(\d+)/child", ChildHandler),
    (r"/divide", DivideHandler),
    (r"/sleep", SleepHandler),
    (r"/hold", HoldHandler),
    (r"/tx-fail", FailingTransactionHandler),
    (r"/tx-caught", CaughtErrorTransactionHandler),
    (r"/tx-swallowed", SwallowingTransactionHandler),
    (r"/tx-slow", SlowTransactionHandler),
    (r"/proc", ProcHandler),
    (r"/app-name", AppNameHandler),
    (r"/swallow", SwallowHandler),
    (r"/teapot", TeapotHandler),
    (r"/influx", InfluxHandler),
    (r"/metrics-timing", MetricsHandler),
    (r"/status", StatusRequestHandler),
    (r"/metrics", pgpool_tornado.MetricsRequestHandler),
]

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE child (id int PRIMARY KEY, item int NOT NULL REFERENCES items (id));
CREATE FUNCTION add_one(n int) RETURNS int LANGUAGE sql AS 'SELECT n + 1';
"""


class Client:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpclient.AsyncHTTPClient()

    async def __call__(
        self, path: str, method: str = "GET", body: Any = None
    ) -> httpclient.HTTPResponse:
        data = None if body is None else json.dumps(body)
        if data is None and method in ("POST", "PUT"):
            data = ""
        return await self.http.fetch(
            self.base + path, method=method, body=data, raise_error=False, request_timeout=20
        )


async def serve(app: web.Application) -> tuple[httpserver.HTTPServer, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def app_and_client(postgres_db_url: str) -> AsyncIterator[tuple[Application, Client]]:
    with psycopg2.connect(postgres_db_url) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    url = postgres_db_url + "?application_name=pgpool-http-test"
    app = Application(
        ROUTES,
        postgres_url=url,
        postgres_max_pool_size=3,
        postgres_acquire_timeout=0.3,
        service="demo",
        environment="test",
        version="1.2.3",
    )
    server, base = await serve(app)
    await app.postgres_start()
    try:
        yield app, Client(base)
    finally:
        await app.postgres_stop()
        server.stop()
        await server.close_all_connections()


def problem(response: httpclient.HTTPResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/problem+json"
    return dict(json.loads(response.body))


async def test_results_multi_row_no_row_and_no_result_set(
    app_and_client: tuple[Application, Client],
) -> None:
    """INSERT reports its count; list gives rows; a miss gives row None; UPDATE no rows."""
    _, call = app_and_client
    for item in ({"id": 1, "name": "a"}, {"id": 2, "name": "b"}):
        created = json.loads((await call("/items", "POST", item)).body)
        assert created == {"row_count": 1, "rows": [], "row": None}
    listed = json.loads((await call("/items")).body)
    assert listed["rows"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert listed["row"] is None
    assert json.loads((await call("/items/2")).body)["row"] == {"id": 2, "name": "b"}
    assert json.loads((await call("/items/9")).body) == {"row_count": 0, "rows": [], "row": None}
    updated = json.loads((await call("/items/1?name=z", "PUT")).body)
    assert (updated["row_count"], updated["rows"]) == (1, [])


@pytest.mark.parametrize("problem_details", [True, False], ids=["problemdetails", "plain"])
async def test_each_database_condition_maps_to_its_http_answer(
    app_and_client: tuple[Application, Client],
    monkeypatch: pytest.MonkeyPatch,
    problem_details: bool,
) -> None:
    """Duplicate key and FK violation -> 409, 1/0 -> 500 Database Error, timeout -> 500
    Query Timeout; the body has status, title and SQLSTATE and nothing of the query."""
    if not problem_details:
        monkeypatch.setattr("pgpool_tornado._mixins.problemdetails", None)
    _, call = app_and_client
    await call("/items", "POST", {"id": 1, "name": "secret-value"})
    cases = [
        (
            await call("/items", "POST", {"id": 1, "name": "secret-value"}),
            409,
            "Unique Violation",
            "23505",
        ),
        (await call("/items/7/child", "POST"), 409, "Foreign Key Violation", "23503"),
        (await call("/divide"), 500, "Database Error", "22012"),
        (await call("/sleep"), 500, "Query Timeout", None),
    ]
    for response, status, title, code in cases:
        assert response.code == status
        document = problem(response)
        assert (document["status"], document["title"]) == (status, title)
        assert document.get("sqlstate") == code
        body = response.body.decode()
        assert "secret-value" not in body
        assert "INSERT" not in body
        assert "Key (id)" not in body


async def test_pool_exhausted_is_503_database_busy_with_retry_after(
    app_and_client: tuple[Application, Client],
) -> None:
    """With every connection held, a request gets 503 Database Busy and Retry-After."""
    app, call = app_and_client
    HoldHandler.release = asyncio.Event()
    holders = [asyncio.create_task(call("/hold")) for _ in range(3)]
    assert app.postgres_pool is not None
    pool = app.postgres_pool
    await wait_for_condition(
        lambda: pool.stats()["pool_available"] == 0 and pool.stats()["pool_size"] == 3
    )
    busy = await call("/items")
    status = await call("/status")
    HoldHandler.release.set()
    assert [r.code for r in await asyncio.gather(*holders)] == [200, 200, 200]
    assert busy.code == 503
    assert problem(busy)["title"] == "Database Busy"
    assert busy.headers["Retry-After"] == "1"
    # The probe does not wait behind a saturated pool: busy but healthy is ok.
    assert status.code == 200
    assert json.loads(status.body)["status"] == "ok"


async def test_server_stopped_is_503_with_retry_after_then_recovers(
    app_and_client: tuple[Application, Client], restartable_server: PostgresServer
) -> None:
    """Server down: 503 with Retry-After (never a hang); back up: 200 again."""
    _, call = app_and_client
    assert (await call("/items")).code == 200
    await asyncio.to_thread(restartable_server.stop)
    try:
        down = await call("/items")
        status = await call("/status")
    finally:
        await asyncio.to_thread(restartable_server.start)
    assert down.code == 503
    assert down.headers["Retry-After"] == "1"
    assert problem(down)["title"] in ("Database Connection Error", "Database Unavailable")
    assert status.code == 503
    assert json.loads(status.body)["status"] == "unavailable"
    for _ in range(300):  # recovery: bounded by the pool's reconnect interval
        if (await call("/items")).code == 200:
            break
        await asyncio.sleep(0.01)
    assert (await call("/items")).code == 200


async def test_on_error_none_swallows_and_an_exception_is_raised(
    app_and_client: tuple[Application, Client],
) -> None:
    """on_postgres_error returning None swallows (postgres_execute returns None, as in
    sprockets-postgres); returning an exception raises that one."""
    _, call = app_and_client
    swallowed = await call("/swallow")
    assert swallowed.code == 200
    assert json.loads(swallowed.body) == {"result": None}
    teapot = await call("/teapot")
    assert (teapot.code, teapot.reason) == (418, "custom for divide")


async def test_timings_follow_influxdb_and_record_timing_conventions(
    app_and_client: tuple[Application, Client],
) -> None:
    """influxdb.set_field(metric, seconds) if present, else record_timing(seconds, metric)."""
    _, call = app_and_client
    InfluxHandler.timings, MetricsHandler.timings = [], []
    assert (await call("/influx")).code == 200
    assert (await call("/metrics-timing")).code == 200
    assert [name for name, _ in InfluxHandler.timings] == ["influx-query"]
    assert [path for _, path in MetricsHandler.timings] == ["metrics-query"]
    assert 0 < InfluxHandler.timings[0][1] < 5
    assert 0 < MetricsHandler.timings[0][0] < 5


async def test_failed_transaction_is_rolled_back(
    app_and_client: tuple[Application, Client], postgres_db_url: str
) -> None:
    """An error inside postgres_transaction rolls everything back (409 for the duplicate)."""
    _, call = app_and_client
    response = await call("/tx-fail", "POST")
    assert response.code == 409
    with psycopg2.connect(postgres_db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchone() == (0,)


def _item_ids(url: str) -> list[int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM items ORDER BY id")
        ids = [int(row[0]) for row in cur.fetchall()]
    conn.close()
    return ids


async def test_transaction_outcomes_over_http_are_what_the_server_did(
    app_and_client: tuple[Application, Client], postgres_db_url: str
) -> None:
    """A caught duplicate inside postgres_transaction answers 409 Unique Violation (mapped
    like the original error), one swallowed by on_postgres_error still fails, a block past
    its timeout answers 500 Query Timeout; none of their rows is on the server."""
    _, call = app_and_client
    caught = await call("/tx-caught", "POST")
    assert (caught.code, problem(caught)["title"], problem(caught)["sqlstate"]) == (
        409,
        "Unique Violation",
        "23505",
    )
    swallowed = await call("/tx-swallowed", "POST")
    assert swallowed.code == 500
    assert b"committed" not in swallowed.body
    slow = await call("/tx-slow", "POST")
    assert (slow.code, problem(slow)["title"]) == (500, "Query Timeout")
    assert _item_ids(postgres_db_url) == []


async def test_cancelled_postgres_stop_still_stops_the_pool(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """postgres_stop cancelled while a statement runs: the pool still stops, the statement
    is cancelled on the server, and a later postgres_stop completes and forgets the pool."""
    app = Application(ROUTES, postgres_url=postgres_db_url)
    await app.postgres_start()
    pool = app.postgres_pool
    assert pool is not None
    statement = asyncio.create_task(pool.execute("SELECT pg_sleep(10)"))
    db = database_of(postgres_db_url)
    await wait_for_condition(
        lambda: any(r["state"] == "active" for r in postgres_server.activity(db))
    )
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(app.postgres_stop(5), 0.3)
    assert app.postgres_pool is pool  # still known: a later stop joins it
    await app.postgres_stop(0.2)
    assert app.postgres_pool is None
    assert pool.state is PoolState.CLOSED
    with pytest.raises(Exception, match="pool stopped"):
        await statement
    await wait_for_condition(lambda: not postgres_server.activity(db), timeout=2.0)


async def test_callproc_and_application_name(
    app_and_client: tuple[Application, Client], postgres_server: PostgresServer
) -> None:
    """callproc calls the function; application_name from the URL reaches the server."""
    _, call = app_and_client
    assert json.loads((await call("/proc")).body)["row"] == {"add_one": 42}
    assert json.loads((await call("/app-name")).body)["row"] == {"a": "pgpool-http-test"}
    names = {row["application_name"] for row in postgres_server.activity()}
    assert "pgpool-http-test" in names


async def test_status_before_start_and_when_healthy(postgres_db_url: str) -> None:
    """Before start: 503 with available False and 0/0 (never raises); started: 200."""
    app = Application(ROUTES, postgres_url=postgres_db_url, service="demo", version="9")
    server, base = await serve(app)
    call = Client(base)
    try:
        assert await app.postgres_status() == {"available": False, "pool_size": 0, "pool_free": 0}
        assert not app.postgres_is_connected
        before = await call("/status")
        assert before.code == 503
        body = json.loads(before.body)
        assert body["status"] == "unavailable"
        assert body["postgres"]["pool_size"] == 0
        await app.postgres_start()
        after = await call("/status")
        assert after.code == 200
        assert json.loads(after.body) == {
            "application": "demo",
            "environment": "unknown",
            "postgres": {"pool_free": 1, "pool_size": 1, "pool_max": 10, "requests_waiting": 0},
            "status": "ok",
            "version": "9",
        }
        assert app.postgres_is_connected
    finally:
        await app.postgres_stop()
        server.stop()


async def test_recovers_after_pg_terminate_backend(
    app_and_client: tuple[Application, Client],
    postgres_server: PostgresServer,
    postgres_db_url: str,
) -> None:
    """Once the server has killed every backend, the next request still answers 200."""
    app, call = app_and_client
    assert (await call("/items")).code == 200
    database = database_of(postgres_db_url)
    killed = postgres_server.terminate_backends(database)
    assert killed >= 1
    # pg_terminate_backend only signals: wait until they are gone.
    await wait_for_condition(lambda: not postgres_server.activity(database))
    assert (await call("/items")).code == 200
    assert app.postgres_pool is not None
    assert app.postgres_pool.state is PoolState.OPEN


@pytest.mark.parametrize("adapter", [pgpool_tornado, pgpool_sprockets])
def test_public_names_match_sprockets_postgres(adapter: object) -> None:
    """The names sprockets-postgres users import exist in both adapters."""
    for name in (
        "ApplicationMixin",
        "RequestHandlerMixin",
        "StatusRequestHandler",
        "PostgresConnector",
        "QueryResult",
        "ConnectionException",
        "QueryParameters",
        "Timeout",
    ):
        assert hasattr(adapter, name), name


async def test_metrics_are_scraped_over_http(postgres_db_url: str) -> None:
    """With postgres_prometheus, /metrics serves the pool's numbers in the exposition
    format, moving with the load (no password in it)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    url = postgres_db_url.replace("postgres@", "postgres:not-a-secret@")
    app = Application(
        ROUTES, postgres_url=url, postgres_prometheus=True, prometheus_registry=registry
    )
    server, base = await serve(app)
    call = Client(base)
    await app.postgres_start(wait=True)
    try:
        for _ in range(3):
            assert (await call("/app-name")).code == 200
        scraped = await call("/metrics")
    finally:
        await app.postgres_stop()
        server.stop()
    assert scraped.code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain; version=")
    text = scraped.body.decode()
    assert 'pgpool_connections{pool="127.0.0.1:' in text
    assert "pgpool_operation_duration_seconds_count{" in text
    count = next(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pgpool_operation_duration_seconds_count{")
    )
    assert count == 3
    assert "not-a-secret" not in text
