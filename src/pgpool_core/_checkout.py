"""Checking a connection out: the warmest idle one, proved alive first when it idled
long; else a place in the queue, with a deadline that fails it with the error that says why
(a busy pool, or an unreachable database)."""

from __future__ import annotations

import asyncio
from asyncio import current_task
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2

from ._bag import Bag, Slot
from ._config import PoolSettings
from ._leaks import NoLeakDetector
from ._metrics import Recorder
from ._result import QueryResult
from ._state import PoolState
from ._statements import Deadline
from ._timers import DeadlineTimer
from .errors import (
    PoolClosedError,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryTimeoutError,
    TooManyRequestsError,
)

__all__ = ["REUSES_IN_A_ROW", "Checkout", "NotStarted", "WaitQueue", "refusal"]

#: How many times in a row a caller may take back the connection it just returned while
#: other connections are busy, before it waits one loop turn for them (see Checkout.take).
REUSES_IN_A_ROW = 3


class Checkout:
    """Hands a request a connection, and a call its deadline: the most recently used idle
    connection, else a place in the :class:`WaitQueue` (built here, on the callbacks it
    names). Refused at once unless ``state()`` is serving.

    An idle connection is handed out as is when it was used within ``validate_idle_after``
    and the server sent nothing meanwhile; otherwise it is proved alive by
    ``ping(slot, deadline)`` (a ``SELECT 1``) first, bounded by ``connect_timeout``,
    ``cancel_timeout`` and the request's remaining wait. A dead one is closed and given to
    ``drop`` (checked out or not, the pool forgets it and refills); ``release`` gives back
    one whose ping was interrupted by the caller's cancellation, or handed over just as its
    waiter was cancelled."""

    __slots__ = (
        "_acquire_timeout",
        "_bag",
        "_clock",
        "_drop",
        "_leaks",
        "_loop",
        "_ping",
        "_ping_bound",
        "_pool_name",
        "_query_timeout",
        "_recorder",
        "_release",
        "_state",
        "_validate_after",
        "queue",
    )

    def __init__(
        self,
        bag: Bag[asyncio.Future[Slot]],
        recorder: Recorder,
        settings: PoolSettings,
        *,
        clock: Callable[[], float],
        leaks: NoLeakDetector,
        state: Callable[[], PoolState],
        pool_name: Callable[[], str],
        unreachable: Callable[[], str | None],
        on_queued: Callable[[], None],
        ping: Callable[[Slot, Deadline], Awaitable[object]],
        drop: Callable[[Slot], None],
        release: Callable[[Slot], None],
    ) -> None:
        self._bag = bag
        self.queue = WaitQueue(
            bag,
            recorder,
            clock=clock,
            max_waiting=settings.max_waiting,
            pool_name=pool_name,
            unreachable=unreachable,
            on_queued=on_queued,
            release=release,
        )
        self._recorder = recorder
        self._loop = asyncio.get_running_loop()  # for current_task(): see StatementRunner
        self._leaks = leaks
        self._state = state
        self._pool_name = pool_name
        self._query_timeout = settings.query_timeout
        self._clock = clock
        self._acquire_timeout = settings.acquire_timeout
        self._validate_after = settings.validate_idle_after
        self._ping_bound = min(settings.connect_timeout, settings.cancel_timeout)
        self._ping = ping
        self._drop = drop
        self._release = release

    async def take_for(self, timeout: float | None, metric_name: str = "") -> tuple[Slot, Deadline]:
        """A connection for one call, and the call's deadline.

        With ``timeout`` (already checked) it bounds the whole call, waiting included, from
        one clock reading; without, waiting is bounded by ``acquire_timeout`` and running by
        ``query_timeout``. The connection is watched for leaks under ``metric_name``.
        """
        state = self._state()
        if not state.serving:
            raise refusal(self._pool_name(), state)
        asked = self._clock()
        if timeout is None:
            slot = await self.take(None, asked)
            deadline = Deadline(self._clock() + self._query_timeout, self._query_timeout)
        else:
            deadline = Deadline(asked + timeout, timeout)
            slot = await self.take(deadline.at, asked)
        if self._recorder.observers:
            self._recorder.connection_waited(max(slot.acquired_at - asked, 0.0))
        self._leaks.watch(slot, slot.acquired_at, metric_name)
        return slot, deadline

    async def take(self, deadline: float | None, now: float) -> Slot:
        """A connection, checked out. Waits up to ``acquire_timeout`` from ``now``, or until
        ``deadline`` if sooner."""
        self._recorder.counters.requests_num += 1
        bag = self._bag
        wait = self._acquire_timeout
        if deadline is not None and deadline - now < wait:
            wait = max(deadline - now, 0.0)
        wait_until = now + wait
        idle, me = bag.idle, current_task(self._loop)
        if idle and idle[-1].holder is me:
            # The warmest idle connection is the one this caller just gave back: take
            # another. Kept for good, with as many callers as connections, each caller would
            # own one, and one whose server process gets less CPU would do far less work
            # than the rest. When it is the only idle one, the caller takes it back at once
            # up to REUSES_IN_A_ROW times, then lets the busy ones come back first (one loop
            # turn): a turn on every call costs every call its wait (16 callers on 16
            # connections, paired runs: W1 17 % slower, W3's p99 1.2x), one turn in four
            # keeps the rotation.
            if len(idle) == 1 and bag.busy:
                last = idle[-1]
                if last.reuses < REUSES_IN_A_ROW:
                    last.reuses += 1
                else:
                    last.reuses = 0
                    await asyncio.sleep(0)
                    now = self._clock()
            bag.step_aside(me)
        while not bag.waiters:  # else they are first in line
            slot, dead = bag.take_idle(now)
            for old in dead:
                self._drop(old)
            if slot is None:
                break
            if now - slot.last_used < self._validate_after and not slot.conn.has_pending_input():
                _hold(slot, me)
                return slot
            # Idle long enough that the server may have dropped it (restart,
            # pg_terminate_backend, idle timeouts), or the server sent something while it
            # sat idle: prove it alive before handing it out.
            if await self._alive(slot, wait_until):
                _hold(slot, me)
                return slot
            state = self._state()
            if not state.serving:  # stop() began during the ping: no waiter would be served
                raise refusal(self._pool_name(), state)
            now = self._clock()
        slot = await self.queue.wait(wait_until, wait)
        _hold(slot, me)  # handed over by a caller that gave it back
        return slot

    async def _alive(self, slot: Slot, wait_until: float) -> bool:
        # Bounded by the caller's remaining wait too: a connection that cannot answer in
        # that time is no use to the caller, and is closed rather than trusted.
        now = self._clock()
        bound = min(self._ping_bound, max(wait_until - now, 0.001))
        try:
            await self._ping(slot, Deadline.after(now, bound))
        except (psycopg2.Error, QueryTimeoutError):
            slot.conn.close()  # also ends a statement still running: nothing to settle
            self._drop(slot)
            return False
        except BaseException:
            self._release(slot)
            raise
        return True


