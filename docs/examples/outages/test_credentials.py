"""Rotating credentials, and passwords kept out of every message."""

import asyncio
import uuid

import pytest

from pgpool_core import PoolManager, redact_dsn


@pytest.mark.asyncio
async def test_password_callable_is_asked_at_each_connect(
    postgres_db_url: str, postgres_server
) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    postgres_server.query(f"CREATE ROLE {role} LOGIN PASSWORD 'first-secret'")
    try:
        database = postgres_db_url.rsplit("/", 1)[1]
        url = postgres_server.url_for(database, user=role)  # no password in it
        secrets = {"current": "first-secret"}

        async def password() -> str:  # e.g. read from a secrets manager
            return secrets["current"]

        async with PoolManager(url, password=password, min_size=1, max_size=1) as pool:
            assert (await pool.execute("SELECT current_user AS me")).row == {"me": role}

            # Rotate: the server gets the new password, the callable returns it...
            postgres_server.query(f"ALTER ROLE {role} PASSWORD 'second-secret'")
            secrets["current"] = "second-secret"
            # ...and the next connect uses it (here: once the old session is gone).
            postgres_server.terminate_backends(database)
            for _ in range(500):  # terminating is asynchronous on the server
                if not await asyncio.to_thread(postgres_server.activity, database):
                    break
                await asyncio.sleep(0.01)
            assert (await pool.execute("SELECT current_user AS me")).row == {"me": role}

            shown = f"{pool!r} {await pool.status()} {pool.settings!r}"
            assert "secret" not in shown
    finally:
        postgres_server.query(f"DROP ROLE {role}")


def test_redact_dsn_masks_every_password() -> None:
    url = "postgresql://app:hunter2@db.internal/shop"
    assert redact_dsn(url) == "postgresql://app:***@db.internal/shop"
    dsn = "host=db.internal user=app password=hunter2"
    assert redact_dsn(dsn) == "host=db.internal user=app password=***"
