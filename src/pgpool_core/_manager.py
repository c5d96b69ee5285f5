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
import functools
import itertools
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from ._classify import sqlstate
from ._config import PoolSettings
from ._connector import AiopgConnector, Connector, DriverConnection, TxStatus, UrlSource
from ._leaks import LeakDetector, NoLeakDetector
from ._metrics import PoolObserver, PoolStatus, Recorder
from ._redact import describe_error, passwords_in, pool_name
from ._result import QueryResult
from ._retry import RetryPolicy
from ._state import PoolState, transition
from ._statements import Deadline, check_timeout
from ._timers import DeadlineTimer
from ._transaction import BEGIN_WITH_XID, await_answer, refuse_commit, resolve_xid
from .errors import (
    CommitUnknownError,
    ConfigurationError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryParameterError,
    QueryTimeoutError,
    SettingsError,
    TooManyRequestsError,
    TransactionRolledBackError,
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


@dataclass(eq=False)
class _Slot:
    conn: DriverConnection
    created: float
    expires: float
    last_used: float
    # The future the caller awaits for the running statement (failed by the deadline timer
    # or by stop()).
    running: asyncio.Future[None] | None = None
    # Once the caller stopped waiting: the running statement's real end (result or error).
    outcome: asyncio.Future[None] | None = None
    # The running statement is a COMMIT: nothing may cut it before its own bound.
    committing: bool = False
    acquired_at: float = 0.0
    # Bumped on failover: connections of an older generation are not reused.
    generation: int = 0


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
        # stop(): the pool-owned shutdown task, its deadline (only ever brought forward) and
        # the future it sleeps on (woken when the pool drains or the deadline moves).
        self._shutdown: asyncio.Task[None] | None = None
        self._stop_at = 0.0
        self._stop_wake: asyncio.Future[str] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._generation = 0
        self._last_drain = float("-inf")
        self._leaks: NoLeakDetector = NoLeakDetector()
        self._cancel_threads = 0
        self._session_state_warned: set[str] = set()
        self._metrics = Recorder(self)
        self._counters = self._metrics.counters
        self._last_success = float("-inf")
        self._healthy = False
        self._last_error: str | None = None
        self._names = itertools.count(1)

    def __repr__(self) -> str:
        return (
            f"<PoolManager {self.name!r} state={self._state.value} size={self._size}"
            f" free={len(self._idle)} waiting={len(self._waiters)}>"
        )

    # -- observers ------------------------------------------------------------------------

    def add_observer(self, observer: PoolObserver) -> None:
        """Send the pool's events to ``observer`` (metrics exporters)."""
        self._metrics.add(observer)

    def remove_observer(self, observer: PoolObserver) -> None:
        self._metrics.remove(observer)

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
            self._leaks = LeakDetector(
                self._loop,
                self._now,
                self.settings.leak_detection_threshold,
                lambda: self.name,
                self._count_leak,
            )
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

        Statements still running at the deadline are cancelled on the server; whatever still
        holds a connection ``min(cancel_timeout, 1 s)`` later has its connection closed. So
        stop() returns within ``timeout + min(cancel_timeout, 1 s)``, plus the few loop
        iterations its tasks take to unwind.

        The shutdown runs in a task the pool owns: a stop() that is itself cancelled (say,
        under ``asyncio.wait_for``) still completes it. Idempotent: a later stop() waits for
        the same shutdown, bringing its deadline forward to its own ``timeout`` if sooner.
        """
        state = self._state
        if state is PoolState.NEW:
            self._state = transition(state, PoolState.CLOSED)
            return
        if state is PoolState.CLOSED:
            return
        stop_at = self._now() + timeout
        if self._shutdown is None:
            self._begin_stop(stop_at)
        elif stop_at < self._stop_at:
            self._stop_at = stop_at
            self._wake_stop("moved")
        assert self._shutdown is not None
        await asyncio.shield(self._shutdown)

    def _begin_stop(self, stop_at: float) -> None:
        """Refuse new work now (no await), then run the rest of the shutdown in a task."""
        self._state = transition(self._state, PoolState.CLOSING)
        self._stop_at = stop_at
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosedError(f"pool {self.name} is stopping"))
        if self._maintenance is not None:
            self._maintenance.cancel()
        for slot in list(self._idle):
            self._discard(slot, bad=False)
        self._idle.clear()
        self._shutdown = asyncio.get_running_loop().create_task(
            self._shut_down(), name=f"pgpool-stop-{self.name}"
        )

    async def _shut_down(self) -> None:
        # In-flight work returns its connections through _release, which closes them now.
        await self._wait_drained()
        cancel_bound = min(self.settings.cancel_timeout, 1.0)
        if self._in_use:
            LOGGER.warning(
                "pool %s: %d connection(s) still in use at stop; cancelling",
                self.name,
                self._in_use,
            )
            self._abort_in_flight()
            # The callers' own paths now cancel their statements server-side; give them
            # cancel_bound, then cut whatever still hangs (a lost cancel).
            self._stop_at = self._now() + cancel_bound
            await self._wait_drained()
            for slot in list(self._busy_slots):
                slot.conn.close()
        tasks = [t for t in self._tasks if not t.done()]
        if self._maintenance is not None:
            tasks.append(self._maintenance)
        for task in tasks:
            task.cancel()  # connects, and settles stuck behind a lost cancel
        if tasks:
            await asyncio.wait(tasks, timeout=cancel_bound)
        self._leaks.close()
        for timers in (self._wait_deadlines, self._run_deadlines):
            if timers is not None:
                timers.close()
        self._state = transition(self._state, PoolState.CLOSED)

    async def _wait_drained(self) -> None:
        """Until no connection is in use or ``_stop_at`` passes (stop() may move it sooner)."""
        loop = asyncio.get_running_loop()
        while self._in_use:
            wake: asyncio.Future[str] = loop.create_future()
            self._stop_wake = wake
            timer = loop.call_later(max(self._stop_at - self._now(), 0), _resolve, wake, "due")
            try:
                if await wake == "due":
                    return
            finally:
                timer.cancel()
                self._stop_wake = None

    def _wake_stop(self, why: str) -> None:
        if self._stop_wake is not None:
            _resolve(self._stop_wake, why)

    def _abort_in_flight(self) -> None:
        """At the stop deadline: fail every statement still awaited (its caller then
        releases the connection, which cancels the statement on the server) and close
        connections held idle by callers (they find them closed)."""
        for slot in list(self._busy_slots):
            if slot.committing:
                _fail(slot.running, _Stopped())  # COMMIT runs on until its own bound
                continue
            if _interrupt(slot, _Stopped()):
                continue
            if not slot.conn.is_busy():
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
        self._metrics.connection_created(now - started)
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
        self._counters.connections_errors += 1
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
                self._counters.requests_errors += 1
                waiter.set_exception(error_type(message))
            self._waiters.popleft()
        self._grow()

    def _describe(self, exc: BaseException) -> str:
        password = self._password if isinstance(self._password, str) else ""
        text = _describe(exc, self.settings.url, password)
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
        self._metrics.connection_used(self._now() - slot.acquired_at)
        self._leaks.forget(slot)
        if not self._busy_slots and self._state is PoolState.CLOSING:
            self._wake_stop("drained")

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
            self._counters.returns_bad += 1
        self._grow()

    def _drop_idle(self, slot: _Slot) -> None:
        """Close a connection taken from the idle list; count it lost if it died there."""
        if slot.conn.closed:
            self._counters.connections_lost += 1
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
        self._counters.failovers += 1
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
        counters.requests_num += 1
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
            counters.requests_errors += 1
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
        counters.requests_queued += 1
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
            counters.requests_wait_ms += int((self._now() - now) * 1000)

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
            await self._run(slot, "SELECT 1", None, Deadline.after(self._now(), bound))
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
        if self._state is PoolState.RECONNECTING:
            # Not a busy pool: the database is unreachable (e.g. connects hang).
            self._counters.requests_errors += 1
            waiter.set_exception(
                PoolUnavailableError(
                    f"cannot connect to {self.name} within {wait:.3f} s: "
                    f"{self._last_error or 'no connection yet'}"
                )
            )
            return
        self._metrics.acquire_timed_out()
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
        await self._run(
            slot, "ROLLBACK", None, Deadline.after(self._now(), self.settings.cancel_timeout)
        )

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
        # The statement's end: caught when the caller stopped waiting, else from now on.
        # Its error, if any, is not ours to raise (the caller already got one).
        ended = slot.outcome or conn.wait_until_idle()
        slot.outcome = None
        ended.add_done_callback(_consume)
        try:
            settled = await self._cancel_statement(conn, ended)
        except asyncio.CancelledError:  # stop() cuts what is left
            settled = False
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
        deadline: Deadline,
        *,
        callproc: bool = False,
    ) -> QueryResult:
        """Run one statement on ``slot`` until ``deadline``; what it raises is what happened.

        Nothing is sent once the deadline has passed. On expiry inside a transaction the
        caller hears at once (the transaction can no longer commit; releasing the slot
        cancels the statement and rolls back). Outside one, the server's answer to the
        cancel decides: cancelled raises :class:`QueryTimeoutError`, a statement that
        completed first returns its result, an error is raised as is.
        """
        conn = slot.conn
        if "\x00" in sql:
            raise QueryParameterError(
                "statement text contains a NUL character (libpq would cut the statement"
                " there); nothing was sent"
            )
        if deadline.at <= self._now():
            self._counters.query_timeouts += 1
            raise QueryTimeoutError(
                f"the {deadline.total:.3f} s timeout passed before the statement was sent;"
                " nothing was sent"
            )
        if self.settings.pgbouncer:
            self._warn_session_state(sql)
        in_transaction = conn.transaction_status() in _IN_TRANSACTION
        try:
            future = conn.send(sql, params, callproc=callproc)
        except (IndexError, KeyError, TypeError, ValueError, psycopg2.ProgrammingError) as exc:
            raise QueryParameterError(
                f"statement parameters rejected, nothing was sent: {_bad_parameter(params, exc)}"
            ) from exc
        # Awaited directly: a caller's cancellation cancels only this future, and the
        # deadline timer fails it with _Expired; neither stops the statement, which is
        # cancelled on the server (by _confirm_cancel or when the slot is released).
        slot.running = future
        timers = self._run_deadlines
        assert timers is not None
        timers.add(slot, deadline.at)
        try:
            await future
        except (_Expired, _Stopped) as stopped:
            if isinstance(stopped, _Expired):
                self._counters.query_timeouts += 1
            if in_transaction:
                raise _interrupted(stopped, deadline, "; the transaction is rolled back") from None
            return await self._confirm_cancel(slot, stopped, deadline)
        except psycopg2.extensions.QueryCanceledError as error:
            self._counters.query_timeouts += 1
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
            slot.running = None
        self._mark_success(self._now())
        return conn.result()

    async def _confirm_cancel(
        self, slot: _Slot, stopped: Exception, deadline: Deadline
    ) -> QueryResult:
        """After an autocommit statement ran out of time (or the pool stopped): cancel it
        on the server and report how it really ended, bounded by cancel_timeout."""
        outcome = slot.outcome
        slot.outcome = None
        ended = outcome is not None and await self._cancel_statement(slot.conn, outcome)
        if not ended or outcome is None:
            slot.conn.close()
            raise _interrupted(
                stopped,
                deadline,
                f"; the server did not confirm the cancel within"
                f" {self.settings.cancel_timeout:.3f} s and the connection was closed:"
                " the statement may or may not have completed",
            )
        error = outcome.exception()
        if error is None:
            LOGGER.debug("pool %s: statement completed before its cancel arrived", self.name)
            self._mark_success(self._now())
            return slot.conn.result()
        if isinstance(error, psycopg2.extensions.QueryCanceledError):
            raise _interrupted(stopped, deadline, "; it was cancelled on the server") from None
        if slot.conn.closed:
            raise _interrupted(
                stopped,
                deadline,
                "; the connection closed before the server confirmed the cancel:"
                " the statement may or may not have completed",
            ) from error
        raise error

    async def _cancel_statement(self, conn: DriverConnection, ended: asyncio.Future[None]) -> bool:
        """Ask the server to cancel ``conn``'s running statement; True once it has ended
        (``ended`` is done), waiting at most cancel_timeout. Too many cancels in flight
        (a black-holed network): give up at once, the caller closes the connection."""
        if ended.done() or not conn.is_busy():
            return True
        if self._cancel_threads >= self.settings.max_size + 2:
            return False
        until = self._now() + self.settings.cancel_timeout
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._cancel_in_thread(conn), until - self._now())
            await asyncio.wait((ended,), timeout=max(until - self._now(), 0))
        return ended.done() or not conn.is_busy()

    async def _acquire_for(
        self, timeout: float | None, metric_name: str = ""
    ) -> tuple[_Slot, Deadline]:
        """Acquire for one call: the slot and the call's deadline.

        With ``timeout`` (already checked) it bounds the whole call, waiting included, from
        one clock reading; without, waiting is bounded by acquire_timeout and running by
        query_timeout.
        """
        asked = self._now()
        if timeout is None:
            slot = await self._acquire(None)
            deadline = Deadline.after(self._now(), self.settings.query_timeout)
        else:
            deadline = Deadline.after(asked, timeout)
            slot = await self._acquire(deadline.at)
        if self._metrics.observers:
            self._metrics.connection_waited(max(slot.acquired_at - asked, 0.0))
        self._leaks.watch(slot, slot.acquired_at, metric_name)
        return slot, deadline

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

    def _count_leak(self) -> None:
        self._counters.leaks_detected += 1

    def _release_after(self, slot: _Slot, exc: BaseException) -> None:
        """Release after a failed call; a driver error on a dead connection discards it."""
        self._release(slot, bad=isinstance(exc, psycopg2.Error) and slot.conn.closed)

    @contextlib.asynccontextmanager
    async def _checkout(
        self, timeout: float | None, metric_name: str = ""
    ) -> AsyncIterator[tuple[_Slot, Deadline]]:
        slot, deadline = await self._acquire_for(timeout, metric_name)
        try:
            yield slot, deadline
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
        timeout = check_timeout(timeout)
        try:
            slot, deadline = await self._acquire_for(timeout, metric_name)
        except PoolError as exc:
            if on_error is None:
                raise
            return _swallow_or_raise(on_error, "postgres_connector", exc)
        started = self._now()
        failure: BaseException | None = None
        try:
            result = await self._run(slot, sql, params, deadline, callproc=callproc)
        except BaseException as exc:
            failure = exc
            self._release_after(slot, exc)
            if on_error is not None and isinstance(exc, (psycopg2.Error, PoolError)):
                return _swallow_or_raise(on_error, metric_name, exc)
            raise
        finally:
            if on_duration is not None or self._metrics.observers:
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
        self._metrics.operation_finished(seconds, failure)

    @contextlib.asynccontextmanager
    async def transaction(
        self, timeout: float | None = None, *, resolve_commit: bool | None = None
    ) -> AsyncIterator[PostgresConnector]:
        """``BEGIN`` ... ``COMMIT`` on one connection; ``ROLLBACK`` if the block raises.

        ``timeout`` bounds the whole transaction, from waiting for the connection to COMMIT.
        Leaving the block without an error commits, and returns only if the server
        committed: see :meth:`PostgresConnector.transaction` for what each error means.
        ``resolve_commit`` overrides the ``resolve_commits`` setting for this transaction.
        """
        timeout = check_timeout(timeout)
        async with self._checkout(timeout) as (slot, deadline):
            connector = PostgresConnector(self, slot, deadline)
            async with connector.transaction(resolve_commit=resolve_commit):
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
        timeout = check_timeout(timeout)
        async with self._checkout(timeout) as (slot, deadline):
            yield PostgresConnector(
                self, slot, deadline, on_error=on_error, on_duration=on_duration
            )

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """The checked-out aiopg connection itself (escape hatch). Returned on exit: rolled
        back if left in a transaction, discarded if left busy or broken."""
        async with self._checkout(check_timeout(timeout)) as (slot, _deadline):
            yield slot.conn.handle

    async def _commit(
        self,
        slot: _Slot,
        deadline: Deadline,
        *,
        xid: int | None,
        failure: BaseException | None,
        ended_by: str | None,
    ) -> None:
        """End a transaction with COMMIT, reporting only what the server did (see
        :meth:`PostgresConnector.transaction`)."""
        conn = slot.conn
        status = conn.transaction_status()
        refusal = refuse_commit(
            status,
            deadline_passed=deadline.at <= self._now(),
            total=deadline.total,
            failure=failure,
            ended_by=ended_by,
        )
        if refusal is not None:
            if refusal.rollback:
                with contextlib.suppress(Exception):  # else the release rolls back or discards
                    await self._rollback(slot)
            raise refusal.error
        if status is TxStatus.IDLE:
            return  # the block committed it itself
        try:
            answer = conn.send("COMMIT", None)
        except Exception as exc:  # never sent: without COMMIT nothing commits
            raise TransactionRolledBackError(
                f"transaction rolled back, nothing of it was committed: COMMIT could not be"
                f" sent ({type(exc).__name__})",
                exc,
            ) from exc
        answer.add_done_callback(_consume)
        cancelled = await self._await_commit(
            slot, answer, deadline.at + self.settings.cancel_timeout
        )
        try:
            self._commit_answered(conn, answer, failure)
        except CommitUnknownError as unknown:
            unknown.xid = xid
            if xid is None or cancelled is not None:
                self._log_cancelled_commit(cancelled, xid, "unknown")
                raise
            try:
                await self._resolve_commit(xid, unknown)  # returns if it committed
            except asyncio.CancelledError as late:
                self._log_cancelled_commit(late, xid, "unknown")
        except BaseException:
            self._log_cancelled_commit(cancelled, xid, "rolled back")
            raise
        self._log_cancelled_commit(cancelled, xid, "committed")

    async def _await_commit(
        self, slot: _Slot, answer: asyncio.Future[None], until: float
    ) -> asyncio.CancelledError | None:
        """Wait for COMMIT's ``answer`` until ``until`` (the pool's deadline timer bounds it);
        neither the caller's cancellation nor stop() cuts the wait. Returns the caller's
        cancellation, to be re-raised once the outcome is known."""
        assert self._loop is not None
        assert self._run_deadlines is not None
        # The caller awaits a guard, never the answer itself: cancelling the caller cancels
        # the guard, and the answer still arrives.
        guard: asyncio.Future[None] = self._loop.create_future()
        answer.add_done_callback(functools.partial(_settle_guard, guard))
        slot.running, slot.committing = guard, True
        timers = self._run_deadlines
        timers.add(slot, until, _COMMIT)
        try:
            await guard
        except asyncio.CancelledError as cancelled:
            await await_answer(answer, until, self._now)  # the slow path: keeps waiting
            return cancelled
        except _Stopped:
            await await_answer(answer, until, self._now)
        except _Expired:
            pass  # no answer by the bound: the caller reports it unknown
        finally:
            timers.discard(slot)
            slot.running, slot.committing = None, False
        return None

    def _commit_answered(
        self, conn: DriverConnection, answer: asyncio.Future[None], failure: BaseException | None
    ) -> None:
        """Raise unless the server's answer to COMMIT says it committed."""
        if not answer.done():
            conn.close()
            raise CommitUnknownError(
                f"COMMIT was sent but no answer came within {self.settings.cancel_timeout:.3f} s"
                " after the deadline; the connection was closed: the transaction may or may not"
                " have committed"
            )
        error = answer.exception()
        if error is None:
            self._mark_success(self._now())
            tag = conn.status_message()
            if tag != "COMMIT":
                raise TransactionRolledBackError(
                    f"transaction rolled back: the server answered COMMIT with {tag}", failure
                )
            return
        if conn.closed:
            self._healthy = False
            self._last_error = self._describe(error)
            raise CommitUnknownError(
                f"the connection was lost while COMMIT ran ({type(error).__name__}):"
                " the transaction may or may not have committed"
            ) from error
        raise error  # the server refused to commit (e.g. a deferred constraint): rolled back

    async def _resolve_commit(self, xid: int, unknown: CommitUnknownError) -> None:
        """Ask the server how transaction ``xid`` ended; return if it committed."""
        assert self._connector is not None
        verdict = await resolve_xid(
            self._connector.connect, xid, self._now() + self.settings.cancel_timeout, self._now
        )
        LOGGER.debug("pool %s: lost COMMIT of xid %d resolved: %s", self.name, xid, verdict)
        if verdict == "committed":
            return
        if verdict == "aborted":
            raise TransactionRolledBackError(
                f"transaction rolled back: the connection was lost during COMMIT and"
                f" txid_status({xid}) says aborted",
                unknown,
            ) from unknown
        raise CommitUnknownError(
            f"{unknown}; txid_status({xid}) could not be read within"
            f" {self.settings.cancel_timeout:.3f} s",
            xid,
        ) from unknown

    def _log_cancelled_commit(
        self, cancelled: asyncio.CancelledError | None, xid: int | None, outcome: str
    ) -> None:
        """After a caller was cancelled while its COMMIT ran: log the outcome, re-raise."""
        if cancelled is None:
            return
        LOGGER.debug(
            "pool %s: caller cancelled while COMMIT ran (xid %s); the transaction %s",
            self.name,
            "unknown" if xid is None else xid,
            outcome,
        )
        raise cancelled

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
        data.update(self._counters.as_dict())
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
            counters=self._counters.as_dict(),
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
        deadline: Deadline,
        *,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
    ) -> None:
        self._pool = pool
        self._slot = slot
        self._deadline = deadline
        self._on_error = on_error
        self._on_duration = on_duration
        # Inside transaction(): the failure that aborted the transaction (cleared when a
        # later statement leaves it usable again, e.g. ROLLBACK TO SAVEPOINT), and the tag
        # of a statement of the block that ended the transaction itself.
        self._in_transaction = False
        self._failure: BaseException | None = None
        self._ended_by: str | None = None

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
        deadline = self._deadline.sooner(started, check_timeout(timeout))
        failure: BaseException | None = None
        try:
            result = await pool._run(self._slot, sql, params, deadline, callproc=callproc)
        except (psycopg2.Error, PoolError) as exc:
            failure = exc
            if self._in_transaction and self._failure is None:
                self._failure = exc
            if self._on_error is None:
                raise
            return _swallow_or_raise(self._on_error, metric_name, exc)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if self._on_duration is not None or pool._metrics.observers:
                pool._finished(metric_name, pool._now() - started, failure, self._on_duration)
        if self._in_transaction:
            self._after_statement()
        return result

    def _after_statement(self) -> None:
        conn = self._slot.conn
        status = conn.transaction_status()
        if status is TxStatus.INTRANS:
            self._failure = None  # usable again (e.g. after ROLLBACK TO SAVEPOINT)
        elif status is TxStatus.IDLE:
            self._ended_by = conn.status_message()

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, resolve_commit: bool | None = None
    ) -> AsyncIterator[PostgresConnector]:
        """``BEGIN`` on this connection; ``COMMIT`` when the block ends without an error,
        ``ROLLBACK`` when it raises. What leaving the block reports is what the server did:

        - returns: the server committed the transaction;
        - the block's own exception, :class:`QueryTimeoutError` (the deadline passed before
          COMMIT could be sent), :class:`TransactionRolledBackError` (a statement failed
          and the block went on, the connection was lost before COMMIT, ...) or a driver
          error from COMMIT itself (a deferred constraint, a serialization failure): rolled
          back, nothing of it committed;
        - :class:`CommitUnknownError`: COMMIT was sent and its answer was lost. With
          ``resolve_commit`` (default: the ``resolve_commits`` setting) the pool asks the
          server on another connection (``txid_status``) and reports committed or rolled
          back instead, unless the server cannot answer within ``cancel_timeout``.

        Once COMMIT is sent, neither the deadline nor a cancellation of the caller cuts it:
        the pool waits for its answer (until the deadline plus ``cancel_timeout``) and then
        reports it, or re-raises the cancellation (logging the outcome at DEBUG).

        With ``on_error`` hooks, these errors go to the hook as ``postgres_transaction``;
        the exception it returns is raised, but None cannot swallow an outcome.
        """
        pool, slot = self._pool, self._slot
        resolve = pool.settings.resolve_commits if resolve_commit is None else resolve_commit
        xid: int | None = None
        if resolve:
            row = (await pool._run(slot, BEGIN_WITH_XID, None, self._deadline)).row
            xid = int(row["xid"]) if row is not None else None
        else:
            await pool._run(slot, "BEGIN", None, self._deadline)
        self._in_transaction, self._failure, self._ended_by = True, None, None
        try:
            yield self
        except BaseException as exc:
            self._in_transaction = False
            conn = slot.conn
            # A cancelled caller is not kept waiting: releasing the slot rolls back.
            if not isinstance(exc, asyncio.CancelledError) and not (conn.is_busy() or conn.closed):
                with contextlib.suppress(Exception):  # else the release rolls back or discards
                    await pool._rollback(slot)
            raise
        self._in_transaction = False
        try:
            await pool._commit(
                slot, self._deadline, xid=xid, failure=self._failure, ended_by=self._ended_by
            )
        except (psycopg2.Error, PoolError) as exc:
            if self._on_error is None:
                raise
            replacement = self._on_error("postgres_transaction", exc)
            if replacement is None or replacement is exc:
                raise  # an outcome is never swallowed
            raise replacement from exc


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


