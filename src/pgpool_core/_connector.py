"""The driver boundary: what the pool needs from a connection, and its aiopg implementation.

The pool never awaits aiopg's own ``_poll``: that closes the socket on any timeout or
cancellation and leaves the statement running on the server. Instead a statement is sent
on a reused psycopg2 cursor and the pool awaits aiopg's readiness future under its own
deadline, so it can send a server-side cancel and keep the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import functools
import inspect
import ipaddress
import os
import random
import select
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

import aiopg
import psycopg2
import psycopg2.extensions
import psycopg2.extras

from ._config import PoolSettings
from ._redact import first_line, is_srv, passwords_in, scrub, validate_url
from ._result import QueryResult
from ._srv import SrvResolver, srv_query_name, srv_to_url
from .errors import ConfigurationError, SettingsError

__all__ = [
    "AiopgConnector",
    "Connector",
    "DriverConnection",
    "KeptFuture",
    "ListenerConnection",
    "RawNotification",
    "TxStatus",
    "UrlSource",
]


class TxStatus(enum.IntEnum):
    """libpq transaction status, as psycopg2 reports it.

    .. versionadded:: 0.1
    """

    IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
    ACTIVE = psycopg2.extensions.TRANSACTION_STATUS_ACTIVE
    INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    INERROR = psycopg2.extensions.TRANSACTION_STATUS_INERROR
    UNKNOWN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN


_TX_STATUS: dict[int, TxStatus] = {status.value: status for status in TxStatus}


class DriverConnection(Protocol):
    """One open database connection as the pool drives it.

    .. versionadded:: 0.1
    """

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by either side)."""
        ...

    @property
    def handle(self) -> Any:
        """The object handed out by ``PoolManager.connection()`` (an aiopg connection)."""

    def dict_cursor(self, timeout: float) -> Any:
        """A driver cursor on this connection whose rows are dicts, each of its operations
        bounded by ``timeout`` (``PostgresConnector.cursor``, sprockets-postgres' escape
        hatch: an ``aiopg.Cursor``)."""

    def send(
        self, sql: str, params: Any, *, callproc: bool = False, keep: bool = False
    ) -> asyncio.Future[None]:
        """Send one statement; the future completes (or fails) when its result is in.

        The pool may cancel the future or fail it itself (deadline); that only stops the
        waiting, never the statement: :meth:`is_busy` tells whether it still runs. With
        ``keep`` the future is a :class:`KeptFuture` (for COMMIT): it refuses cancel(), so
        its outcome is never lost. Raises at once for errors found before sending.
        """

    def is_busy(self) -> bool:
        """Whether a sent statement is still running on the server."""

    def has_pending_input(self) -> bool:
        """Whether the server sent something while the connection sat idle (an error such
        as a terminated backend, a notice, a notification): it must be checked before use."""

    def wait_until_idle(self) -> asyncio.Future[None]:
        """A future that completes when the running statement ends (at once if none)."""

    def result(self) -> QueryResult:
        """The result of the statement whose future completed."""

    def status_message(self) -> str | None:
        """The command tag of the statement whose future completed (``COMMIT``,
        ``ROLLBACK``, ``INSERT 0 1``...): local, no round trip. PostgreSQL answers COMMIT
        in a failed transaction with ``ROLLBACK`` and no error."""

    def cancel(self) -> None:
        """Ask the server to cancel the running statement. Blocking: run off the loop."""

    def prepare_cancel(self) -> Callable[[], None]:
        """On the loop: capture what a cancel needs; the returned callable sends it
        (blocking, run it off the loop) and stays safe if the connection closes meanwhile."""

    def transaction_status(self) -> TxStatus:
        """libpq's transaction status of the connection (idle, in a transaction, ...)."""
        ...

    def server_read_only(self) -> bool | None:
        """Whether the server says its sessions are read-only (``in_hot_standby`` or
        ``default_transaction_read_only`` reported ``on``): local, no round trip; None when
        it reports neither (PostgreSQL before 14, PgBouncer)."""

    def close(self) -> None:
        """Close at once (no round trip)."""


RawNotification: TypeAlias = "tuple[int, str, str]"
"""One ``NOTIFY`` as the server delivered it: (sender's backend pid, channel, payload)."""


