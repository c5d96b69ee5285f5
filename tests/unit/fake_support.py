"""Helpers shared by the unit tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio

#: A URL with a password, so every test can check it never leaks.
URL = "postgresql://app:s3cret@db:5432/main"


async def until(condition: object, within: float = 5.0) -> None:
    """Spin the loop (no sleeping) until ``condition()`` holds, for at most ``within``
    seconds of loop time (a count of spins would be a different time on each loop: uvloop
    spins ten times faster than asyncio's loop, before a 50 ms timer could fire)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while not condition():  # type: ignore[operator]
        if loop.time() > give_up:
            raise AssertionError("condition never held")
        await asyncio.sleep(0)
