"""The pool behind PgBouncer in transaction pooling mode."""

import asyncio
import logging
import time

import pytest

from pgpool_core import PoolManager, QueryTimeoutError


@pytest.mark.asyncio
async def test_transactions_and_timeouts_through_pgbouncer(
    pgbouncer, postgres_db_url: str, postgres_server
) -> None:
    url = pgbouncer.url_for(postgres_db_url)  # PgBouncer's address, same database
    async with PoolManager(url, pgbouncer=True, min_size=1, max_size=4) as pool:
        await pool.execute("CREATE TABLE items (name text)")

        # One transaction runs on one server connection, whichever PgBouncer picks.
        async with pool.transaction(settings={"statement_timeout": "5s"}) as tx:
            await tx.execute("INSERT INTO items VALUES ('a'), ('b')")
            timeout = (await tx.execute("SHOW statement_timeout")).row
        assert timeout == {"statement_timeout": "5s"}  # for that transaction only

        # A timed-out statement: the cancel request goes through PgBouncer, which
        # forwards it to the server connection running the statement.
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="cancelled on the server"):
            await pool.execute("SELECT pg_sleep(30)", timeout=0.3)
        assert time.monotonic() - started < 0.3 + pool.settings.cancel_timeout  # not 30 s
        database = postgres_db_url.rsplit("/", 1)[1]
        running = [row for row in postgres_server.activity(database) if row["state"] == "active"]
        assert running == []

        # Nothing was set on a session: every server connection has the default.
        shown = await asyncio.gather(*(pool.execute("SHOW statement_timeout") for _ in range(8)))
        assert {result.row["statement_timeout"] for result in shown} == {"0"}
        assert (await pool.execute("SELECT count(*) AS n FROM items")).row == {"n": 2}


@pytest.mark.asyncio
async def test_session_state_is_warned_about_once(
    pgbouncer, postgres_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgpool")
    async with PoolManager(pgbouncer.url_for(postgres_db_url), pgbouncer=True) as pool:
        await pool.execute("SET search_path = public")  # lost at the next transaction
        await pool.execute("SET search_path = public")
    (warning,) = caplog.records  # once per kind of statement
    assert "session SET behind PgBouncer" in warning.getMessage()