@runtime_checkable
class ListenerConnection(Protocol):
    """A connection held open for ``LISTEN``: statements as on :class:`DriverConnection`,
    plus what the server pushes on its own (notifications, the end of the session).

    Delivery is event-driven: the driver's reader callback, which already runs whenever
    the socket turns readable, queues the notifications it parses and calls the wakeup
    callback; nothing polls. :class:`AiopgConnection` and the test fake implement it.
    """

    @property
    def closed(self) -> bool: ...

    @property
    def backend_pid(self) -> int:
        """The server process serving this connection (``pg_stat_activity.pid``)."""

    def send(
        self, sql: str, params: Any, *, callproc: bool = False, keep: bool = False
    ) -> asyncio.Future[None]:
        """As :meth:`DriverConnection.send`."""

    def is_busy(self) -> bool:
        """Whether a sent statement is still running on the server."""

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (on the loop, from the reader) each time the server sent
        something: notifications may be ready, or the connection may have ended. Spurious
        calls are allowed. Set it while no statement runs."""

    def take_notifications(self) -> list[RawNotification]:
        """Every notification received and not yet taken, oldest first; no I/O. Still
        answers after the connection closed (what arrived before the end)."""

    def failure(self) -> BaseException | None:
        """Why the connection ended: the server's ``FATAL`` message when it sent one
        (``terminating connection due to administrator command``), else the driver's
        error; None while open."""

    def enable_keepalives(self, idle: int, interval: int, count: int) -> None:
        """TCP keepalives on the socket, as libpq's ``keepalives=1``, ``keepalives_idle``,
        ``keepalives_interval`` and ``keepalives_count`` set them (seconds, probes): the
        kernel ends a connection whose peer stopped answering. No-op for a Unix socket.

        :raises OSError: the socket refused an option.
        """

    def close(self) -> None:
        """Close at once (no round trip)."""


class KeptFuture(asyncio.Future[None]):
    """A statement's future that refuses ``cancel()``. A task awaiting it that gets
    cancelled is woken, with ``CancelledError``, only once the statement has answered, and
    the answer stays readable: the pool's wait for a COMMIT survives a cancelled caller
    without an extra hop through the event loop."""

    def cancel(self, msg: Any = None) -> bool:
        return False


class Connector(Protocol):
    """Opens connections for the pool.

    .. versionadded:: 0.1
    """

    async def connect(self, timeout: float) -> DriverConnection:
        """Open one connection, giving up after ``timeout`` seconds."""
        ...


class _PooledCursor:
    """An ``aiopg.Cursor`` shared with the pool's own statements: before each use it drops
    the finished waiter the pool's last statement left on the aiopg connection (aiopg
    would take it for a statement still running). Everything else is the cursor's."""

    __slots__ = ("_connection", "_cursor")

    def __init__(self, cursor: aiopg.Cursor, connection: AiopgConnection) -> None:
        self._cursor = cursor
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        self._connection.handle  # noqa: B018 - the property clears a finished waiter
        return getattr(self._cursor, name)

    def __repr__(self) -> str:
        return f"<pooled {self._cursor!r}>"


def _drive(weak_conn: Any) -> None:
    """aiopg's I/O callback, then: if the socket is gone (libpq closed it: a dead server
    connection, a refused or failed connect), take every registration of its descriptor
    off the loop at once.

    aiopg forgets the descriptor only when ``select()`` on it fails, and even then leaves
    its writer registered. Another thread (a cancel request, a DNS lookup) may already have
    been given the same number, and the next socket to get it fails to register in
    unrelated code: ``FileNotFoundError`` from ``epoll_ctl`` on asyncio; on uvloop, which
    closes its poll handle on the error but keeps it, ``RuntimeError: unable to perform
    operation on <UVPoll closed=True>``. psycopg2's ``closed`` (or aiopg having dropped the
    descriptor, or libpq no longer naming it: a failed connect leaves the connection open
    with no socket) says for certain that the socket is gone.

    The number is forgotten at once, in this callback, while it still names this
    connection's registration: aiopg's own ``close()`` later removes the reader of
    ``_fileno`` by number, and by then the number may belong to another connection's
    socket (a connect in progress, which would then wait out its whole timeout).
    """
    conn = weak_conn()
    if conn is None:
        return
    fileno = conn._fileno
    aiopg.Connection._ready(weak_conn)
    if fileno is None:
        return
    raw = conn._conn
    if conn._fileno is not None and not raw.closed and raw.fileno() == fileno:
        return
    conn._fileno = None
    conn._writing = False
    for remove in (conn._loop.remove_reader, conn._loop.remove_writer):
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            remove(fileno)
    waiter = conn._waiter
    if waiter is not None and not waiter.done():  # a connect that lost its socket
        waiter.set_exception(psycopg2.OperationalError("the connection's socket was closed"))


