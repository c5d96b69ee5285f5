"""Edges of listen/notify, streaming and reset found by a hostile review (each failed
before its fix): a listener racing stop(), bad channels, payloads and intervals refused,
a multi-statement stream refused, a hanging reset bounded, reset="none" never rolling
back a busy connection."""

from __future__ import annotations

import asyncio

import pytest

from pgpool_core import (
    PoolClosedError,
    PoolManager,
    PostgresConnector,
    QueryParameterError,
    SettingsError,
)
from pgpool_core.testing import FakeConnector

from fake_support import URL, until


async def test_a_listener_started_while_the_pool_stops_is_closed(fake: FakeConnector) -> None:
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=1)
    await pool.start()
    fake.gate = asyncio.Event()
    listening = asyncio.ensure_future(pool.listen("a"))
    await until(lambda: fake.attempts == 1)
    await pool.stop(1)
    fake.gate.set()
    with pytest.raises(PoolClosedError):
        await listening
    await until(lambda: not fake.open_connections)


async def test_a_closed_listener_is_forgotten_by_the_pool(fake: FakeConnector) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        listener = await pool.listen("a")
        assert listener in pool._listeners
        await listener.close()
        assert listener not in pool._listeners


@pytest.mark.parametrize(
    ("channel", "why"), [("a\ud800", "not valid Unicode"), ("é" * 32, "longer than 63 bytes")]
)
async def test_channels_libpq_cannot_send_are_refused(
    fake: FakeConnector, channel: str, why: str
) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(QueryParameterError, match=why):
            await pool.listen(channel)
        assert fake.connections == []  # nothing was opened, nothing sent


@pytest.mark.parametrize("interval", [float("inf"), float("nan"), "5", True, 0])
async def test_a_bad_check_interval_is_refused(fake: FakeConnector, interval: object) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(SettingsError, match="check_interval: must be a number of seconds"):
            await pool.listen("a", check_interval=interval)  # type: ignore[arg-type]
        assert fake.connections == []


@pytest.mark.parametrize("payload", [123, None, b"x", {"a": 1}])
async def test_notify_refuses_a_payload_that_is_not_text(
    fake: FakeConnector, payload: object
) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(QueryParameterError, match="payload: expected a str"):
            await pool.notify("ch", payload)  # type: ignore[arg-type]
    assert [s for c in fake.connections for s in c.statements] == []


async def test_a_stream_of_several_statements_is_refused(fake: FakeConnector) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(QueryParameterError, match="several statements; nothing was sent"):
            pool.stream("SELECT n FROM t; DELETE FROM t")
    assert fake.connections == []


async def test_a_hanging_reset_is_bounded_and_its_connection_closed(
    fake: FakeConnector,
) -> None:
    async def reset(connector: PostgresConnector) -> None:
        await asyncio.Event().wait()  # never returns

    async with PoolManager(
        URL, connector=fake, min_size=0, max_size=1, reset=reset, cancel_timeout=0.05
    ) as pool:
        await pool.execute("SELECT 1")
        await until(lambda: pool.in_use == 0)
        assert fake.connections[0].closed
        await pool.execute("SELECT 1")  # a fresh connection serves the next borrower
        assert len(fake.connections) == 2


async def test_reset_none_closes_a_connection_returned_busy_in_a_transaction(
    fake: FakeConnector,
) -> None:
    fake.on("^SELECT pg_sleep", hang=True)
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1, reset="none") as pool:

        async def work() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                await tx.execute("SELECT pg_sleep(10)")

        task = asyncio.ensure_future(work())
        await until(lambda: any("pg_sleep" in s for c in fake.connections for s in c.statements))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: pool.in_use == 0)
        await pool.execute("SELECT 1")
    first, second = fake.connections
    assert first.closed
    assert "ROLLBACK" not in first.statements  # nothing sent for it: reset is "none"
    assert second.statements == ["SELECT 1"]


async def test_a_resized_pool_can_send_as_many_cancels_as_it_has_connections(
    fake: FakeConnector,
) -> None:
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1) as pool:
        pool.resize(max_size=8)
        assert pool._canceller._max_threads == 10  # max_size + 2, as at construction


async def test_readiness_counts_open_connections_while_more_cannot_be_opened(
    fake: FakeConnector,
) -> None:
    from pgpool_core.probes import readiness

    async with PoolManager(URL, connector=fake, min_size=1, max_size=3) as pool:
        await until(lambda: pool.stats()["pool_size"] == 1)
        fake.fail_next = 100  # e.g. the server is at max_connections
        held = asyncio.Event()
        fake.on("^SELECT 'hold'", gate=held)
        holder = asyncio.create_task(pool.execute("SELECT 'hold'"))
        await until(lambda: pool.in_use == 1)
        waiting = asyncio.create_task(pool.execute("SELECT 1", timeout=5))
        await until(lambda: pool.state.value == "reconnecting")
        probe = readiness(pool, grace=0)  # past any grace
        assert probe.ok, probe.body  # the open connection still serves
        held.set()
        await asyncio.gather(holder, waiting, return_exceptions=True)


async def test_readiness_unknown_writability_is_not_read_only(fake: FakeConnector) -> None:
    from pgpool_core.probes import readiness

    async with PoolManager(URL, connector=fake, min_size=1) as pool:
        await until(lambda: pool.stats()["pool_size"] == 1)
        probe = readiness(pool, require_writable=True)  # the fake reports nothing
        assert probe.ok
        assert probe.body["members"][0]["writable"] is None
        fake.connections[0].read_only_server = True
        probe = readiness(pool, require_writable=True)
        assert not probe.ok
        assert probe.body["members"][0]["why"] == "the server is read-only"


async def test_the_heartbeat_sees_a_stall_between_probes() -> None:
    import time as time_module

    from pgpool_core.probes import Heartbeat, liveness

    beat = Heartbeat(interval=0.05, window=5)
    beat.start()
    try:
        await asyncio.sleep(0.06)
        time_module.sleep(0.4)  # noqa: ASYNC251 - the loop stalls, deliberately
        await until(lambda: beat.worst > 0.3)
        probe = await liveness(max_lag=0.3, heartbeat=beat)
        assert not probe.ok
        assert probe.body["status"] == "loop stalled"
        assert (await liveness(max_lag=0.3)).ok  # one measurement now sees nothing
    finally:
        beat.stop()
