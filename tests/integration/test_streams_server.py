"""Streaming on a real PostgreSQL: every row in order through a server-side cursor, the
transaction and connection given back however the loop ends (checked in
pg_stat_activity), a stream inside the caller's transaction, and through PgBouncer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pgpool_core import PoolManager, QueryTimeoutError
from pgpool_core.testing import PgBouncer, PostgresServer

from db_support import database_of, wait_for_condition


@pytest.fixture
async def pool(postgres_db_url: str) -> AsyncIterator[PoolManager]:
    async with PoolManager(postgres_db_url, min_size=1, max_size=2) as manager:
        yield manager


def settled(server: PostgresServer, database: str) -> bool:
    """No backend of the database is in a transaction or running anything."""
    return all(a["state"] == "idle" for a in server.activity(database))


async def test_every_row_in_order_in_batches(pool: PoolManager) -> None:
    got = [
        row["n"]
        async for row in pool.stream(
            "SELECT n, repeat('x', 10) AS pad FROM generate_series(1, %s) AS n ORDER BY n",
            [10_001],
            batch=1000,
        )
    ]
    assert got == list(range(1, 10_002))
    assert pool.in_use == 0


@pytest.mark.parametrize("how", ["break", "error", "cancel", "with-block"])
async def test_leaving_early_leaves_nothing_on_the_server(
    pool: PoolManager, postgres_server: PostgresServer, postgres_db_url: str, how: str
) -> None:
    database = database_of(postgres_db_url)
    sql = "SELECT n FROM generate_series(1, 100000) AS n"
    reading = asyncio.Event()

    async def consume() -> None:
        if how == "with-block":
            async with pool.stream(sql, batch=100) as rows:
                async for row in rows:
                    if row["n"] == 150:
                        return
        async for row in pool.stream(sql, batch=100):
            if row["n"] == 150:
                reading.set()
                if how == "break":
                    break
                if how == "error":
                    raise RuntimeError("consumer failed")
                await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(consume())
    if how == "cancel":
        await reading.wait()
        task.cancel()
    if how == "error":
        with pytest.raises(RuntimeError, match="consumer failed"):
            await task
    else:
        await asyncio.gather(task, return_exceptions=how == "cancel")
    await wait_for_condition(lambda: pool.in_use == 0 and settled(postgres_server, database))


async def test_a_stream_inside_the_callers_transaction(pool: PoolManager) -> None:
    await pool.execute("CREATE TABLE items (n int)")
    async with pool.transaction() as tx:
        await tx.execute("INSERT INTO items SELECT generate_series(1, 50)")
        total = sum([row["n"] async for row in tx.stream("SELECT n FROM items", batch=7)])
        await tx.execute("INSERT INTO items VALUES (0)")  # the transaction goes on
    assert total == sum(range(1, 51))
    assert (await pool.execute("SELECT count(*) AS c FROM items")).row == {"c": 51}


async def test_timeout_bounds_each_statement_not_the_stream(
    pool: PoolManager, postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    """A consumer slower than ``timeout`` overall is fine; one statement slower is not,
    and the server is left with no running FETCH and no open transaction."""
    seen = 0
    async for _row in pool.stream("SELECT n FROM generate_series(1, 4) AS n", batch=1, timeout=0.5):
        seen += 1
        await asyncio.sleep(0.2)  # the consumer's own work, 0.8 s in all
    assert seen == 4
    with pytest.raises(QueryTimeoutError):
        async for _row in pool.stream("SELECT pg_sleep(1) FROM generate_series(1, 2)", timeout=0.3):
            pass
    # The timed-out FETCH is cancelled and rolled back in the background, then released.
    await wait_for_condition(lambda: pool.in_use == 0)
    database = database_of(postgres_db_url)
    await wait_for_condition(lambda: settled(postgres_server, database))
    assert not [a for a in postgres_server.activity(database) if "pg_sleep" in a["query"]]
    assert all(a["xact_start"] is None for a in postgres_server.activity(database))


async def test_streaming_through_pgbouncer(pgbouncer: PgBouncer, postgres_db_url: str) -> None:
    async with PoolManager(pgbouncer.url_for(postgres_db_url), pgbouncer=True) as pool:
        got = [
            row["n"]
            async for row in pool.stream("SELECT generate_series(1, 2500) AS n", batch=1000)
        ]
    assert got == list(range(1, 2501))