def _drive_and_wake(wake: Callable[[], None], weak_conn: Any) -> None:
    """:func:`_drive`, then ``wake()``: a listener connection's reader. aiopg's ``_ready``
    moved any notifications psycopg2 parsed into the connection's queue (or closed that
    queue with the error that ended the connection)."""
    _drive(weak_conn)
    wake()


def _take_reader(conn: aiopg.Connection) -> None:
    """Route every I/O callback of ``conn`` through :func:`_drive`: the reader aiopg
    registered, and the writer and first poll it looks up on the instance. Remembers
    which socket the descriptor names (see :func:`_close_aiopg`)."""
    conn._ready = _drive  # type: ignore[method-assign,assignment]
    fileno = conn._fileno
    assert fileno is not None
    conn._pgpool_socket = _socket_identity(fileno)  # type: ignore[attr-defined]
    conn._loop.remove_reader(fileno)
    conn._loop.add_reader(fileno, _drive, conn._weakref)


def _socket_identity(fileno: int) -> tuple[int, int] | None:
    """What the descriptor number names now (device, inode), None when it is closed."""
    try:
        stat = os.fstat(fileno)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _close_aiopg(conn: aiopg.Connection) -> None:
    """Close ``conn``, taking its descriptor's registrations off the loop only if the
    number still names the socket it registered.

    aiopg's ``close()`` removes the loop's reader and writer of ``conn._fileno`` by number.
    When libpq has already closed that socket (a dead connection, a failed connect), the
    number may name another connection's socket by now, a connect in progress included:
    removing "its" reader would leave that connect waiting for a wake-up that never comes,
    until its connect timeout. Such a number is forgotten instead."""
    fileno = conn._fileno
    if fileno is not None and _socket_identity(fileno) != getattr(conn, "_pgpool_socket", None):
        conn._fileno = None
        conn._writing = False
    conn.close()


