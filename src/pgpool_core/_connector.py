"""The driver boundary: what the pool needs from a connection, and its aiopg implementation.

The pool never awaits aiopg's own ``_poll``: that closes the socket on any timeout or
cancellation and leaves the statement running on the server. Instead a statement is sent
on a reused psycopg2 cursor and the pool awaits aiopg's readiness future under its own
deadline, so it can send a server-side cancel and keep the connection.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from typing import Any, Protocol

import aiopg
import psycopg2
import psycopg2.extensions

from ._result import QueryResult

__all__ = ["AiopgConnector", "Connector", "DriverConnection", "TxStatus"]


class TxStatus(enum.IntEnum):
    """libpq transaction status, as psycopg2 reports it."""

    IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
    ACTIVE = psycopg2.extensions.TRANSACTION_STATUS_ACTIVE
    INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    INERROR = psycopg2.extensions.TRANSACTION_STATUS_INERROR
    UNKNOWN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN


class DriverConnection(Protocol):
    """One open database connection as the pool drives it."""

    @property
    def closed(self) -> bool: ...

    @property
    def handle(self) -> Any:
        """The object handed out by ``PoolManager.connection()`` (an aiopg connection)."""

    def send(self, sql: str, params: Any, *, callproc: bool = False) -> asyncio.Future[None]:
        """Send one statement; the future completes (or fails) when its result is in.

        The pool may cancel the future or fail it itself (deadline); that only stops the
        waiting, never the statement: :meth:`is_busy` tells whether it still runs.
        Raises at once for errors found before sending (bad parameters).
        """

    def is_busy(self) -> bool:
        """Whether a sent statement is still running on the server."""

    def wait_until_idle(self) -> asyncio.Future[None]:
        """A future that completes when the running statement ends (at once if none)."""

    def result(self) -> QueryResult:
        """The result of the statement whose future completed."""

    def cancel(self) -> None:
        """Ask the server to cancel the running statement. Blocking: run off the loop."""

    def transaction_status(self) -> TxStatus: ...

    def close(self) -> None:
        """Close at once (no round trip)."""


class Connector(Protocol):
    """Opens connections for the pool."""

    async def connect(self, timeout: float) -> DriverConnection: ...


class AiopgConnection:
    """A :class:`DriverConnection` over an aiopg connection and one reused psycopg2 cursor."""

    __slots__ = ("_conn", "_cursor", "_raw")

    def __init__(self, conn: aiopg.Connection) -> None:
        self._conn = conn
        self._raw = conn.raw
        # One cursor per connection: psycopg2 async cursors can run statement after statement.
        self._cursor = self._raw.cursor()

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    @property
    def handle(self) -> aiopg.Connection:
        # aiopg's own API refuses to run while any waiter is set; drop a finished one.
        waiter = self._conn._waiter
        if waiter is not None and waiter.done():
            self._conn._waiter = None
        return self._conn

    def send(self, sql: str, params: Any, *, callproc: bool = False) -> asyncio.Future[None]:
        conn = self._conn
        # The future we return is aiopg's waiter itself: its reader callback (_ready)
        # resolves whatever future sits in conn._waiter. A waiter the pool already gave
        # up on (timed out, cancelled) is simply replaced.
        stale = conn._waiter
        if stale is not None and not stale.done():
            raise RuntimeError("a statement is already running on this connection")
        waiter: asyncio.Future[None] = conn._loop.create_future()
        conn._waiter = waiter
        try:
            if callproc:
                self._cursor.callproc(sql, params)
            else:
                self._cursor.execute(sql, params)
        except BaseException:
            conn._waiter = None
            raise
        # aiopg's _poll starts by polling once (flushes a large query); the reader
        # callback does the rest.
        conn._ready(conn._weakref)
        return waiter

    def is_busy(self) -> bool:
        return not self._conn.closed and bool(self._raw.isexecuting())

    def wait_until_idle(self) -> asyncio.Future[None]:
        conn = self._conn
        waiter: asyncio.Future[None] = conn._loop.create_future()
        if not self.is_busy():
            waiter.set_result(None)
            return waiter
        conn._waiter = waiter
        conn._ready(conn._weakref)
        return waiter

    def result(self) -> QueryResult:
        cursor = self._cursor
        description = cursor.description
        if description is None:
            return QueryResult(max(cursor.rowcount, 0), [])
        names: Sequence[str] = [column[0] for column in description]
        return QueryResult.from_cursor(names, cursor.fetchall(), cursor.rowcount)

    def cancel(self) -> None:
        self._raw.cancel()

    def transaction_status(self) -> TxStatus:
        if self._conn.closed:
            return TxStatus.UNKNOWN
        return TxStatus(self._raw.get_transaction_status())

    def close(self) -> None:
        self._conn.close()


class AiopgConnector:
    """Opens aiopg connections with the pool's adapters registered."""

    def __init__(
        self,
        dsn: str,
        *,
        enable_hstore: bool = False,
        enable_json: bool = False,
        enable_uuid: bool = True,
        application_name: str | None = None,
        statement_timeout: float = 120.0,
    ) -> None:
        self._dsn = dsn
        self._kwargs: dict[str, Any] = {
            "enable_hstore": enable_hstore,
            "enable_json": enable_json,
            "enable_uuid": enable_uuid,
        }
        if application_name and "application_name" not in psycopg2.extensions.parse_dsn(dsn):
            self._kwargs["application_name"] = application_name
        # aiopg's own per-statement bound, only used by code that drives the aiopg
        # connection directly (PoolManager.connection()); the pool's path never uses it.
        self._statement_timeout = statement_timeout

    async def connect(self, timeout: float) -> AiopgConnection:
        # The connect runs as its own task and is never awaited through wait_for: on
        # Python < 3.12 a cancellation landing as the connect completes is swallowed by
        # aiopg's inner wait_for, the task succeeds anyway, and wait_for would drop the
        # open connection. Here a late connection is closed by a done-callback instead.
        task = asyncio.get_running_loop().create_task(self._open(), name="pgpool-aiopg-connect")
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            raise asyncio.TimeoutError(f"connect timed out after {timeout:.3f} s")
        return AiopgConnection(task.result())

    async def _open(self) -> aiopg.Connection:
        # aiopg.connect() returns a "coroutine" whose send() is forwarded to the connection
        # object; asyncio can only schedule it from inside a real coroutine.
        return await aiopg.connect(self._dsn, timeout=self._statement_timeout, **self._kwargs)


def _abandon(task: asyncio.Task[aiopg.Connection]) -> None:
    """Cancel a connect we no longer wait for; close what it connects anyway."""
    task.cancel()
    task.add_done_callback(_close_late_connection)


def _close_late_connection(task: asyncio.Task[aiopg.Connection]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().close()
