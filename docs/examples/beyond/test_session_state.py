import psycopg2.errors
import pytest

from pgpool_core import PoolManager

TENANT = "SELECT current_setting('app.tenant_id', true) AS tenant, pg_backend_pid() AS pid"


@pytest.mark.asyncio
async def test_transaction_settings_end_with_the_transaction(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        async with pool.transaction(settings={"app.tenant_id": "42"}) as tx:
            inside = (await tx.execute(TENANT)).row
        after = (await pool.execute(TENANT)).row  # the next borrower, same connection
    assert inside["tenant"] == "42"
    assert after["pid"] == inside["pid"]
    assert after["tenant"] in (None, "")  # gone with the transaction


@pytest.mark.asyncio
async def test_session_state_and_the_reset_policy(postgres_db_url: str) -> None:
    for reset, survives in (("rollback", True), ("discard", False)):
        async with PoolManager(postgres_db_url, min_size=1, max_size=1, reset=reset) as pool:
            # A session-level SET outlives its borrower...
            first = (await pool.execute("SET app.tenant_id = '9'; " + TENANT)).row
            second = (await pool.execute(TENANT)).row
        assert second["pid"] == first["pid"]
        # ...unless the reset policy clears it before the connection is handed out again.
        assert (second["tenant"] == "9") is survives


@pytest.mark.asyncio
async def test_isolation_level_is_the_first_statement(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        async with pool.transaction() as tx:
            await tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            row = (await tx.execute("SELECT current_setting('transaction_isolation') AS i")).row
        assert row == {"i": "serializable"}
        # Not through settings=: they are set by the transaction's first query, too late.
        with pytest.raises(psycopg2.errors.ActiveSqlTransaction):
            async with pool.transaction(settings={"transaction_isolation": "serializable"}):
                pass
