"""The Tornado and sprockets.http adapters over the fake driver: error mapping, hooks,
write_error and the status handler, through real HTTP on a loopback socket (127.0.0.1
only), with no database. What reached the "server" is checked on the fake connections."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, cast
from unittest.mock import Mock

import problemdetails
import psycopg2
import psycopg2.errors
import pytest
from pytest_socket import enable_socket, socket_allow_hosts
from sprockets.http import app as sprockets_app
from tornado import escape, httpclient, httpserver, httputil, netutil, web

import pgpool_sprockets
import pgpool_tornado
import pgpool_tornado._mixins
from pgpool_core import (
    ErrorKind,
    PoolClosedError,
    PoolManager,
    PoolState,
    PoolUnavailableError,
    PostgresConnector,
    QueryResult,
    SettingsError,
)
from pgpool_core.testing import FakeConnector
from pgpool_tornado import (
    ERROR_RESPONSES,
    SPROCKETS_POSTGRES_RESPONSES,
    ApplicationMixin,
    ErrorResponse,
    PostgresHTTPError,
    RequestHandlerMixin,
    StatusRequestHandler,
)

from fake_support import URL

#: Everything a test puts in SQL, parameters and server messages carries this marker:
#: no response body may contain it.
SECRET = "secret"
SECRET_MESSAGE = "secret-message: Key (id)=(secret-param) already exists"


# -- loopback only ---------------------------------------------------------------------------


def _no_lookup(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("a test tried to resolve a host name")


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP sockets again, but connect() only to 127.0.0.1 and no name lookups at all
    (autouse fixtures such as conftest's socket block run before this one)."""
    enable_socket()
    socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    monkeypatch.setattr(socket, "getaddrinfo", _no_lookup)
    monkeypatch.setattr(socket, "gethostbyname", _no_lookup)


class LoopbackResolver(netutil.Resolver):
    """Resolves 127.0.0.1 to itself without getaddrinfo (nor an executor thread)."""

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        assert host == "127.0.0.1", host
        return [(socket.AF_INET, (host, port))]


# -- the application -----------------------------------------------------------------------


class Application(ApplicationMixin, web.Application):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (metric_name, exception type name) seen by RecordingHandler.on_postgres_error.
        self.errors_seen: list[tuple[str, str]] = []
        #: (hook, metric_name, seconds) from the timing conventions.
        self.timings: list[tuple[str, str, float]] = []
        #: What CommitThenPublishHandler published after its commit, and its hang-ups.
        self.published: list[str] = []
        self.hung_up: list[bool] = []


def statement_for(tag: str) -> str:
    return f"SELECT * FROM secret_table_{tag} WHERE v = %s"


class Handler(RequestHandlerMixin, web.RequestHandler):
    def send(self, result: QueryResult | None) -> None:
        if result is None:  # swallowed by on_postgres_error
            self.write({"result": None})
            return
        self.write({"row_count": result.row_count, "rows": result.rows, "row": result.row})


class RunHandler(Handler):
    """One statement per request, tagged by the path; ``?timeout=`` bounds it."""

    async def run(self, tag: str) -> QueryResult | None:
        timeout = self.get_argument("timeout", None)
        return await self.postgres_execute(
            statement_for(tag),
            ["secret-param"],
            tag,
            timeout=None if timeout is None else float(timeout),
        )

    async def get(self, tag: str) -> None:
        self.send(await self.run(tag))


class ErrorWriterRunHandler(RunHandler, problemdetails.ErrorWriter):  # type: ignore[misc]
    """The same, with tornado-problem-details' ErrorWriter after the mixin."""


class SwallowHandler(RunHandler):
    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return None


class Replacement(Exception):
    """What ReplaceHandler's on_postgres_error returns instead of the failure."""


class ReplaceHandler(RunHandler):
    """Reports what the raised replacement was chained from."""

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return Replacement(metric_name)

    async def get(self, tag: str) -> None:
        try:
            await self.run(tag)
        except Replacement as raised:
            cause = raised.__cause__
            self.write(
                {
                    "metric": str(raised),
                    "cause": None if cause is None else type(cause).__name__,
                }
            )


class PassThroughHandler(RunHandler):
    """on_postgres_error returning the failure itself: it is raised unchanged."""

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        self.hooked = exc
        return exc

    async def get(self, tag: str) -> None:
        try:
            await self.run(tag)
        except Exception as raised:
            self.write(
                {
                    "type": type(raised).__name__,
                    "same": raised is self.hooked,
                    "cause": None if raised.__cause__ is None else type(raised.__cause__).__name__,
                }
            )


class UpstreamStyleHandler(RunHandler):
    """An override written for sprockets-postgres: it calls super() for its side effect
    and returns nothing, relying on upstream's on_postgres_error raising."""

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        self.application.errors_seen.append((metric_name, type(exc).__name__))
        super().on_postgres_error(metric_name, exc)
        return None


class TeapotHandler(RunHandler):
    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return web.HTTPError(418, reason=f"custom for {metric_name}")


class RecordingHandler(RunHandler):
    """The default mapping, recording what reached the hook."""

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        self.application.errors_seen.append((metric_name, type(exc).__name__))
        return super().on_postgres_error(metric_name, exc)


class RecordingTxHandler(RecordingHandler):
    async def get(self, tag: str) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute(statement_for(tag), ["secret-param"], tag)
        self.write({"committed": True})


class _Influx:
    def __init__(self, sink: list[tuple[str, str, float]]) -> None:
        self.sink = sink

    def set_field(self, name: str, value: float) -> None:
        self.sink.append(("set_field", name, value))


class InfluxHandler(RunHandler):
    @property
    def influxdb(self) -> _Influx:
        return _Influx(self.application.timings)


class RecordTimingHandler(RunHandler):
    def record_timing(self, duration: float, *path: str) -> None:
        self.application.timings.append(("record_timing", ".".join(path), duration))


class RecordTimingTxHandler(RecordTimingHandler):
    async def get(self, tag: str) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute(statement_for(tag), ["secret-param"], "tx-first")
            await tx.execute(statement_for(tag), ["secret-param"], "tx-second")
        self.write({"committed": True})


class TxHandler(Handler):
    """``postgres_transaction`` with one insert, then what ``mode`` says."""

    async def post(self, mode: str) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute("INSERT INTO secret_table VALUES (%s)", ["secret-param"], "tx-insert")
            if mode == "caught":
                # The mapped error, caught: the transaction is aborted all the same.
                with contextlib.suppress(web.HTTPError):
                    await tx.execute("INSERT INTO secret_dup VALUES (%s)", ["secret-param"], "dup")
            elif mode == "uncaught":
                await tx.execute("INSERT INTO secret_dup VALUES (%s)", ["secret-param"], "dup")
            elif mode == "rollback":
                await tx.execute("ROLLBACK")
        self.write({"committed": True})


class SwallowTxHandler(TxHandler):
    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        return None


class RaisingHandler(RequestHandlerMixin, web.RequestHandler):
    """Raises what the path names, to exercise write_error directly."""

    async def get(self, what: str) -> None:
        if what == "value-error":
            raise ValueError("secret-message")
        if what == "not-found":
            raise web.HTTPError(404)
        if what == "send-error":
            self.send_error(418)
            return
        if what == "postgres-http-error":
            raise PostgresHTTPError(ERROR_RESPONSES[ErrorKind.POOL_EXHAUSTED], None)
        if what == "problem":
            raise problemdetails.Problem(409, title="Unique Violation", sqlstate="23505")
        raise AssertionError(what)


