"""One loop timer serving many deadlines.

A timer per request costs a heap push, a cancel and heap churn on every statement and
every wait. Deadlines here mostly share one timeout, so a single ``call_later`` armed for
the earliest one serves them all: adding and removing a deadline is a dict operation,
and the timer re-arms itself for the next earliest when it fires.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

__all__ = ["DeadlineTimer", "due"]

# asyncio runs a timer up to its clock resolution early, uvloop up to a millisecond (its
# timers count whole milliseconds); treat that as due.
_SLACK = 0.001


def due(deadline: float, now: float) -> bool:
    """Whether ``deadline`` has passed at ``now``, as the timer decides it."""
    return deadline <= now + _SLACK


class DeadlineTimer:
    """Calls ``on_expire(key, payload)`` once for each key whose deadline passes.

    Deadlines are in the units of ``now`` (a monotonic clock); ``discard`` a key to cancel.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        now: Callable[[], float],
        on_expire: Callable[[Any, Any], None],
    ) -> None:
        self._loop = loop
        self._now = now
        self._on_expire = on_expire
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: Any, deadline: float, payload: Any = None) -> None:
        self._entries[key] = (deadline, payload)
        if deadline < self._armed_at:
            self._arm(deadline)

    def discard(self, key: Any) -> None:
        # The timer stays armed: when it fires with nothing due it re-arms or goes idle,
        # which is cheaper than re-arming on every removal.
        self._entries.pop(key, None)

    def close(self) -> None:
        self._entries.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = deadline
        self._handle = self._loop.call_later(max(deadline - self._now(), 0.0), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self._now()
        expired = [
            (key, payload)
            for key, (deadline, payload) in self._entries.items()
            if due(deadline, now)
        ]
        for key, _ in expired:
            del self._entries[key]
        if self._entries:
            self._arm(min(deadline for deadline, _ in self._entries.values()))
        for key, payload in expired:
            self._on_expire(key, payload)
