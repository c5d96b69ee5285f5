"""A managed ``LISTEN`` connection: notifications that survive outages.

:class:`Listener` owns one connection of its own (outside any pool's size budget) on which
it LISTENs; it delivers each ``NOTIFY`` as a :class:`Notification`, reconnects after an
outage and LISTENs again, and then reports the gap as one :class:`NotificationsMissed`.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import random
import re
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._connector import Connector, ListenerConnection, RawNotification
from ._logs import fields, logger
from ._redact import MASK, describe_error
from ._retry import RetryPolicy
from .errors import ConfigurationError, PoolClosedError, QueryParameterError, SettingsError

__all__ = [
    "Listener",
    "Notification",
    "NotificationsMissed",
    "listener_connect",
    "quote_channel",
    "validate_channel",
]

LOGGER = logger("listener")

#: PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer LISTEN name is cut by the
#: server, and pg_notify() refuses one outright, so they would never meet.
MAX_CHANNEL_BYTES = 63


@dataclass(frozen=True)
class Notification:
    """One ``NOTIFY channel, 'payload'`` (or ``pg_notify()``) committed on the server.

    ``pid`` is the backend process id of the session that sent it (its
    ``pg_backend_pid()``; equal to the listener's own for its own notifications).

    .. versionadded:: 0.3
    """

    channel: str
    payload: str
    pid: int


@dataclass(frozen=True)
class NotificationsMissed:
    """The listener was disconnected: notifications sent between ``lost_at`` and
    ``restored_at`` (``time.time()`` seconds) may never arrive. Everything sent after
    ``restored_at`` is delivered again; re-read what the notifications stand for.

    ``lost_at`` is the last moment the connection was known to work (LISTEN done, a
    notification, a passed check; for a listener that could not connect at start, the
    start), so the window is never too short. ``reason`` says why, on one line, without
    secrets.

    .. versionadded:: 0.3
    """

    lost_at: float
    restored_at: float
    reason: str


ListenerEvent: TypeAlias = "Notification | NotificationsMissed"


def validate_channel(channel: object) -> str:
    """``channel`` if PostgreSQL can LISTEN on it under exactly that name.

    :raises QueryParameterError: (a ``ValueError``) not a str, empty, a NUL character, or
        longer than 63 bytes in UTF-8; names the parameter and the value.
    """
    if not isinstance(channel, str):
        raise QueryParameterError(f"channel: expected a str, got {type(channel).__name__}")
    why = None
    if not channel:
        why = "empty"
    elif "\x00" in channel:
        why = "contains a NUL character"
    else:
        try:
            size = len(channel.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: libpq could never send it
            why = "not valid Unicode text"
        else:
            if size > MAX_CHANNEL_BYTES:
                why = f"longer than {MAX_CHANNEL_BYTES} bytes"
    if why is not None:
        shown = channel if len(channel) <= 80 else channel[:80] + "..."
        raise QueryParameterError(f"channel: invalid name {shown!r} ({why}); nothing was sent")
    return channel


def quote_channel(channel: str) -> str:
    """``channel`` as a quoted SQL identifier: matched as written, case and all, as
    ``pg_notify()`` matches its channel argument."""
    return '"' + channel.replace('"', '""') + '"'


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KEY_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def _describe(exc: BaseException) -> str:
    """``Type: first line`` with URL and key=value passwords masked (the default; a pool
    passes its connector's, which also knows the passwords it used)."""
    text = describe_error(exc, ())
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    return _KEY_PASSWORD.sub(rf"\g<1>{MASK}", text)


def listener_connect(connector: Connector) -> Callable[[float], Awaitable[ListenerConnection]]:
    """``connector.connect`` for a :class:`Listener`, checked: a connection that cannot
    deliver notifications is closed and refused.

    :raises ConfigurationError: (from the returned callable) the connector's connections
        are not :class:`~pgpool_core._connector.ListenerConnection`\\ s.
    """

    async def connect(timeout: float) -> ListenerConnection:
        conn = await connector.connect(timeout)
        if isinstance(conn, ListenerConnection):
            return conn
        conn.close()
        raise ConfigurationError(
            f"{type(connector).__name__} opens {type(conn).__name__} connections, which"
            " cannot deliver notifications (no set_wakeup/take_notifications)"
        )

    return connect


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class _Loss:
    """An outage in progress: since when notifications may be lost, and why."""

    since: float
    reason: str


class _Wakeup:
    """A level-triggered flag the connection's reader sets when the server sent something.

    Waiting on it is cancellable without losing anything: the notifications themselves
    stay queued in the connection until taken.
    """

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self, timeout: float) -> None:
        """Until set, or ``timeout`` seconds."""
        if self._is_set:
            return
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            # asyncio.wait, not wait_for: it never swallows a cancellation of the caller.
            await asyncio.wait((waiter,), timeout=max(timeout, 0))
        finally:
            self._waiter = None
            waiter.cancel()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark the outcome of a statement nobody waits for any more as seen."""
    if not future.cancelled():
        future.exception()


class _Session:
    """One server session of the listener: its connection, and the channels LISTENed on
    it (what ``pg_listening_channels()`` returns there)."""

    __slots__ = ("conn", "listening")

    def __init__(self, conn: ListenerConnection) -> None:
        self.conn = conn
        self.listening: set[str] = set()

    async def run(self, sql: str, bound: float) -> BaseException | None:
        """Run ``sql`` (no parameters) within ``bound`` seconds; its error, or None. With
        no answer in time the connection is closed: it cannot be trusted, nor reused while
        the statement may still run."""
        conn = self.conn
        try:
            future = conn.send(sql, None)
        except Exception as exc:
            return exc
        try:
            done, _ = await asyncio.wait((future,), timeout=bound)
        finally:
            if not future.done():
                future.add_done_callback(_retrieve)
        if not done:
            conn.close()
            return TimeoutError(f"no answer from the server within {bound:.3f} s")
        if future.cancelled():
            return RuntimeError("the statement was cancelled")
        return future.exception()

    async def sync(self, channels: Iterable[str], bound: float) -> BaseException | None:
        """LISTEN on ``channels`` and on nothing else, in one round trip (the statements
        of one message commit together, so it is all or nothing); the error, or None."""
        wanted = list(channels)
        statements = [f"UNLISTEN {quote_channel(c)}" for c in self.listening if c not in wanted]
        statements += [f"LISTEN {quote_channel(c)}" for c in wanted if c not in self.listening]
        if not statements:
            return None
        error = await self.run("; ".join(statements), bound)
        if error is None:
            self.listening = set(wanted)
        return error

    def close(self) -> None:
        self.conn.set_wakeup(None)
        self.conn.close()


class _Subscription:
    """One ``async for`` over a listener: the events published since it began, in order,
    then the end once the listener closed."""

    __slots__ = ("__weakref__", "_queue")

    _END: Any = object()

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, event: ListenerEvent) -> None:
        self._queue.put_nowait(event)

    def end(self) -> None:
        self._queue.put_nowait(self._END)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> ListenerEvent:
        event = await self._queue.get()
        if event is self._END:
            self._queue.put_nowait(event)  # every later __anext__ ends too
            raise StopAsyncIteration
        return event  # type: ignore[no-any-return]


class _Fanout:
    """Hands each event to its callback and to every open iterator, in order. A callback
    that raises is logged and delivery goes on; an awaitable it returns runs as a task of
    its own (the listener never waits for user code)."""

    __slots__ = ("_closed", "_describe", "_name", "_on_missed", "_on_notify", "_subs", "_tasks")

    def __init__(
        self,
        name: str,
        describe: Callable[[BaseException], str],
        on_notify: Callable[[Notification], object] | None,
        on_missed: Callable[[NotificationsMissed], object] | None,
    ) -> None:
        self._name = name
        self._describe = describe
        self._on_notify = on_notify
        self._on_missed = on_missed
        # Weak: an iterator dropped without being exhausted stops collecting events.
        self._subs: weakref.WeakSet[_Subscription] = weakref.WeakSet()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False

    def subscribe(self) -> _Subscription:
        sub = _Subscription()
        if self._closed:
            sub.end()
        else:
            self._subs.add(sub)
        return sub

    def publish(self, event: ListenerEvent) -> None:
        if isinstance(event, Notification):
            if self._on_notify is not None:
                self._call("on_notify", self._on_notify, event)
        elif self._on_missed is not None:
            self._call("on_missed", self._on_missed, event)
        for sub in list(self._subs):
            sub.put(event)

    def _call(self, what: str, callback: Callable[[Any], object], event: ListenerEvent) -> None:
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(lambda t: self._task_done(what, t))
        except Exception as exc:
            self._log(what, exc)

    def _task_done(self, what: str, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log(what, task.exception())  # type: ignore[arg-type]

    def _log(self, what: str, exc: BaseException) -> None:
        # Where it failed (files and lines, not their source text) and the message
        # redacted: never the raw message, source lines or locals.
        where = "\n".join(
            f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}'
            for frame in traceback.extract_tb(exc.__traceback__)
        )
        LOGGER.error(
            "listener %s: %s raised %s; delivery goes on\n%s",
            self._name,
            what,
            self._describe(exc),
            where,
            extra=fields(self._name, "listener_callback_failed"),
        )

    async def close(self, timeout: float) -> None:
        """End every iterator (after the events it holds); give callback tasks until
        ``timeout``, then cancel them."""
        self._closed = True
        for sub in list(self._subs):
            sub.end()
        self._subs.clear()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0))
        for task in pending:
            task.cancel()


class Listener:
    """A ``LISTEN`` connection that survives outages.

    ``connect(timeout)`` opens a connection of the listener's own (say, the pool
    connector's ``connect``: see :func:`listener_connect`). Each notification on one of
    :attr:`channels` goes to ``on_notify`` and to every ``async for`` over the listener.
    When the connection is lost (server restart, ``pg_terminate_backend``, a dead
    network) the listener reconnects with ``retry``'s backoff, forever until
    :meth:`close`, LISTENs again on every channel, and then emits exactly one
    :class:`NotificationsMissed` (to ``on_missed`` and the iterators) for the gap.
    Nothing is delivered twice or out of order.

    A dead socket is found while idle too: TCP keepalives are set from
    ``check_interval``, and after every ``check_interval`` seconds without a
    notification a ``SELECT 1`` must answer within ``min(connect_timeout,
    check_interval)``; otherwise the connection counts as lost. (It also keeps the
    session from ``idle_session_timeout`` longer than ``check_interval``.)

    Channel names are identifiers matched as written (``LISTEN "My channel"``), as
    ``pg_notify()`` matches them. ``describe`` turns errors into log and ``reason``
    text; it must not reveal secrets (the default masks URL passwords).

    .. versionadded:: 0.3
    """

    def __init__(
        self,
        connect: Callable[[float], Awaitable[ListenerConnection]],
        channels: Iterable[str] = (),
        *,
        retry: RetryPolicy,
        connect_timeout: float,
        check_interval: float = 5.0,
        on_notify: Callable[[Notification], object] | None = None,
        on_missed: Callable[[NotificationsMissed], object] | None = None,
        name: str = "pgpool",
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        describe: Callable[[BaseException], str] = _describe,
        on_closed: Callable[[Listener], object] | None = None,
    ) -> None:
        if isinstance(channels, str):  # "ab" would be two channels a and b
            channels = (channels,)
        self._channels: dict[str, None] = dict.fromkeys(validate_channel(c) for c in channels)
        for key, value in (
            ("connect_timeout", connect_timeout),
            ("check_interval", check_interval),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not value > 0
            ):
                raise SettingsError(f"{key}: must be a number of seconds > 0, got {value!r}")
        self._connect = connect
        self._on_closed = on_closed
        self._retry = retry
        self._connect_timeout = connect_timeout
        self._check_interval = check_interval
        #: The bound of every round trip: LISTEN, UNLISTEN, the connection check.
        self._bound = min(connect_timeout, check_interval)
        self.name = name
        self._sleep = sleep
        self._describe = describe
        self._fanout = _Fanout(name, describe, on_notify, on_missed)
        self._phase = _Phase.NEW
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        # One statement at a time on the connection: listen()/unlisten() and the check.
        self._io = asyncio.Lock()
        self._wakeup = _Wakeup()
        self._last_contact = 0.0  # time.time() when the connection last proved alive
        self._tries = 0  # failed connects since the last connection that proved healthy

    def __repr__(self) -> str:
        state = "connected" if self.connected else self._phase.value
        return f"<Listener {self.name} {state} channels={sorted(self._channels)}>"

    # -- public ------------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[str]:
        """The channels listened on (and LISTENed again after each reconnect)."""
        return frozenset(self._channels)

    @property
    def connected(self) -> bool:
        """Whether a connection is open and LISTENing on :attr:`channels` as last synced."""
        session = self._session
        return session is not None and not session.conn.closed

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening session (``pg_stat_activity.pid``), None
        while disconnected."""
        session = self._session
        return session.conn.backend_pid if session is not None and not session.conn.closed else None

    async def start(self) -> None:
        """Connect and LISTEN on every channel. Idempotent.

        While the database is down this returns anyway and the listener connects in the
        background; the time until it does is reported as a :class:`NotificationsMissed`.

        :raises ConfigurationError: the connector says the server refused the configuration
            (authentication, unknown role, database or host); the listener stays unstarted.
        :raises PoolClosedError: the listener was closed (listeners do not reopen), or
            was closed while this connected.
        """
        if self._phase is _Phase.RUNNING:
            return
        if self._phase is not _Phase.NEW:
            raise PoolClosedError(
                f"listener {self.name} is {self._phase.value}; it does not reopen"
            )
        self._phase = _Phase.RUNNING
        started = time.time()
        loss: _Loss | None = None
        try:
            session: _Session | None = await self._open()
        except PoolClosedError:
            raise  # closed while connecting
        except ConfigurationError:
            self._phase = _Phase.NEW
            raise
        except asyncio.CancelledError:
            if self._phase is _Phase.RUNNING:
                self._phase = _Phase.NEW
            raise
        except Exception as exc:
            reason = self._describe(exc)
            LOGGER.warning(
                "listener %s: cannot connect (%s); retrying in the background",
                self.name,
                reason,
                extra=fields(self.name, "listener_connect_failed"),
            )
            session, loss = None, _Loss(started, reason)
            if self._phase is not _Phase.RUNNING:  # close() ran while this failed
                return
        self._task = task = asyncio.get_running_loop().create_task(
            self._run(session, loss), name=f"pgpool-listener-{self.name}"
        )
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so
            LOGGER.error(
                "listener %s: stopped listening: %s",
                self.name,
                self._describe(task.exception()),  # type: ignore[arg-type]
                extra=fields(self.name, "listener_stopped"),
            )

    async def listen(self, *channels: str) -> None:
        """LISTEN on ``channels`` too: at once if connected, and after every reconnect.

        Waits for the server's answer. If the connection is lost meanwhile, the channels
        are kept and LISTENed on reconnect (the gap is reported as usual).

        :raises QueryParameterError: an invalid channel name; nothing was sent.
        :raises PoolClosedError: the listener is closed.
        :raises psycopg2.Error: the server refused the statement (e.g. on a standby); the
            channels are not added.
        """
        names = [validate_channel(c) for c in channels]
        self._check_open()
        added = [n for n in dict.fromkeys(names) if n not in self._channels]
        self._channels.update(dict.fromkeys(added))
        await self._sync(added=added, removed=())

    async def unlisten(self, *channels: str) -> None:
        """Stop listening on ``channels`` (names not listened on are ignored; no names, no
        change). Once this returns, none of their notifications is delivered.

        :raises QueryParameterError: an invalid channel name; nothing was sent.
        :raises PoolClosedError: the listener is closed.
        """
        names = [validate_channel(c) for c in channels]
        self._check_open()
        removed = [n for n in dict.fromkeys(names) if n in self._channels]
        for name in removed:
            del self._channels[name]
        await self._sync(added=(), removed=removed)

    def __aiter__(self) -> AsyncIterator[Notification | NotificationsMissed]:
        """The events from now on, in order: notifications and :class:`NotificationsMissed`.
        Ends after :meth:`close` (once the events it holds are read). Each iterator gets
        every event; one never read keeps them all in memory."""
        return self._fanout.subscribe()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop: ``UNLISTEN *`` (best effort), close the connection, end the iterators,
        let callback tasks finish. Returns within ``timeout`` seconds. Idempotent."""
        loop = asyncio.get_running_loop()
        if self._closing is not None:  # closing or closed: wait for that close (bounded)
            await asyncio.wait((self._closing,), timeout=max(timeout, 0))
            return
        deadline = loop.time() + timeout
        self._phase = _Phase.CLOSING
        self._closing = loop.create_future()
        try:
            task = self._task
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
                await asyncio.wait((task,), timeout=max(deadline - loop.time(), 0))
            session, self._session = self._session, None
            if session is not None:
                await self._unlisten_all(session, deadline - loop.time())
                session.close()
            await self._fanout.close(deadline - loop.time())
        finally:
            self._phase = _Phase.CLOSED
            self._closing.set_result(None)
            if self._on_closed is not None:
                self._on_closed(self)
        LOGGER.info("listener %s: closed", self.name, extra=fields(self.name, "listener_closed"))

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- channels ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._phase in (_Phase.CLOSING, _Phase.CLOSED):
            raise PoolClosedError(f"listener {self.name} is {self._phase.value}")

    async def _sync(self, *, added: Iterable[str], removed: Iterable[str]) -> None:
        """Bring the connection's LISTENs in line with :attr:`channels`; on a refusal by
        the server, undo this call's change and raise."""
        async with self._io:
            session = self._session
            if session is None or session.conn.closed:
                return  # the reconnect will LISTEN on what is wanted then
            error = await session.sync(self._channels, self._bound)
        if error is None:
            return
        conn = session.conn
        if conn.closed:
            self._wakeup.set()  # lost meanwhile: the background task takes over
            return
        for name in added:
            self._channels.pop(name, None)
        self._channels.update(dict.fromkeys(removed))
        raise error

    async def _unlisten_all(self, session: _Session, timeout: float) -> None:
        conn = session.conn
        if conn.closed or conn.is_busy() or timeout <= 0:
            return  # closing the connection ends its LISTENs anyway
        error = await session.run("UNLISTEN *", min(timeout, self._bound))
        if error is not None:
            LOGGER.debug("listener %s: UNLISTEN * failed: %s", self.name, self._describe(error))

    # -- the background task -------------------------------------------------------------

    async def _run(self, session: _Session | None, loss: _Loss | None) -> None:
        """Serve the connection; after each loss reconnect, then serve again, until closed."""
        while True:
            if session is None:
                assert loss is not None
                session = await self._reconnect(loss)
            loss = await self._serve(session)
            session = None

    async def _open(self) -> _Session:
        """A new connection, LISTENing on every channel, published as the session."""
        conn = await self._connect(self._connect_timeout)
        session = _Session(conn)
        try:
            conn.set_wakeup(self._wakeup.set)
            try:
                conn.enable_keepalives(*self._keepalives())
            except OSError as exc:
                LOGGER.debug("listener %s: keepalives not set: %s", self.name, exc)
            # Under the lock: a listen() meanwhile either is in this sync (the channel is
            # in self._channels already) or runs its own right after, on this session.
            async with self._io:
                error = await session.sync(self._channels, self._bound)
                if error is not None:
                    raise error
                if self._phase is not _Phase.RUNNING:  # close() ran meanwhile
                    raise PoolClosedError(f"listener {self.name} closed while connecting")
                self._session = session
        except BaseException:
            session.close()
            raise
        self._last_contact = time.time()
        LOGGER.debug(
            "listener %s: listening on %d channel(s), backend pid %d",
            self.name,
            len(session.listening),
            conn.backend_pid,
        )
        return session

    def _keepalives(self) -> tuple[int, int, int]:
        """(idle, interval, count) seconds and probes: a silent peer is given up about
        ``2 * check_interval`` after the last traffic (the check usually finds it first)."""
        idle = max(1, round(self._check_interval))
        interval = max(1, round(self._check_interval / 3))
        return idle, interval, 3

    async def _reconnect(self, loss: _Loss) -> _Session:
        """Connect with backoff until it works; then report the gap once."""
        rand = random.random
        last_reason = loss.reason
        while True:
            await self._sleep(self._retry.next_delay(self._tries, rand))
            self._tries += 1
            try:
                session = await self._open()
            except Exception as exc:
                reason = self._describe(exc)
                level = logging.DEBUG if reason == last_reason else logging.WARNING
                LOGGER.log(
                    level,
                    "listener %s: reconnect failed: %s",
                    self.name,
                    reason,
                    extra=fields(self.name, "listener_reconnect_failed"),
                )
                last_reason = reason
                continue
            break
        restored = time.time()
        LOGGER.info(
            "listener %s: listening again after %.3f s (%s)",
            self.name,
            restored - loss.since,
            loss.reason,
            extra=fields(self.name, "listener_listening_again"),
        )
        self._fanout.publish(NotificationsMissed(loss.since, restored, loss.reason))
        return session

    async def _serve(self, session: _Session) -> _Loss:
        """Deliver notifications, checking the connection after each quiet
        ``check_interval``, until it is lost; returns the loss."""
        loop = asyncio.get_running_loop()
        conn = session.conn
        quiet_since = loop.time()
        while True:
            # Clear before taking: a wakeup from here on is seen by the wait below.
            self._wakeup.clear()
            if self._deliver(conn.take_notifications()):
                quiet_since = loop.time()
            if conn.closed:
                return self._lost(session, conn.failure())
            due = quiet_since + self._check_interval
            if loop.time() < due:
                await self._wakeup.wait(due - loop.time())
                continue
            # Notifications arriving meanwhile queue up in the connection: none is lost.
            async with self._io:
                error = None if conn.closed else await session.run("SELECT 1", self._bound)
            if error is not None:
                return self._lost(session, error)
            quiet_since = loop.time()
            self._proved_alive()

    def _deliver(self, batch: list[RawNotification], *, alive: bool = True) -> bool:
        """Publish the notifications of channels still listened on; whether any came.
        ``alive``: they were taken as they arrived, so the connection worked just now."""
        for pid, channel, payload in batch:
            if channel in self._channels:  # not one unlisten() has returned for
                self._fanout.publish(Notification(channel, payload, pid))
        if batch and alive:
            self._proved_alive()
        return bool(batch)

    def _proved_alive(self) -> None:
        self._last_contact = time.time()
        self._tries = 0

    def _lost(self, session: _Session, error: BaseException | None) -> _Loss:
        """Close a lost connection; what arrived before the end is delivered first."""
        if self._session is session:
            self._session = None
        # Taken late (after a check that got no answer, say): not a sign of life.
        self._deliver(session.conn.take_notifications(), alive=False)
        session.close()
        reason = self._describe(error) if error is not None else "connection closed"
        LOGGER.warning(
            "listener %s: connection lost (%s); reconnecting",
            self.name,
            reason,
            extra=fields(self.name, "listener_connection_lost"),
        )
        return _Loss(self._last_contact, reason)