def _hold(slot: Slot, task: asyncio.Task[Any] | None) -> None:
    """``task`` has ``slot`` now; its reuses in a row count afresh when the holder changes."""
    if slot.holder is not task:
        slot.holder, slot.reuses = task, 0


class NotStarted:
    """Stands in for the :class:`Checkout` until the pool starts: every request is
    refused with an error that says how to start it."""

    def __init__(self, pool_name: Callable[[], str]) -> None:
        self._pool_name = pool_name

    async def take_for(self, timeout: float | None, metric_name: str = "") -> tuple[Slot, Deadline]:
        raise refusal(self._pool_name(), PoolState.NEW)

    async def refuse(self, *_args: Any, **_kwargs: Any) -> QueryResult:
        raise refusal(self._pool_name(), PoolState.NEW)


def refusal(pool_name: str, state: PoolState) -> PoolClosedError:
    """Why a pool that is not serving refuses a request."""
    if state is PoolState.NEW:
        return PoolClosedError(
            f"pool {pool_name} is not started: call start() first, or use"
            " `async with PoolManager(...) as pool`"
        )
    return PoolClosedError(f"pool {pool_name} is {state.value}")


class WaitQueue:
    """Queues requests in the bag (FIFO) with one deadline timer for all of them.

    ``unreachable()`` gives the last connect error while the pool is reconnecting (None
    otherwise): a waiter expiring then gets :class:`PoolUnavailableError`, not "busy".
    ``on_queued`` asks for connects; ``release`` gives back a connection handed over just
    as its waiter was cancelled.
    """

    def __init__(
        self,
        bag: Bag[asyncio.Future[Slot]],
        recorder: Recorder,
        *,
        clock: Callable[[], float],
        max_waiting: int,
        pool_name: Callable[[], str],
        unreachable: Callable[[], str | None],
        on_queued: Callable[[], None],
        release: Callable[[Slot], None],
    ) -> None:
        self._bag = bag
        self._recorder = recorder
        self._clock = clock
        self._max_waiting = max_waiting
        self._pool_name = pool_name
        self._unreachable = unreachable
        self._on_queued = on_queued
        self._release = release
        self._loop = asyncio.get_running_loop()
        self.timer = DeadlineTimer(self._loop, clock, self._expire)

    async def wait(self, until: float, wait: float) -> Slot:
        """Queue until a connection is handed over, or ``until`` (``wait`` seconds, quoted
        in the error) passes.

        :raises TooManyRequestsError: ``max_waiting`` requests already wait.
        """
        bag, counters = self._bag, self._recorder.counters
        if self._max_waiting and len(bag.waiters) >= self._max_waiting:
            counters.requests_errors += 1
            raise TooManyRequestsError(
                f"pool {self._pool_name()}: {len(bag.waiters)} requests already waiting "
                f"(max_waiting={self._max_waiting})"
            )
        started = self._clock()
        waiter: asyncio.Future[Slot] = self._loop.create_future()
        bag.add_waiter(waiter)
        counters.requests_queued += 1
        self._on_queued()
        # The timer fails an expired waiter and takes it off the queue; hand-offs pop
        # waiters themselves, so the queue is never searched on the hot path.
        self.timer.add(waiter, until, wait)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The hand-off may have happened just before the cancellation landed.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            else:
                bag.remove_waiter(waiter)
            raise
        finally:
            self.timer.discard(waiter)
            bag.forget_waiter(waiter)
            counters.requests_wait_ms += int((self._clock() - started) * 1000)

    def fail_arrived_before(self, cutoff: int, error: Callable[[], Exception]) -> None:
        """Fail the live waiters that arrived before arrival number ``cutoff`` (a connect
        that started then has failed), each with its own ``error()``."""
        for waiter in self._bag.waiters_before(cutoff):
            self._recorder.counters.requests_errors += 1
            waiter.set_exception(error())

    def _expire(self, waiter: asyncio.Future[Slot], wait: float) -> None:
        if waiter.done():
            return
        bag = self._bag
        bag.remove_waiter(waiter)
        last_error = self._unreachable()
        if last_error is not None:
            # Not a busy pool: the database is unreachable (e.g. connects hang).
            self._recorder.counters.requests_errors += 1
            waiter.set_exception(
                PoolUnavailableError(
                    f"cannot connect to {self._pool_name()} within {wait:.3f} s: {last_error}"
                )
            )
            return
        self._recorder.acquire_timed_out()
        waiter.set_exception(
            PoolTimeoutError(
                f"pool {self._pool_name()}: no connection free within {wait:.3f} s"
                f" (size={bag.size}, in use={len(bag.busy)}, waiting={len(bag.waiters) + 1},"
                f" max={bag.max_size})"
            )
        )
