import asyncio

import pytest

from pgpool_core import Notification, PoolManager


@pytest.mark.asyncio
async def test_listen_stream_settings_retry(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url, reset="discard") as pool:
        got: asyncio.Queue[Notification] = asyncio.Queue()
        await pool.listen("orders", on_notify=got.put_nowait)
        await pool.notify("orders", "order 1 paid")
        assert (await asyncio.wait_for(got.get(), 5)).payload == "order 1 paid"

        total = 0
        async for row in pool.stream("SELECT generate_series(1, 100000) AS n", batch=5000):
            total += row["n"]
        assert total == 5000050000

        async with pool.transaction(settings={"app.tenant_id": "42"}) as tx:
            row = (await tx.execute("SELECT current_setting('app.tenant_id') AS t")).row
            assert row == {"t": "42"}

        async def count(tx) -> int:
            return (await tx.execute("SELECT count(*) AS n FROM pg_class")).row["n"]

        assert await pool.run_transaction(count, retries=3) > 0