class AiopgConnection:
    """A :class:`DriverConnection` over an aiopg connection and one reused psycopg2 cursor."""

    __slots__ = ("_conn", "_cursor", "_poller", "_raw")

    def __init__(self, conn: aiopg.Connection) -> None:
        self._conn = conn
        self._raw = conn.raw
        # Readability of the idle socket, without a round trip or the loop's help: a
        # backend terminated a moment ago has its FATAL message waiting there.
        self._poller = select.poll()
        self._poller.register(self._raw.fileno(), select.POLLIN)
        # One cursor per connection: psycopg2 async cursors can run statement after statement.
        self._cursor = self._raw.cursor()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)  # what aiopg's property reads, without the property

    @property
    def handle(self) -> aiopg.Connection:
        # aiopg's own API refuses to run while any waiter is set; drop a finished one.
        waiter = self._conn._waiter
        if waiter is not None and waiter.done():
            self._conn._waiter = None
        return self._conn

    def dict_cursor(self, timeout: float) -> _PooledCursor:
        conn = self.handle
        impl = self._raw.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        return _PooledCursor(aiopg.Cursor(conn, impl, timeout, conn.echo), self)

    def send(
        self, sql: str, params: Any, *, callproc: bool = False, keep: bool = False
    ) -> asyncio.Future[None]:
        conn = self._conn
        # The future we return is aiopg's waiter itself: its reader callback (_ready)
        # resolves whatever future sits in conn._waiter. A waiter the pool already gave
        # up on (timed out, cancelled) is simply replaced.
        stale = conn._waiter
        if stale is not None and not stale.done():
            raise RuntimeError("a statement is already running on this connection")
        waiter: asyncio.Future[None] = (
            KeptFuture(loop=conn._loop) if keep else conn._loop.create_future()
        )
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
        _drive(conn._weakref)
        return waiter

    def is_busy(self) -> bool:
        return not self._raw.closed and bool(self._raw.isexecuting())

    def has_pending_input(self) -> bool:
        return not self._raw.closed and bool(self._poller.poll(0))

    def wait_until_idle(self) -> asyncio.Future[None]:
        conn = self._conn
        waiter: asyncio.Future[None] = conn._loop.create_future()
        if not self.is_busy():
            waiter.set_result(None)
            return waiter
        conn._waiter = waiter
        _drive(conn._weakref)
        return waiter

    def result(self) -> QueryResult:
        cursor = self._cursor
        description = cursor.description
        if description is None:
            return QueryResult(max(cursor.rowcount, 0))
        names: Sequence[str] = [column[0] for column in description]
        return QueryResult.from_cursor(names, cursor.fetchall(), cursor.rowcount)

    def status_message(self) -> str | None:
        message = self._cursor.statusmessage
        return None if message is None else str(message)

    def cancel(self) -> None:
        self.prepare_cancel()()

    def prepare_cancel(self) -> Callable[[], None]:
        # psycopg2's cancel() calls libpq's PQcancel without releasing the GIL: behind a
        # black-holed network it would freeze every thread, the event loop included. The
        # same libpq called through ctypes releases the GIL for the call.
        lib = _libpq()
        if lib is None:  # pragma: no cover - libpq not found in the process
            return self._raw.cancel  # type: ignore[no-any-return]
        handle = lib.PQgetCancel(self._raw.pgconn_ptr)  # a copy: outlives the connection
        if not handle:  # pragma: no cover - closed under us
            raise psycopg2.OperationalError("cannot cancel: connection has no cancel handle")

        def send() -> None:
            errbuf = ctypes.create_string_buffer(256)
            try:
                if not lib.PQcancel(handle, errbuf, len(errbuf)):
                    message = errbuf.value.decode(errors="replace").strip()
                    raise psycopg2.OperationalError(f"cancel request failed: {message}")
            finally:
                lib.PQfreeCancel(handle)

        return send

    def transaction_status(self) -> TxStatus:
        raw = self._raw
        if raw.closed:
            return TxStatus.UNKNOWN
        return _TX_STATUS[raw.get_transaction_status()]  # TxStatus(n) costs ~1 us

    def server_read_only(self) -> bool | None:
        info = self._raw.info
        standby = info.parameter_status("in_hot_standby")
        read_only = info.parameter_status("default_transaction_read_only")
        if standby is None and read_only is None:
            return None
        return "on" in (standby, read_only)

    # -- ListenerConnection: notifications -------------------------------------------------

    @property
    def backend_pid(self) -> int:
        return int(self._raw.info.backend_pid)

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        conn = self._conn
        drive: Callable[[Any], None] = (
            _drive if callback is None else functools.partial(_drive_and_wake, callback)
        )
        # aiopg looks its writer and first poll up on the instance; the reader is
        # re-registered in place (add_reader replaces the callback of a registered fd).
        conn._ready = drive  # type: ignore[method-assign,assignment]
        fileno = conn._fileno
        if fileno is not None and not self._raw.closed:
            conn._loop.add_reader(fileno, drive, conn._weakref)

    def take_notifications(self) -> list[RawNotification]:
        taken: list[RawNotification] = []
        queue = self._conn._notifies  # filled by aiopg's _ready, oldest first
        while not queue.empty():
            notify = queue.get_nowait()
            taken.append((int(notify.pid), str(notify.channel), str(notify.payload)))
        pending = self._raw.notifies  # parsed by psycopg2 but not moved yet (none, normally)
        while pending:
            notify = pending.pop(0)
            taken.append((int(notify.pid), str(notify.channel), str(notify.payload)))
        return taken

    def failure(self) -> BaseException | None:
        raw = self._raw
        if not raw.closed:
            return None
        # A terminated backend (pg_terminate_backend, a shutdown) says why before closing;
        # libpq takes that FATAL message, arriving while idle, for a notice.
        for notice in reversed(raw.notices):
            if notice.startswith("FATAL:"):
                return psycopg2.OperationalError(" ".join(notice.split()))
        closing = self._conn._notifies_proxy._close_event  # aiopg's record of the error
        if closing.done() and not closing.cancelled() and closing.exception() is not None:
            return closing.exception()
        return psycopg2.OperationalError("connection closed")

    def enable_keepalives(self, idle: int, interval: int, count: int) -> None:
        # What libpq does for keepalives_* (setKeepalivesIdle & co. in fe-connect.c), on a
        # duplicate of the descriptor: options belong to the socket, not the descriptor.
        sock = socket.socket(fileno=os.dup(self._raw.fileno()))
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            # macOS names the idle time TCP_KEEPALIVE.
            for names, value in (
                (("TCP_KEEPIDLE", "TCP_KEEPALIVE"), idle),
                (("TCP_KEEPINTVL",), interval),
                (("TCP_KEEPCNT",), count),
            ):
                option = next((getattr(socket, n) for n in names if hasattr(socket, n)), None)
                if option is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, option, max(int(value), 1))
        finally:
            sock.close()

    def close(self) -> None:
        _close_aiopg(self._conn)


