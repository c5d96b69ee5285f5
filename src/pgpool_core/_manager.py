"""PoolManager: acquire/release with fair hand-off, deadlines, server-side cancel, status.

Everything here runs on one event loop, so pool bookkeeping (idle list, waiter queue,
counters) is mutated without awaits in between and needs no lock; all I/O (connects,
rollbacks, cancels) happens in tasks the pool owns and awaits on stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions

from ._classify import sqlstate
from ._config import PoolSettings, _redact_text, redact_dsn
from ._connector import AiopgConnector, Connector, DriverConnection, TxStatus, UrlSource
from ._result import QueryResult
from ._retry import RetryPolicy
from ._state import PoolState, transition
from ._timers import DeadlineTimer
from .errors import (
    ConfigurationError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryParameterError,
    QueryTimeoutError,
    SettingsError,
    TooManyRequestsError,
)

__all__ = [
    "OnDuration",
    "OnError",
    "PoolManager",
    "PoolObserver",
    "PoolStatus",
    "PostgresConnector",
]

LOGGER = logging.getLogger("pgpool")

OnError = Callable[[str, Exception], "Exception | None"]
OnDuration = Callable[[str, float], None]

_COUNTERS = (
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
    "query_timeouts",
    "leaks_detected",
    "failovers",
)

# Frames from these directories are the pool's own, never a "holder" of a connection.
_INTERNAL_DIRS = (
    os.path.dirname(__file__),
    os.path.dirname(contextlib.__file__),
)
#: SQLSTATE of a write on a read-only server: after a failover the pool talks to a standby.
READ_ONLY_SQL_TRANSACTION = "25006"
#: Statements that need session state, which PgBouncer's transaction pooling does not keep.
_SESSION_STATE = (
    ("session SET", re.compile(r"^\s*SET\s+(?!LOCAL\b|TRANSACTION\b)", re.IGNORECASE)),
    ("LISTEN", re.compile(r"^\s*(UN)?LISTEN\b", re.IGNORECASE)),
    ("session advisory lock", re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I)),
    ("PREPARE", re.compile(r"^\s*PREPARE\b", re.IGNORECASE)),
    ("WITH HOLD cursor", re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE)),
)
#: At most one failover drain per this many seconds.
FAILOVER_DRAIN_INTERVAL = 1.0

#: How recent a real success must be for status() to skip its own round trip.
RECENT_SUCCESS = 1.0
#: Bound on the round trip status() makes when it has to check.
STATUS_CHECK_TIMEOUT = 1.0


class PoolObserver(Protocol):
    """Receives the pool's events, for metrics exporters (see ``pgpool_core.otel`` and
    ``pgpool_core.prometheus``). Called on the event loop; must not block. Sizes are read
    from :meth:`PoolManager.stats` when needed.

    .. versionadded:: 0.1
    """

    def connection_created(self, pool: PoolManager, seconds: float) -> None:
        """A connection opened, taking ``seconds``."""

    def connection_waited(self, pool: PoolManager, seconds: float) -> None:
        """A request got a connection after ``seconds`` (0 when one was idle)."""

    def connection_used(self, pool: PoolManager, seconds: float) -> None:
        """A connection came back after being held ``seconds``."""

    def acquire_timed_out(self, pool: PoolManager) -> None:
        """A request gave up waiting for a connection (``PoolTimeoutError``)."""

    def operation_finished(
        self, pool: PoolManager, seconds: float, error: BaseException | None
    ) -> None:
        """A caller's statement finished after ``seconds``, failed with ``error`` if set."""


