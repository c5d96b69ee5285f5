"""A pooled connection killed on the server is found at checkout; the request goes on."""

import asyncio

import pytest

from pgpool_core import PoolManager


@pytest.mark.asyncio
async def test_terminated_backend_is_dropped_at_checkout(
    postgres_db_url: str, postgres_server
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        old = (await pool.execute("SELECT pg_backend_pid() AS pid")).row["pid"]

        # An administrator (or an idle timeout, or a failover) ends the idle session.
        postgres_server.query("SELECT pg_terminate_backend(%s)", [old])
        for _ in range(500):  # terminating is asynchronous on the server
            if not await asyncio.to_thread(postgres_server.activity, database):
                break
            await asyncio.sleep(0.01)

        # The server's FATAL message sits unread on the idle connection: the checkout
        # sees it, proves the connection dead with a bounded SELECT 1, drops it and
        # opens another. The caller never sees the dead one.
        new = (await pool.execute("SELECT pg_backend_pid() AS pid")).row["pid"]
        assert new != old
        assert pool.stats()["connections_lost"] == 1