UrlSource: TypeAlias = "str | Callable[[], str | Awaitable[str]]"
"""A URL or password, or a callable (sync or async) evaluated at every connect."""

#: Messages libpq gives when the server answered and refused the connection (password,
#: role or database, pg_hba.conf): waiting cannot heal these. libpq has no SQLSTATE for
#: connect failures, so the (English) text is all there is.
REFUSED_BY_SERVER = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",  # role / database
)
# ... and with those, the configuration errors found before reaching a server.
_CONFIG_ERRORS = (
    *REFUSED_BY_SERVER,
    "authentication failed",
    "could not translate host name",
    "name or service not known",
    "could not resolve",
    "invalid connection option",
    "invalid sslmode",
    "invalid target_session_attrs",
)
# Errors after which libpq itself would not try the next host either.
_STOP_TRYING = ("password authentication failed", "no pg_hba.conf entry", "does not exist")


@dataclass(frozen=True)
class _Target:
    host: str | None
    port: str | None
    hostaddr: str | None = None

    def __str__(self) -> str:
        host = self.host or "local socket"
        return f"{host}:{self.port}" if self.port else host


class AiopgConnector:
    """Opens aiopg connections with the pool's adapters registered.

    Each connect evaluates ``url`` and ``password`` if they are callables (credential
    rotation), resolves SRV URLs, resolves host names off the event loop, and tries the
    hosts of a multi-host URL one by one, each bounded by ``timeout`` (libpq's async
    connect has no per-host deadline of its own). ``target_session_attrs`` is checked by
    libpq on each host; ``prefer-standby`` takes a second pass accepting any server.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: UrlSource,
        *,
        password: UrlSource | None = None,
        enable_hstore: bool = False,
        enable_json: bool = False,
        enable_uuid: bool = True,
        application_name: str | None = None,
        statement_timeout: float = 120.0,
        srv_resolver: SrvResolver | None = None,
    ) -> None:
        self._url = url
        self._password = password
        self._application_name = application_name
        self._srv_resolver = srv_resolver
        self._kwargs: dict[str, Any] = {
            "enable_hstore": enable_hstore,
            "enable_json": enable_json,
            "enable_uuid": enable_uuid,
        }
        # aiopg's own per-statement bound, only used by code that drives the aiopg
        # connection directly (PoolManager.connection()); the pool's path never uses it.
        self._statement_timeout = statement_timeout
        #: The URL of the latest connect (after callables and SRV), for naming and redaction.
        self.last_url: str | None = url if isinstance(url, str) else None
        self._secrets: set[str] = set()

    @classmethod
    def for_settings(
        cls, url: UrlSource, settings: PoolSettings, password: UrlSource | None = None
    ) -> AiopgConnector:
        """The connector a pool with ``settings`` uses (``url`` may be a callable)."""
        return cls(
            url,
            password=password,
            enable_hstore=settings.enable_hstore,
            enable_json=settings.enable_json,
            enable_uuid=settings.enable_uuid,
            application_name=settings.application_name,
            statement_timeout=settings.query_timeout,
        )

    def redact(self, text: str) -> str:
        """``text`` without any password this connector has used (as written, or as
        repr() or a URL escapes it)."""
        return scrub(text, self._secrets)

    async def connect(self, timeout: float) -> AiopgConnection:
        """Open one connection, each host attempt bounded by ``timeout`` seconds.

        :raises ConfigurationError: the server refused the configuration (authentication,
            unknown role or database, unknown host, bad URL, no SRV records).
        :raises psycopg2.OperationalError: no host could be reached (message redacted).
        :raises asyncio.TimeoutError: a single-host connect ran out of time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        dsn, kwargs = await self._evaluate(deadline)
        info = psycopg2.extensions.parse_dsn(dsn)
        targets = await _resolve_targets(_targets(info), deadline)
        attrs = info.get("target_session_attrs")
        passes: list[str | None] = ["standby", "any"] if attrs == "prefer-standby" else [attrs]
        if info.get("load_balance_hosts") == "random":
            random.shuffle(targets)
        failures: list[str] = []
        for wanted in passes:
            for target in targets:
                attempt = dict(kwargs)
                if len(targets) > 1 or target.hostaddr is not None:
                    attempt.update(host=target.host, port=target.port, hostaddr=target.hostaddr)
                    attempt = {k: v for k, v in attempt.items() if v is not None}
                if wanted is not None:
                    attempt["target_session_attrs"] = wanted
                try:
                    return await self._connect_once(dsn, attempt, timeout)
                except (psycopg2.Error, OSError, asyncio.TimeoutError) as exc:
                    message = self.redact(_first_line(exc))
                    error = _typed(exc, message)
                # Raised outside the except block, so the driver's unredacted error does
                # not ride along as __context__.
                if len(targets) == 1 and len(passes) == 1:
                    raise error
                failures.append(f"{target}: {message}")
                if any(marker in message for marker in _STOP_TRYING):
                    raise ConfigurationError("; ".join(failures))
        raise psycopg2.OperationalError("; ".join(failures))

    async def _evaluate(self, deadline: float) -> tuple[str, dict[str, Any]]:
        """The DSN and keyword arguments for this connect (callables evaluated, SRV resolved)."""
        loop = asyncio.get_running_loop()
        failure: str | None = None
        try:
            url = await _evaluate(self._url, deadline - loop.time())
            self._remember(passwords_in(url))
            validate_url(url)
            if is_srv(url):
                resolver = self._srv_resolver or SrvResolver()
                name = srv_query_name(url)
                records = await asyncio.wait_for(
                    resolver.resolve(name), max(deadline - loop.time(), 0)
                )
                url = srv_to_url(url, records)
            kwargs = dict(self._kwargs)
            info = psycopg2.extensions.parse_dsn(url)
            if self._password is not None:
                kwargs["password"] = await _evaluate(self._password, deadline - loop.time())
                self._remember([kwargs["password"]])
            self._remember([info.get("password", "")])
            if self._application_name and "application_name" not in info:
                kwargs["application_name"] = self._application_name
        except SettingsError as exc:
            failure = self.redact(str(exc))
        if failure is not None:  # outside the except block: no __context__
            raise ConfigurationError(failure)
        self.last_url = url
        return url, kwargs

    def _remember(self, secrets: Iterable[str]) -> None:
        self._secrets.update(secret for secret in secrets if secret)

    async def _connect_once(
        self, dsn: str, kwargs: dict[str, Any], timeout: float
    ) -> AiopgConnection:
        # The connect runs as its own task and is never awaited through wait_for: on
        # Python < 3.12 a cancellation landing as the connect completes is swallowed by
        # aiopg's inner wait_for, the task succeeds anyway, and wait_for would drop the
        # open connection. Here a late connection is closed by a done-callback instead.
        task = asyncio.get_running_loop().create_task(
            self._open(dsn, kwargs), name="pgpool-aiopg-connect"
        )
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            raise asyncio.TimeoutError(f"connect timed out after {timeout:.3f} s")
        return AiopgConnection(task.result())

    async def _open(self, dsn: str, kwargs: dict[str, Any]) -> aiopg.Connection:
        # What aiopg.connect() does, with the reader handed to _drive before the first
        # byte: a connect that fails (refused, server shutting down) must not leave its
        # socket's registration behind either.
        conn = aiopg.Connection(dsn, self._statement_timeout, False, **kwargs)
        _take_reader(conn)
        # A failed connect is closed by aiopg itself (its _connect); by then _drive has
        # forgotten the descriptor number that libpq let go of.
        return await conn


