"""stop(): survives its own cancellation, is idempotent, and meets its stated bound
(``timeout + min(cancel_timeout, 1 s)``)."""

from __future__ import annotations

import asyncio

import pytest

from pgpool_core import PoolClosedError, PoolManager, PoolState, QueryTimeoutError
from pgpool_core.testing import FakeConnector

from fake_support import URL, until

#: Loop scheduling on a loaded CI machine, on top of the stated bound.
SLACK = 0.25


async def _running(pool: PoolManager, fake: FakeConnector, sql: str) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(pool.execute(sql))
    await until(lambda: any(sql in c.statements for c in fake.connections))
    return task


async def test_cancelled_stop_still_completes_the_shutdown(fake: FakeConnector) -> None:
    """wait_for(stop(5), 0.05) times out, yet the pool finishes stopping: the statement is
    cancelled on the server, every connection closed, and a later stop() returns."""
    fake.on("pg_sleep", hang=True)
    pool = PoolManager(URL, connector=fake, min_size=1, max_size=2)
    await pool.start()
    statement = await _running(pool, fake, "SELECT pg_sleep(10)")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(pool.stop(5), 0.05)
    assert pool.state is PoolState.CLOSING
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.stop(0.1)  # joins the shutdown and brings its deadline forward
    assert loop.time() - started < 0.1 + 1.0 + SLACK
    assert pool.state is PoolState.CLOSED
    with pytest.raises(PoolClosedError):
        await statement
    assert [c.cancel_requests for c in fake.connections] == [1]
    assert not fake.open_connections
    await pool.stop(5)  # idempotent: returns at once


async def test_stop_bound_holds_when_the_cancel_is_lost(fake: FakeConnector) -> None:
    """A statement whose cancel never lands: stop(0.1) still returns within 0.1 + 1 s (its
    stated bound, cancel_timeout being 5 s), with the connection cut."""
    fake.on("pg_sleep", hang=True, ignore_cancel=True)
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=2, cancel_timeout=5)
    await pool.start()
    statement = await _running(pool, fake, "SELECT pg_sleep(10)")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.stop(0.1)
    took = loop.time() - started
    assert 0.1 <= took < 0.1 + 1.0 + SLACK, took
    assert not fake.open_connections
    with pytest.raises(PoolClosedError, match="may or may not have completed"):
        await statement


async def test_a_later_stop_brings_the_deadline_forward(fake: FakeConnector) -> None:
    """stop(30) in progress; stop(0.05) makes both return within 0.05 s + the cancel bound."""
    fake.on("pg_sleep", hang=True)
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=2, cancel_timeout=0.2)
    await pool.start()
    statement = await _running(pool, fake, "SELECT pg_sleep(10)")
    slow = asyncio.create_task(pool.stop(30))
    await until(lambda: pool.state is PoolState.CLOSING)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.stop(0.05)
    await slow
    assert loop.time() - started < 0.05 + 0.2 + SLACK
    with pytest.raises(PoolClosedError, match="cancelled on the server"):
        await statement


async def test_stop_lets_work_finish_before_its_deadline(fake: FakeConnector) -> None:
    """Work that ends before the deadline is not cancelled; stop returns when it drained."""
    gate = asyncio.Event()
    fake.on("^SELECT work", gate=gate)
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=2)
    await pool.start()
    statement = await _running(pool, fake, "SELECT work")
    stopping = asyncio.create_task(pool.stop(30))
    await until(lambda: pool.state is PoolState.CLOSING)
    with pytest.raises(PoolClosedError):
        await pool.execute("SELECT 1")
    gate.set()
    await statement
    await stopping
    assert pool.state is PoolState.CLOSED
    assert [c.cancel_requests for c in fake.connections] == [0]


async def test_aexit_survives_cancellation(fake: FakeConnector) -> None:
    """A task cancelled inside ``async with PoolManager`` still leaves a stopped pool behind."""
    fake.on("pg_sleep", hang=True)
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=2, cancel_timeout=0.1)

    async def use() -> None:
        async with pool:
            await pool.execute("SELECT pg_sleep(10)", timeout=30)

    task = asyncio.create_task(use())
    await until(lambda: bool(fake.connections) and bool(fake.connections[0].statements))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pool.stop(0.1)
    assert pool.state is PoolState.CLOSED
    assert not fake.open_connections


async def test_timed_out_statement_during_stop_is_reported_truthfully(
    fake: FakeConnector,
) -> None:
    """A statement timing out while the pool stops still reports its confirmed cancel."""
    fake.on("pg_sleep", hang=True)
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1) as pool:
        with pytest.raises(QueryTimeoutError, match="cancelled on the server"):
            await pool.execute("SELECT pg_sleep(10)", timeout=0.05)
