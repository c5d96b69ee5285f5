"""The suite runs on the loop it was asked for (``nox -s tests_uvloop`` sets
PGPOOL_TEST_LOOP=uvloop): a run meant for uvloop cannot silently test asyncio's loop."""

from __future__ import annotations

import asyncio
import os


async def test_the_suite_runs_on_the_requested_loop() -> None:
    loop_module = type(asyncio.get_running_loop()).__module__
    if os.environ.get("PGPOOL_TEST_LOOP") == "uvloop":
        assert loop_module.startswith("uvloop")
    else:
        assert loop_module.startswith("asyncio")