def _interrupt(slot: _Slot, reason: Exception) -> bool:
    """Stop the caller waiting for ``slot``'s statement (which keeps running); from now on
    ``slot.outcome`` catches how it really ends. False when nothing was awaited."""
    running = slot.running
    if running is None or running.done():
        return False
    slot.outcome = slot.conn.wait_until_idle()
    slot.outcome.add_done_callback(_consume)
    running.set_exception(reason)
    return True


def _expire_run(slot: _Slot, payload: object) -> None:
    if payload is _COMMIT:
        _fail(slot.running, _Expired())  # the answer itself is left to arrive
    else:
        _interrupt(slot, _Expired())


def _fail(future: asyncio.Future[None] | None, reason: Exception) -> None:
    if future is not None and not future.done():
        future.set_exception(reason)


def _settle_guard(guard: asyncio.Future[None], _answer: asyncio.Future[None]) -> None:
    if not guard.done():
        guard.set_result(None)


#: Deadline-timer payload of a COMMIT being awaited (expiry must not touch its answer).
_COMMIT = object()


def _interrupted(stopped: Exception, deadline: Deadline, what: str) -> PoolError:
    """The error for a statement the caller stopped waiting for; ``what`` says its fate."""
    if isinstance(stopped, _Stopped):
        return PoolClosedError(f"the pool stopped before the statement finished{what}")
    return QueryTimeoutError(f"statement exceeded its {deadline.total:.3f} s timeout{what}")


_IN_TRANSACTION = (TxStatus.INTRANS, TxStatus.INERROR)


def _bad_parameter(params: Any, exc: BaseException) -> str:
    """Which parameter the driver could not bind, by index or key, and its type."""
    items: list[tuple[object, Any]] = []
    if isinstance(params, Mapping):
        items = list(params.items())
    elif isinstance(params, (list, tuple)):
        items = list(enumerate(params))
    for key, value in items:
        where = f"key {key!r}" if isinstance(params, Mapping) else f"index {key}"
        if isinstance(value, str) and "\x00" in value:
            return f"parameter at {where} contains a NUL character"
        try:
            psycopg2.extensions.adapt(value)
        except Exception:
            return f"parameter at {where} has type {type(value).__name__}, which cannot be adapted"
    given = "no" if params is None else str(len(params)) if hasattr(params, "__len__") else "1"
    return f"{type(exc).__name__}: {exc} ({given} parameter(s) given)"


def _resolve(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException, url: str, *passwords: str) -> str:
    """A one-line description of a connect or driver error, without any password of
    ``url`` (or ``passwords``)."""
    return describe_error(exc, passwords_in(url) | set(passwords))


def _pool_name(url: str) -> str:
    """``host:port/dbname`` from libpq's reading of a valid URL; never credentials, never
    raw URL text (``pgpool`` for no URL or an invalid one)."""
    return pool_name(url)
