"""A statement past its timeout is cancelled on the server, and its connection is kept."""

import time

import pytest

from pgpool_core import ErrorKind, PoolManager, QueryTimeoutError, classify


@pytest.mark.asyncio
async def test_statement_past_its_timeout_is_cancelled_on_the_server(
    postgres_db_url: str, postgres_server
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        pid = (await pool.execute("SELECT pg_backend_pid() AS pid")).row["pid"]

        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="cancelled on the server") as caught:
            await pool.execute("SELECT pg_sleep(30)", timeout=0.5)
        # Not 30 s: the timeout, plus at most cancel_timeout for the server's answer.
        assert time.monotonic() - started < 0.5 + pool.settings.cancel_timeout
        assert isinstance(caught.value, TimeoutError)
        assert classify(caught.value) is ErrorKind.QUERY_TIMEOUT

        # The server confirmed the cancel before the error was raised: the backend is
        # no longer running the statement...
        (backend,) = postgres_server.activity(database)
        assert backend["pid"] == pid
        assert backend["state"] == "idle"
        # ...and the same connection serves the next call.
        again = await pool.execute("SELECT pg_backend_pid() AS pid")
        assert again.row["pid"] == pid
