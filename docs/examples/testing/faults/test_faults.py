import time

import psycopg2
import pytest

from pgpool_core import PoolManager, PoolUnavailableError, QueryTimeoutError
from pgpool_core.testing import TcpProxy


@pytest.mark.asyncio
async def test_a_silent_network_costs_one_timeout(
    postgres_db_url: str, postgres_proxy: TcpProxy
) -> None:
    url = postgres_proxy.rewrite(postgres_db_url)  # the same database, through the proxy
    async with PoolManager(url, cancel_timeout=0.5) as pool:
        await pool.execute("SELECT 1")
        postgres_proxy.blackhole()  # bytes vanish: no answer, no error, no RST
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="may or may not have completed"):
            await pool.execute("SELECT 1", timeout=0.5)
        assert time.monotonic() - started < 2.0  # 0.5 s timeout + 0.5 s cancel_timeout + margin
        postgres_proxy.heal()
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}


@pytest.mark.asyncio
async def test_a_refused_connection_fails_fast(
    postgres_db_url: str, postgres_proxy: TcpProxy
) -> None:
    postgres_proxy.refuse()  # nothing listens: connects get ECONNREFUSED
    async with PoolManager(postgres_proxy.rewrite(postgres_db_url), min_size=0) as pool:
        started = time.monotonic()
        with pytest.raises(PoolUnavailableError, match="refused"):
            await pool.execute("SELECT 1")
        assert time.monotonic() - started < 1.0  # not the 10 s acquire_timeout
        postgres_proxy.heal()
        await pool.wait_ready()
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}


async def place_order(pool: PoolManager, proxy: TcpProxy) -> None:
    async with pool.transaction() as tx:
        await tx.execute("INSERT INTO orders VALUES (1)")
        proxy.reset()  # TCP RST on every open connection, mid-transaction
        await tx.execute("INSERT INTO orders VALUES (2)")


@pytest.mark.asyncio
async def test_a_connection_reset_mid_transaction_commits_nothing(
    postgres_db_url: str, postgres_proxy: TcpProxy
) -> None:
    async with PoolManager(postgres_proxy.rewrite(postgres_db_url)) as pool:
        await pool.execute("CREATE TABLE orders (id int)")
        with pytest.raises(psycopg2.OperationalError):
            await place_order(pool, postgres_proxy)
    async with PoolManager(postgres_db_url) as direct:  # not through the proxy
        assert (await direct.execute("SELECT count(*) AS n FROM orders")).row == {"n": 0}
