"""Restoring a returned connection: a cancel request still on its way must land before the
connection serves anyone else, and a stale record of an earlier statement's end is not
trusted."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pgpool_core import PoolManager
from pgpool_core._returns import Canceller, restore
from pgpool_core.testing import FakeConnector

from fake_support import URL, until


def _slow_cancel(conn: Any) -> tuple[threading.Event, threading.Event]:
    """Make ``conn``'s cancel request hang until released: (sending, release)."""
    sending, release = threading.Event(), threading.Event()

    def send() -> None:
        sending.set()
        release.wait(5)  # still connecting to the server

    conn.prepare_cancel = lambda: send
    return sending, release


async def test_cancel_still_in_flight_is_reported_and_blocks_reuse() -> None:
    """The statement ends by itself while the cancel request is still on its way: the
    statement is over, but the request is handed back; restore() waits for it and refuses
    reuse while it has not landed (it would cancel the next caller's statement)."""
    fake = FakeConnector()
    gate = asyncio.Event()
    fake.on("^UPDATE", gate=gate)
    conn: Any = await fake.connect(1.0)
    conn.send("UPDATE t SET x = 1", None)
    sending, release = _slow_cancel(conn)
    canceller = Canceller(0.1, 4, "test")
    verdict = asyncio.create_task(canceller.cancel(conn, conn.wait_until_idle()))
    await asyncio.to_thread(sending.wait, 5)
    gate.set()  # meanwhile the statement completes on its own
    over, in_flight = await verdict
    assert over
    assert in_flight is not None
    assert not await restore(conn, None, in_flight, canceller=canceller, rollback=None)
    release.set()
    await asyncio.wait_for(in_flight, 5)
    assert await restore(conn, None, in_flight, canceller=canceller, rollback=None)


async def test_restore_does_not_trust_a_stale_end() -> None:
    """A done future from an earlier statement must not stand for the running one: the
    running statement is cancelled and the connection comes back idle."""
    fake = FakeConnector()
    fake.on("pg_sleep", hang=True)
    conn: Any = await fake.connect(1.0)
    conn.send("SELECT pg_sleep(10)", None)
    stale: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stale.set_result(None)
    canceller = Canceller(1.0, 4, "test")
    assert await restore(conn, stale, None, canceller=canceller, rollback=None)
    assert conn.cancel_requests == 1


async def test_statement_that_beats_a_slow_cancel_returns_at_once(fake: FakeConnector) -> None:
    """A timed-out statement completes while its cancel request is still connecting: the
    caller gets the result at once (not "may or may not have completed" after waiting out
    cancel_timeout), and the connection serves nobody until the request has landed."""
    gate = asyncio.Event()
    fake.on("^UPDATE", gate=gate, row_count=1)
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1, cancel_timeout=5) as pool:
        task = asyncio.create_task(pool.execute("UPDATE t SET x = 1", timeout=0.05))
        await until(lambda: bool(fake.connections))
        conn: Any = fake.connections[0]
        sending, release = _slow_cancel(conn)
        await asyncio.to_thread(sending.wait, 5)
        gate.set()
        started = asyncio.get_running_loop().time()
        assert (await task).row_count == 1
        assert asyncio.get_running_loop().time() - started < 1.0
        assert pool.stats()["pool_available"] == 0  # held back until the cancel lands
        release.set()
        await until(lambda: pool.stats()["pool_available"] == 1)
        assert not conn.closed