class ErrorWriterRaisingHandler(RaisingHandler, problemdetails.ErrorWriter):  # type: ignore[misc]
    pass


class ReadsHandler(Handler):
    """Reads by default (``postgres_read_only``); ``?write=1`` writes between two reads."""

    postgres_read_only = True

    async def get(self) -> None:
        await self.postgres_execute("SELECT 'first read'")
        if self.get_argument("write", ""):
            await self.postgres_execute("UPDATE t SET v = 1", read_only=False)
        await self.postgres_execute("SELECT 'second read'")
        async with self.postgres_transaction() as conn:
            await conn.execute("SELECT 'read in tx'")
        self.write({"ok": True})


class RetryHandler(Handler):
    """A transaction run again on a serialization failure (postgres_run_transaction)."""

    async def post(self) -> None:
        async def work(tx: PostgresConnector) -> int:
            await tx.execute("UPDATE counters SET n = n + 1")
            return 1

        self.write({"done": await self.postgres_run_transaction(work, retries=1)})


class StreamHandler(Handler):
    """Rows through a server-side cursor (postgres_stream), read from a reader by default."""

    postgres_read_only = True

    async def get(self) -> None:
        total = 0
        async for row in self.postgres_stream("SELECT n FROM big", batch=2):
            total += row["n"]
        self.write({"total": total})


class CommitThenPublishHandler(Handler):
    """A transaction, then work that must follow a commit (publishing an event)."""

    async def get(self) -> None:
        async with self.postgres_transaction() as tx:
            await tx.execute("INSERT INTO orders VALUES (1)")
        self.application.published.append("order 1")
        self.write({"ok": True})

    def on_connection_close(self) -> None:
        self.application.hung_up.append(True)
        super().on_connection_close()


ROUTES: list[Any] = [
    (r"/run/(\w+)", RunHandler),
    (r"/error-writer/run/(\w+)", ErrorWriterRunHandler),
    (r"/swallow/(\w+)", SwallowHandler),
    (r"/replace/(\w+)", ReplaceHandler),
    (r"/pass-through/(\w+)", PassThroughHandler),
    (r"/teapot/(\w+)", TeapotHandler),
    (r"/upstream-style/(\w+)", UpstreamStyleHandler),
    (r"/recording/(\w+)", RecordingHandler),
    (r"/recording-tx/(\w+)", RecordingTxHandler),
    (r"/influx/(\w+)", InfluxHandler),
    (r"/record-timing/(\w+)", RecordTimingHandler),
    (r"/record-timing-tx/(\w+)", RecordTimingTxHandler),
    (r"/tx/(\w+)", TxHandler),
    (r"/swallow-tx/(\w+)", SwallowTxHandler),
    (r"/raise/([\w-]+)", RaisingHandler),
    (r"/error-writer/raise/([\w-]+)", ErrorWriterRaisingHandler),
    (r"/status", StatusRequestHandler),
    (r"/reads", ReadsHandler),
    (r"/retry", RetryHandler),
    (r"/stream", StreamHandler),
    (r"/commit-then-publish", CommitThenPublishHandler),
    (r"/livez", pgpool_tornado.LivenessRequestHandler),
    (r"/readyz", pgpool_tornado.ReadinessRequestHandler),
    (r"/startupz", pgpool_tornado.StartupRequestHandler),
]


# -- serving ------------------------------------------------------------------------------


