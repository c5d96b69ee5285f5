"""Shared by the unit and integration tests: hypothesis runs deterministically in CI."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI every property test runs the same examples each time (no example database, no
# random seed), so a run can only fail on a change; locally hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