async def _evaluate(source: UrlSource, timeout: float) -> str:
    if isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await asyncio.wait_for(_awaited(value), max(timeout, 0))
    if not isinstance(value, str):
        raise SettingsError(f"url/password callable returned {type(value).__name__}, not str")
    return value


async def _awaited(value: Awaitable[str]) -> str:
    return await value


def _first_line(exc: BaseException) -> str:
    return first_line(exc)


def _typed(exc: BaseException, message: str) -> BaseException:
    """The error to raise for a failed connect: configuration errors get their own type."""
    if any(marker in message for marker in _CONFIG_ERRORS):
        return ConfigurationError(message)
    if isinstance(exc, asyncio.TimeoutError):
        return asyncio.TimeoutError(message)
    return psycopg2.OperationalError(message)


def _targets(info: dict[str, str]) -> list[_Target]:
    """The hosts of a (multi-host) DSN with their ports, as libpq pairs them."""
    hosts = info.get("host", "").split(",") if info.get("host") else [None]
    addrs = info.get("hostaddr", "").split(",") if info.get("hostaddr") else []
    ports = info.get("port", "").split(",") if info.get("port") else []
    if len(ports) == 1:
        ports = ports * len(hosts)
    targets = []
    for index, host in enumerate(hosts):
        port = ports[index] if index < len(ports) and ports[index] else None
        addr = addrs[index] if index < len(addrs) and addrs[index] else None
        targets.append(_Target(host or None, port, addr))
    return targets


