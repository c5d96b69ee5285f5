"""stop(timeout): refuse new work at once, let work finish, cancel what is left."""

import asyncio
import time

import pytest

from pgpool_core import PoolClosedError, PoolManager


async def until_active(postgres_server, database: str, count: int) -> None:
    """Until ``count`` backends of ``database`` run a statement (or 5 s pass)."""
    for _ in range(500):  # pg_stat_activity has no notification to wait on
        rows = await asyncio.to_thread(postgres_server.activity, database)
        if sum(row["state"] == "active" for row in rows) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {count} active backends within 5 s")


@pytest.mark.asyncio
async def test_stop_lets_short_work_finish_and_cancels_the_rest(
    postgres_db_url: str, postgres_server
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    pool = PoolManager(postgres_db_url, min_size=2, max_size=2)
    await pool.start(wait=True)
    short = asyncio.create_task(pool.execute("SELECT pg_sleep(0.5) AS done"))
    long = asyncio.create_task(pool.execute("SELECT pg_sleep(60)"))
    await until_active(postgres_server, database, 2)

    started = time.monotonic()
    stopping = asyncio.create_task(pool.stop(1.0))
    await asyncio.sleep(0)  # stop() has begun
    with pytest.raises(PoolClosedError):  # new work is refused at once
        await pool.execute("SELECT 1")
    await stopping
    assert time.monotonic() - started < 1.0 + 1.0  # timeout + min(cancel_timeout, 1 s)

    assert (await short).row == {"done": ""}  # finished within the grace period
    with pytest.raises(PoolClosedError, match="it was cancelled on the server"):
        await long  # still running at the deadline
    await until_active(postgres_server, database, 0)
