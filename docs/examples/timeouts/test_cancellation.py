"""A cancelled caller stays cancelled, and its statement is cancelled on the server too;
asyncio.wait_for around a transaction says less than the pool's own timeout=."""

import asyncio

import pytest

from pgpool_core import ErrorKind, PoolManager, QueryTimeoutError, classify


async def until_running(postgres_server, database: str, running: bool) -> None:
    """Until a pg_sleep runs on the server (or no longer runs), at most 5 s."""
    for _ in range(500):  # pg_stat_activity has no notification to wait on
        rows = await asyncio.to_thread(postgres_server.activity, database)
        now = any(row["state"] == "active" and "pg_sleep" in row["query"] for row in rows)
        if now == running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"pg_sleep {'never started' if running else 'still runs'}")


@pytest.mark.asyncio
async def test_a_cancelled_caller_cancels_its_statement(
    postgres_db_url: str, postgres_server
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        task = asyncio.create_task(pool.execute("SELECT pg_sleep(30)"))
        await until_running(postgres_server, database, True)

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # the caller stays cancelled...

        await until_running(postgres_server, database, False)  # ...and so does pg_sleep
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}  # connection reused


@pytest.mark.asyncio
async def test_timeout_says_what_wait_for_cannot(postgres_db_url: str, postgres_server) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (name text)")

        async def slow_transaction(timeout: float | None = None) -> None:
            async with pool.transaction(timeout=timeout) as tx:
                await tx.execute("INSERT INTO items VALUES ('x')")
                await tx.execute("SELECT pg_sleep(30)")

        # asyncio's timeout cancels the task and raises a bare TimeoutError: it says
        # nothing about the server (was COMMIT sent? did it commit?).
        with pytest.raises(asyncio.TimeoutError) as outside:
            await asyncio.wait_for(slow_transaction(), 0.3)
        assert not isinstance(outside.value, QueryTimeoutError)
        assert classify(outside.value) is ErrorKind.OTHER
        await until_running(postgres_server, database, False)  # the pool cancelled it

        # The pool's own timeout bounds the same work, and says what happened.
        with pytest.raises(QueryTimeoutError, match="the transaction is rolled back") as own:
            await slow_transaction(timeout=0.3)
        assert classify(own.value) is ErrorKind.QUERY_TIMEOUT
        await until_running(postgres_server, database, False)

        # Both were rolled back; only the second error said so.
        assert (await pool.execute("SELECT count(*) AS n FROM items")).row == {"n": 0}
