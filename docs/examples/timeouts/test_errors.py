"""The error hierarchy and classify(): what kind of failure each error is."""

import psycopg2.errors
import pytest

from pgpool_core import (
    ConnectionException,
    ErrorKind,
    PoolError,
    PoolManager,
    PoolTimeoutError,
    QueryParameterError,
    SettingsError,
    classify,
    sqlstate,
)


@pytest.mark.asyncio
async def test_sql_errors_are_psycopg2_errors_classified(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE users (email text PRIMARY KEY)")
        await pool.execute("INSERT INTO users VALUES ('ada@example.com')")

        with pytest.raises(psycopg2.errors.UniqueViolation) as caught:
            await pool.execute("INSERT INTO users VALUES (%s)", ["ada@example.com"])

        error = caught.value  # psycopg2's own error, not wrapped
        assert not isinstance(error, PoolError)
        assert sqlstate(error) == "23505"
        kind = classify(error)
        assert kind is ErrorKind.UNIQUE_VIOLATION
        assert not kind.retryable  # the same request would fail the same way


@pytest.mark.asyncio
async def test_pool_exhausted_is_a_timeout_with_nothing_sent(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url, max_size=1, acquire_timeout=0.2) as pool:
        await pool.execute("CREATE TABLE jobs (name text)")
        async with pool.connection():  # holds the only connection
            with pytest.raises(PoolTimeoutError, match="no connection free") as caught:
                await pool.execute("INSERT INTO jobs VALUES ('never')")
        assert (await pool.execute("SELECT count(*) AS n FROM jobs")).row == {"n": 0}

        error = caught.value
        assert isinstance(error, ConnectionException)
        assert isinstance(error, TimeoutError)
        assert classify(error) is ErrorKind.POOL_EXHAUSTED
        assert classify(error).retryable


@pytest.mark.asyncio
async def test_bad_input_is_refused_before_anything_is_sent(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url) as pool:
        await pool.execute("CREATE TABLE notes (body text)")
        await pool.execute("INSERT INTO notes VALUES ('keep me')")

        # libpq would cut the statement at the NUL and run "DELETE FROM notes".
        with pytest.raises(QueryParameterError, match="NUL"):
            await pool.execute("DELETE FROM notes\x00 WHERE body = 'spam'")
        # A parameter psycopg2 cannot adapt is named by its index (or key) and type.
        with pytest.raises(QueryParameterError, match="index 1 has type set"):
            await pool.execute("SELECT %s, %s", [1, {2}])
        # A timeout must be a positive number of seconds: "5" is not.
        with pytest.raises(SettingsError, match="timeout"):
            await pool.execute("DELETE FROM notes", timeout="5")

        result = await pool.execute("SELECT body FROM notes")
        assert result.rows == [{"body": "keep me"}]  # nothing was sent
