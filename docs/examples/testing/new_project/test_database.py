import pytest

from pgpool_core import PoolManager


@pytest.mark.asyncio
async def test_the_database_answers(postgres_url: str) -> None:
    async with PoolManager(postgres_url) as pool:
        result = await pool.execute("SELECT 41 + 1 AS answer")
    assert result.row == {"answer": 42}


@pytest.mark.asyncio
async def test_each_test_gets_its_own_database(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE items (id int)")
        assert (await pool.execute("SELECT count(*) AS n FROM items")).row == {"n": 0}
