"""Unit tests: no database, no network (pytest-socket allows unix sockets only)."""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket

from pgpool_core.testing import FakeConnector


@pytest.fixture(autouse=True)
def _no_network() -> None:
    disable_socket(allow_unix_socket=True)


@pytest.fixture
def fake() -> FakeConnector:
    """A fake connector that answers ``SELECT 1`` with one row."""
    connector = FakeConnector()
    connector.on(r"^SELECT 1", rows=[{"?column?": 1}])
    return connector
