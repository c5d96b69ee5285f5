import asyncio

import psycopg2.errors
import pytest

from pgpool_core import PoolManager, PostgresConnector


@pytest.mark.asyncio
async def test_a_transaction_the_server_refused_runs_again(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url, max_size=2) as pool:
        await pool.execute("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)")
        attempts = 0

        async def add_one(tx: PostgresConnector) -> int:
            nonlocal attempts
            attempts += 1
            await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            n = (await tx.execute("SELECT n FROM counter")).row["n"]
            if attempts == 1:  # another client commits a change meanwhile, once
                await pool.execute("UPDATE counter SET n = n + 10")
            # On the first attempt the server refuses this: 40001, "could not serialize
            # access due to concurrent update"; it rolls the transaction back.
            await tx.execute("UPDATE counter SET n = %s", [n + 1])
            return n + 1

        assert await pool.run_transaction(add_one, retries=3) == 11
        assert attempts == 2
        assert (await pool.execute("SELECT n FROM counter")).row == {"n": 11}

        # With no retry left, the server's error is raised, saying how many attempts ran.
        attempts = 0
        with pytest.raises(psycopg2.errors.SerializationFailure) as caught:
            await pool.run_transaction(add_one, retries=0)
        assert caught.value.attempts == 1
        assert (await pool.execute("SELECT n FROM counter")).row == {"n": 21}  # theirs only


@pytest.mark.asyncio
async def test_an_idempotent_read_survives_its_backend(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url, max_size=2) as pool:
        sql = "SELECT 42 AS answer FROM pg_sleep(0.5)"
        read = asyncio.create_task(pool.execute(sql, idempotent=True))
        find = "SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'"
        for _ in range(100):  # wait until the server runs it
            found = await pool.execute(find, [sql])
            if found.row is not None:
                break
            await asyncio.sleep(0.01)
        await pool.execute("SELECT pg_terminate_backend(%s)", [found.row["pid"]])
        # Its connection died under it; it ran once more, on another connection.
        assert (await read).row == {"answer": 42}
        assert pool.stats()["returns_bad"] == 1  # the dead connection, closed