@dataclass(eq=False)
class _Slot:
    conn: DriverConnection
    created: float
    expires: float
    last_used: float
    # The future the caller awaits for the running statement (failed by the deadline timer).
    waiting: asyncio.Future[None] | None = None
    acquired_at: float = 0.0
    # Bumped on failover: connections of an older generation are not reused.
    generation: int = 0


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of the pool for health checks and dashboards.

    ``available`` comes from a real outcome: a success within the last second, or a
    bounded ``SELECT 1``. Sizes count open connections (``pool_size``) and idle ones
    (``pool_free``).
    """

    state: str
    available: bool
    pool_size: int
    pool_free: int
    pool_min: int
    pool_max: int
    in_use: int
    waiting: int
    connecting: int
    name: str
    last_error: str | None
    counters: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["counters"] = dict(self.counters)
        return data


class PoolManager:
    """An asyncio pool of PostgreSQL connections (aiopg underneath) with bounded everything.

    ``PoolManager(url, **options)`` takes :class:`PoolSettings` fields as keywords, or
    ``PoolManager(settings=...)``. Nothing touches the event loop until :meth:`start`, so a
    pool can be built before the loop runs. ``async with PoolManager(...) as pool`` starts
    and stops it.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: UrlSource | None = None,
        *,
        settings: PoolSettings | None = None,
        password: UrlSource | None = None,
        connector: Connector | None = None,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        jitter: Callable[[], float] | None = None,
        **options: Any,
    ) -> None:
        given: dict[str, Any] = dict(options)
        # A callable URL (credential rotation) is evaluated at each connect.
        self._url_source: UrlSource | None = None
        if callable(url):
            self._url_source = url
        elif url is not None:
            given["url"] = url
        if settings is None:
            settings = PoolSettings(**given)
        elif given:
            settings = dataclasses.replace(settings, **given)
        self.settings = settings
        self.name = name or _pool_name(settings.url)
        self._named = name is not None or bool(settings.url)
        self._connector = connector
        self._password = password
        self._retry = retry or RetryPolicy()
        self._rand = random.random
        # Injected clock for tests; asyncio's own loop.time() is time.monotonic().
        self._now: Callable[[], float] = clock or time.monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wait_deadlines: DeadlineTimer | None = None
        self._run_deadlines: DeadlineTimer | None = None
        self._sleep = sleep or asyncio.sleep
        # max_lifetime is jittered down by up to 5% so connections opened together do not
        # all expire together.
        self._jitter = jitter or (lambda: random.uniform(0.95, 1.0))
        self._state = PoolState.NEW
        self._idle: collections.deque[_Slot] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Slot]] = collections.deque()
        # Arrival number of each waiter: a failed connect fails only the waiters that
        # arrived before it started, never one that came after (and may see it succeed).
        self._waiter_seq: dict[asyncio.Future[_Slot], int] = {}
        self._arrivals = 0
        self._size = 0  # open + opening connections
        self._connecting = 0
        # Busy connections already on their way back (settling a cancel, rolling back):
        # demand they will meet is not demand for new connections.
        self._returning = 0
        self._busy_slots: set[_Slot] = set()  # checked out, or on their way back
        self._drained: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._generation = 0
        self._last_drain = float("-inf")
        self._leak_deadlines: DeadlineTimer | None = None
        self._cancel_threads = 0
        self._session_state_warned: set[str] = set()
        self._observers: tuple[PoolObserver, ...] = ()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._last_success = float("-inf")
        self._healthy = False
        self._last_error: str | None = None
        self._names = itertools.count(1)
        self._closed_event: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"<PoolManager {self.name!r} state={self._state.value} size={self._size}"
            f" free={len(self._idle)} waiting={len(self._waiters)}>"
        )

    # -- observers ------------------------------------------------------------------------

    def add_observer(self, observer: PoolObserver) -> None:
        """Send the pool's events to ``observer`` (metrics exporters)."""
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: PoolObserver) -> None:
        self._observers = tuple(o for o in self._observers if o is not observer)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    async def start(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Open the pool. Idempotent. ``min_size`` connections open in the background.

        Lazy by default: starting succeeds while the database is down, and the pool
        connects when it can. ``wait=True`` fails fast instead: it waits (up to
        ``timeout``, default ``connect_timeout``) for a working connection, and on failure
        stops the pool and raises.

        :raises SettingsError: no URL configured.
        :raises PoolClosedError: the pool was stopped (pools never reopen).
        :raises ConfigurationError: (``wait=True``) authentication failed, unknown
            database or host, bad URL.
        :raises PoolUnavailableError: (``wait=True``) the database could not be reached.
        """
        if self._state in (PoolState.OPEN, PoolState.RECONNECTING):
            return
        if self._state is not PoolState.NEW:
            raise PoolClosedError(f"pool {self.name} is {self._state.value}; pools do not reopen")
        if not self.settings.url and self._connector is None and self._url_source is None:
            raise SettingsError("url: no PostgreSQL URL configured (postgres_url / POSTGRES_URL)")
        if self._connector is None:
            s = self.settings
            self._connector = AiopgConnector(
                self._url_source or s.url,
                password=self._password,
                enable_hstore=s.enable_hstore,
                enable_json=s.enable_json,
                enable_uuid=s.enable_uuid,
                application_name=s.application_name,
                statement_timeout=s.query_timeout,
            )
        self._state = transition(self._state, PoolState.OPEN)
        self._loop = asyncio.get_running_loop()
        self._wait_deadlines = DeadlineTimer(self._loop, self._now, self._expire_waiter)
        self._run_deadlines = DeadlineTimer(self._loop, self._now, _expire_run)
        if self.settings.leak_detection_threshold > 0:
            self._leak_deadlines = DeadlineTimer(self._loop, self._now, self._report_leak)
        self._closed_event = asyncio.Event()
        self._drained = asyncio.Event()
        if not wait:
            # With wait, wait_ready's request starts the first connects itself, so their
            # failure is its failure (see _connect_failed).
            self._grow()
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain_forever(), name=f"pgpool-maintenance-{self.name}"
        )
        if wait:
            try:
                await self.wait_ready(timeout)
            except BaseException:
                await self.stop(0)
                raise

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until a connection works (one is checked out and returned).

        Fails fast: while the database is down this raises after the first failed
        connect attempt rather than waiting out ``timeout`` (default ``connect_timeout``).

        :raises ConfigurationError: the server refused the configuration (authentication,
            unknown database or host...).
        :raises PoolUnavailableError: the database could not be reached.
        """
        bound = self.settings.connect_timeout if timeout is None else timeout
        try:
            async with self._checkout(bound):
                pass
        except PoolTimeoutError:
            raise PoolUnavailableError(
                f"pool {self.name}: no connection within {bound:.3f} s"
                f" (last error: {self._last_error or 'none'})"
            ) from None

    async def stop(self, timeout: float = 5.0) -> None:
        """Refuse new work at once, let work in flight finish until ``timeout``, then close.

        Statements still running at the deadline are cancelled on the server. Idempotent;
        returns within ``timeout`` plus the cancel bound.
        """
        if self._state in (PoolState.CLOSING, PoolState.CLOSED):
            if self._closed_event is not None:
                await self._closed_event.wait()
            return
        if self._state is PoolState.NEW:
            self._state = transition(self._state, PoolState.CLOSED)
            return
        self._state = transition(self._state, PoolState.CLOSING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosedError(f"pool {self.name} is stopping"))
        if self._maintenance is not None:
            self._maintenance.cancel()
        for slot in list(self._idle):
            self._discard(slot, bad=False)
        self._idle.clear()
        # In-flight work returns its connections through _release, which closes them now.
        assert self._drained is not None
        if self._in_use:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), max(deadline - loop.time(), 0))
        if self._in_use:
            LOGGER.warning(
                "pool %s: %d connection(s) still in use at stop; cancelling",
                self.name,
                self._in_use,
            )
            self._abort_in_flight()
            # The callers' own release paths now cancel their statements server-side
            # (bounded by cancel_timeout); give them that long, at most 1 s.
            await asyncio.sleep(0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), min(self.settings.cancel_timeout, 1.0))
            for slot in list(self._busy_slots):
                slot.conn.close()  # whatever still hangs (cancel lost): cut it
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            if task.get_name().startswith(("pgpool-connect", "pgpool-reconnect")):
                task.cancel()
        if self._maintenance is not None:
            tasks.append(self._maintenance)
        if tasks:
            # Settles are bounded by cancel_timeout; never wait past the caller's deadline
            # by more than that.
            await asyncio.wait(tasks, timeout=min(self.settings.cancel_timeout, 1.0))
        for timers in (self._wait_deadlines, self._run_deadlines, self._leak_deadlines):
            if timers is not None:
                timers.close()
        self._state = transition(self._state, PoolState.CLOSED)
        assert self._closed_event is not None
        self._closed_event.set()

    def _abort_in_flight(self) -> None:
        """At the stop deadline: fail every statement still awaited (its caller then
        releases the connection, which cancels the statement on the server) and close
        connections held idle by callers (they find them closed)."""
        for slot in list(self._busy_slots):
            waiting = slot.waiting
            if waiting is not None and not waiting.done():
                waiting.set_exception(_Stopped())
            elif not slot.conn.is_busy():
                slot.conn.close()
            # else: already settling or rolling back in an owned task

    async def __aenter__(self) -> PoolManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- growth and connection bookkeeping -------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], kind: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(
            coro,
            name=f"pgpool-{kind}-{self.name}-{next(self._names)}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _grow(self) -> None:
        """Start connects for unmet demand: waiters not covered by connects, or below min.

        While reconnecting only the single reconnect task connects.
        """
        state = self._state
        if state is PoolState.RECONNECTING:
            if self._reconnect_task is None or self._reconnect_task.done():
                self._reconnect_task = self._spawn(self._reconnect(), "reconnect")
            return
        if state is not PoolState.OPEN:
            return
        max_size = self.settings.max_size
        while self._size < max_size and (
            self._connecting + self._returning < len(self._waiters)
            or self._size < self.settings.min_size
        ):
            self._size += 1
            self._connecting += 1
            self._spawn(self._connect_one(self._arrivals), "connect")

    async def _reconnect(self) -> None:
        """Single-flight: retry with capped, jittered backoff until a connect succeeds or
        the pool stops. Never gives up, so the pool never latches down."""
        attempt = 0
        while self._is_reconnecting():
            await self._sleep(self._retry.next_delay(attempt, self._rand))
            attempt += 1
            if not self._is_reconnecting():  # recovered by another connect, or stopping
                return
            if self._size >= self.settings.max_size:
                continue  # every slot is a live connection: nothing to open
            self._size += 1
            self._connecting += 1
            if await self._connect_one(self._arrivals):
                return

    def _is_reconnecting(self) -> bool:
        return self._state is PoolState.RECONNECTING

    async def _connect_one(self, cutoff: int) -> bool:
        """One connect (``_size`` and ``_connecting`` already count it); the connection
        goes to the oldest waiter or the idle list. ``cutoff``: arrivals before it."""
        assert self._connector is not None
        started = self._now()
        generation = self._generation
        try:
            conn = await self._connector.connect(self.settings.connect_timeout)
        except (Exception, asyncio.CancelledError) as exc:
            self._size -= 1
            self._connecting -= 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._connect_failed(exc, cutoff)
            return False
        self._connecting -= 1
        now = self._now()
        self._counters["connections_num"] += 1
        self._counters["connections_ms"] += int((now - started) * 1000)
        for observer in self._observers:
            observer.connection_created(self, now - started)
        self._mark_success(now)
        if not self._named:
            last_url = getattr(self._connector, "last_url", None)
            if last_url:
                self.name, self._named = _pool_name(last_url), True
        recovered = self._state is PoolState.RECONNECTING
        if recovered:
            self._state = transition(self._state, PoolState.OPEN)
            down = now - (self._down_since or now)
            self._down_since = None
            LOGGER.info("pool %s: reconnected after %.3f s", self.name, down)
        if self._state is not PoolState.OPEN:
            conn.close()
            self._size -= 1
            return True
        if generation != self._generation:
            # A failover drain happened while connecting: this connection may have found
            # the old primary. Open another one instead.
            conn.close()
            self._size -= 1
            self._grow()
            return True
        expires = now + self.settings.max_lifetime * self._jitter()
        self._hand_off(_Slot(conn, now, expires, now, generation=self._generation))
        if recovered:
            self._grow()  # the rest of the demand, in parallel again
        return True

    def _connect_failed(self, exc: BaseException, cutoff: int) -> None:
        self._counters["connections_errors"] += 1
        self._healthy = False
        self._last_error = self._describe(exc)
        error_type = (
            ConfigurationError if isinstance(exc, ConfigurationError) else PoolUnavailableError
        )
        if self._state is PoolState.OPEN:
            self._state = transition(self._state, PoolState.RECONNECTING)
            self._down_since = self._now()
            LOGGER.warning(
                "pool %s: cannot connect (%s); failing requests fast while reconnecting",
                self.name,
                self._last_error,
            )
        else:
            LOGGER.debug("pool %s: connect failed: %s", self.name, self._last_error)
        # Fail the waiters that arrived before this attempt started, now, rather than let
        # them sit out their timeouts against a database that just refused us.
        message = f"cannot connect to {self.name}: {self._last_error}"
        while self._waiters:
            waiter = self._waiters[0]
            if not waiter.done():
                if self._waiter_seq.get(waiter, cutoff) >= cutoff:
                    break
                self._counters["requests_errors"] += 1
                waiter.set_exception(error_type(message))
            self._waiters.popleft()
        self._grow()

    def _describe(self, exc: BaseException) -> str:
        text = _describe(exc, self.settings.url)
        redact = getattr(self._connector, "redact", None)
        return str(redact(text)) if redact is not None else text

    @property
    def _in_use(self) -> int:
        return len(self._busy_slots)

    def _pop_waiter(self) -> asyncio.Future[_Slot] | None:
        """The oldest waiter still waiting (expired and cancelled ones are dropped)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _take(self, slot: _Slot, now: float) -> None:
        self._busy_slots.add(slot)
        slot.acquired_at = now

    def _untake(self, slot: _Slot) -> None:
        self._busy_slots.discard(slot)
        if self._observers:
            held = self._now() - slot.acquired_at
            for observer in self._observers:
                observer.connection_used(self, held)
        if self._leak_deadlines is not None:
            self._leak_deadlines.discard(slot)
        if not self._busy_slots and self._drained is not None and self._state is PoolState.CLOSING:
            self._drained.set()

    def _hand_off(self, slot: _Slot) -> None:
        """Give a free connection to the oldest live waiter, else make it idle (FIFO fairness)."""
        now = self._now()
        waiter = self._pop_waiter()
        if waiter is not None:
            self._take(slot, now)
            waiter.set_result(slot)
            return
        slot.last_used = now
        self._idle.append(slot)

    def _discard(self, slot: _Slot, *, bad: bool) -> None:
        """Close a connection and forget it; refill if demand or min_size calls for it."""
        with contextlib.suppress(Exception):
            slot.conn.close()
        self._size -= 1
        if bad:
            self._counters["returns_bad"] += 1
        self._grow()

    def _drop_idle(self, slot: _Slot) -> None:
        """Close a connection taken from the idle list; count it lost if it died there."""
        if slot.conn.closed:
            self._counters["connections_lost"] += 1
        self._discard(slot, bad=False)

    def _mark_success(self, now: float) -> None:
        self._last_success = now
        self._healthy = True

    @property
    def is_available(self) -> bool:
        """True while open and the latest real outcome (connect or query) was a success."""
        return self._state is PoolState.OPEN and self._healthy

    def _drain_for_failover(self, slot: _Slot) -> None:
        """A write hit a read-only server: retire every connection so the next ones find
        the primary (libpq's ``target_session_attrs`` picks it among the hosts)."""
        now = self._now()
        if slot.generation != self._generation or now - self._last_drain < FAILOVER_DRAIN_INTERVAL:
            return
        self._last_drain = now
        self._generation += 1
        self._counters["failovers"] += 1
        LOGGER.warning(
            "pool %s: write on a read-only server (SQLSTATE 25006); reconnecting %d connection(s)",
            self.name,
            self._size - self._connecting,
        )
        idle, self._idle = self._idle, collections.deque()
        for old in idle:
            self._discard(old, bad=False)

    # -- acquire / release ------------------------------------------------------------------

    async def _acquire(self, deadline: float | None) -> _Slot:
        state = self._state
        if state is not PoolState.OPEN and state is not PoolState.RECONNECTING:
            raise PoolClosedError(f"pool {self.name} is {state.value}")
        counters = self._counters
        counters["requests_num"] += 1
        now = self._now()
        wait = self.settings.acquire_timeout
        if deadline is not None and deadline - now < wait:
            wait = max(deadline - now, 0.0)
        wait_until = now + wait
        if not self._waiters:
            idle = self._idle
            while idle:
                slot = idle.pop()  # most recently used: warm, and lets others idle out
                if slot.expires <= now or slot.conn.closed:
                    self._drop_idle(slot)
                    continue
                self._take(slot, now)
                if (
                    now - slot.last_used < self.settings.validate_idle_after
                    and not slot.conn.has_pending_input()
                ):
                    return slot
                # Idle long enough that the server may have dropped it (restart,
                # pg_terminate_backend, idle timeouts), or the server sent something
                # while it sat idle: prove it alive before handing it out.
                if await self._validate(slot, wait_until):
                    return slot
                now = self._now()
        max_waiting = self.settings.max_waiting
        if max_waiting and len(self._waiters) >= max_waiting:
            counters["requests_errors"] += 1
            raise TooManyRequestsError(
                f"pool {self.name}: {len(self._waiters)} requests already waiting "
                f"(max_waiting={max_waiting})"
            )
        assert self._loop is not None
        assert self._wait_deadlines is not None
        waiter: asyncio.Future[_Slot] = self._loop.create_future()
        self._waiters.append(waiter)
        self._waiter_seq[waiter] = self._arrivals
        self._arrivals += 1
        counters["requests_queued"] += 1
        self._grow()
        # The deadline timer fails an expired waiter and takes it off the queue; hand-offs
        # pop waiters themselves, so the queue is never searched on the hot path.
        timers = self._wait_deadlines
        timers.add(waiter, wait_until, wait)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The hand-off may have happened just before the cancellation landed.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            timers.discard(waiter)
            del self._waiter_seq[waiter]
            counters["requests_wait_ms"] += int((self._now() - now) * 1000)

    async def _validate(self, slot: _Slot, wait_until: float) -> bool:
        """A bounded ``SELECT 1`` on a checked-out slot; a dead one is dropped and counted.

        Bounded by the caller's remaining wait too: a connection that cannot answer in
        that time is no use to the caller, and is closed rather than trusted.
        """
        bound = min(
            self.settings.connect_timeout,
            self.settings.cancel_timeout,
            max(wait_until - self._now(), 0.001),
        )
        try:
            await self._run(slot, "SELECT 1", None, self._now() + bound, bound)
        except (psycopg2.Error, QueryTimeoutError):
            slot.conn.close()  # also ends a statement still running: nothing to settle
            self._untake(slot)
            self._drop_idle(slot)
            return False
        except BaseException:
            self._release(slot)
            raise
        return True

    def _expire_waiter(self, waiter: asyncio.Future[_Slot], wait: float) -> None:
        if waiter.done():
            return
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._counters["requests_errors"] += 1
        if self._state is PoolState.RECONNECTING:
            # Not a busy pool: the database is unreachable (e.g. connects hang).
            waiter.set_exception(
                PoolUnavailableError(
                    f"cannot connect to {self.name} within {wait:.3f} s: "
                    f"{self._last_error or 'no connection yet'}"
                )
            )
            return
        for observer in self._observers:
            observer.acquire_timed_out(self)
        waiter.set_exception(
            PoolTimeoutError(
                f"pool {self.name}: no connection free within {wait:.3f} s "
                f"(size={self._size}, in use={self._in_use}, waiting={len(self._waiters) + 1}, "
                f"max={self.settings.max_size})"
            )
        )

    def _release(self, slot: _Slot, *, bad: bool = False) -> None:
        """Return a connection. Never awaits: any I/O needed first runs in an owned task,
        and the slot stays taken (counted in use) until that task releases it."""
        if slot not in self._busy_slots:
            return
        conn = slot.conn
        if conn.is_busy():
            # A statement is still running (timeout or cancellation): cancel it on the
            # server, then release.
            self._returning += 1
            self._spawn(self._settle(slot), "settle")
            return
        status = conn.transaction_status()  # UNKNOWN once closed
        if (
            not bad
            and (self._state is PoolState.OPEN or self._state is PoolState.RECONNECTING)
            and status in (TxStatus.INTRANS, TxStatus.INERROR)
        ):
            # Left inside a transaction: roll back and reuse, off the caller's path.
            self._returning += 1
            self._spawn(self._rollback_then_release(slot), "rollback")
            return
        self._untake(slot)
        self._counters["usage_ms"] += int((self._now() - slot.acquired_at) * 1000)
        self._retire_or_reuse(slot, bad=bad, status=status)

    def _retire_or_reuse(self, slot: _Slot, *, bad: bool, status: TxStatus) -> None:
        conn = slot.conn
        state = self._state
        serving = state is PoolState.OPEN or state is PoolState.RECONNECTING
        if bad or conn.closed or not serving:
            # Counted once, as returns_bad, when it came back broken from use.
            self._discard(slot, bad=bad or conn.closed)
            return
        if (
            status is not TxStatus.IDLE
            or slot.expires <= self._now()
            or slot.generation != self._generation
        ):
            self._discard(slot, bad=status is not TxStatus.IDLE)
            return
        self._hand_off(slot)

    async def _rollback(self, slot: _Slot) -> None:
        """``ROLLBACK`` on ``slot``, bounded by cancel_timeout."""
        bound = self.settings.cancel_timeout
        await self._run(slot, "ROLLBACK", None, self._now() + bound, bound)

    async def _rollback_then_release(self, slot: _Slot) -> None:
        try:
            await self._rollback(slot)
        except (Exception, asyncio.CancelledError):
            # Could not confirm the rollback: never hand out that connection again.
            await self._settle(slot, discard=True)
            return
        self._returning -= 1
        self._release(slot)

    async def _settle(self, slot: _Slot, *, discard: bool = False) -> None:
        """Cancel the running statement server-side (bounded), then release or discard.

        The slot was counted in ``_returning`` when this task was spawned.
        """
        conn = slot.conn
        settled = not conn.is_busy()
        if not settled and self._cancel_threads < self.settings.max_size + 2:
            bound = self.settings.cancel_timeout
            idle = conn.wait_until_idle()
            # Its error, if any, is not ours to raise (the caller already got one), and it
            # may come after we stop waiting (the connection closes): retrieve it then.
            idle.add_done_callback(_consume)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._cancel_in_thread(conn), bound)
                await asyncio.wait((idle,), timeout=bound)
            settled = not conn.is_busy()
        if discard or not settled:
            conn.close()
        self._returning -= 1
        self._release(slot, bad=discard or not settled)

    def _cancel_in_thread(self, conn: DriverConnection) -> asyncio.Future[None]:
        """A cancel request blocks (a connect plus a round trip) with no timeout of its own,
        so it runs on a daemon thread (and without the GIL, see AiopgConnection): one stuck
        behind a black-holed network must neither block the loop nor keep the interpreter
        from exiting. Callers bound the
        wait; at most ``max_size + 2`` such threads run, past that the pool just closes."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[None] = loop.create_future()
        try:
            send = conn.prepare_cancel()
        except Exception as exc:  # closed under us: nothing left to cancel
            future.set_exception(exc)
            return future
        self._cancel_threads += 1

        def done(error: BaseException | None) -> None:
            self._cancel_threads -= 1
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                send()
            except BaseException as exc:  # handed to the loop
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(done, error)

        threading.Thread(target=run, name=f"pgpool-cancel-{self.name}", daemon=True).start()
        return future

    # -- running statements -------------------------------------------------------------------

    async def _run(
        self,
        slot: _Slot,
        sql: str,
        params: Any,
        deadline: float,
        total: float,
        *,
        callproc: bool = False,
    ) -> QueryResult:
        """Run one statement on ``slot`` until ``deadline``.

        On expiry the statement keeps running (``conn.is_busy()``); releasing the slot cancels it
        on the server in the background, so the caller's error is not delayed by the cancel.
        """
        conn = slot.conn
        if self.settings.pgbouncer:
            self._warn_session_state(sql)
        try:
            future = conn.send(sql, params, callproc=callproc)
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            given = (
                "no" if params is None else str(len(params)) if hasattr(params, "__len__") else "1"
            )
            raise QueryParameterError(
                f"statement parameters rejected ({given} given): {type(exc).__name__}: {exc}"
            ) from exc
        # Awaited directly: a caller's cancellation cancels only this future, and the
        # deadline timer fails it with _Expired; neither stops the statement, which is
        # settled (server-side cancel) when the slot is released.
        slot.waiting = future
        timers = self._run_deadlines
        assert timers is not None
        timers.add(slot, deadline)
        try:
            await future
        except _Stopped:
            raise PoolClosedError(
                f"pool {self.name} stopped before the statement finished;"
                " it was cancelled on the server"
            ) from None
        except _Expired:
            self._counters["query_timeouts"] += 1
            raise QueryTimeoutError(
                f"query exceeded its {total:.3f} s timeout; cancelled on the server"
            ) from None
        except psycopg2.extensions.QueryCanceledError as error:
            self._counters["query_timeouts"] += 1
            message = str(error.pgerror or error).strip()
            raise QueryTimeoutError(f"statement cancelled by the server: {message}") from error
        except psycopg2.Error as error:
            if conn.closed:
                self._healthy = False
                self._last_error = self._describe(error)
            elif sqlstate(error) == READ_ONLY_SQL_TRANSACTION:
                self._drain_for_failover(slot)
            raise
        finally:
            timers.discard(slot)
            slot.waiting = None
        self._mark_success(self._now())
        return conn.result()

    async def _acquire_for(
        self, timeout: float | None, metric_name: str = ""
    ) -> tuple[_Slot, float, float]:
        """Acquire for one call: (slot, statement deadline, total seconds quoted on expiry).

        With ``timeout`` it bounds the whole call, waiting included, from one clock
        reading; without, waiting is bounded by acquire_timeout and running by query_timeout.
        """
        asked = self._now()
        if timeout is None:
            slot = await self._acquire(None)
            total = self.settings.query_timeout
            deadline = self._now() + total
        else:
            if not timeout > 0:  # also NaN
                raise SettingsError(f"timeout: must be > 0 seconds, got {timeout!r}")
            deadline = asked + timeout
            slot = await self._acquire(deadline)
            total = timeout
        if self._observers:
            waited = slot.acquired_at - asked
            for observer in self._observers:
                observer.connection_waited(self, max(waited, 0.0))
        if self._leak_deadlines is not None:
            self._watch_for_leak(slot, metric_name)
        return slot, deadline, total

    def _warn_session_state(self, sql: str) -> None:
        for kind, pattern in _SESSION_STATE:
            if kind not in self._session_state_warned and pattern.search(sql):
                self._session_state_warned.add(kind)
                LOGGER.warning(
                    "pool %s: %s behind PgBouncer in transaction pooling mode: the next"
                    " transaction may run on another server connection, without this state",
                    self.name,
                    kind,
                )

    def _watch_for_leak(self, slot: _Slot, metric_name: str) -> None:
        assert self._leak_deadlines is not None
        holder = f"metric {metric_name!r}" if metric_name else _call_site()
        threshold = self.settings.leak_detection_threshold
        self._leak_deadlines.add(slot, slot.acquired_at + threshold, holder)

    def _report_leak(self, slot: _Slot, holder: str) -> None:
        self._counters["leaks_detected"] += 1
        LOGGER.warning(
            "pool %s: connection held longer than %.3f s (leak_detection_threshold) by %s",
            self.name,
            self.settings.leak_detection_threshold,
            holder,
        )

    def _release_after(self, slot: _Slot, exc: BaseException) -> None:
        """Release after a failed call; a driver error on a dead connection discards it."""
        self._release(slot, bad=isinstance(exc, psycopg2.Error) and slot.conn.closed)

    @contextlib.asynccontextmanager
    async def _checkout(
        self, timeout: float | None, metric_name: str = ""
    ) -> AsyncIterator[tuple[_Slot, float, float]]:
        slot, deadline, total = await self._acquire_for(timeout, metric_name)
        try:
            yield slot, deadline, total
        except BaseException as exc:
            self._release_after(slot, exc)
            raise
        self._release(slot)

    async def execute(
        self,
        sql: str,
        params: Any = None,
        *,
        metric_name: str = "",
        timeout: float | None = None,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
    ) -> QueryResult:
        """Run one statement on a pooled connection and return its :class:`QueryResult`.

        :param timeout: seconds for the whole call (waiting + running); default
            ``acquire_timeout`` to get a connection, then ``query_timeout`` to run.
        :raises PoolTimeoutError: no connection free in time.
        :raises QueryTimeoutError: the statement ran out of time (cancelled server-side).
        :raises psycopg2.Error: errors from the SQL itself, unwrapped.

        ``on_error`` and ``on_duration`` are the hooks of :meth:`connector` (a failure to
        get a connection reaches ``on_error`` as ``"postgres_connector"``), without
        holding a connector: the fast path for one statement.
        """
        return await self._execute_once(
            sql,
            params,
            timeout,
            metric_name,
            on_error=on_error,
            on_duration=on_duration,
            callproc=False,
        )

    async def callproc(
        self,
        name: str,
        params: Any = None,
        *,
        metric_name: str = "",
        timeout: float | None = None,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
    ) -> QueryResult:
        """Call a stored function (``SELECT * FROM name(params)``); like :meth:`execute`."""
        return await self._execute_once(
            name,
            params,
            timeout,
            metric_name,
            on_error=on_error,
            on_duration=on_duration,
            callproc=True,
        )

    async def _execute_once(
        self,
        sql: str,
        params: Any,
        timeout: float | None,
        metric_name: str,
        *,
        on_error: OnError | None,
        on_duration: OnDuration | None,
        callproc: bool,
    ) -> QueryResult:
        # execute()/callproc() hot path: _checkout without its generator-based context.
        try:
            slot, deadline, total = await self._acquire_for(timeout, metric_name)
        except PoolError as exc:
            if on_error is None:
                raise
            return _swallow_or_raise(on_error, "postgres_connector", exc)
        started = self._now()
        failure: BaseException | None = None
        try:
            result = await self._run(slot, sql, params, deadline, total, callproc=callproc)
        except BaseException as exc:
            failure = exc
            self._release_after(slot, exc)
            if on_error is not None and isinstance(exc, (psycopg2.Error, PoolError)):
                return _swallow_or_raise(on_error, metric_name, exc)
            raise
        finally:
            if on_duration is not None or self._observers:
                self._finished(metric_name, self._now() - started, failure, on_duration)
        self._release(slot)
        return result

    def _finished(
        self,
        metric_name: str,
        seconds: float,
        failure: BaseException | None,
        on_duration: OnDuration | None,
    ) -> None:
        """A caller's statement ended: timing hook and observers."""
        if on_duration is not None:
            on_duration(metric_name, seconds)
        for observer in self._observers:
            observer.operation_finished(self, seconds, failure)

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[PostgresConnector]:
        """``BEGIN`` ... ``COMMIT`` on one connection; ``ROLLBACK`` if the block raises.

        ``timeout`` bounds the whole transaction, from waiting for the connection to COMMIT.
        """
        async with self._checkout(timeout) as (slot, deadline, total):
            connector = PostgresConnector(self, slot, deadline, total)
            async with connector.transaction():
                yield connector

    @contextlib.asynccontextmanager
    async def connector(
        self,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[PostgresConnector]:
        """A connector pinned to one connection for the block, with sprockets-postgres hooks.

        ``on_error(metric_name, exc)`` returns the exception to raise, or None to swallow
        it (the call then returns an empty result); ``on_duration(metric_name, seconds)``
        gets each statement's duration.
        """
        async with self._checkout(timeout) as (slot, deadline, total):
            yield PostgresConnector(
                self, slot, deadline, total, on_error=on_error, on_duration=on_duration
            )

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """The checked-out aiopg connection itself (escape hatch). Returned on exit: rolled
        back if left in a transaction, discarded if left busy or broken."""
        async with self._checkout(timeout) as (slot, _deadline, _total):
            yield slot.conn.handle

    # -- status ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters and sizes under psycopg_pool's key names."""
        data = {
            "pool_min": self.settings.min_size,
            "pool_max": self.settings.max_size,
            "pool_size": self._size - self._connecting,
            "pool_available": len(self._idle),
            "requests_waiting": len(self._waiters),
        }
        data.update(self._counters)
        return data

    async def status(self) -> PoolStatus:
        """A :class:`PoolStatus`. Never raises; before :meth:`start` it reports unavailable."""
        return PoolStatus(
            state=self._state.value,
            available=await self._check_available(),
            pool_size=self._size - self._connecting,
            pool_free=len(self._idle),
            pool_min=self.settings.min_size,
            pool_max=self.settings.max_size,
            in_use=self._in_use,
            waiting=len(self._waiters),
            connecting=self._connecting,
            name=self.name,
            last_error=self._last_error,
            counters=dict(self._counters),
        )

    async def _check_available(self) -> bool:
        if self._state is not PoolState.OPEN:
            return False  # reconnecting: known down, no probe needed
        if self._healthy and self._now() - self._last_success < RECENT_SUCCESS:
            return True
        if not self._idle and self._in_use:
            # Busy but serving: do not queue a probe behind real work.
            return self._healthy
        try:
            await self.execute("SELECT 1", timeout=STATUS_CHECK_TIMEOUT)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        return True

    # -- maintenance ----------------------------------------------------------------------------

    def _maintenance_interval(self) -> float:
        s = self.settings
        return min(max(min(s.max_lifetime, s.max_idle) / 10, 0.05), 30.0)

    async def _maintain_forever(self) -> None:
        while self._state is PoolState.OPEN or self._state is PoolState.RECONNECTING:
            await self._sleep(self._maintenance_interval())
            self.run_maintenance()

    def run_maintenance(self) -> None:
        """One maintenance pass (the background task runs these): close expired connections
        and idle ones above ``min_size`` idle longer than ``max_idle``, refill to ``min_size``."""
        if self._state is not PoolState.OPEN and self._state is not PoolState.RECONNECTING:
            return
        now = self._now()
        keep: collections.deque[_Slot] = collections.deque()
        # Oldest-used first: the idle deque is used LIFO, so the left end idled longest.
        for slot in self._idle:
            expired = slot.expires <= now or slot.conn.closed
            idle_too_long = (
                now - slot.last_used >= self.settings.max_idle
                and self._size - self._connecting > self.settings.min_size
            )
            if expired or idle_too_long:
                self._drop_idle(slot)  # refills up to min_size as it goes
            else:
                keep.append(slot)
        self._idle = keep
        self._grow()  # also refills min_size after earlier connect failures


class PostgresConnector:
    """Runs statements on one checked-out connection (sprockets-postgres' connector)."""

    def __init__(
        self,
        pool: PoolManager,
        slot: _Slot,
        deadline: float,
        total: float,
        *,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
    ) -> None:
        self._pool = pool
        self._slot = slot
        self._deadline = deadline
        self._total = total
        self._on_error = on_error
        self._on_duration = on_duration

    async def execute(
        self,
        sql: str,
        parameters: Any = None,
        metric_name: str = "",
        *,
        timeout: float | None = None,
    ) -> QueryResult:
        return await self._call(sql, parameters, metric_name, timeout, callproc=False)

    async def callproc(
        self,
        name: str,
        parameters: Any = None,
        metric_name: str = "",
        *,
        timeout: float | None = None,
    ) -> QueryResult:
        return await self._call(name, parameters, metric_name, timeout, callproc=True)

    async def _call(
        self, sql: str, params: Any, metric_name: str, timeout: float | None, *, callproc: bool
    ) -> QueryResult:
        pool = self._pool
        started = pool._now()
        deadline, total = self._deadline, self._total
        if timeout is not None and started + timeout < deadline:
            deadline, total = started + timeout, timeout
        failure: BaseException | None = None
        try:
            result = await pool._run(self._slot, sql, params, deadline, total, callproc=callproc)
        except (psycopg2.Error, PoolError) as exc:
            failure = exc
            if self._on_error is None:
                raise
            return _swallow_or_raise(self._on_error, metric_name, exc)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if self._on_duration is not None or pool._observers:
                pool._finished(metric_name, pool._now() - started, failure, self._on_duration)
        return result

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresConnector]:
        """``BEGIN`` on this connection; ``COMMIT`` on success, ``ROLLBACK`` on any error."""
        pool, slot = self._pool, self._slot
        await pool._run(slot, "BEGIN", None, self._deadline, self._total)
        try:
            yield self
        except BaseException:
            if not slot.conn.is_busy() and not slot.conn.closed:
                with contextlib.suppress(Exception):
                    await pool._rollback(slot)
            raise
        await pool._run(slot, "COMMIT", None, self._deadline, self._total)


def _swallow_or_raise(on_error: OnError, name: str, exc: Exception) -> QueryResult:
    """Apply an ``on_error`` hook: raise what it returns, or an empty result for None."""
    replacement = on_error(name, exc)
    if replacement is exc:
        raise exc
    if replacement is not None:
        raise replacement from exc
    return QueryResult(0, [])


class _Stopped(Exception):
    """Set on a statement's future when stop() runs out of time (never escapes the pool)."""


class _Expired(Exception):
    """Set on a statement's future by the deadline timer (never escapes the pool)."""


def _expire_run(slot: _Slot, _payload: object) -> None:
    waiting = slot.waiting
    if waiting is not None and not waiting.done():
        waiting.set_exception(_Expired())


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _call_site() -> str:
    """``file:line in function`` of the nearest caller outside pgpool (for leak reports)."""
    frame: Any = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame = frame.f_back
    if frame is None:
        return "unknown call site"
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _describe(exc: BaseException, url: str) -> str:
    """A one-line, password-free description of a connect or driver error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) and not str(exc):
        text = "timed out"
    return (
        f"{type(exc).__name__}: {_redact_text(text, url)}"
        if url
        else f"{type(exc).__name__}: {text}"
    )


def _pool_name(url: str) -> str:
    """``host:port/dbname`` from a URL or DSN, never credentials."""
    if not url:
        return "pgpool"
    try:
        info = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        return redact_dsn(url)
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"{host}:{port}/{info.get('dbname', info.get('user', ''))}"
