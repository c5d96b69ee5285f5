"""Starting while the database is down: lazy by default, or fail fast with wait=True."""

import asyncio

import pytest

from pgpool_core import ConfigurationError, PoolManager, PoolUnavailableError


@pytest.mark.asyncio
async def test_start_is_lazy_and_wait_fails_fast(postgres_db_url: str, postgres_server) -> None:
    await asyncio.to_thread(postgres_server.stop)

    # wait=True: a working connection, or an error at once (not after connect_timeout).
    with pytest.raises(PoolUnavailableError, match="Connection refused"):
        await PoolManager(postgres_db_url).start(wait=True)

    # Lazy (the default): start() succeeds, the pool connects when it can.
    async with PoolManager(postgres_db_url) as pool:
        with pytest.raises(PoolUnavailableError):
            await pool.execute("SELECT 1")
        await asyncio.to_thread(postgres_server.start)
        await pool.wait_ready(timeout=5)  # a connection was checked out and returned
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}


@pytest.mark.asyncio
async def test_a_refused_configuration_is_not_an_outage(postgres_server) -> None:
    url = postgres_server.url_for("no_such_database")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await PoolManager(url).start(wait=True)
    assert issubclass(ConfigurationError, PoolUnavailableError)
