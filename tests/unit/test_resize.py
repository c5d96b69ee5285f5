"""pool.resize() at run time, over the fakes: growing serves waiters at once and fills
min_size; shrinking closes idle connections now and busy ones only as they come back."""

from __future__ import annotations

import asyncio

import pytest

from pgpool_core import PoolManager, SettingsError
from pgpool_core.testing import FakeConnector

from fake_support import URL, until


async def test_growing_serves_a_waiter_and_fills_min_size(fake: FakeConnector) -> None:
    held = asyncio.Event()
    fake.on("^SELECT 'hold'", gate=held)
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1, acquire_timeout=5) as pool:
        holder = asyncio.create_task(pool.execute("SELECT 'hold'"))
        await until(lambda: pool.in_use == 1)
        waiter = asyncio.create_task(pool.execute("SELECT 1"))
        await until(lambda: pool.stats()["requests_waiting"] == 1)
        pool.resize(max_size=2)
        assert (await waiter).row == {"?column?": 1}  # served while the first is still held
        assert not holder.done()
        held.set()
        await holder
        pool.resize(min_size=3, max_size=4)
        await until(lambda: pool.stats()["pool_size"] == 3)
        assert pool.stats()["pool_min"] == 3
        assert pool.settings.max_size == 4


async def test_shrinking_closes_idle_now_and_busy_on_return(fake: FakeConnector) -> None:
    held = asyncio.Event()
    fake.on("^SELECT 'hold'", gate=held)
    async with PoolManager(URL, connector=fake, min_size=4, max_size=4) as pool:
        await until(lambda: pool.stats()["pool_available"] == 4)
        holders = [asyncio.create_task(pool.execute("SELECT 'hold'")) for _ in range(2)]
        await until(lambda: pool.in_use == 2)
        pool.resize(min_size=1, max_size=1)
        assert pool.stats()["pool_size"] == 2  # both idle ones closed; the busy two kept
        assert sum(not c.closed for c in fake.connections) == 2
        held.set()
        await asyncio.gather(*holders)
        assert pool.stats()["pool_size"] == 1  # one closed on its return, one kept
        assert sum(not c.closed for c in fake.connections) == 1
        assert (await pool.execute("SELECT 1")).row == {"?column?": 1}


async def test_bad_sizes_are_refused_and_change_nothing(fake: FakeConnector) -> None:
    async with PoolManager(URL, connector=fake, min_size=1, max_size=2) as pool:
        with pytest.raises(SettingsError, match=r"min_size \(5\) must not exceed max_size \(2\)"):
            pool.resize(min_size=5)
        with pytest.raises(SettingsError, match="max_size: must be >= 1"):
            pool.resize(max_size=0)
        assert (pool.settings.min_size, pool.settings.max_size) == (1, 2)
        assert (pool.stats()["pool_min"], pool.stats()["pool_max"]) == (1, 2)


async def test_readers_are_resized_with_the_writer(fake: FakeConnector) -> None:
    reader = FakeConnector()
    async with PoolManager(
        URL, connector=fake, read_connectors=[reader], min_size=0, max_size=2
    ) as pool:
        pool.resize(min_size=2, max_size=3)
        [member] = pool.readers
        assert (member.settings.min_size, member.settings.max_size) == (2, 3)
        await until(lambda: member.stats()["pool_size"] == 2)
