import asyncio

import pytest

from pgpool_core import Notification, NotificationsMissed, PoolManager


@pytest.mark.asyncio
async def test_a_listener_reports_the_gap_and_listens_again(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        listener = await pool.listen("orders")
        events = aiter(listener)  # every event from now on, in order
        first_backend = listener.backend_pid

        # The server ends the listening session (a restart or a dead network does the same).
        await pool.execute("SELECT pg_terminate_backend(%s)", [first_backend])
        gap = await asyncio.wait_for(anext(events), 10)
        assert isinstance(gap, NotificationsMissed)
        assert gap.lost_at <= gap.restored_at  # time.time() seconds: re-sync for this window
        assert "terminating connection due to administrator command" in gap.reason

        # It reconnected and LISTENed again on a new backend: notifications arrive.
        assert listener.backend_pid not in (None, first_backend)
        await pool.notify("orders", "order 7 paid")
        event = await asyncio.wait_for(anext(events), 10)
        assert isinstance(event, Notification)
        assert (event.channel, event.payload) == ("orders", "order 7 paid")
    # stop() closed the listener: its iterator ends.
    assert [event async for event in events] == []
