"""Helpers shared by the unit tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio

#: A URL with a password, so every test can check it never leaks.
URL = "postgresql://app:s3cret@db:5432/main"


async def until(condition: object, limit: int = 10_000) -> None:
    """Spin the loop (no sleeping) until ``condition()`` holds."""
    for _ in range(limit):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
