"""pool.listen() / pool.notify() over the fakes: a listener on a connection outside the
pool's size, notify's bound parameters, stop() closing listeners, the PgBouncer warning."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pgpool_core import (
    Notification,
    NotificationsMissed,
    PoolClosedError,
    PoolManager,
    QueryParameterError,
)
from pgpool_core.testing import FakeConnector

from fake_support import URL, until


async def test_listen_uses_a_connection_outside_the_pool_and_stop_closes_it(
    fake: FakeConnector,
) -> None:
    got: list[Notification | NotificationsMissed] = []
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=1)
    async with pool:
        listener = await pool.listen("orders", on_notify=got.append, on_missed=got.append)
        await until(lambda: listener.connected)
        assert pool.stats()["pool_size"] == 0  # not one of the pool's connections
        await pool.execute("SELECT 1")  # the pool's own one, max_size 1, still free
        assert fake.notify("orders", "42", pid=7) == 1
        await until(lambda: any(isinstance(e, Notification) for e in got))
        assert [e for e in got if isinstance(e, Notification)] == [Notification("orders", "42", 7)]
    assert not listener.connected
    assert all(conn.closed for conn in fake.connections)


async def test_notify_binds_its_parameters_and_checks_the_channel(fake: FakeConnector) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        await pool.notify("orders", "it's; DROP TABLE x")
        [sql] = [s for conn in fake.connections for s in conn.statements]
        assert sql == "SELECT pg_notify(%s, %s)"
        with pytest.raises(QueryParameterError, match="channel"):
            await pool.notify("")
        assert len(fake.connections[0].statements) == 1  # nothing more was sent


async def test_listen_needs_a_started_pool_and_warns_behind_pgbouncer(
    fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(PoolClosedError, match="start it first"):
        await PoolManager(URL, connector=fake).listen("x")
    async with PoolManager(URL, connector=fake, min_size=0, pgbouncer=True) as pool:
        with caplog.at_level(logging.WARNING, "pgpool"):
            first = await pool.listen("a")
            second = await pool.listen("b")
        assert caplog.text.count("session pooling mode only") == 1
        await asyncio.gather(first.close(), second.close())
