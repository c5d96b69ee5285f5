"""A network that swallows everything: every call still ends within its bounds."""

import time

import pytest

from pgpool_core import PoolManager, QueryTimeoutError


@pytest.mark.asyncio
async def test_black_holed_statement_ends_within_its_window(
    postgres_db_url: str, postgres_proxy
) -> None:
    url = postgres_proxy.rewrite(postgres_db_url)  # through a TCP proxy we control
    async with PoolManager(url, min_size=1, max_size=1, cancel_timeout=0.5) as pool:
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}

        postgres_proxy.blackhole()  # no answer, no error, no RST: a partition
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="may or may not have completed"):
            await pool.execute("SELECT 1", timeout=0.5)
        took = time.monotonic() - started
        # The deadline passes at 0.5 s; the cancel request cannot get through either,
        # so after cancel_timeout (0.5 s) the pool closes the connection and says that
        # it does not know whether the statement ran.
        assert 0.5 <= took < 0.5 + 0.5 + 0.5  # timeout + cancel_timeout, and some slack

        postgres_proxy.heal()
        assert (await pool.execute("SELECT 1 AS ok", timeout=5)).row == {"ok": 1}
