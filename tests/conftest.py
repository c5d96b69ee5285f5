"""Shared by the unit and integration tests: hypothesis runs deterministically in CI."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI every property test runs the same examples each time (no example database, no
# random seed), so a run can only fail on a change; locally hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# PGPOOL_TEST_LOOP=uvloop runs the whole suite on uvloop (`nox -s tests_uvloop`): pytest-asyncio
# and Tornado both take their loops from the policy. uvloop.run() is the non-deprecated entry
# point, but it cannot reach loops that pytest-asyncio and Tornado create; the policy class
# itself stays until Python 3.16 and does not warn.
if os.environ.get("PGPOOL_TEST_LOOP") == "uvloop":
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