@dataclass
class Served:
    """An application on a loopback socket, its fake driver and an HTTP client."""

    app: Application
    fake: FakeConnector
    base: str
    http: httpclient.AsyncHTTPClient

    @property
    def pool(self) -> PoolManager:
        assert self.app.postgres_pool is not None
        return self.app.postgres_pool

    def statements(self) -> list[str]:
        """Every statement sent, over every connection, in connection order."""
        return [sql for conn in self.fake.connections for sql in conn.statements]

    async def __call__(self, path: str, method: str = "GET") -> httpclient.HTTPResponse:
        return await self.http.fetch(
            self.base + path,
            method=method,
            body="" if method == "POST" else None,
            raise_error=False,
            request_timeout=5,
        )


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
def no_postgres_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the application only, never from POSTGRES_* of the environment."""
    for key in list(os.environ):
        if key.startswith("POSTGRES_"):
            monkeypatch.delenv(key)


@pytest.fixture
def fake_pools(fake: FakeConnector, monkeypatch: pytest.MonkeyPatch, no_postgres_env: None) -> None:
    """ApplicationMixin.postgres_start builds its PoolManager over the fake connector."""
    monkeypatch.setattr(
        pgpool_tornado._mixins, "PoolManager", functools.partial(PoolManager, connector=fake)
    )


@pytest.fixture
async def serve(loopback: None, fake: FakeConnector, fake_pools: None) -> AsyncIterator[Serve]:
    """``await serve(**settings)``: a started application (``start=False``: not started)
    with one connection at most, opened on demand, and a tiny acquire timeout."""
    opened: list[tuple[Application, httpserver.HTTPServer, httpclient.AsyncHTTPClient]] = []

    async def make(*, start: bool = True, **settings: Any) -> Served:
        app = Application(
            ROUTES,
            **{
                "postgres_url": URL,
                "postgres_min_pool_size": 0,
                "postgres_max_pool_size": 1,
                "postgres_acquire_timeout": 0.05,
                "service": "demo",
                "environment": "unit",
                "version": "1.2.3",
                **settings,
            },
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        server = httpserver.HTTPServer(app)
        server.add_sockets([sock])
        client = httpclient.AsyncHTTPClient(force_instance=True, resolver=LoopbackResolver())
        opened.append((app, server, client))
        if start:
            await app.postgres_start()
        return Served(app, fake, f"http://127.0.0.1:{sock.getsockname()[1]}", client)

    yield make
    for app, server, client in opened:
        await app.postgres_stop(0.5)
        server.stop()
        await server.close_all_connections()
        client.close()


async def until(condition: Callable[[], object], limit: float = 2.0) -> None:
    """Run the loop (I/O included) until ``condition()`` holds, for at most ``limit`` s."""
    give_up = time.monotonic() + limit
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.001)


def problem(response: httpclient.HTTPResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/problem+json"
    return dict(json.loads(response.body))


def retry_after(response: httpclient.HTTPResponse) -> str | None:
    return response.headers.get("Retry-After")


# -- error mapping: one case per way to reach each ErrorKind ----------------------------------

Run = Callable[[Served], Awaitable[httpclient.HTTPResponse]]


@dataclass(frozen=True)
class Case:
    kind: ErrorKind
    sqlstate: str | None
    run: Run
    settings: dict[str, Any] = field(default_factory=dict)


async def statement_error(
    s: Served, *, tag: str, error: Callable[[], BaseException]
) -> httpclient.HTTPResponse:
    s.fake.on(rf"secret_table_{tag}\b", error=error())
    response = await s(f"/run/{tag}")
    assert s.statements() == [statement_for(tag)]
    return response


async def connection_dropped(s: Served) -> httpclient.HTTPResponse:
    s.fake.on(r"secret_table_dropped\b", close_connection=True)
    response = await s("/run/dropped")
    assert s.statements() == [statement_for("dropped")]
    assert s.fake.connections[0].closed
    return response


async def client_timeout(s: Served) -> httpclient.HTTPResponse:
    s.fake.on(r"secret_table_slow\b", hang=True)
    assert (await s("/run/warm")).code == 200  # connected: the bound is all for running
    response = await s("/run/slow?timeout=0.01")
    assert s.statements() == [statement_for("warm"), statement_for("slow")]
    assert s.fake.connections[0].cancel_requests == 1
    return response


async def connect_refused(s: Served) -> httpclient.HTTPResponse:
    s.fake.fail_next = 1
    s.fake.failure = psycopg2.OperationalError(f"could not connect: {SECRET_MESSAGE}")
    response = await s("/run/refused")
    assert s.fake.attempts == 1
    assert s.fake.connections == []  # nothing could be sent
    return response


async def hold_the_only_connection(s: Served) -> tuple[asyncio.Event, asyncio.Task[Any]]:
    gate = asyncio.Event()
    s.fake.on(r"secret_table_hold\b", gate=gate)
    holder = asyncio.create_task(s("/run/hold"))
    await until(lambda: s.statements()[-1:] == [statement_for("hold")])
    return gate, holder


async def acquire_timeout(s: Served) -> httpclient.HTTPResponse:
    gate, holder = await hold_the_only_connection(s)
    response = await s("/run/busy")
    assert s.statements() == [statement_for("hold")]  # the busy request sent nothing
    gate.set()
    assert (await holder).code == 200
    assert len(s.fake.connections) == 1
    return response


async def max_waiting(s: Served) -> httpclient.HTTPResponse:
    gate, holder = await hold_the_only_connection(s)
    waiter = asyncio.create_task(s("/run/waiter"))
    await until(lambda: s.pool.stats()["requests_waiting"] == 1)
    response = await s("/run/shed")
    assert s.statements() == [statement_for("hold")]
    gate.set()
    assert [(await holder).code, (await waiter).code] == [200, 200]
    assert s.statements() == [statement_for("hold"), statement_for("waiter")]  # never "shed"
    return response


async def not_started(s: Served) -> httpclient.HTTPResponse:
    await s.app.postgres_stop()
    assert s.app.postgres_pool is None
    response = await s("/run/nopool")
    assert s.fake.attempts == 0
    return response


TX_INSERT = "INSERT INTO secret_table VALUES (%s)"
TX_DUP = "INSERT INTO secret_dup VALUES (%s)"


def duplicate() -> psycopg2.errors.UniqueViolation:
    return psycopg2.errors.UniqueViolation(SECRET_MESSAGE)


async def uncaught_in_transaction(s: Served) -> httpclient.HTTPResponse:
    s.fake.on("secret_dup", error=duplicate())
    response = await s("/tx/uncaught", "POST")
    assert s.statements() == ["BEGIN", TX_INSERT, TX_DUP, "ROLLBACK"]
    return response


async def caught_in_transaction(s: Served) -> httpclient.HTTPResponse:
    s.fake.on("secret_dup", error=duplicate())
    response = await s("/tx/caught", "POST")
    # TransactionRolledBackError instead of COMMIT, mapped like the duplicate it came from.
    assert s.statements() == ["BEGIN", TX_INSERT, TX_DUP, "ROLLBACK"]
    assert b"committed" not in response.body
    return response


async def commit_unknown(s: Served) -> httpclient.HTTPResponse:
    s.fake.on("^COMMIT", close_connection=True)
    response = await s("/tx/plain", "POST")
    assert s.statements() == ["BEGIN", TX_INSERT, "COMMIT"]
    assert s.fake.connections[0].closed
    return response


def _statement(tag: str, error: Callable[[], BaseException]) -> Run:
    return functools.partial(statement_error, tag=tag, error=error)


CASES: dict[str, Case] = {
    "unique_violation": Case(ErrorKind.UNIQUE_VIOLATION, "23505", _statement("dup", duplicate)),
    "foreign_key_violation": Case(
        ErrorKind.FOREIGN_KEY_VIOLATION,
        "23503",
        _statement("fk", lambda: psycopg2.errors.ForeignKeyViolation(SECRET_MESSAGE)),
    ),
    "serialization_failure": Case(
        ErrorKind.TRANSACTION_CONFLICT,
        "40001",
        _statement("serial", lambda: psycopg2.errors.SerializationFailure(SECRET_MESSAGE)),
    ),
    "deadlock": Case(
        ErrorKind.TRANSACTION_CONFLICT,
        "40P01",
        _statement("deadlock", lambda: psycopg2.errors.DeadlockDetected(SECRET_MESSAGE)),
    ),
    "division_by_zero": Case(
        ErrorKind.DATABASE,
        "22012",
        _statement("div", lambda: psycopg2.errors.DivisionByZero(SECRET_MESSAGE)),
    ),
    "disk_full": Case(
        ErrorKind.OPERATIONAL,
        "53100",
        _statement("disk", lambda: psycopg2.errors.DiskFull(SECRET_MESSAGE)),
    ),
    "admin_shutdown": Case(
        ErrorKind.UNAVAILABLE,
        "57P01",
        _statement("shutdown", lambda: psycopg2.errors.AdminShutdown(SECRET_MESSAGE)),
    ),
    "operational_error_without_sqlstate": Case(
        ErrorKind.CONNECTION_FAILURE,
        None,
        _statement("lost", lambda: psycopg2.OperationalError(SECRET_MESSAGE)),
    ),
    "connection_dropped_mid_statement": Case(
        ErrorKind.CONNECTION_FAILURE, None, connection_dropped
    ),
    "server_statement_timeout": Case(
        ErrorKind.QUERY_TIMEOUT,
        "57014",
        _statement("stmt_timeout", lambda: psycopg2.errors.QueryCanceled(SECRET_MESSAGE)),
    ),
    "client_query_timeout": Case(ErrorKind.QUERY_TIMEOUT, None, client_timeout),
    "connect_refused": Case(ErrorKind.UNAVAILABLE, None, connect_refused),
    "acquire_timeout": Case(
        ErrorKind.POOL_EXHAUSTED, None, acquire_timeout, {"postgres_acquire_timeout": 0.005}
    ),
    "max_waiting": Case(
        ErrorKind.POOL_EXHAUSTED,
        None,
        max_waiting,
        {"postgres_max_waiting": 1, "postgres_acquire_timeout": 2},
    ),
    "pool_not_started": Case(ErrorKind.CONNECTION_FAILURE, None, not_started),
    "error_in_transaction": Case(ErrorKind.UNIQUE_VIOLATION, "23505", uncaught_in_transaction),
    "rolled_back_after_a_caught_error": Case(
        ErrorKind.UNIQUE_VIOLATION, "23505", caught_in_transaction
    ),
    "commit_unknown": Case(ErrorKind.COMMIT_UNKNOWN, None, commit_unknown),
}


def test_error_responses_table() -> None:
    """ERROR_RESPONSES keeps the sprockets-postgres codes, titles and Retry-After values."""
    assert dict(ERROR_RESPONSES) == {
        ErrorKind.CONNECTION_FAILURE: ErrorResponse(503, "Database Connection Error", 1),
        ErrorKind.UNAVAILABLE: ErrorResponse(503, "Database Unavailable", 1),
        ErrorKind.POOL_EXHAUSTED: ErrorResponse(503, "Database Busy", 1),
        ErrorKind.QUERY_TIMEOUT: ErrorResponse(500, "Query Timeout"),
        ErrorKind.UNIQUE_VIOLATION: ErrorResponse(409, "Unique Violation"),
        ErrorKind.FOREIGN_KEY_VIOLATION: ErrorResponse(409, "Foreign Key Violation"),
        ErrorKind.TRANSACTION_CONFLICT: ErrorResponse(409, "Transaction Conflict", 1),
        ErrorKind.COMMIT_UNKNOWN: ErrorResponse(500, "Transaction Outcome Unknown"),
        ErrorKind.OPERATIONAL: ErrorResponse(503, "Database Error"),
        ErrorKind.DATABASE: ErrorResponse(500, "Database Error"),
    }
    assert ErrorKind.OTHER not in ERROR_RESPONSES


def test_cases_cover_every_mapped_kind() -> None:
    """The HTTP cases below reach every ErrorKind that ERROR_RESPONSES maps."""
    assert {case.kind for case in CASES.values()} == set(ERROR_RESPONSES)


@pytest.mark.parametrize("mode", ["problemdetails", "plain"])
@pytest.mark.parametrize("name", list(CASES))
async def test_failure_maps_to_its_http_answer(
    name: str, mode: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status, title, Retry-After and a bare status/title/SQLSTATE problem body, no SQL."""
    if mode == "plain":
        monkeypatch.setattr("pgpool_tornado._mixins.problemdetails", None)
    case = CASES[name]
    expected = ERROR_RESPONSES[case.kind]
    s = await serve(**case.settings)
    response = await case.run(s)
    assert response.code == expected.status
    # PostgresHTTPError uses the title as reason; Problem keeps the standard phrase.
    assert response.reason == (
        expected.title if mode == "plain" else http.client.responses[expected.status]
    )
    expected_retry = None if expected.retry_after is None else str(expected.retry_after)
    assert retry_after(response) == expected_retry
    assert problem(response) == {
        "status": expected.status,
        "title": expected.title,
        "sqlstate": case.sqlstate,
    }
    body = response.body.decode()
    for leak in (SECRET, "s3cret", "SELECT", "INSERT", "COMMIT", "Key (id)"):
        assert leak not in body


