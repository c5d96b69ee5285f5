"""pool.resize() on a real server: a shrink closes idle backends at once (seen in
pg_stat_activity) and leaves a busy one running; a grow opens up to the new min_size."""

from __future__ import annotations

import asyncio

from pgpool_core import PoolManager
from pgpool_core.testing import PostgresServer

from db_support import database_of, wait_for_condition


async def test_resize_on_a_real_server(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    database = database_of(postgres_db_url)

    def backends() -> int:
        return len(postgres_server.activity(database))

    async with PoolManager(postgres_db_url, min_size=4, max_size=4) as pool:
        await wait_for_condition(lambda: backends() == 4)
        busy = asyncio.create_task(pool.execute("SELECT pg_sleep(0.5)"))
        await wait_for_condition(lambda: pool.in_use == 1)
        pool.resize(min_size=1, max_size=1)
        await wait_for_condition(lambda: backends() == 1)  # the idle three closed at once
        assert not busy.done()  # the busy one kept running
        await busy
        pool.resize(min_size=3, max_size=5)
        await wait_for_condition(lambda: backends() == 3)
