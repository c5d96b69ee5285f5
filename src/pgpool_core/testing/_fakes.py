"""In-memory doubles of the driver boundary, for driving PoolManager without a database.

``FakeConnector`` opens ``FakeConnection`` objects; both can be told to fail, block on an
event or hang, so tests reach every pool path with tiny timeouts and no sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from pgpool_core._connector import KeptFuture, TxStatus
from pgpool_core._result import QueryResult

__all__ = ["FakeConnection", "FakeConnector", "FakeCursor", "Script"]

_FIRST_WORD = re.compile(r"\s*(\w+)")
_ROLLBACK_TO = re.compile(r"\s*ROLLBACK\s+TO\b", re.IGNORECASE)
# The pool sends a transaction's BEGIN in the same message as its first statement.
_PIPELINED_BEGIN = re.compile(r"\s*(BEGIN(?:\s+READ\s+ONLY)?)\s*;\s*", re.IGNORECASE)
# LISTEN / UNLISTEN and their channel: a quoted identifier ("" for "), a plain one, or *.
_LISTEN = re.compile(r'\b(UNLISTEN|LISTEN)\s+(\*|"(?:[^"]|"")*"|\w+)', re.IGNORECASE)


@dataclass
class Script:
    """What a statement matching ``pattern`` (a regex, searched) does.

    .. versionadded:: 0.1
    """

    pattern: str
    rows: Sequence[dict[str, Any]] | None = None
    row_count: int = 0
    error: BaseException | None = None
    hang: bool = False  # never completes until cancelled server-side or the connection closes
    gate: asyncio.Event | None = None  # completes once the event is set
    close_connection: bool = False  # the connection dies mid-statement
    ignore_cancel: bool = False  # a server-side cancel has no effect (e.g. a lost packet)
    instant: bool = False  # answered before send() returns (a fast server on another core)


@dataclass
class FakeConnector:
    """Opens fake connections. ``fail_next`` connects raise ``failure``; ``gate`` holds every
    connect until set; ``hang`` makes connects never finish (the pool's bound must fire).

    .. versionadded:: 0.1
    """

    fail_next: int = 0
    failure: BaseException = field(
        default_factory=lambda: psycopg2.OperationalError("connection refused")
    )
    gate: asyncio.Event | None = None
    hang: bool = False
    scripts: list[Script] = field(default_factory=list)
    connections: list[FakeConnection] = field(default_factory=list)
    attempts: int = 0
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def on(self, pattern: str, **behaviour: Any) -> Script:
        """Script statements matching ``pattern``; the latest matching script wins."""
        script = Script(pattern, **behaviour)
        self.scripts.append(script)
        return script

    def script_for(self, sql: str) -> Script | None:
        """The latest script whose pattern ``sql`` matches (case-insensitive), or None."""
        for script in reversed(self.scripts):
            if re.search(script.pattern, sql, re.IGNORECASE):
                return script
        return None

    async def connect(self, timeout: float) -> FakeConnection:
        """Open a :class:`FakeConnection` (or fail, hang or wait, as configured)."""
        self.attempts += 1
        if self.hang:
            await asyncio.wait_for(asyncio.Event().wait(), timeout)
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), timeout)
        if self.fail_next:
            self.fail_next -= 1
            raise self.failure
        conn = FakeConnection(self, next(self._numbers), asyncio.get_running_loop())
        self.connections.append(conn)
        return conn

    @property
    def open_connections(self) -> list[FakeConnection]:
        """The connections opened and not closed yet."""
        return [c for c in self.connections if not c.closed]

    def notify(self, channel: str, payload: str = "", pid: int = 1) -> int:
        """``pg_notify(channel, payload)`` from another session (backend ``pid``): every
        open connection LISTENing on ``channel`` receives it. Returns how many did."""
        return sum(conn.notify(channel, payload, pid) for conn in self.open_connections)


class FakeConnection:
    """A :class:`~pgpool_core.DriverConnection` double that records what it was asked.

    .. versionadded:: 0.1
    """

    def __init__(
        self, connector: FakeConnector, number: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.connector = connector
        self.number = number
        self.loop = loop
        self.closed = False
        self.status = TxStatus.IDLE
        #: The statements the server was asked to run, one by one (a BEGIN sent in the same
        #: message as the next statement counts as its own), and the messages themselves
        #: (one per round trip).
        self.statements: list[str] = []
        self.messages: list[str] = []
        self.cancel_requests = 0
        #: What the server reports about read-only sessions (None: it reports nothing,
        #: as PostgreSQL before 14 and PgBouncer).
        self.read_only_server: bool | None = None
        self._pending: asyncio.Future[None] | None = None
        self._running = False
        self._dropped = False
        # Like aiopg, one waiter per connection: wait_until_idle() replaces the statement's
        # future, which then never completes.
        self._waiter: asyncio.Future[None] | None = None
        self._result = QueryResult(0)
        self._tag: str | None = None
        self._script: Script | None = None
        #: The channels this session LISTENs on (as the server tracks them).
        self.listening: set[str] = set()
        #: The keepalive settings asked for: (idle, interval, count), or None.
        self.keepalives: tuple[int, int, int] | None = None
        self._notifications: list[tuple[int, str, str]] = []
        self._wakeup: Callable[[], None] | None = None
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"<FakeConnection #{self.number}{' closed' if self.closed else ''}>"

    @property
    def handle(self) -> FakeConnection:
        return self

    def dict_cursor(self, timeout: float) -> FakeCursor:
        return FakeCursor(self, timeout)

    def send(
        self, sql: str, params: Any, *, callproc: bool = False, keep: bool = False
    ) -> asyncio.Future[None]:
        if self.closed:
            raise psycopg2.InterfaceError("connection already closed")
        if self._running:
            raise RuntimeError("execute() called while another statement is running")
        begin, sql = self._record(sql)
        future: asyncio.Future[None] = (
            KeptFuture(loop=self.loop) if keep else self.loop.create_future()
        )
        self._pending = future
        self._waiter = future
        script = self.connector.script_for(sql)
        first = _FIRST_WORD.match(sql)
        verb = first.group(1).upper() if first else ""
        rows = list(script.rows) if script and script.rows is not None else None
        if rows is not None:
            self._result = QueryResult(len(rows), rows=[dict(r) for r in rows])
        else:
            self._result = QueryResult(script.row_count if script else 0)
        self.status = TxStatus.ACTIVE if self.status is TxStatus.IDLE else self.status
        in_tx = (
            self.status in (TxStatus.INTRANS, TxStatus.INERROR)
            or verb == "BEGIN"
            or begin is not None
        )

        def finish(error: BaseException | None = None) -> None:
            if not self._running or self._pending is not future:
                return
            self._running = False
            # A syntax error rejects the whole message before any of it runs: its BEGIN too.
            unparsed = begin is not None and isinstance(error, psycopg2.errors.SyntaxError)
            self._end_statement(sql, verb, in_tx and not unparsed, error)
            # The pool may have given up on (failed or cancelled) its future already.
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

        self._finish = finish
        self._running = True
        self._script = script
        if self._dropped or (script is not None and script.close_connection):
            self.loop.call_soon(self._die)
        elif script is not None and script.hang:
            pass
        elif script is not None and script.gate is not None:
            gate = script.gate

            async def after_gate() -> None:
                await gate.wait()
                finish(script.error)

            self._gate_task = self.loop.create_task(after_gate())
        elif script is not None and script.instant:
            finish(script.error)
        else:
            self.loop.call_soon(finish, script.error if script else None)
        return future

    def _record(self, message: str) -> tuple[re.Match[str] | None, str]:
        """Record a message and its statements; returns its pipelined BEGIN (if any) and
        the statement that follows it."""
        self.messages.append(message)
        begin = _PIPELINED_BEGIN.match(message)
        sql = message
        if begin is not None:
            self.statements.append(begin.group(1))
            sql = message[begin.end() :]
        self.statements.append(sql)
        return begin, sql

    def _end_statement(self, sql: str, verb: str, in_tx: bool, error: BaseException | None) -> None:
        """The tag and transaction status a statement leaves, as PostgreSQL sets them."""
        # COMMIT in a failed transaction answers ROLLBACK, with no error.
        failed = self.status is TxStatus.INERROR
        self._tag = "ROLLBACK" if verb in ("COMMIT", "END") and failed else verb
        if error is not None:
            self.status = TxStatus.INERROR if in_tx else TxStatus.IDLE
        elif _ROLLBACK_TO.match(sql):
            self.status = TxStatus.INTRANS  # usable again after ROLLBACK TO SAVEPOINT
        elif verb == "BEGIN":
            self.status = TxStatus.INTRANS
        elif verb in ("COMMIT", "ROLLBACK", "END"):
            self.status = TxStatus.IDLE
        else:
            self.status = TxStatus.INTRANS if in_tx else TxStatus.IDLE
        if error is None:
            self._apply_listens(sql)

    def _apply_listens(self, sql: str) -> None:
        """What the LISTEN / UNLISTEN statements of a completed message change."""
        for verb, name in _LISTEN.findall(sql):
            if name.startswith('"'):
                channel = name[1:-1].replace('""', '"')
            else:
                channel = name if name == "*" else name.lower()
            if verb.upper() == "LISTEN":
                self.listening.add(channel)
            elif channel == "*":
                self.listening.clear()
            else:
                self.listening.discard(channel)

    def _die(self) -> None:
        self.close()

    # -- notifications (a ListenerConnection) ----------------------------------------------

    @property
    def backend_pid(self) -> int:
        """A made-up server process id: 10000 + the connection's number."""
        return 10000 + self.number

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        self._wakeup = callback

    def take_notifications(self) -> list[tuple[int, str, str]]:
        taken, self._notifications = self._notifications, []
        return taken

    def failure(self) -> BaseException | None:
        if not self.closed:
            return None
        return self._failure or psycopg2.OperationalError("connection closed")

    def enable_keepalives(self, idle: int, interval: int, count: int) -> None:
        self.keepalives = (idle, interval, count)

    def notify(self, channel: str, payload: str = "", pid: int = 1) -> bool:
        """The server delivers a notification, if this session LISTENs on ``channel``
        (and is open); the reader fires. Returns whether it was delivered."""
        if self.closed or channel not in self.listening:
            return False
        self._notifications.append((pid, channel, payload))
        self._wake()
        return True

    def terminate(
        self, message: str = "terminating connection due to administrator command"
    ) -> None:
        """The server ends this session (``pg_terminate_backend``, a restart): a running
        statement fails, the reader fires, ``failure()`` tells ``FATAL: message``."""
        if self.closed:
            return
        self._failure = psycopg2.OperationalError(f"FATAL: {message}")
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup()

    def drop(self) -> None:
        """The server drops this connection; the client only finds out on next use."""
        self._dropped = True

    def result(self) -> QueryResult:
        return self._result

    def status_message(self) -> str | None:
        """The command tag of the last statement: its first word, upper-cased."""
        return self._tag

    def has_pending_input(self) -> bool:
        """True once the server dropped the connection (see :meth:`drop`)."""
        return self._dropped and not self.closed

    def is_busy(self) -> bool:
        return self._running and not self.closed

    def wait_until_idle(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self.is_busy():
            self._waiter = waiter
        else:
            waiter.set_result(None)
        return waiter

    def cancel(self) -> None:
        """Server-side cancel; like psycopg2's, callable from any thread."""
        self.cancel_requests += 1
        self.loop.call_soon_threadsafe(self._cancel_running)

    def prepare_cancel(self) -> Callable[[], None]:
        return self.cancel

    def _cancel_running(self) -> None:
        if self._script is not None and self._script.ignore_cancel:
            return
        if self._running:
            self._finish(
                psycopg2.extensions.QueryCanceledError("canceling statement due to user request")
            )

    def transaction_status(self) -> TxStatus:
        return TxStatus.UNKNOWN if self.closed else self.status

    def server_read_only(self) -> bool | None:
        return self.read_only_server

    def close(self) -> None:
        if self.closed:
            return
        if self._running:
            self._finish(psycopg2.OperationalError("server closed the connection unexpectedly"))
        self.closed = True


class FakeCursor:
    """The fake's ``aiopg.Cursor`` (``PostgresConnector.cursor``): statements run through
    the connection's scripts; rows come back as dicts.

    .. versionadded:: 0.2
    """

    def __init__(self, conn: FakeConnection, timeout: float) -> None:
        self.connection = conn
        self.timeout = timeout
        self._rows: list[dict[str, Any]] = []
        self.rowcount = -1
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def execute(self, operation: str, parameters: Any = None) -> None:
        if self.closed:
            raise psycopg2.InterfaceError("cursor already closed")
        await self.connection.send(operation, parameters)
        result = self.connection.result()
        self._rows, self.rowcount = list(result.rows), result.row_count

    async def fetchone(self) -> dict[str, Any] | None:
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows
