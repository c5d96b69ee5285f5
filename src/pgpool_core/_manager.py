"""PoolManager: lifecycle, growth and reconnects, acquire and release, failover,
maintenance and the public API, orchestrating the units beside it, each with one job:

- ``_bag``: the bookkeeping (idle, waiters, busy, opening, returning, generation); decides,
  never awaits;
- ``_opening``: one connect, timed and counted; the reconnect loop;
- ``_checkout``: handing out a connection (idle first, pinged when idle long) or a place
  in the wait queue;
- ``_statements``: the call's deadline and the statement runner;
- ``_session`` / ``_transaction``: the connector session, BEGIN ... COMMIT and its truth;
- ``_returns``: the cancel and rollback that restore a returned connection;
- ``_metrics`` (counters, observers, status, health), ``_leaks``, ``_stopping`` (owned
  tasks, stop's deadline);
- ``_api``: the calls (execute, transaction, connector...), a mixin of this class;
- ``_members`` / ``_routing`` / ``_sessions``: the readers of ``read_url``, which of them
  serves a read, and read-your-writes sessions.

Everything runs on one event loop, so the bookkeeping is changed without awaits in
between and needs no lock. Connects, and the cancel and rollback that restore a returned
connection, run in tasks the pool owns (cancelled by kind on stop). Two round trips run on
the caller's own task, bounded by its deadline or cancel_timeout: the checkout
validation (``SELECT 1``) and the ROLLBACK of a transaction block that raised. Only the
manager puts a connection back: ``_release``, or the restore task it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from 3.11 on

from ._api import QueryApi
from ._bag import Bag, Slot
from ._checkout import Checkout, NotStarted
from ._classify import sqlstate
from ._config import DISCARD_ALL, DISCARD_PGBOUNCER, PoolOptions, PoolSettings
from ._connector import AiopgConnector, Connector, TxStatus, UrlSource
from ._leaks import NoLeakDetector, leak_detector
from ._listener import Listener
from ._logs import fields, logger
from ._members import ReaderSet
from ._metrics import Health, PoolObserver, PoolStatus, Recorder
from ._opening import Opener, reconnect
from ._redact import passwords_in, pool_name, server_address
from ._result import QueryResult
from ._retry import RetryPolicy
from ._returns import Canceller, needs_restore, restore_slot
from ._session import (
    OnDuration,
    OnError,
    PostgresConnector,
    SessionTools,
    run_once,
)
from ._state import PoolState, transition
from ._statements import Deadline
from ._stopping import OwnedTasks, Shutdown
from .errors import (
    ConfigurationError,
    PoolClosedError,
    PoolTimeoutError,
    PoolUnavailableError,
    SettingsError,
)

__all__ = [
    "OnDuration",
    "OnError",
    "PoolManager",
    "PoolObserver",
    "PoolStatus",
    "PostgresConnector",
]

LOGGER = logger("pool")


#: Bound on the round trip status() makes when it has to check.
STATUS_CHECK_TIMEOUT = 1.0


class PoolManager(QueryApi):
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
        read_connectors: Sequence[Connector] = (),
        **options: Unpack[PoolOptions],
    ) -> None:
        given: dict[str, Any] = dict(options)  # checked at run time by PoolSettings
        # A callable URL (credential rotation) is evaluated at each connect.
        self._url_source: UrlSource | None = None
        if callable(url):
            self._url_source = url
        elif url is not None:
            given["url"] = url
        self.settings = settings = dataclasses.replace(settings or PoolSettings(), **given)
        self.name = name or pool_name(settings.url)
        self._named = name is not None or bool(settings.url)
        self._connector = connector
        self._password = password
        self._retry = retry or RetryPolicy()
        # Injected clock for tests; asyncio's own loop.time() is time.monotonic().
        self._now: Callable[[], float] = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        # max_lifetime is jittered down by up to 5% (see Opener).
        self._jitter = jitter or (lambda: random.uniform(0.95, 1.0))
        self._state = PoolState.NEW
        self._bag: Bag[asyncio.Future[Slot]] = Bag(settings.min_size, settings.max_size)
        # stop(): the pool-owned shutdown task and how long it waits for work in flight.
        self._shutdown: asyncio.Task[None] | None = None
        self._stopping: Shutdown | None = None
        self._tasks = OwnedTasks(lambda: self.name)
        self._checkout: Checkout | NotStarted = NotStarted(lambda: self.name)
        self._run_once: Callable[..., Awaitable[QueryResult]] = self._checkout.refuse
        self._down_since: float | None = None
        self._leaks: NoLeakDetector = NoLeakDetector()
        self._canceller = Canceller(
            self.settings.cancel_timeout, self.settings.max_size + 2, self.name
        )
        self._metrics = Recorder(self)
        self._health = Health(self._now)
        #: Listeners started by listen(), closed by stop().
        self._listeners: set[Listener] = set()
        self._warned_listen = False
        #: Every returned connection goes through a reset round trip before reuse.
        self._reset_each = settings.reset not in ("none", "rollback")
        #: ``writer``, or ``reader`` for the pools of :attr:`readers`.
        self.role = "writer"
        #: Where the pool connects (``host:port`` of each host libpq tries), for metrics.
        self.server_address = server_address(settings.url) if settings.url else ""
        self._readers: ReaderSet[PoolManager] | None = None
        if settings.read_url or read_connectors:

            def make(settings: PoolSettings, connector: Connector | None, name: str) -> PoolManager:
                reader = PoolManager(
                    settings=settings,
                    # A reader URL with its own password keeps it (other credentials).
                    password=None if passwords_in(settings.url) else password,
                    connector=connector,
                    name=name,
                    retry=retry,
                    clock=clock,
                    sleep=sleep,
                    jitter=jitter,
                )
                reader.role = "reader"
                return reader

            self._readers = ReaderSet.build(
                settings,
                read_connectors,
                make,
                writer=lambda: self.name,
                named=name is not None,
                clock=self._now,
                sleep=self._sleep,
                writer_lsn=self._wal_position,
            )

    def __repr__(self) -> str:
        return (
            f"<PoolManager {self.name!r} state={self._state.value} size={self._bag.size}"
            f" free={len(self._bag.idle)} waiting={len(self._bag.waiters)}>"
        )

    # -- observers ------------------------------------------------------------------------

    def add_observer(self, observer: PoolObserver) -> None:
        """Send the pool's events, and its readers', to ``observer`` (metrics exporters);
        each event names the pool it happened in (:attr:`role` tells writer from reader)."""
        for pool in (self, *self.readers):
            pool._metrics.add(observer)

    def remove_observer(self, observer: PoolObserver) -> None:
        """Stop reporting to ``observer`` (added by :meth:`add_observer`), readers too."""
        for pool in (self, *self.readers):
            pool._metrics.remove(observer)

    # -- readers ---------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """Connections checked out now."""
        return len(self._bag.busy)

    @property
    def last_error(self) -> str | None:
        """The latest connect or connection failure (redacted), or None."""
        return self._health.last_error

    def down_for(self) -> float | None:
        """Seconds since the pool started reconnecting (None while it is not)."""
        since = self._down_since
        if since is None or self._state is not PoolState.RECONNECTING:
            return None
        return self._now() - since

    def server_read_only(self) -> bool | None:
        """Whether the server's sessions are read-only, as an open connection last reported
        it (``in_hot_standby`` / ``default_transaction_read_only``): no I/O; None when no
        connection is open or the server reports neither (PgBouncer, PostgreSQL < 14)."""
        slot = self._bag.idle[-1] if self._bag.idle else next(iter(self._bag.busy), None)
        if slot is None or slot.conn.closed:
            return None
        return slot.conn.server_read_only()

    def recycle(self) -> None:
        """Close every connection as it becomes free (idle ones now); new ones are opened
        as needed: libpq's host choice (``target_session_attrs``) is made again."""
        for slot in self._bag.retire_generation():
            self._discard(slot, bad=False)
        self._meet_demand()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """Where the pool is in its life (:class:`~pgpool_core.PoolState`)."""
        return self._state

    async def start(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Open the pool. Idempotent. ``min_size`` connections open in the background.

        Lazy by default: starting succeeds while the database is down, and the pool
        connects when it can. ``wait=True`` fails fast instead: it waits (up to
        ``timeout``, default ``connect_timeout``) for a working connection, and on failure
        stops the pool and raises. On a pool already started (say, by ``async with``),
        ``wait=True`` is :meth:`wait_ready`: it returns once a connection works, or raises
        (and leaves the pool running).

        :raises SettingsError: no URL configured.
        :raises PoolClosedError: the pool was stopped (pools never reopen).
        :raises ConfigurationError: (``wait=True``) authentication failed, unknown
            database or host, bad URL.
        :raises PoolUnavailableError: (``wait=True``) the database could not be reached.
        """
        if self._state.serving:  # started already: wait means "ready, or raise"
            if wait and not self.is_available:
                await self.wait_ready(timeout)
            return
        if self._state is not PoolState.NEW:
            raise PoolClosedError(f"pool {self.name} is {self._state.value}; pools do not reopen")
        if not self.settings.url and self._connector is None and self._url_source is None:
            raise SettingsError("url: no PostgreSQL URL configured (postgres_url / POSTGRES_URL)")
        if self._connector is None:
            url = self._url_source or self.settings.url
            self._connector = AiopgConnector.for_settings(url, self.settings, self._password)
        self._state = transition(self._state, PoolState.OPEN)
        self._opener = Opener(
            self._connector,
            self.settings,
            clock=self._now,
            jitter=self._jitter,
            recorder=self._metrics,
            health=self._health,
            password=self._password,
        )
        self._tools = SessionTools.build(
            self.settings,
            clock=self._now,
            recorder=self._metrics,
            canceller=self._canceller,
            connect=self._connector.connect,
            on_success=self._health.succeeded,
            on_lost=self._lost,
            on_read_only=self._drain_for_failover,
            pool_name=lambda: self.name,
        )
        self._runner, self._committer = self._tools.runner, self._tools.committer
        self._leaks = leak_detector(
            self.settings.leak_detection_threshold,
            self._now,
            lambda: self.name,
            self._metrics.leak_detected,
        )
        self._checkout = checkout = Checkout(
            self._bag,
            self._metrics,
            self.settings,
            clock=self._now,
            leaks=self._leaks,
            state=lambda: self._state,
            pool_name=lambda: self.name,
            unreachable=self._unreachable,
            on_queued=self._meet_demand,
            ping=lambda slot, deadline: self._runner.run(slot, "SELECT 1", None, deadline),
            drop=self._drop,
            release=self._release,
        )
        self._queue = checkout.queue
        self._reconnect = functools.partial(
            reconnect,
            self._retry,
            sleep=self._sleep,
            rand=random.random,
            down=lambda: self._state is PoolState.RECONNECTING,
            reserve=self._bag.reserve_connect,
            attempt=lambda: self._connect_one(self._bag.arrivals),
        )
        self._run_once = functools.partial(
            run_once, self._tools, self._checkout.take_for, self._release
        )
        if not wait:
            # With wait, wait_ready's request starts the first connects itself, so their
            # failure is its failure (see _connect_failed).
            self._meet_demand()
        self._tasks.maintain(self._maintain_forever())
        if self._readers is not None:
            await self._readers.start()
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
        :raises PoolTimeoutError: the database answers but no connection came free.
        """
        bound = self.settings.connect_timeout if timeout is None else timeout
        try:
            async with self._holding(bound):
                pass
        except PoolTimeoutError:
            if self._health.healthy:
                raise  # every connection busy, the database fine: not "unreachable"
            raise PoolUnavailableError(
                f"pool {self.name}: no connection within {bound:.3f} s"
                f" (last error: {self._health.last_error or 'none'})"
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
        listeners, self._listeners = self._listeners, set()
        await asyncio.gather(
            self._stop(timeout),
            *(listener.close(timeout) for listener in listeners),
            *(() if self._readers is None else (self._readers.stop(timeout),)),
        )

    async def _stop(self, timeout: float) -> None:
        state = self._state
        if state is PoolState.NEW:
            self._state = transition(state, PoolState.CLOSED)
            return
        if state is PoolState.CLOSED:
            return
        stop_at = self._now() + timeout
        if self._shutdown is None:
            self._begin_stop(stop_at)
        else:
            assert self._stopping is not None
            self._stopping.deadline.bring_forward(stop_at)
        assert self._shutdown is not None
        await asyncio.shield(self._shutdown)

    def _begin_stop(self, stop_at: float) -> None:
        """Refuse new work now (no await), then run the rest of the shutdown in a task."""
        self._state = transition(self._state, PoolState.CLOSING)
        self._stopping = Shutdown(
            self._now,
            stop_at,
            busy=self._bag.busy,
            cancel_bound=min(self.settings.cancel_timeout, 1.0),
            pool_name=lambda: self.name,
        )
        for waiter in self._bag.take_all_waiters():
            waiter.set_exception(PoolClosedError(f"pool {self.name} is stopping"))
        if self._tasks.maintenance is not None:
            self._tasks.maintenance.cancel()
        for slot in self._bag.take_all_idle():
            self._discard(slot, bad=False)
        self._shutdown = asyncio.get_running_loop().create_task(
            self._shut_down(), name=f"pgpool-stop-{self.name}"
        )

    async def _shut_down(self) -> None:
        assert self._stopping is not None
        await self._stopping.run(self._tasks)
        self._leaks.close()
        for timers in (self._queue.timer, self._runner.timers):
            timers.close()
        self._state = transition(self._state, PoolState.CLOSED)

    async def __aenter__(self) -> PoolManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- growth and connection bookkeeping -------------------------------------------------

    def _meet_demand(self) -> None:
        """Start connects for unmet demand: waiters not covered by connects, or below min.

        While reconnecting only the single reconnect task connects.
        """
        state = self._state
        if state is PoolState.RECONNECTING:
            self._tasks.reconnect(self._reconnect)
            return
        if state is not PoolState.OPEN:
            return
        for _ in range(self._bag.plan_connects()):
            self._tasks.connect(self._connect_one(self._bag.arrivals))

    async def _connect_one(self, cutoff: int) -> bool:
        """One connect (the bag already counts it as opening); the connection goes to the
        oldest waiter or the idle list. ``cutoff``: arrivals before it."""
        generation = self._bag.generation
        try:
            slot = await self._opener.open(generation)
        except (Exception, asyncio.CancelledError) as exc:
            self._bag.connect_failed()
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._connect_failed(exc, cutoff)
            return False
        fresh = self._bag.connected(generation)
        if not self._named and self._opener.last_url:
            self.name, self._named = pool_name(self._opener.last_url), True
        recovered = self._state is PoolState.RECONNECTING
        if recovered:
            self._state = transition(self._state, PoolState.OPEN)
            down, self._down_since = slot.created - (self._down_since or slot.created), None
            LOGGER.info(
                "pool %s: reconnected after %.3f s",
                self.name,
                down,
                extra=fields(self.name, "reconnected", role=self.role),
            )
        if self._state is not PoolState.OPEN or not fresh:
            # Stopping; or a failover drain happened while connecting, and this connection
            # may have found the old primary: open another one instead.
            slot.conn.close()
            if fresh:
                self._bag.forget()
            self._meet_demand()
            return True
        self._hand_off(slot, slot.created)
        if recovered:
            self._meet_demand()  # the rest of the demand, in parallel again
        return True

    def _connect_failed(self, exc: BaseException, cutoff: int) -> None:
        """A connect failed (counted and described by the opener): start reconnecting, and
        fail the waiters that arrived before it started."""
        if self._state is PoolState.OPEN:
            self._state = transition(self._state, PoolState.RECONNECTING)
            self._down_since = self._now()
            LOGGER.warning(
                "pool %s: cannot connect (%s); failing requests fast while reconnecting",
                self.name,
                self._health.last_error,
                extra=fields(self.name, "reconnecting", role=self.role, sqlstate=sqlstate(exc)),
            )
        else:
            LOGGER.debug("pool %s: connect failed: %s", self.name, self._health.last_error)
        # Fail the waiters that arrived before this attempt started, now, rather than let
        # them sit out their timeouts against a database that just refused us.
        kind = ConfigurationError if isinstance(exc, ConfigurationError) else PoolUnavailableError
        message = f"cannot connect to {self.name}: {self._health.last_error}"
        self._queue.fail_arrived_before(cutoff, lambda: kind(message))
        self._meet_demand()

    def _check_out_done(self, slot: Slot, now: float) -> None:
        self._bag.check_out_done(slot)
        self._metrics.connection_used(now - slot.acquired_at)
        self._leaks.forget(slot)
        if not self._bag.busy and self._stopping is not None:
            self._stopping.deadline.drained()

    def _hand_off(self, slot: Slot, now: float) -> None:
        """Give a free connection to the oldest live waiter, else make it idle (FIFO fairness)."""
        waiter = self._bag.check_in(slot, now)
        if waiter is not None:
            waiter.set_result(slot)

    def _discard(self, slot: Slot, *, bad: bool) -> None:
        """Close a connection and forget it; refill if demand or min_size calls for it."""
        with contextlib.suppress(Exception):
            slot.conn.close()
        self._bag.forget()
        if bad:
            self._metrics.counters.returns_bad += 1
        self._meet_demand()

    def _drop(self, slot: Slot) -> None:
        """Close a connection found dead (idle, or failing its check-out ping) and forget
        it; count it lost if it died unseen."""
        if slot in self._bag.busy:
            self._check_out_done(slot, self._now())
        if slot.conn.closed:
            self._metrics.counters.connections_lost += 1
        self._discard(slot, bad=False)

    def _unreachable(self) -> str | None:
        """While reconnecting, the last connect error (what a request that gives up hears)."""
        reconnecting = self._state is PoolState.RECONNECTING
        return (self._health.last_error or "no connection yet") if reconnecting else None

    def _lost(self, error: BaseException) -> None:
        """A connection died under a statement: not healthy until the next success."""
        self._health.failed(self._opener.describe(error))

    @property
    def is_available(self) -> bool:
        """True while open and the latest real outcome (connect or query) was a success."""
        return self._state is PoolState.OPEN and self._health.healthy

    def _drain_for_failover(self, slot: Slot) -> None:
        """A write hit a read-only server: retire every connection so the next ones find
        the primary (libpq's ``target_session_attrs`` picks it among the hosts). A reader
        refuses writes by design: nothing to drain there."""
        if self.role != "writer":
            return
        retired = self._bag.failover(slot.generation, self._now())
        if retired is None:
            return
        self._metrics.counters.failovers += 1
        LOGGER.warning(
            "pool %s: write on a read-only server (SQLSTATE 25006); reconnecting %d connection(s)",
            self.name,
            self._bag.open,
            extra=fields(self.name, "failover_drain", role=self.role, sqlstate="25006"),
        )
        for old in retired:
            self._discard(old, bad=False)

    # -- acquire / release ------------------------------------------------------------------

    def _release(self, slot: Slot, bad: bool = False) -> None:
        """Return a connection. Never awaits: a connection that still runs a statement, or
        sits in a transaction, is restored in an owned task first (the units there report
        an outcome and release nothing), and stays counted in use until that task ends."""
        if slot not in self._bag.busy:
            return
        conn = slot.conn
        status = conn.transaction_status()
        serving = not bad and self._state.serving
        if (serving and self._reset_each) or needs_restore(
            slot, status, roll_back=serving and self.settings.reset != "none"
        ):
            self._bag.begin_return()
            self._tasks.restore(self._restore_then_release(slot, bad=bad))
            return
        now = self._now()
        self._check_out_done(slot, now)
        self._retire_or_reuse(slot, now, bad=bad, status=status)

    async def _restore_then_release(self, slot: Slot, *, bad: bool) -> None:
        """Cancel what still runs, roll back what is open (bounded), then release: reused
        if that worked, else closed and counted bad."""
        restored = False
        try:
            restored = await restore_slot(
                slot,
                canceller=self._canceller,
                rollback=None
                if bad or not self._state.serving or self.settings.reset == "none"
                else self._committer.rollback,
            )
            if restored and not bad and self._reset_each and self._state.serving:
                restored = await self._reset(slot)
        finally:  # also when stop() cancels this task: never leave the slot behind
            self._bag.end_return()
            if not restored:
                slot.conn.close()
            now = self._now()
            self._check_out_done(slot, now)
            self._retire_or_reuse(
                slot, now, bad=bad or not restored, status=slot.conn.transaction_status()
            )

    async def _reset(self, slot: Slot) -> bool:
        """The ``reset`` policy's round trip on a returned connection (bounded by
        ``cancel_timeout``); True when it left the connection idle and healthy."""
        settings = self.settings
        deadline = Deadline.after(self._now(), settings.cancel_timeout)
        try:
            if settings.reset == "discard":
                sql = DISCARD_PGBOUNCER if settings.pgbouncer else DISCARD_ALL
                await self._runner.run(slot, sql, None, deadline)
            elif callable(settings.reset):
                connector = PostgresConnector(slot, deadline, self._tools)
                try:  # bounded as a whole, not only its statements
                    await asyncio.wait_for(settings.reset(connector), settings.cancel_timeout)
                finally:
                    connector.end()
        except Exception as exc:
            LOGGER.warning(
                "pool %s: resetting a returned connection failed (%s); closing it",
                self.name,
                self._opener.describe(exc),
                extra=fields(self.name, "reset_failed", role=self.role, sqlstate=sqlstate(exc)),
            )
            return False
        conn = slot.conn
        return not conn.closed and not conn.is_busy() and conn.transaction_status() is TxStatus.IDLE

    def _retire_or_reuse(self, slot: Slot, now: float, *, bad: bool, status: TxStatus) -> None:
        conn = slot.conn
        if bad or conn.closed or not self._state.serving:
            # Counted once, as returns_bad, when it came back broken from use.
            self._discard(slot, bad=bad or conn.closed)
            return
        if status is not TxStatus.IDLE or not self._bag.reusable(slot, now) or self._bag.oversized:
            self._discard(slot, bad=status is not TxStatus.IDLE)
            return
        self._hand_off(slot, now)

    # -- running statements -------------------------------------------------------------------

    # -- status ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Sizes and counters, one snapshot. Keys follow psycopg_pool's ``get_stats()``
        where it has the same notion; ``pool_size`` counts open connections only (not those
        being opened, which ``status().connecting`` reports)."""
        bag = self._bag
        return {
            "pool_min": bag.min_size,
            "pool_max": bag.max_size,
            "pool_size": bag.open,
            "pool_available": len(bag.idle),
            "requests_waiting": len(bag.waiters),
            **self._metrics.counters.as_dict(),
        }

    async def status(self, *, probe_timeout: float = STATUS_CHECK_TIMEOUT) -> PoolStatus:
        """A :class:`PoolStatus`: :meth:`stats` plus the availability probe (a ``SELECT 1``
        bounded by ``probe_timeout`` seconds, unless a real outcome is recent). Never
        raises; before :meth:`start`, and while reconnecting, it reports unavailable
        without a probe."""

        async def probe() -> bool:
            return self._state is PoolState.OPEN and await self._health.confirm(
                lambda: self.probe("SELECT 1", probe_timeout),
                all_busy=not self._bag.idle and bool(self._bag.busy),
            )

        async def readers() -> tuple[PoolStatus, ...]:  # probed at the same time
            return () if self._readers is None else await self._readers.statuses()

        available, members = await asyncio.gather(probe(), readers())
        return PoolStatus.of(
            self.stats(),  # one snapshot, read after the probe
            state=self._state.value,
            available=available,
            in_use=len(self._bag.busy),
            connecting=self._bag.opening,
            name=self.name,
            last_error=self._health.last_error,
            role=self.role,
            server=self.server_address,
            readers=members,
        )

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """New ``min_size`` / ``max_size`` at run time, for this pool and its readers.
        Growing opens connections as demand (or the new ``min_size``) calls for them;
        shrinking closes idle connections now, longest idle first, and busy ones as they
        come back: never one in use.

        :raises SettingsError: naming the bad value; nothing changes.
        """
        settings = dataclasses.replace(
            self.settings,
            min_size=self.settings.min_size if min_size is None else min_size,
            max_size=self.settings.max_size if max_size is None else max_size,
        )
        for pool in (self, *self.readers):
            pool.settings = dataclasses.replace(
                pool.settings, min_size=settings.min_size, max_size=settings.max_size
            )
            pool._canceller.resize(settings.max_size + 2)
            for slot in pool._bag.resize(settings.min_size, settings.max_size):
                pool._discard(slot, bad=False)
            if pool._state.serving:
                pool._meet_demand()
        LOGGER.info(
            "pool %s: resized to min_size=%d, max_size=%d",
            self.name,
            settings.min_size,
            settings.max_size,
            extra=fields(self.name, "resized", role=self.role),
        )

    # -- maintenance ----------------------------------------------------------------------------

    async def _maintain_forever(self) -> None:
        while self._state is PoolState.OPEN or self._state is PoolState.RECONNECTING:
            await self._sleep(self.settings.maintenance_interval)
            self.run_maintenance()

    def run_maintenance(self) -> None:
        """One maintenance pass (the background task runs these): close expired connections
        and idle ones above ``min_size`` idle longer than ``max_idle``, refill to ``min_size``."""
        if self._state is not PoolState.OPEN and self._state is not PoolState.RECONNECTING:
            return
        for slot in self._bag.evict(self._now(), self.settings.max_idle):
            self._drop(slot)  # refills up to min_size as it goes
        self._meet_demand()  # also refills min_size after earlier connect failures
