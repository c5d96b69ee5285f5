"""Session state between borrowers, on a real PostgreSQL (one connection, so each borrower
gets the previous one's): a transaction's settings never outlive it under any reset
policy; session-level state survives ``rollback``/``none`` and is cleared by ``discard``
or a callable; a reset that fails closes the connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pgpool_core import PoolManager, PostgresConnector, QueryParameterError
from pgpool_core.testing import PgBouncer, PostgresServer

from db_support import database_of, wait_for_condition

TENANT = "SELECT current_setting('app.tenant_id', true) AS tenant, pg_backend_pid() AS pid"


async def clear_app_settings(connector: PostgresConnector) -> None:
    await connector.execute("RESET ALL")


POLICIES: dict[str, str | Callable[[Any], Awaitable[object]]] = {
    "none": "none",
    "rollback": "rollback",
    "discard": "discard",
    "callable": clear_app_settings,
}


@pytest.mark.parametrize("policy", list(POLICIES))
async def test_a_transactions_settings_are_never_seen_by_the_next_borrower(
    postgres_db_url: str, policy: str
) -> None:
    async with PoolManager(postgres_db_url, min_size=1, max_size=1, reset=POLICIES[policy]) as pool:
        async with pool.transaction(
            settings={"app.tenant_id": "42", "statement_timeout": "2s"}
        ) as tx:
            inside = (await tx.execute(TENANT + ", current_setting('statement_timeout') AS t")).row
        after = (await pool.execute(TENANT)).row

        async def rolled_back() -> None:
            async with pool.transaction(settings={"app.tenant_id": "7"}) as tx:
                await tx.execute("SELECT 1")
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await rolled_back()
        after_rollback = (await pool.execute(TENANT)).row
    assert inside is not None
    assert after is not None
    assert after_rollback is not None
    assert (inside["tenant"], inside["t"]) == ("42", "2s")
    assert after["pid"] == inside["pid"]  # the same connection, handed to the next borrower
    assert after["tenant"] in (None, "")
    assert after_rollback["tenant"] in (None, "")


@pytest.mark.parametrize(
    ("policy", "survives"),
    [("rollback", True), ("none", True), ("discard", False), ("callable", False)],
)
async def test_session_state_survives_only_without_a_reset(
    postgres_db_url: str, policy: str, survives: bool
) -> None:
    async with PoolManager(postgres_db_url, min_size=1, max_size=1, reset=POLICIES[policy]) as pool:
        first = (await pool.execute("SET app.tenant_id = '9'; " + TENANT)).row
        second = (await pool.execute(TENANT)).row
    assert first is not None
    assert second is not None
    assert second["pid"] == first["pid"]
    assert (second["tenant"] == "9") is survives


async def test_with_none_a_connection_left_in_a_transaction_is_closed_not_reused(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    database = database_of(postgres_db_url)
    async with PoolManager(postgres_db_url, min_size=0, max_size=1, reset="none") as pool:
        async with pool.connection() as raw:
            cursor = await raw.cursor()
            await cursor.execute("BEGIN; SELECT pg_backend_pid() AS pid")
            (first,) = await cursor.fetchone()
        second = (await pool.execute("SELECT pg_backend_pid() AS pid")).row
        assert second is not None
        assert second["pid"] != first
        await wait_for_condition(
            lambda: all(
                a["state"] != "idle in transaction" for a in postgres_server.activity(database)
            )
        )


async def test_a_failing_reset_closes_the_connection(postgres_db_url: str) -> None:
    async def broken(connector: PostgresConnector) -> None:
        await connector.execute("SELECT no_such_function()")

    async with PoolManager(postgres_db_url, min_size=0, max_size=1, reset=broken) as pool:
        first = (await pool.execute("SELECT pg_backend_pid() AS pid")).row
        second = (await pool.execute("SELECT pg_backend_pid() AS pid")).row
        assert first is not None
        assert second is not None
        assert second["pid"] != first["pid"]  # never handed out after its reset failed
        assert pool.stats()["returns_bad"] >= 1


async def test_bad_settings_are_refused_before_anything_is_sent(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    async with PoolManager(postgres_db_url, min_size=0, max_size=1) as pool:
        for bad in ({"": "x"}, {"app.x": object()}, {"app.x": "a\x00b"}):
            with pytest.raises(QueryParameterError, match="settings"):
                async with pool.transaction(settings=bad):  # type: ignore[arg-type]
                    pass
        assert pool.stats()["connections_num"] == 0  # nothing was even checked out


async def test_transaction_settings_through_pgbouncer(
    pgbouncer: PgBouncer, postgres_db_url: str
) -> None:
    async with PoolManager(
        pgbouncer.url_for(postgres_db_url), pgbouncer=True, max_size=2, reset="discard"
    ) as pool:
        async with pool.transaction(settings={"app.tenant_id": "5"}) as tx:
            inside = (await tx.execute(TENANT)).row
        after = (await pool.execute(TENANT)).row
    assert inside is not None
    assert after is not None
    assert inside["tenant"] == "5"
    assert after["tenant"] in (None, "")
