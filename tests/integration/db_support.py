"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_for_condition(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Re-check a server-side condition until it holds; returns the seconds it took.

    The server offers no notification for pg_stat_activity changes, so this re-queries
    (in a thread: ``check`` may block), yielding to the loop between checks, bounded by
    ``timeout``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await asyncio.to_thread(check):
        if loop.time() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return loop.time() - started


def database_of(url: str) -> str:
    """The database name of a libpq URL."""
    return url.rsplit("/", 1)[1].split("?", 1)[0]
