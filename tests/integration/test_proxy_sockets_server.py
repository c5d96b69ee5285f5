"""TcpProxy closes every socket it opens, whatever the mode changes race with.

An unclosed socket (or transport, or stream writer) shows up as a ResourceWarning when it
is collected; ``filterwarnings = error`` turns that into a failure of the test that was
running, so these tests collect garbage themselves (``gc.collect()``) to surface any here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import urllib.parse

import psycopg2
import pytest

from pgpool_core import PoolManager, RetryPolicy
from pgpool_core.errors import PoolError
from pgpool_core.testing import PostgresServer, TcpProxy

POOLS = 6
#: Reconnect almost at once, so that connects keep arriving while the modes change.
FAST_RETRY = RetryPolicy(initial=0.001, maximum=0.005)
#: Short, so that a connect left waiting (a lost wake-up: see
#: test_connect_descriptors_server) would show as a slow test rather than a 10 s stall.
CONNECT_TIMEOUT = 2.0
ROUNDS = 150
CLOSES = 10


async def churn(pool: PoolManager, stop: asyncio.Event) -> None:
    """Requests back to back; failures are the point (resets, refusals)."""
    while not stop.is_set():
        with contextlib.suppress(psycopg2.Error, PoolError, OSError):
            await pool.execute("SELECT 1", timeout=1.0)
        await asyncio.sleep(0.001)


def cycle_modes(proxy: TcpProxy, rounds: int) -> None:
    for _ in range(rounds):
        proxy.refuse()
        proxy.heal()
        time.sleep(0.002)  # the pools reconnect meanwhile: the next refuse() races them
        proxy.reset()
    proxy.heal()


@pytest.mark.asyncio
async def test_refuse_heal_reset_under_traffic_leaves_no_unclosed_socket(
    postgres_db_url: str, postgres_proxy: TcpProxy
) -> None:
    url = postgres_proxy.rewrite(postgres_db_url)
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(
                PoolManager(
                    url, min_size=4, max_size=4, retry=FAST_RETRY, connect_timeout=CONNECT_TIMEOUT
                )
            )
            for _ in range(POOLS)
        ]
        workers = [asyncio.create_task(churn(pool, stop)) for pool in pools for _ in range(4)]
        try:
            # Off the test's loop, so that connects and mode changes really overlap.
            await asyncio.to_thread(cycle_modes, postgres_proxy, ROUNDS)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        for pool in pools:
            await pool.wait_ready()
            assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
    gc.collect()


@pytest.mark.asyncio
async def test_close_under_traffic_leaves_no_unclosed_socket(
    postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    parts = urllib.parse.urlsplit(postgres_server.url)
    target = (parts.hostname or "127.0.0.1", parts.port or 5432)
    for _ in range(CLOSES):
        proxy = TcpProxy(*target).start()
        url = proxy.rewrite(postgres_db_url)
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            pools = [
                await stack.enter_async_context(
                    PoolManager(url, min_size=4, retry=FAST_RETRY, connect_timeout=CONNECT_TIMEOUT)
                )
                for _ in range(POOLS)
            ]
            workers = [asyncio.create_task(churn(pool, stop)) for pool in pools for _ in range(4)]
            await asyncio.to_thread(proxy.reset)  # reconnects in flight while it closes
            await asyncio.to_thread(proxy.heal)
            await asyncio.to_thread(proxy.close)
            stop.set()
            await asyncio.gather(*workers)
        del proxy
        gc.collect()
