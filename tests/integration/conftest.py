"""Every test in this directory is an integration test against a real PostgreSQL."""

from __future__ import annotations

import pytest

from pgpool_core.testing import PostgresServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def restartable_server(postgres_server: PostgresServer) -> PostgresServer:
    """The session server, for tests that stop or start it (skipped for PGPOOL_TEST_DSN)."""
    if not postgres_server.controllable:
        pytest.skip("the server given by PGPOOL_TEST_DSN cannot be stopped or started by tests")
    return postgres_server