@pytest.mark.parametrize("mode", ["problemdetails", "plain"])
async def test_error_writer_handler_renders_the_same_problem(
    mode: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ErrorWriter handler gets the same answer, plus ErrorWriter's ``type`` link."""
    if mode == "plain":
        monkeypatch.setattr("pgpool_tornado._mixins.problemdetails", None)
    s = await serve()
    s.fake.on(r"secret_table_serial\b", error=psycopg2.errors.SerializationFailure(SECRET))
    response = await s("/error-writer/run/serial")
    assert (response.code, retry_after(response)) == (409, "1")
    document = problem(response)
    if mode == "problemdetails":
        assert document.pop("type") == problemdetails.type_link_map[409]
    assert document == {"status": 409, "title": "Transaction Conflict", "sqlstate": "40001"}
    assert SECRET not in response.body.decode()


#: What sprockets-postgres 1.8.1's on_postgres_error answered for each case, from its
#: isinstance chain: ConnectionException, asyncio.TimeoutError, ForeignKeyViolation,
#: UniqueViolation, OperationalError, psycopg2.Error.
UPSTREAM_ANSWERS: dict[str, tuple[int, str]] = {
    "unique_violation": (409, "Unique Violation"),
    "foreign_key_violation": (409, "Foreign Key Violation"),
    "serialization_failure": (503, "Database Error"),  # an OperationalError
    "deadlock": (503, "Database Error"),
    "division_by_zero": (500, "Database Error"),
    "disk_full": (503, "Database Error"),
    "admin_shutdown": (503, "Database Error"),
    "operational_error_without_sqlstate": (503, "Database Error"),
    "connection_dropped_mid_statement": (503, "Database Error"),
    "server_statement_timeout": (503, "Database Error"),  # QueryCanceled: an OperationalError
    "client_query_timeout": (500, "Query Timeout"),
    "connect_refused": (503, "Database Connection Error"),
    "acquire_timeout": (503, "Database Connection Error"),
    "max_waiting": (503, "Database Connection Error"),
    "pool_not_started": (503, "Database Connection Error"),
    "error_in_transaction": (409, "Unique Violation"),
    "rolled_back_after_a_caught_error": (409, "Unique Violation"),
    "commit_unknown": (500, "Transaction Outcome Unknown"),  # ours: no upstream counterpart
}


def test_upstream_answers_cover_every_case() -> None:
    assert set(UPSTREAM_ANSWERS) == set(CASES)
    assert {(r.status, r.title) for r in SPROCKETS_POSTGRES_RESPONSES.values()} == set(
        UPSTREAM_ANSWERS.values()
    )
    assert all(r.retry_after is None for r in SPROCKETS_POSTGRES_RESPONSES.values())


@pytest.mark.parametrize("name", list(CASES))
async def test_sprockets_postgres_error_format_answers_as_upstream(
    name: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``postgres_error_format = "sprockets-postgres"`` without tornado-problem-details:
    upstream's status and title as the reason, Tornado's HTML error page, no Retry-After,
    nothing of the statement in the body."""
    monkeypatch.setattr("pgpool_tornado._mixins.problemdetails", None)
    case = CASES[name]
    status, title = UPSTREAM_ANSWERS[name]
    s = await serve(postgres_error_format="sprockets-postgres", **case.settings)
    response = await case.run(s)
    assert (response.code, response.reason) == (status, title)
    assert response.headers["Content-Type"].startswith("text/html")
    assert retry_after(response) is None
    body = response.body.decode()
    assert f"{status}: {title}" in body
    for leak in (SECRET, "s3cret", "SELECT", "INSERT", "COMMIT", "Key (id)"):
        assert leak not in body


async def test_sprockets_postgres_error_format_with_problemdetails(serve: Serve) -> None:
    """With tornado-problem-details installed upstream raised a bare Problem (status and
    title, no SQLSTATE): an ErrorWriter handler renders it, as it did upstream."""
    s = await serve(postgres_error_format="sprockets-postgres")
    s.fake.on(r"secret_table_dup\b", error=duplicate())
    response = await s("/error-writer/run/dup")
    assert (response.code, retry_after(response)) == (409, None)
    document = problem(response)
    document.pop("type", None)
    assert document == {"status": 409, "title": "Unique Violation"}


async def test_unknown_error_format_is_a_settings_error(serve: Serve) -> None:
    """A misspelt format is refused at start, naming the setting and the value."""
    s = await serve(start=False, postgres_error_format="html")
    with pytest.raises(SettingsError, match=r"postgres_error_format.*'html'"):
        await s.app.postgres_start()
    assert s.fake.attempts == 0


# -- hooks ----------------------------------------------------------------------------------


async def test_default_hook_sees_metric_names(serve: Serve) -> None:
    """The hook gets the statement's metric, postgres_connector or postgres_transaction."""
    s = await serve()
    s.fake.on(r"secret_table_div\b", error=psycopg2.errors.DivisionByZero(SECRET))
    assert (await s("/recording/div")).code == 500
    s.fake.on("^COMMIT", close_connection=True)
    assert (await s("/recording-tx/ok")).code == 500
    s.fake.fail_next = 1
    refused = await s("/recording-tx/refused")
    assert (refused.code, problem(refused)["title"]) == (503, "Database Unavailable")
    assert s.app.errors_seen == [
        ("div", "DivisionByZero"),
        ("postgres_transaction", "CommitUnknownError"),
        ("postgres_connector", "PoolUnavailableError"),
    ]
    assert s.statements() == [statement_for("div"), "BEGIN", statement_for("ok"), "COMMIT"]


async def test_hook_returning_none_swallows_statement_errors(serve: Serve) -> None:
    """A None hook makes postgres_execute return None, pool or no pool (as in
    sprockets-postgres)."""
    s = await serve()
    empty = {"result": None}
    s.fake.on(r"secret_table_div\b", error=psycopg2.errors.DivisionByZero(SECRET))
    swallowed = await s("/swallow/div")
    assert (swallowed.code, json.loads(swallowed.body)) == (200, empty)
    assert s.statements() == [statement_for("div")]
    s.fake.connections[0].close()  # the next acquire finds it closed...
    s.fake.fail_next = 1  # ...and cannot open another
    refused = await s("/swallow/refused")
    assert (refused.code, json.loads(refused.body)) == (200, empty)
    await s.app.postgres_stop()
    no_pool = await s("/swallow/nopool")
    assert (no_pool.code, json.loads(no_pool.body)) == (200, empty)
    assert s.statements() == [statement_for("div")]  # neither later request sent anything


@pytest.mark.parametrize("error_format", ["problem+json", "sprockets-postgres"])
async def test_upstream_style_override_calling_super_still_raises(
    error_format: str, serve: Serve
) -> None:
    """The default on_postgres_error raises, as upstream's did: an override that calls it
    without returning its value does not swallow the error (a 200 with no result)."""
    s = await serve(postgres_error_format=error_format)
    s.fake.on(r"secret_table_dup\b", error=duplicate())
    response = await s("/upstream-style/dup")
    assert response.code == 409
    assert s.app.errors_seen == [("dup", "UniqueViolation")]


async def test_hook_returning_none_never_swallows_a_transaction_outcome(serve: Serve) -> None:
    """A None hook cannot turn a rolled-back transaction into a 200; no COMMIT is sent."""
    s = await serve()
    s.fake.on("secret_dup", error=duplicate())
    response = await s("/swallow-tx/caught", "POST")
    assert response.code == 500
    assert b"committed" not in response.body
    assert s.statements() == ["BEGIN", TX_INSERT, TX_DUP, "ROLLBACK"]


async def test_hook_returning_none_on_acquire_fails_the_transaction(serve: Serve) -> None:
    """A None hook on acquire fails postgres_transaction (500), sending nothing."""
    s = await serve()
    s.fake.fail_next = 1
    response = await s("/swallow-tx/plain", "POST")
    assert response.code == 500
    assert response.headers["Content-Type"].startswith("text/html")
    assert s.fake.connections == []


@pytest.mark.parametrize(
    ("tag", "metric", "cause"),
    [
        ("div", "div", "DivisionByZero"),
        ("refused", "postgres_connector", "PoolUnavailableError"),
    ],
)
async def test_hook_returning_an_exception_raises_it_chained(
    serve: Serve, tag: str, metric: str, cause: str
) -> None:
    """An exception returned by on_postgres_error is raised, chained from the failure."""
    s = await serve()
    if tag == "refused":
        s.fake.fail_next = 1
    else:
        s.fake.on(rf"secret_table_{tag}\b", error=psycopg2.errors.DivisionByZero(SECRET))
    response = await s(f"/replace/{tag}")
    assert json.loads(response.body) == {"metric": metric, "cause": cause}


async def test_hook_replacement_without_a_pool_is_chained(serve: Serve) -> None:
    """With no pool, the hook's replacement is chained from the PoolClosedError too."""
    s = await serve(start=False)
    response = await s("/replace/nopool")
    assert json.loads(response.body) == {"metric": "postgres_connector", "cause": "PoolClosedError"}


async def test_hook_returning_the_failure_raises_it_unchanged(serve: Serve) -> None:
    """on_postgres_error returning its argument: that very exception is raised, unwrapped."""
    s = await serve()
    s.fake.on(r"secret_table_div\b", error=psycopg2.errors.DivisionByZero(SECRET))
    response = await s("/pass-through/div")
    assert json.loads(response.body) == {"type": "DivisionByZero", "same": True, "cause": None}


async def test_hook_http_error_is_the_answer(serve: Serve) -> None:
    """An HTTPError returned by on_postgres_error is the response, with its own reason."""
    s = await serve()
    s.fake.on(r"secret_table_div\b", error=psycopg2.errors.DivisionByZero(SECRET))
    response = await s("/teapot/div")
    assert (response.code, response.reason) == (418, "custom for div")
    assert retry_after(response) is None


async def test_timing_goes_to_influxdb_set_field(serve: Serve) -> None:
    """With self.influxdb, the duration goes to influxdb.set_field(metric_name, seconds)."""
    s = await serve()
    assert (await s("/influx/one")).code == 200
    assert [(hook, name) for hook, name, _ in s.app.timings] == [("set_field", "one")]
    assert 0 <= s.app.timings[0][2] < 1


async def test_timing_goes_to_record_timing(serve: Serve) -> None:
    """Else record_timing(seconds, metric); in a transaction only the block is timed."""
    s = await serve()
    assert (await s("/record-timing/one")).code == 200
    assert (await s("/record-timing-tx/two")).code == 200
    names = [(hook, name) for hook, name, _ in s.app.timings]
    assert names == [
        ("record_timing", "one"),
        ("record_timing", "tx-first"),
        ("record_timing", "tx-second"),
    ]
    assert all(0 <= seconds < 1 for _, _, seconds in s.app.timings)


async def test_timing_defaults_to_a_debug_log(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """With neither convention, each duration is a DEBUG record on pgpool.tornado."""
    s = await serve()
    with caplog.at_level(logging.DEBUG, logger="pgpool.tornado"):
        assert (await s("/run/one")).code == 200
    records = [r for r in caplog.records if r.name == "pgpool.tornado"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert records[0].getMessage().startswith("Postgres query one duration: ")
    assert s.app.timings == []


# -- ApplicationMixin.postgres_connector -------------------------------------------------------


@pytest.fixture
async def app(fake_pools: None) -> AsyncIterator[Application]:
    """An application with a started pool over the fake, and no HTTP server."""
    application = Application(
        [], postgres_url=URL, postgres_min_pool_size=0, postgres_acquire_timeout=0.05
    )
    await application.postgres_start()
    yield application
    await application.postgres_stop(0.5)


class OnError:
    """An on_error hook that records its calls and answers ``answer(exc)``."""

    def __init__(self, answer: Callable[[Exception], Exception | None]) -> None:
        self.calls: list[tuple[str, Exception]] = []
        self.answer = answer

    def __call__(self, metric_name: str, exc: Exception) -> Exception | None:
        self.calls.append((metric_name, exc))
        return self.answer(exc)


async def enter(manager: AbstractAsyncContextManager[PostgresConnector]) -> None:
    async with manager:
        raise AssertionError("the block was not expected to run")


async def test_connector_failure_goes_to_on_error_and_is_raised(
    app: Application, fake: FakeConnector
) -> None:
    """An acquire failure reaches on_error('postgres_connector'); its answer is raised."""
    replaced = OnError(lambda exc: Replacement("mapped"))
    fake.fail_next = 1
    with pytest.raises(Replacement) as info:
        await enter(app.postgres_connector(on_error=replaced))
    assert [name for name, _ in replaced.calls] == ["postgres_connector"]
    assert isinstance(replaced.calls[0][1], PoolUnavailableError)
    assert info.value.__cause__ is replaced.calls[0][1]

    same = OnError(lambda exc: exc)
    await app.postgres_stop()
    with pytest.raises(PoolClosedError) as closed:
        await enter(app.postgres_connector(on_error=same))
    assert same.calls == [("postgres_connector", closed.value)]
    assert fake.connections == []


async def test_connector_failure_swallowed_yields_none(
    app: Application, fake: FakeConnector
) -> None:
    """on_error returning None for the acquire: the block runs with None as connector."""
    swallow = OnError(lambda exc: None)
    fake.fail_next = 1
    async with app.postgres_connector(on_error=swallow) as connector:
        assert cast(object, connector) is None  # typed PostgresConnector, None in fact
    assert [name for name, _ in swallow.calls] == ["postgres_connector"]


async def test_connector_success_does_not_call_on_error(
    app: Application, fake: FakeConnector
) -> None:
    """A working connector runs statements with the hooks and never calls on_error."""
    hook = OnError(lambda exc: exc)
    durations: list[str] = []
    async with app.postgres_connector(
        on_error=hook, on_duration=lambda name, _seconds: durations.append(name)
    ) as connector:
        assert isinstance(connector, PostgresConnector)
        assert (await connector.execute("SELECT 1", metric_name="one")).row == {"?column?": 1}
    assert (hook.calls, durations) == ([], ["one"])
    assert fake.connections[0].statements == ["SELECT 1"]


async def test_connector_with_a_bad_timeout_goes_to_on_error(app: Application) -> None:
    """A timeout that is not a number is a failure to get a connector, as upstream's: it
    reaches on_error('postgres_connector') naming the value, and nothing is checked out."""
    swallow = OnError(lambda exc: None)
    async with app.postgres_connector(on_error=swallow, timeout="1") as connector:  # type: ignore[arg-type]
        assert cast(object, connector) is None
    assert [(name, type(exc).__name__) for name, exc in swallow.calls] == [
        ("postgres_connector", "SettingsError")
    ]
    assert "'1'" in str(swallow.calls[0][1])
    assert app.postgres_pool is not None
    stats = app.postgres_pool.stats()
    assert stats["pool_available"] == stats["pool_size"]


class OwnConnectorApplication(Application):
    """Overrides postgres_connector: postgres_transaction must go through it, as upstream's."""

    def postgres_connector(self, *args: Any, **kwargs: Any) -> Any:
        self.timings.append(("own postgres_connector", "", 0.0))
        return super().postgres_connector(*args, **kwargs)


async def test_postgres_transaction_goes_through_an_overridden_connector(
    fake_pools: None, fake: FakeConnector
) -> None:
    application = OwnConnectorApplication([], postgres_url=URL, postgres_min_pool_size=0)
    await application.postgres_start()
    try:
        request = httputil.HTTPServerRequest(
            start_line=httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
            headers=httputil.HTTPHeaders({"Host": "localhost"}),
            connection=Mock(),
        )
        handler = Handler(application, request)
        async with handler.postgres_transaction() as tx:
            await tx.execute("UPDATE t SET x = 1")
    finally:
        await application.postgres_stop(0.5)
    assert application.timings == [("own postgres_connector", "", 0.0)]
    assert fake.connections[0].messages == ["BEGIN; UPDATE t SET x = 1", "COMMIT"]


# -- write_error -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["problemdetails", "plain"])
@pytest.mark.parametrize("prefix", ["", "/error-writer"])
async def test_non_database_errors_fall_through(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, mode: str, prefix: str
) -> None:
    """Non-database errors get the next write_error's page, with no Retry-After."""
    if mode == "plain":
        monkeypatch.setattr("pgpool_tornado._mixins.problemdetails", None)
    s = await serve(start=False)
    for what, status in (("value-error", 500), ("not-found", 404), ("send-error", 418)):
        response = await s(f"{prefix}/raise/{what}")
        assert response.code == status, what
        assert retry_after(response) is None
        assert SECRET not in response.body.decode()
        if prefix:
            assert problem(response) == {
                "status": status,
                "type": problemdetails.type_link_map[status],
            }
        else:
            assert response.headers["Content-Type"].startswith("text/html")
            phrase = escape.xhtml_escape(http.client.responses[status])
            assert f"<title>{status}: {phrase}</title>" in response.body.decode()


async def test_postgres_http_error_is_rendered_with_retry_after(serve: Serve) -> None:
    """A PostgresHTTPError renders as a problem document with Retry-After."""
    s = await serve(start=False)
    response = await s("/raise/postgres-http-error")
    assert (response.code, response.reason, retry_after(response)) == (503, "Database Busy", "1")
    assert problem(response) == {"status": 503, "title": "Database Busy", "sqlstate": None}


async def test_problem_is_rendered_without_error_writer(serve: Serve) -> None:
    """A problemdetails.Problem in a handler without ErrorWriter is rendered by the mixin."""
    s = await serve(start=False)
    response = await s("/raise/problem")
    assert response.code == 409
    assert retry_after(response) is None
    assert problem(response) == {"status": 409, "title": "Unique Violation", "sqlstate": "23505"}


# -- status --------------------------------------------------------------------------------------


def connected(app: ApplicationMixin) -> bool:
    return app.postgres_is_connected


def status_body(pool_free: int, pool_size: int, pool_max: int, status: str) -> dict[str, Any]:
    return {
        "application": "demo",
        "environment": "unit",
        "postgres": {
            "pool_free": pool_free,
            "pool_size": pool_size,
            "pool_max": pool_max,
            "requests_waiting": 0,
        },
        "status": status,
        "version": "1.2.3",
    }


async def test_status_before_start_and_after_stop_is_503(serve: Serve) -> None:
    """Without a pool: 503 'unavailable' with zeros, not connected, nothing sent."""
    s = await serve(start=False)
    assert await s.app.postgres_status() == {"available": False, "pool_size": 0, "pool_free": 0}
    assert not s.app.postgres_is_connected
    before = await s("/status")
    assert (before.code, json.loads(before.body)) == (503, status_body(0, 0, 0, "unavailable"))
    await s.app.postgres_start()
    assert (await s("/status")).code == 200
    await s.app.postgres_stop()
    after = await s("/status")
    assert (after.code, json.loads(after.body)) == (503, status_body(0, 0, 0, "unavailable"))
    assert s.statements() == ["SELECT 1"]  # only the probe while it was started


async def test_status_healthy_is_200_with_the_pool_numbers(serve: Serve) -> None:
    """A healthy pool: 200 'ok' with its numbers after one probe; postgres_is_connected."""
    s = await serve(postgres_max_pool_size=4)
    assert not connected(s.app)  # nothing has succeeded yet
    response = await s("/status")
    assert (response.code, json.loads(response.body)) == (200, status_body(1, 1, 4, "ok"))
    assert connected(s.app)
    assert await s.app.postgres_status() == {"available": True, "pool_size": 1, "pool_free": 1}
    assert s.statements() == ["SELECT 1"]  # the second check trusted the recent success


async def test_status_probe_is_bounded_by_the_class_attribute(serve: Serve) -> None:
    """``POSTGRES_STATUS_TIMEOUT`` (sprockets-postgres' knob) bounds the probe: a server
    that does not answer ``SELECT 1`` makes /status 503 within it, and the probe is
    cancelled on the server (the connection is not left running it)."""
    s = await serve()
    s.app.POSTGRES_STATUS_TIMEOUT = 0.05  # type: ignore[misc]
    s.fake.on(r"^SELECT 1$", hang=True)
    started = time.monotonic()
    response = await s("/status")
    assert time.monotonic() - started < 0.5  # the default (1 s) would take longer
    assert (response.code, json.loads(response.body)["status"]) == (503, "unavailable")
    assert s.statements() == ["SELECT 1"]
    await until(lambda: s.app.postgres_pool is not None and s.app.postgres_pool.in_use == 0)


async def test_status_unavailable_database_is_503(serve: Serve) -> None:
    """Connects failing: 503 'unavailable', postgres_is_connected False, nothing sent."""
    s = await serve()
    s.fake.fail_next = 1000
    response = await s("/status")
    assert (response.code, json.loads(response.body)["status"]) == (503, "unavailable")
    assert not s.app.postgres_is_connected
    assert s.app.postgres_pool is not None
    assert s.fake.connections == []


async def test_status_saturated_pool_is_ok_without_a_probe(serve: Serve) -> None:
    """Every connection busy but the pool healthy: 200 'ok', no SELECT 1 queued behind it."""
    s = await serve()
    assert (await s("/run/warm")).code == 200
    gate, holder = await hold_the_only_connection(s)
    response = await s("/status")
    gate.set()
    assert (await holder).code == 200
    assert (response.code, json.loads(response.body)) == (200, status_body(0, 1, 1, "ok"))
    assert s.statements() == [statement_for("warm"), statement_for("hold")]


# -- sprockets.http --------------------------------------------------------------------------------


class SprocketsApplication(
    pgpool_sprockets.ApplicationMixin,
    sprockets_app.Application,  # type: ignore[misc]
):
    pass


def sprockets_app_with_stop_recorded(**settings: Any) -> tuple[SprocketsApplication, list[Any]]:
    application = SprocketsApplication([], **settings)
    stops: list[Any] = []
    application.stop = lambda *args, **kwargs: stops.append(args)
    return application, stops


async def test_sprockets_registers_start_and_shutdown_callbacks(no_postgres_env: None) -> None:
    """The sprockets ApplicationMixin adds its on_start and shutdown runner callbacks."""
    application = SprocketsApplication([], postgres_url=URL)
    assert application.on_start_callbacks == [application._postgres_on_start]
    assert application.on_shutdown_callbacks == [application._postgres_shutdown]
    assert application.postgres_pool is None
    assert not application.postgres_started.is_set()


async def test_sprockets_start_and_shutdown_over_the_fake(
    fake_pools: None, fake: FakeConnector
) -> None:
    """on_start opens the pool (a working connection), shutdown's future closes it."""
    application, stops = sprockets_app_with_stop_recorded(postgres_url=URL)
    loop = asyncio.get_running_loop()
    await application._postgres_on_start(application, loop)
    pool = application.postgres_pool
    assert pool is not None
    assert (stops, application.postgres_started.is_set(), pool.is_available) == ([], True, True)
    await application._postgres_shutdown(application)
    assert application.postgres_pool is None
    assert pool.state is PoolState.CLOSED
    assert fake.open_connections == []


async def test_sprockets_missing_url_stops_the_application(
    no_postgres_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """No postgres_url: CRITICAL naming the setting and stop() once; no pool."""
    application, stops = sprockets_app_with_stop_recorded(service="demo")
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.CRITICAL, logger="sprockets-postgres"):
        await application._postgres_on_start(application, loop)
    assert "postgres_url" in caplog.records[-1].getMessage()
    assert stops == [(loop,)]
    assert application.postgres_pool is None
    assert application.postgres_started.is_set()


async def test_sprockets_database_down_at_boot_keeps_running(
    fake_pools: None, fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    """Unreachable at boot: a WARNING, no stop, and the pool kept for when it is back."""
    application, stops = sprockets_app_with_stop_recorded(
        postgres_url=URL, postgres_min_pool_size=0
    )
    fake.fail_next = 1000
    with caplog.at_level(logging.WARNING, logger="sprockets-postgres"):
        await application._postgres_on_start(application, asyncio.get_running_loop())
    assert "unavailable at start" in caplog.records[-1].getMessage()
    assert stops == []
    assert application.postgres_pool is not None
    assert not application.postgres_is_connected
    await application._postgres_shutdown(application)
    assert application.postgres_pool is None


# -- read replicas ----------------------------------------------------------------------------


@pytest.fixture
def reader(fake: FakeConnector, monkeypatch: pytest.MonkeyPatch, fake_pools: None) -> FakeConnector:
    """The application's pool gets one reader, over its own fake connector."""
    connector = FakeConnector()
    connector.on(r"pg_is_in_recovery", rows=[{"standby": True, "lag": 0.25}])
    monkeypatch.setattr(
        pgpool_tornado._mixins,
        "PoolManager",
        functools.partial(PoolManager, connector=fake, read_connectors=[connector]),
    )
    return connector


def _reader_statements(connector: FakeConnector) -> list[str]:
    return [
        sql
        for conn in connector.connections
        for sql in conn.statements
        if "pg_is_in_recovery" not in sql
    ]


async def test_read_only_handler_reads_from_the_reader(serve: Serve, reader: FakeConnector) -> None:
    s = await serve()
    await s.pool.sample_readers()
    assert (await s("/reads")).code == 200
    assert _reader_statements(reader) == [
        "SELECT 'first read'",
        "SELECT 'second read'",
        "BEGIN READ ONLY",
        "SELECT 'read in tx'",
        "COMMIT",
    ]
    assert not any("read" in sql for sql in s.statements())


async def test_a_request_that_wrote_reads_from_the_writer(
    serve: Serve, reader: FakeConnector
) -> None:
    """Read-your-writes within the request; the next request reads from the reader again."""
    s = await serve()
    await s.pool.sample_readers()
    assert (await s("/reads?write=1")).code == 200
    assert _reader_statements(reader) == ["SELECT 'first read'"]
    assert s.statements()[-5:] == [
        "UPDATE t SET v = 1",
        "SELECT 'second read'",
        "BEGIN READ ONLY",
        "SELECT 'read in tx'",
        "COMMIT",
    ]
    assert (await s("/reads")).code == 200
    assert _reader_statements(reader)[-1] == "COMMIT"
    assert len(_reader_statements(reader)) == 6


async def test_status_lists_each_reader(serve: Serve, reader: FakeConnector) -> None:
    s = await serve(postgres_max_replica_lag=0.1)
    started = time.monotonic()
    await s.pool.sample_readers()
    response = await s("/status")
    since = time.monotonic() - started
    body = json.loads(response.body)
    [member] = body["postgres"]["readers"]
    assert member["role"] == "reader"
    assert member["lag"] == 0.25
    # The sampled 0.25 s plus the time since the sample (an upper bound): at least 0.25 s,
    # at most 0.25 s plus what this test waited since before the sample.
    matched = re.fullmatch(r"replay lag (\d+\.\d+) s > max_replica_lag 0\.1 s", member["excluded"])
    assert matched is not None, member["excluded"]
    assert 0.25 <= float(matched[1]) <= 0.25 + since + 0.001
    assert member["name"] == f"{s.pool.name} reader 1"
    status = await s.app.postgres_status()
    [again] = status["readers"]
    assert {**again, "excluded": None} == {**member, "excluded": None}


# -- retries ------------------------------------------------------------------------------------


async def test_run_transaction_retries_a_conflict_then_answers(serve: Serve) -> None:
    s = await serve()
    conflicts = [psycopg2.errors.SerializationFailure("could not serialize access")]
    real = s.fake.script_for

    def first_conflicts(sql: str) -> Any:
        if sql.startswith("UPDATE counters") and conflicts:
            from pgpool_core.testing import Script

            return Script("UPDATE", error=conflicts.pop())
        return real(sql)

    s.fake.script_for = first_conflicts  # type: ignore[method-assign]
    response = await s("/retry", method="POST")
    assert response.code == 200
    assert json.loads(response.body) == {"done": 1}
    assert s.statements().count("UPDATE counters SET n = n + 1") == 2
    assert s.statements()[-1] == "COMMIT"


async def test_run_transaction_conflicts_to_the_end_answer_409(serve: Serve) -> None:
    s = await serve()
    s.fake.on("^UPDATE counters", error=psycopg2.errors.SerializationFailure("conflict"))
    response = await s("/retry", method="POST")
    assert response.code == 409
    assert s.statements().count("UPDATE counters SET n = n + 1") == 2  # retries=1
    assert "COMMIT" not in s.statements()


# -- streaming ----------------------------------------------------------------------------------


async def test_postgres_stream_reads_every_batch_in_one_transaction(serve: Serve) -> None:
    s = await serve()
    batches = [[{"n": 1}, {"n": 2}], [{"n": 3}]]
    real = s.fake.script_for

    def fetches(sql: str) -> Any:
        from pgpool_core.testing import Script

        if sql.startswith("FETCH FORWARD 2 FROM"):
            rows = batches.pop(0) if batches else []
            return Script("FETCH", rows=rows, row_count=len(rows))
        return real(sql)

    s.fake.script_for = fetches  # type: ignore[method-assign]
    response = await s("/stream")
    assert response.code == 200
    assert json.loads(response.body) == {"total": 6}
    statements = s.statements()
    assert statements[0] == "BEGIN READ ONLY"  # the handler reads: a read-only transaction
    assert statements[-1] == "COMMIT"
    assert sum(sql.startswith("FETCH") for sql in statements) == 2


async def test_postgres_stream_failure_is_the_http_answer(serve: Serve) -> None:
    s = await serve()
    s.fake.on("^DECLARE", error=psycopg2.errors.UndefinedTable("relation big does not exist"))
    response = await s("/stream")
    assert response.code == 500
    assert s.statements()[-1] == "ROLLBACK"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"postgres_listen": ["chat"]}, "postgres_listen: expected a mapping"),
        ({"postgres_listen": {"chat": "not callable"}}, "postgres_listen: expected a mapping"),
        ({"postgres_listen": {"": print}}, "channel"),
        (
            {"postgres_listen": {"chat": print}, "postgres_listen_missed": 3},
            "postgres_listen_missed",
        ),
    ],
)
async def test_bad_listen_settings_fail_the_start_before_anything_opens(
    fake_pools: None, fake: FakeConnector, settings: dict[str, Any], message: str
) -> None:
    app = Application([], postgres_url=URL, **settings)
    with pytest.raises((SettingsError, ValueError), match=message):
        await app.postgres_start()
    assert app.postgres_pool is None
    assert fake.connections == []


# -- probes ---------------------------------------------------------------------------------------


async def test_liveness_never_depends_on_the_database(serve: Serve, fake: FakeConnector) -> None:
    s = await serve(start=False)  # no pool at all
    response = await s("/livez")
    assert response.code == 200
    body = json.loads(response.body)
    assert body["status"] == "ok"
    assert 0 <= body["loop_lag"] < 1
    assert fake.connections == []


async def test_readiness_follows_the_pool_and_draining(serve: Serve, fake: FakeConnector) -> None:
    s = await serve(start=False)
    assert (await s("/readyz")).code == 503  # no pool yet
    await s.app.postgres_start()
    response = await s("/readyz")
    assert response.code == 200
    [writer] = json.loads(response.body)["members"]
    assert (writer["role"], writer["ready"], writer["why"]) == ("writer", True, None)
    assert fake.connections == [] or all(c.statements == [] for c in fake.connections)
    s.app.postgres_draining = True
    response = await s("/readyz")
    assert response.code == 503
    assert json.loads(response.body)["status"] == "draining"


async def test_readiness_is_503_when_saturated_or_read_only(
    serve: Serve, fake: FakeConnector
) -> None:
    held = asyncio.Event()
    fake.on("^SELECT 'hold'", gate=held)
    s = await serve(
        postgres_max_waiting=1, postgres_acquire_timeout=5, postgres_ready_writable=True
    )
    holder = asyncio.create_task(s.pool.execute("SELECT 'hold'"))
    await until(lambda: s.pool.in_use == 1)
    fake.connections[0].read_only_server = False
    assert (await s("/readyz")).code == 200
    waiter = asyncio.create_task(s.pool.execute("SELECT 1"))
    await until(lambda: s.pool.stats()["requests_waiting"] == 1)
    response = await s("/readyz")
    assert response.code == 503
    assert "saturated" in json.loads(response.body)["members"][0]["why"]
    held.set()
    await asyncio.gather(holder, waiter)
    fake.connections[0].read_only_server = True  # e.g. a standby after a failover
    response = await s("/readyz")
    assert response.code == 503
    assert json.loads(response.body)["members"][0]["why"] == "the server is read-only"


async def test_startup_waits_for_min_size(serve: Serve, fake: FakeConnector) -> None:
    fake.gate = asyncio.Event()
    s = await serve(postgres_min_pool_size=2, postgres_max_pool_size=2)
    response = await s("/startupz")
    assert response.code == 503
    assert json.loads(response.body) == {"status": "warming", "pool_size": 0, "min_size": 2}
    fake.gate.set()
    await until(lambda: s.pool.stats()["pool_size"] == 2)
    assert (await s("/startupz")).code == 200


async def test_shutdown_grace_drains_before_the_pool_stops(serve: Serve) -> None:
    s = await serve(postgres_shutdown_grace=0.2)
    stopping = asyncio.create_task(s.app.postgres_stop(1))
    await until(lambda: s.app.postgres_draining)
    response = await s("/readyz")
    assert response.code == 503  # unready first...
    assert (await s("/run/ok")).code in (200, 500)  # ...while requests are still served
    await stopping
    assert s.app.postgres_pool is None


async def test_a_bad_shutdown_grace_is_refused_at_start(serve: Serve, fake: FakeConnector) -> None:
    s = await serve(start=False, postgres_shutdown_grace="soon")
    with pytest.raises(SettingsError, match="postgres_shutdown_grace"):
        await s.app.postgres_start()
    assert fake.connections == []


async def test_a_client_leaving_during_a_commit_that_succeeds_does_not_skip_what_follows(
    serve: Serve, fake: FakeConnector
) -> None:
    """The server committed: the block succeeded, so the handler's next step runs; a
    request that left before COMMIT would have been cancelled and rolled back."""
    s = await serve()
    commit = asyncio.Event()
    fake.on("^COMMIT", gate=commit)
    port = int(s.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /commit-then-publish HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: s.statements()[-1:] == ["COMMIT"])
    writer.close()
    await writer.wait_closed()
    del reader
    await until(lambda: s.app.hung_up == [True])  # noticed while COMMIT is held
    commit.set()
    await until(lambda: s.app.published == ["order 1"])
    await until(lambda: s.pool.in_use == 0)