async def _resolve_targets(targets: list[_Target], deadline: float) -> list[_Target]:
    """Resolve host names off the event loop (libpq would block it); one target per address.

    Unix socket directories and IP literals pass through; a name that does not resolve is
    dropped unless nothing resolves, which raises :class:`ConfigurationError`.
    """
    loop = asyncio.get_running_loop()
    resolved: list[_Target] = []
    failures: list[str] = []
    for target in targets:
        host = target.host
        if target.hostaddr or not host or host.startswith("/") or _is_ip(host):
            resolved.append(target)
            continue
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, target.port or 5432, type=socket.SOCK_STREAM),
                max(deadline - loop.time(), 0),
            )
        except (OSError, asyncio.TimeoutError) as exc:
            failures.append(f'could not translate host name "{host}" to address: {exc}')
            continue
        seen: set[str] = set()
        for *_, sockaddr in infos:
            addr = str(sockaddr[0])
            if addr not in seen:
                seen.add(addr)
                resolved.append(_Target(host, target.port, addr))
    if not resolved:
        raise ConfigurationError("; ".join(failures))
    return resolved


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@functools.cache
def _libpq() -> ctypes.CDLL | None:
    """The libpq psycopg2 itself loaded (found in the process map), else the system one."""
    path: str | None = None
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split()
            name = os.path.basename(fields[-1]) if len(fields) >= 6 else ""
            if name.startswith("libpq") and ".so" in name:
                path = fields[-1]
                break
    path = path or ctypes.util.find_library("pq")
    if path is None:  # pragma: no cover
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:  # pragma: no cover
        return None
    lib.PQgetCancel.argtypes = [ctypes.c_void_p]
    lib.PQgetCancel.restype = ctypes.c_void_p
    lib.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.PQcancel.restype = ctypes.c_int
    lib.PQfreeCancel.argtypes = [ctypes.c_void_p]
    lib.PQfreeCancel.restype = None
    return lib


def _abandon(task: asyncio.Task[aiopg.Connection]) -> None:
    """Cancel a connect we no longer wait for; close what it connects anyway."""
    task.cancel()
    task.add_done_callback(_close_late_connection)


def _close_late_connection(task: asyncio.Task[aiopg.Connection]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        _close_aiopg(task.result())
