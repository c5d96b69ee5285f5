"""The pool's bookkeeping: slots, the idle list, waiters in arrival order, what is busy,
opening or on its way back, and the connection generation.

:class:`Bag` decides and returns: which waiter gets a connection, which connections to
close, how many to open. It never awaits, does no I/O (closing a connection is the
caller's job) and resolves no future, so every decision can be tested on its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._connector import DriverConnection

__all__ = ["Bag", "Slot"]

W = TypeVar("W", bound=asyncio.Future)  # type: ignore[type-arg]

#: At most one failover drain per this many seconds.
FAILOVER_DRAIN_INTERVAL = 1.0


@dataclass(eq=False)
class Slot:
    """One open connection and what the pool knows about it."""

    conn: DriverConnection
    created: float
    expires: float
    last_used: float
    #: The future the caller awaits for the running statement (failed by the deadline timer
    #: or by stop()).
    running: asyncio.Future[None] | None = None
    #: Once the caller stopped waiting: the running statement's real end (result or error).
    outcome: asyncio.Future[None] | None = None
    #: The running statement is a COMMIT: nothing may cut it before its own bound.
    committing: bool = False
    #: A cancel request still on its way to the server: until it lands, the connection
    #: must serve nobody (it would cancel their statement).
    cancel_in_flight: asyncio.Future[None] | None = None
    acquired_at: float = 0.0
    #: Messages sent on it so far: tells a call that failed whether anything left.
    sent: int = 0
    #: The task that last took it from the idle list.
    holder: asyncio.Task[Any] | None = None
    #: How many times in a row ``holder`` took it back while it was the only idle one.
    reuses: int = 0
    #: Bumped on failover: connections of an older generation are not reused.
    generation: int = 0
    #: In a transaction the pool began READ ONLY: a 25006 there is the caller's write,
    #: not a sign of a read-only server.
    read_only_tx: bool = False


class Bag(Generic[W]):
    """Who has which connection. Invariant: ``size == len(idle) + len(busy) + opening``
    (``returning`` slots are counted in ``busy``) and ``size <= max_size``.

    Waiters are futures of the caller's; the bag only queues them (FIFO) and says which
    one is next. Those already done (expired, cancelled) are skipped.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size
        self.idle: collections.deque[Slot] = collections.deque()
        self.busy: set[Slot] = set()
        self.waiters: collections.deque[W] = collections.deque()
        #: Open connections plus those being opened.
        self.size = 0
        self.opening = 0
        #: Busy connections on their way back (a cancel or rollback in flight): demand
        #: they will meet is not demand for new connections.
        self.returning = 0
        self.generation = 0
        self._last_failover = float("-inf")
        self._arrivals = 0
        self._arrived: dict[W, int] = {}

    # -- sizes -------------------------------------------------------------------------------

    @property
    def open(self) -> int:
        """Open connections (idle or busy), not counting those being opened."""
        return self.size - self.opening

    @property
    def arrivals(self) -> int:
        """How many waiters ever queued: a connect started now serves those before it."""
        return self._arrivals

    # -- opening -----------------------------------------------------------------------------

    def resize(self, min_size: int, max_size: int) -> list[Slot]:
        """New bounds; returns the idle connections to close now (longest idle first) to
        come down to ``max_size``. Busy ones above it are closed as they come back (see
        :attr:`oversized`)."""
        self.min_size, self.max_size = min_size, max_size
        closing: list[Slot] = []
        while self.idle and self.size - len(closing) > max_size:
            closing.append(self.idle.popleft())
        return closing

    @property
    def oversized(self) -> bool:
        """More connections than ``max_size`` (after a shrink): a returned one is closed."""
        return self.size > self.max_size

    def plan_connects(self) -> int:
        """How many connects to start now, for waiters not covered by connects or
        returns, or to reach ``min_size``; they are counted as opening."""
        planned = 0
        while self.size < self.max_size and (
            self.opening + self.returning < len(self.waiters) or self.size < self.min_size
        ):
            self.size += 1
            self.opening += 1
            planned += 1
        return planned

    def reserve_connect(self) -> bool:
        """Count one connect (the reconnect loop's) if there is room."""
        if self.size >= self.max_size:
            return False
        self.size += 1
        self.opening += 1
        return True

    def connect_failed(self) -> None:
        self.size -= 1
        self.opening -= 1

    def connected(self, generation: int) -> bool:
        """A connect started in ``generation`` finished; False (and forgotten) when a
        failover drain happened meanwhile: that connection may have found the old primary."""
        self.opening -= 1
        if generation != self.generation:
            self.size -= 1
            return False
        return True

    def forget(self) -> None:
        """A connection is being closed (the caller closes it)."""
        self.size -= 1

    def begin_return(self) -> None:
        """A busy connection is being restored (cancel, rollback) before its release."""
        self.returning += 1

    def end_return(self) -> None:
        self.returning -= 1

    # -- waiters -----------------------------------------------------------------------------

    def add_waiter(self, waiter: W) -> None:
        self.waiters.append(waiter)
        self._arrived[waiter] = self._arrivals
        self._arrivals += 1

    def remove_waiter(self, waiter: W) -> None:
        """Take a waiter that stopped waiting (expired, cancelled) off the queue."""
        self._arrived.pop(waiter, None)
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def forget_waiter(self, waiter: W) -> None:
        """A waiter is done (served or gone): forget its arrival number."""
        self._arrived.pop(waiter, None)

    def waiters_before(self, cutoff: int) -> list[W]:
        """Take the live waiters that arrived before arrival number ``cutoff`` (a connect
        that started then has failed them)."""
        taken: list[W] = []
        while self.waiters:
            waiter = self.waiters[0]
            if not waiter.done():
                if self._arrived.get(waiter, cutoff) >= cutoff:
                    break
                taken.append(waiter)
            self.waiters.popleft()
        return taken

    def take_all_waiters(self) -> list[W]:
        waiters = [w for w in self.waiters if not w.done()]
        self.waiters.clear()
        return waiters

    # -- hand-off ----------------------------------------------------------------------------

    def check_out(self, slot: Slot, now: float) -> None:
        self.busy.add(slot)
        slot.acquired_at = now

    def check_out_done(self, slot: Slot) -> bool:
        """``slot`` is no longer checked out; False if it was not."""
        if slot not in self.busy:
            return False
        self.busy.discard(slot)
        return True

    def check_in(self, slot: Slot, now: float) -> W | None:
        """A free connection: the oldest live waiter gets it (returned, for the caller to
        resolve), else it goes idle."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.check_out(slot, now)
                return waiter
        slot.last_used = now
        self.idle.append(slot)
        return None

    def take_idle(self, now: float) -> tuple[Slot | None, list[Slot]]:
        """The most recently used idle connection (warm, and lets the others idle out),
        checked out; plus the expired or closed ones met on the way, to close."""
        dead: list[Slot] = []
        while self.idle:
            slot = self.idle.pop()
            if slot.expires <= now or slot.conn.closed:
                dead.append(slot)
                continue
            self.check_out(slot, now)
            return slot, dead
        return None, dead

    def step_aside(self, holder: object) -> None:
        """If the warmest idle connection was last taken by ``holder``, put the next warmest
        in front of it (so that callers rotate over the connections in use)."""
        idle = self.idle
        if len(idle) > 1 and idle[-1].holder is holder:
            idle[-1], idle[-2] = idle[-2], idle[-1]

    def reusable(self, slot: Slot, now: float) -> bool:
        """Whether a returned, healthy connection may be used again: young enough and of
        the current generation."""
        return slot.expires > now and slot.generation == self.generation

    # -- retiring ----------------------------------------------------------------------------

    def retire_generation(self) -> list[Slot]:
        """After a failover: connections of the old generation are not reused; the idle
        ones are returned to close now, busy ones are closed on return."""
        self.generation += 1
        idle, self.idle = list(self.idle), collections.deque()
        return idle

    def failover(self, generation: int, now: float) -> list[Slot] | None:
        """A write hit a read-only server on a connection of ``generation``: retire the
        generation (as :meth:`retire_generation`), at most once per
        :data:`FAILOVER_DRAIN_INTERVAL`. None when it is not news: the connection was of
        an older generation, or a drain just happened."""
        if generation != self.generation or now - self._last_failover < FAILOVER_DRAIN_INTERVAL:
            return None
        self._last_failover = now
        return self.retire_generation()

    def evict(self, now: float, max_idle: float) -> list[Slot]:
        """Maintenance: expired or closed idle connections, and those idle ``max_idle``
        while the pool is above ``min_size``, oldest-used first; returned to close."""
        keep: collections.deque[Slot] = collections.deque()
        evicted: list[Slot] = []
        for slot in self.idle:  # the left end idled longest (idle is used LIFO)
            expired = slot.expires <= now or slot.conn.closed
            idle_too_long = (
                now - slot.last_used >= max_idle and self.open - len(evicted) > self.min_size
            )
            if expired or idle_too_long:
                evicted.append(slot)
            else:
                keep.append(slot)
        self.idle = keep
        return evicted

    def take_all_idle(self) -> list[Slot]:
        idle, self.idle = list(self.idle), collections.deque()
        return idle
