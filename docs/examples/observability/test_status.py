import pytest

from pgpool_core import PoolManager


@pytest.mark.asyncio
async def test_name_stats_and_status(postgres_db_url: str) -> None:
    host_port_db = postgres_db_url.split("@", 1)[1]  # "127.0.0.1:5432/app"
    async with PoolManager(postgres_db_url, min_size=1, max_size=4) as pool:
        assert pool.name == host_port_db  # host:port/dbname, never credentials
        await pool.execute("SELECT 1")

        stats = pool.stats()  # a dict, no I/O: sizes and counters
        assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (1, 4, 1)
        assert stats["requests_num"] >= 1
        assert stats["query_timeouts"] == 0

        status = await pool.status()  # stats() plus whether the database answers now
        assert (status.state, status.available, status.role) == ("open", True, "writer")
        assert (status.pool_size, status.pool_free, status.in_use) == (1, 1, 0)
        assert status.counters["requests_num"] == stats["requests_num"]
        assert status.as_dict()["name"] == pool.name  # JSON-able, for a /status page
    assert (await pool.status()).state == "closed"
