import asyncio

import pytest

from pgpool_core import PoolManager, PoolUnavailableError

WHERE = "SELECT pg_is_in_recovery() AS standby"


async def until_excluded(pool: PoolManager) -> str:
    """Wait for the background sample to exclude the reader; the reason it gives."""
    for _ in range(200):
        excluded = (await pool.status()).readers[0].excluded
        if excluded is not None:
            return excluded
        await asyncio.sleep(0.05)
    raise AssertionError("the reader was never excluded")


@pytest.mark.asyncio
async def test_a_lagging_reader_gets_no_reads(postgres_replication) -> None:
    rep = postgres_replication
    rep.primary.query("CREATE TABLE orders (id int)")
    rep.wait_caught_up()
    async with PoolManager(rep.primary.url, read_url=rep.standby.url, max_replica_lag=0.5) as pool:
        await pool.sample_readers()
        assert (await pool.execute(WHERE, read_only=True)).row == {"standby": True}

        rep.pause_replay()  # the standby keeps receiving WAL but applies none of it
        await pool.execute("INSERT INTO orders VALUES (1)")  # a write it will not replay
        reason = await until_excluded(pool)
        assert reason.startswith("replay lag")  # "replay lag 0.544 s > max_replica_lag 0.5 s"

        # With read_fallback on (the default), reads go to the primary meanwhile.
        assert (await pool.execute(WHERE, read_only=True)).row == {"standby": False}
        assert pool.stats()["reads_to_writer"] == 1

        rep.resume_replay()
        rep.wait_caught_up()
        await pool.sample_readers()
        assert (await pool.status()).readers[0].excluded is None
        assert (await pool.execute(WHERE, read_only=True)).row == {"standby": True}


@pytest.mark.asyncio
async def test_without_fallback_the_error_names_each_reader(postgres_replication) -> None:
    rep = postgres_replication
    rep.primary.query("CREATE TABLE orders (id int)")
    rep.wait_caught_up()
    async with PoolManager(
        rep.primary.url, read_url=rep.standby.url, max_replica_lag=0.5, read_fallback=False
    ) as pool:
        await pool.sample_readers()
        rep.pause_replay()
        await pool.execute("INSERT INTO orders VALUES (1)")
        await until_excluded(pool)
        with pytest.raises(PoolUnavailableError) as caught:
            await pool.execute("SELECT count(*) FROM orders", read_only=True)
        # pool 127.0.0.1:33161/postgres: no reader fit for reads (127.0.0.1:34723/postgres:
        # replay lag 0.536 s > max_replica_lag 0.5 s); read_fallback is off
        message = str(caught.value)
        assert f"{pool.readers[0].name}: replay lag" in message
        assert message.endswith("read_fallback is off")
        assert pool.stats()["reads_to_writer"] == 0  # not sent to the primary either
        rep.resume_replay()
