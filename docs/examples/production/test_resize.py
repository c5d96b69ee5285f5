import asyncio

import pytest

from pgpool_core import PoolManager
from pgpool_core.testing import PostgresServer


async def until(condition) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


@pytest.mark.asyncio
async def test_resize_at_run_time(postgres_db_url: str, postgres_server: PostgresServer) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]

    def backends() -> int:  # this database's sessions in pg_stat_activity
        return len(postgres_server.activity(database))

    async with PoolManager(postgres_db_url, min_size=4, max_size=4) as pool:
        await until(lambda: backends() == 4)
        busy = asyncio.create_task(pool.execute("SELECT pg_sleep(0.5)"))
        await until(lambda: pool.in_use == 1)

        pool.resize(min_size=1, max_size=1)
        await until(lambda: backends() == 1)  # the three idle ones closed at once
        assert not busy.done()  # the busy one goes on: never closed while in use
        await busy

        pool.resize(min_size=3, max_size=5)
        await until(lambda: backends() == 3)  # growing opens up to the new min_size
        assert pool.stats()["pool_max"] == 5
