"""Leak detection: a connection held past a threshold logs one warning naming its holder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from ._logs import fields, logger
from ._timers import DeadlineTimer

__all__ = ["LeakDetector", "NoLeakDetector", "leak_detector"]

LOGGER = logger("leaks")

# Frames from these directories are the pool's own, never a "holder" of a connection.
_INTERNAL_DIRS = (os.path.dirname(__file__), os.path.dirname(contextlib.__file__))


class NoLeakDetector:
    """Detection off (``leak_detection_threshold=0``): every call is a no-op."""

    def watch(self, key: object, acquired_at: float, metric_name: str) -> None:
        pass

    def forget(self, key: object) -> None:
        pass

    def close(self) -> None:
        pass


class LeakDetector(NoLeakDetector):
    """Warns once per checkout held longer than ``threshold`` seconds, naming the holder
    (the metric name, else the caller's ``file:line``), and calls ``on_leak``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        threshold: float,
        pool_name: Callable[[], str],
        on_leak: Callable[[], None],
    ) -> None:
        self._threshold = threshold
        self._pool_name = pool_name
        self._on_leak = on_leak
        self._timer = DeadlineTimer(loop, clock, self._report)

    def watch(self, key: object, acquired_at: float, metric_name: str) -> None:
        holder = f"metric {metric_name!r}" if metric_name else _call_site()
        self._timer.add(key, acquired_at + self._threshold, holder)

    def forget(self, key: object) -> None:
        self._timer.discard(key)

    def close(self) -> None:
        self._timer.close()

    def _report(self, _key: Any, holder: str) -> None:
        self._on_leak()
        LOGGER.warning(
            "pool %s: connection held longer than %.3f s (leak_detection_threshold) by %s",
            self._pool_name(),
            self._threshold,
            holder,
            extra=fields(self._pool_name(), "leak_detected"),
        )


def leak_detector(
    threshold: float,
    clock: Callable[[], float],
    pool_name: Callable[[], str],
    on_leak: Callable[[], None],
) -> NoLeakDetector:
    """A detector for ``threshold`` seconds (on the running loop), the no-op one for 0."""
    if threshold <= 0:
        return NoLeakDetector()
    return LeakDetector(asyncio.get_running_loop(), clock, threshold, pool_name, on_leak)


def _call_site() -> str:
    """``file:line in function`` of the nearest caller outside pgpool (for leak reports)."""
    frame: Any = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame = frame.f_back
    if frame is None:
        return "unknown call site"
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
