import pytest

from pgpool_core import PoolManager


@pytest.mark.asyncio
async def test_reads_go_to_the_standby(postgres_replication) -> None:
    primary, standby = postgres_replication.primary, postgres_replication.standby
    async with PoolManager(primary.url, read_url=standby.url, max_replica_lag=5) as pool:
        await pool.execute("CREATE TABLE notes (body text)")
        session = pool.session()  # e.g. one request
        await session.execute("INSERT INTO notes VALUES ('hello')")
        mine = await session.execute("SELECT count(*) AS n FROM notes", read_only=True)
        assert mine.row == {"n": 1}  # it wrote: its reads run on the primary
        postgres_replication.wait_caught_up()
        await pool.sample_readers()  # or wait for the background sample
        where = await pool.execute("SELECT pg_is_in_recovery() AS standby", read_only=True)
        assert where.row == {"standby": True}
