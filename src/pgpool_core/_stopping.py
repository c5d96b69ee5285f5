"""The pool's own tasks by kind, and stop()'s waiting: its deadline, and the shutdown
sequence that waits for, interrupts and cuts work in flight."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from ._bag import Slot
from ._logs import fields, logger
from ._statements import Stopped, interrupt

__all__ = ["OwnedTasks", "Shutdown", "StopDeadline"]

LOGGER = logger("pool")


class OwnedTasks:
    """The tasks a pool runs on its own, in typed sets by kind, named
    ``pgpool-<kind>-<pool>-<n>`` for debugging: connects (the single reconnect loop
    included), returns (restoring a connection before its release) and the maintenance
    loop. :class:`Shutdown` cancels connects and maintenance at once, returns last."""

    def __init__(self, pool_name: Callable[[], str]) -> None:
        self.connects: set[asyncio.Task[Any]] = set()
        self.returns: set[asyncio.Task[Any]] = set()
        self.maintenance: asyncio.Task[None] | None = None
        #: The single reconnect loop, while it runs.
        self.reconnecting: asyncio.Task[None] | None = None
        self._pool_name = pool_name
        self._numbers = itertools.count(1)

    def connect(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._spawn(coro, self.connects, "connect")

    def reconnect(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``loop()`` unless the reconnect loop already runs (single flight)."""
        if self.reconnecting is None or self.reconnecting.done():
            self.reconnecting = self._spawn(loop(), self.connects, "reconnect")

    def restore(self, coro: Coroutine[Any, Any, None]) -> None:
        self._spawn(coro, self.returns, "return")

    def maintain(self, coro: Coroutine[Any, Any, None]) -> None:
        self.maintenance = self._spawn(coro, set(), "maintenance")

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], kind: set[asyncio.Task[Any]], name: str
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"pgpool-{name}-{self._pool_name()}-{next(self._numbers)}"
        )
        kind.add(task)
        task.add_done_callback(kind.discard)
        return task


class StopDeadline:
    """A deadline a later ``stop()`` may only bring forward; :meth:`wait` returns when the
    work drains or the deadline passes, and notices at once when it moves."""

    def __init__(self, clock: Callable[[], float], at: float) -> None:
        self.at = at
        self._clock = clock
        self._wake: asyncio.Future[str] | None = None

    def bring_forward(self, at: float) -> None:
        if at < self.at:
            self.at = at
            self._resolve("moved")

    def drained(self) -> None:
        self._resolve("drained")

    async def wait(self, busy: Callable[[], bool]) -> None:
        """Until ``busy()`` is false or the deadline passes."""
        loop = asyncio.get_running_loop()
        while busy():
            wake: asyncio.Future[str] = loop.create_future()
            self._wake = wake
            timer = loop.call_later(max(self.at - self._clock(), 0), _set, wake, "due")
            try:
                if await wake == "due":
                    return
            finally:
                timer.cancel()
                self._wake = None

    def _resolve(self, why: str) -> None:
        if self._wake is not None:
            _set(self._wake, why)


def _set(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


class Shutdown:
    """The waiting part of ``stop()``: let work in flight finish until the deadline (a later
    stop() may bring it forward), then interrupt it (statements are cancelled on the
    server by their callers), then cut the connections that still hang; cancel the pool's
    tasks by kind. ``busy`` is the pool's set of checked-out slots, read as it changes."""

    def __init__(
        self,
        clock: Callable[[], float],
        at: float,
        *,
        busy: set[Slot],
        cancel_bound: float,
        pool_name: Callable[[], str],
    ) -> None:
        self.deadline = StopDeadline(clock, at)
        self._clock = clock
        self._busy = busy
        self._cancel_bound = cancel_bound
        self._pool_name = pool_name

    async def run(self, tasks: OwnedTasks) -> None:
        # Nothing new is opened; in-flight work returns its connections, closed now.
        returns, maintenance = tasks.returns, tasks.maintenance
        stopped = [*tasks.connects, *([maintenance] if maintenance else [])]
        for task in stopped:
            task.cancel()
        await self.deadline.wait(self._in_use)
        if self._busy:
            LOGGER.warning(
                "pool %s: %d connection(s) still in use at stop; cancelling",
                self._pool_name(),
                len(self._busy),
                extra=fields(self._pool_name(), "stop_cancelling"),
            )
            _abort_in_flight(self._busy)
            # The callers' own paths now cancel their statements server-side; give them
            # the cancel bound, then cut whatever still hangs (a lost cancel).
            self.deadline = StopDeadline(self._clock, self._clock() + self._cancel_bound)
            await self.deadline.wait(self._in_use)
            for slot in list(self._busy):
                slot.conn.close()
        for task in returns:
            task.cancel()  # restores stuck behind a lost cancel: their connections close
        unwinding = [t for t in (*stopped, *returns) if not t.done()]
        if unwinding:
            await asyncio.wait(unwinding, timeout=self._cancel_bound)

    def _in_use(self) -> bool:
        return bool(self._busy)


def _abort_in_flight(busy: set[Slot]) -> None:
    """At the stop deadline: fail every statement still awaited (its caller then releases
    the connection, which cancels the statement on the server) and close connections held
    idle by callers (they find them closed)."""
    for slot in list(busy):
        if interrupt(slot, Stopped()):  # a COMMIT runs on until its own bound
            continue
        if not slot.conn.is_busy():
            slot.conn.close()
        # else: already being restored in an owned task
