"""Waiting for a connection: a queued request with its deadline, failed on expiry with the
error that says why (a busy pool, or an unreachable database)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._bag import Bag, Slot
from ._metrics import Recorder
from ._timers import DeadlineTimer
from .errors import PoolTimeoutError, PoolUnavailableError, TooManyRequestsError

__all__ = ["WaitQueue"]


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
        self.timer = DeadlineTimer(asyncio.get_running_loop(), clock, self._expire)

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
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
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
