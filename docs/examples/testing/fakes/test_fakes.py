import psycopg2.errors
import pytest

from pgpool_core import PoolManager, QueryTimeoutError
from pgpool_core.testing import FakeConnector

# Never resolved, never connected to: the fake connector opens no socket at all.
URL = "postgresql://app@db.invalid/shop"


async def add_item(pool: PoolManager, name: str) -> bool:
    """The code under test: False when an item of that name exists already."""
    try:
        await pool.execute("INSERT INTO items (name) VALUES (%s)", [name])
    except psycopg2.errors.UniqueViolation:
        return False
    return True


@pytest.mark.asyncio
async def test_rows_come_from_a_script() -> None:
    fake = FakeConnector()
    fake.on(r"^SELECT name FROM items", rows=[{"name": "apple"}, {"name": "pear"}])
    async with PoolManager(URL, connector=fake) as pool:
        result = await pool.execute("SELECT name FROM items ORDER BY name")
    assert [row["name"] for row in result] == ["apple", "pear"]
    assert fake.connections[0].statements == ["SELECT name FROM items ORDER BY name"]


@pytest.mark.asyncio
async def test_a_scripted_failure_reaches_the_code_under_test() -> None:
    fake = FakeConnector()
    duplicate = psycopg2.errors.UniqueViolation("duplicate key value violates unique constraint")
    fake.on(r"^INSERT INTO items", error=duplicate)
    async with PoolManager(URL, connector=fake) as pool:
        assert await add_item(pool, "apple") is False
        assert len(fake.open_connections) == 1  # an SQL error does not cost the connection


@pytest.mark.asyncio
async def test_a_hung_statement_is_cancelled_at_its_timeout() -> None:
    fake = FakeConnector()
    fake.on(r"pg_sleep", hang=True)  # no answer until cancelled or the connection closes
    async with PoolManager(URL, connector=fake) as pool:
        with pytest.raises(QueryTimeoutError, match="cancelled on the server"):
            await pool.execute("SELECT pg_sleep(60)", timeout=0.05)
        conn = fake.connections[0]
        assert conn.cancel_requests == 1  # the pool sent a cancel request
        assert not conn.closed  # the cancel was confirmed: the connection is kept
        await pool.execute("SELECT 1")
        assert conn.statements == ["SELECT pg_sleep(60)", "SELECT 1"]
