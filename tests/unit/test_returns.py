"""Restoring a returned connection: a cancel must have landed before the connection is
reused, and a stale record of an earlier statement's end is not trusted."""

from __future__ import annotations

import asyncio
import threading
import time

from pgpool_core._returns import Canceller, restore
from pgpool_core.testing import FakeConnector

from fake_support import until


async def _busy(fake: FakeConnector, sql: str) -> object:
    conn = await fake.connect(1.0)
    conn.send(sql, None)
    return conn


async def test_connection_whose_cancel_is_still_in_flight_is_not_reusable() -> None:
    """The statement ends by itself while the cancel request is still on its way: reusing
    the connection would let that late cancel kill the next caller's statement."""
    fake = FakeConnector()
    gate = asyncio.Event()
    fake.on("^UPDATE", gate=gate)
    conn = await _busy(fake, "UPDATE t SET x = 1")
    release, sending = threading.Event(), threading.Event()

    def slow_cancel() -> None:
        sending.set()
        release.wait(5)  # the cancel request is still connecting

    conn.prepare_cancel = lambda: slow_cancel  # type: ignore[attr-defined]
    canceller = Canceller(0.1, 4, time.monotonic, "test")
    verdict = asyncio.create_task(canceller.cancel(conn, conn.wait_until_idle()))  # type: ignore[attr-defined]
    await until(sending.is_set)
    gate.set()  # meanwhile the statement completes on its own
    await until(lambda: not conn.is_busy())  # type: ignore[attr-defined]
    assert await verdict is False
    release.set()


async def test_restore_does_not_trust_a_stale_end() -> None:
    """A done future from an earlier statement must not stand for the running one: the
    running statement is cancelled and the connection comes back idle."""
    fake = FakeConnector()
    fake.on("pg_sleep", hang=True)
    conn = await _busy(fake, "SELECT pg_sleep(10)")
    stale: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stale.set_result(None)
    canceller = Canceller(1.0, 4, time.monotonic, "test")
    assert await restore(conn, stale, cancel=canceller.cancel, rollback=None)  # type: ignore[arg-type]
    assert conn.cancel_requests == 1  # type: ignore[attr-defined]
