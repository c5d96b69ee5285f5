import pytest

from pgpool_core import PoolManager
from pgpool_core.testing import PostgresServer


@pytest.mark.asyncio
async def test_a_stream_left_early_leaves_nothing_behind(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        sql = "SELECT n FROM generate_series(1, 1000000) AS n"
        async with pool.stream(sql, batch=500) as rows:
            async for row in rows:
                if row["n"] == 1200:  # found what we wanted: stop reading
                    break
        # The block's end rolled the transaction back and gave the connection back:
        # the one connection of this pool is free, and idle on the server.
        assert pool.in_use == 0
        [backend] = postgres_server.activity(database)  # its row in pg_stat_activity
        assert (backend["state"], backend["query"]) == ("idle", "ROLLBACK")
        assert backend["xact_start"] is None  # no transaction open, so no cursor either


@pytest.mark.asyncio
async def test_a_stream_inside_your_own_transaction(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE events (n int)")
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO events SELECT generate_series(1, 10000)")
            total = 0
            async for row in tx.stream("SELECT n FROM events", batch=1000):
                total += row["n"]  # sees the rows this transaction inserted
            await tx.execute("INSERT INTO events VALUES (0)")  # the transaction goes on
        assert total == 50005000
        assert (await pool.execute("SELECT count(*) AS n FROM events")).row == {"n": 10001}
