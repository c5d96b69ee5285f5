"""A server restart: requests fail fast while it is down, then succeed, same pool."""

import asyncio
import time

import pytest

from pgpool_core import ErrorKind, PoolManager, PoolState, PoolUnavailableError, classify


@pytest.mark.asyncio
async def test_requests_fail_fast_while_down_and_succeed_after(
    postgres_db_url: str, postgres_server
) -> None:
    async with PoolManager(postgres_db_url, min_size=2, acquire_timeout=10) as pool:
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}

        await asyncio.to_thread(postgres_server.stop)  # pg_ctl stop -m fast

        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(PoolUnavailableError) as caught:
                await pool.execute("SELECT 1")
            assert time.monotonic() - started < 1.0  # not acquire_timeout's 10 s
            assert classify(caught.value) is ErrorKind.UNAVAILABLE
        assert pool.state is PoolState.RECONNECTING
        print(caught.value)  # cannot connect to 127.0.0.1:.../t_...: ... Connection refused

        await asyncio.to_thread(postgres_server.start)
        back = time.monotonic()
        while True:  # the pool reconnects by itself, with backoff (0.5 s apart at most)
            try:
                result = await pool.execute("SELECT 1 AS ok")
                break
            except PoolUnavailableError:
                assert time.monotonic() - back < 2.0
        assert result.row == {"ok": 1}
        assert pool.state is PoolState.OPEN
