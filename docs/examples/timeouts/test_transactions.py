"""What leaving a transaction() block reports is what the server did: the rows prove it."""

import asyncio
import contextlib

import psycopg2.errors
import pytest

from pgpool_core import (
    ErrorKind,
    PoolManager,
    QueryTimeoutError,
    TransactionRolledBackError,
    TransactionUsageError,
    classify,
    sqlstate,
)


async def until_done(postgres_server, database: str, sql: str) -> None:
    """Until the server no longer runs ``sql`` (at most 5 s)."""
    for _ in range(500):  # pg_stat_activity has no notification to wait on
        rows = await asyncio.to_thread(postgres_server.activity, database)
        if not any(row["state"] == "active" and row["query"] == sql for row in rows):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{sql!r} still runs")


async def names(pool: PoolManager) -> list[str]:
    result = await pool.execute("SELECT name FROM items ORDER BY name")
    return [row["name"] for row in result.rows]


@pytest.mark.asyncio
async def test_a_block_that_raises_is_rolled_back(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (name text PRIMARY KEY)")

        async def change_mind() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO items VALUES ('draft')")
                raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError, match="changed my mind"):
            await change_mind()  # the block's own exception: ROLLBACK was sent
        assert await names(pool) == []


@pytest.mark.asyncio
async def test_a_swallowed_statement_error_is_reported(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (name text PRIMARY KEY)")
        await pool.execute("INSERT INTO items VALUES ('taken')")

        async def swallow_the_error() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO items VALUES ('new')")
                with contextlib.suppress(psycopg2.errors.UniqueViolation):
                    await tx.execute("INSERT INTO items VALUES ('taken')")
                # The server aborted the transaction: it would answer COMMIT with
                # ROLLBACK. The pool sends no COMMIT, and says what happened.

        with pytest.raises(TransactionRolledBackError, match="SQLSTATE 23505") as caught:
            await swallow_the_error()
        error = caught.value
        assert isinstance(error.first_error, psycopg2.errors.UniqueViolation)
        assert classify(error) is ErrorKind.UNIQUE_VIOLATION  # classified as its first error
        assert sqlstate(error) == "23505"
        assert await names(pool) == ["taken"]  # 'new' was rolled back with the rest


@pytest.mark.asyncio
async def test_a_caught_statement_timeout_still_rolls_back(
    postgres_db_url: str, postgres_server
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    slow = "INSERT INTO items SELECT 'slow' FROM pg_sleep(0.5)"
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (name text PRIMARY KEY)")

        async def catch_the_timeout() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO items VALUES ('first')")
                with contextlib.suppress(QueryTimeoutError):
                    await tx.execute(slow, timeout=0.1)
                # The caller heard "timed out", yet the INSERT goes on, and completes:
                await until_done(postgres_server, database, slow)

        with pytest.raises(TransactionRolledBackError, match="ran out of time"):
            await catch_the_timeout()
        assert await names(pool) == []  # neither 'first' nor 'slow'


@pytest.mark.asyncio
async def test_a_transaction_past_its_deadline_commits_nothing(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (name text PRIMARY KEY)")

        async def outlive_the_deadline() -> None:
            async with pool.transaction(timeout=0.3) as tx:
                await tx.execute("INSERT INTO items VALUES ('late')")
                await asyncio.sleep(0.4)  # application work past the deadline

        with pytest.raises(QueryTimeoutError, match="before COMMIT was sent"):
            await outlive_the_deadline()
        assert await names(pool) == []


@pytest.mark.asyncio
async def test_transaction_control_inside_the_block_is_refused(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (name text PRIMARY KEY)")

        async def commit_by_hand() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO items VALUES ('kept?')")
                await tx.execute("COMMIT")  # refused: leave the block to commit

        with pytest.raises(TransactionUsageError, match="nothing was sent"):
            await commit_by_hand()
        assert await names(pool) == []  # the pool rolled the transaction back

        # A partial rollback is what savepoints are for.
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES ('kept')")
            await tx.execute("SAVEPOINT before_risk")
            with contextlib.suppress(psycopg2.errors.UniqueViolation):
                await tx.execute("INSERT INTO items VALUES ('kept')")
            await tx.execute("ROLLBACK TO SAVEPOINT before_risk")
        assert await names(pool) == ["kept"]  # committed: the block left normally
