"""stop()'s deadline: when the shutdown stops waiting for work in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["StopDeadline"]


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
