"""Safe retries with fake connections: an idempotent statement runs once more after its
connection died, and only then; run_transaction retries serialization failures and
deadlocks, and nothing else."""

from __future__ import annotations

import asyncio

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import PoolManager, PostgresConnector, QueryParameterError
from pgpool_core.testing import FakeConnector, Script

from fake_support import URL


class FailFirst:
    """``fake.script_for`` that answers the first ``times`` statements starting with
    ``prefix`` with ``error``, then as before."""

    def __init__(self, fake: FakeConnector, prefix: str, error: BaseException, times: int = 1):
        self.real = fake.script_for
        self.prefix, self.error, self.left = prefix, error, times
        fake.script_for = self  # type: ignore[method-assign]

    def __call__(self, sql: str) -> Script | None:
        if sql.startswith(self.prefix) and self.left:
            self.left -= 1
            return Script(self.prefix, error=self.error)
        return self.real(sql)


def ran(fake: FakeConnector) -> list[tuple[int, str]]:
    return [(conn.number, sql) for conn in fake.connections for sql in conn.statements]


class Sleeps:
    """A pool's sleep that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds >= 1:  # the maintenance task's interval: park it
            await asyncio.Event().wait()
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    "died",
    [
        psycopg2.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg2.OperationalError("server closed the connection unexpectedly"),
        psycopg2.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"),
    ],
    ids=["57P01", "lost", "25006"],
)
async def test_idempotent_statement_runs_again_once_after_its_connection_died(
    fake: FakeConnector, died: BaseException
) -> None:
    fake.on("^SELECT 'x'", rows=[{"x": 1}])
    FailFirst(fake, "SELECT 'x'", died)
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        result = await pool.execute("SELECT 'x'", idempotent=True)
        assert result.rows == [{"x": 1}]
        assert [sql for _, sql in ran(fake)].count("SELECT 'x'") == 2


async def test_idempotent_retry_happens_once_and_then_reports_the_error(
    fake: FakeConnector,
) -> None:
    FailFirst(fake, "SELECT 'x'", psycopg2.OperationalError("connection lost"), times=2)
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(psycopg2.OperationalError, match="connection lost"):
            await pool.execute("SELECT 'x'", idempotent=True)
        assert [sql for _, sql in ran(fake)].count("SELECT 'x'") == 2


@pytest.mark.parametrize("idempotent", [False, True])
async def test_other_failures_and_unmarked_statements_never_run_twice(
    fake: FakeConnector, idempotent: bool
) -> None:
    """A statement not marked idempotent is not retried even when its connection died;
    a marked one is not retried for its own error (a constraint, a syntax error)."""
    error = (
        psycopg2.errors.UniqueViolation("duplicate key")
        if idempotent
        else psycopg2.OperationalError("server closed the connection unexpectedly")
    )
    FailFirst(fake, "INSERT", error)
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(type(error)):
            await pool.execute("INSERT INTO t VALUES (1)", idempotent=idempotent)
        assert [sql for _, sql in ran(fake)].count("INSERT INTO t VALUES (1)") == 1


async def test_idempotent_retry_keeps_the_hooks_semantics(fake: FakeConnector) -> None:
    """The hook sees the final outcome only: nothing for a retried failure."""
    fake.on("^SELECT 'x'", rows=[{"x": 1}])
    FailFirst(fake, "SELECT 'x'", psycopg2.OperationalError("lost"))
    seen: list[str] = []
    durations: list[str] = []
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        result = await pool.execute(
            "SELECT 'x'",
            idempotent=True,
            metric_name="x",
            on_error=lambda name, exc: seen.append(name),
            on_duration=lambda name, seconds: durations.append(name),
        )
    assert result.rows == [{"x": 1}]
    assert seen == []
    assert durations == ["x", "x"]  # each attempt's duration


# -- run_transaction --------------------------------------------------------------------------


async def test_run_transaction_retries_a_serialization_failure(fake: FakeConnector) -> None:
    conflict = psycopg2.errors.SerializationFailure("could not serialize access")
    FailFirst(fake, "UPDATE", conflict, times=2)
    sleeps = Sleeps()
    calls: list[int] = []

    async def transfer(tx: PostgresConnector) -> str:
        calls.append(1)
        await tx.execute("UPDATE accounts SET n = n - 1")
        return "done"

    async with PoolManager(URL, connector=fake, min_size=0, sleep=sleeps) as pool:
        assert await pool.run_transaction(transfer, retries=3) == "done"
    assert len(calls) == 3
    assert len(sleeps.delays) == 2
    statements = [sql for _, sql in ran(fake)]
    assert statements.count("ROLLBACK") == 2  # each failed attempt rolled back
    assert statements[-3:] == ["BEGIN", "UPDATE accounts SET n = n - 1", "COMMIT"]


async def test_run_transaction_gives_up_with_the_attempt_count(fake: FakeConnector) -> None:
    FailFirst(fake, "UPDATE", psycopg2.errors.DeadlockDetected("deadlock detected"), times=9)

    async def work(tx: PostgresConnector) -> None:
        await tx.execute("UPDATE t SET n = 1")

    async with PoolManager(URL, connector=fake, min_size=0, sleep=Sleeps()) as pool:
        with pytest.raises(psycopg2.errors.DeadlockDetected) as caught:
            await pool.run_transaction(work, retries=2)
    assert caught.value.attempts == 3  # type: ignore[attr-defined]
    assert "after 3 attempt(s)" in "".join(
        getattr(caught.value, "__notes__", ["after 3 attempt(s)"])
    )
    assert [sql for _, sql in ran(fake)].count("COMMIT") == 0


async def test_run_transaction_whose_pause_outlasts_the_bound_raises_the_last_error(
    fake: FakeConnector,
) -> None:
    """A backoff pause that ends past ``timeout`` (a busy loop) raises the conflict the
    server answered, with its attempt count: not a SettingsError for a zero timeout."""
    FailFirst(fake, "UPDATE", psycopg2.errors.SerializationFailure("conflict"), times=9)

    async def late(seconds: float) -> None:
        if seconds >= 1:  # the maintenance task's interval: park it
            await asyncio.Event().wait()
        await asyncio.sleep(0.3)  # longer than the whole bound

    async def work(tx: PostgresConnector) -> None:
        await tx.execute("UPDATE t SET n = 1")

    async with PoolManager(URL, connector=fake, min_size=0, sleep=late) as pool:
        with pytest.raises(psycopg2.errors.SerializationFailure) as caught:
            await pool.run_transaction(work, retries=5, timeout=0.2)
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert [sql for _, sql in ran(fake)].count("COMMIT") == 0


async def test_run_transaction_does_not_retry_other_errors(fake: FakeConnector) -> None:
    FailFirst(fake, "INSERT", psycopg2.errors.UniqueViolation("duplicate key"), times=9)
    calls: list[int] = []

    async def work(tx: PostgresConnector) -> None:
        calls.append(1)
        await tx.execute("INSERT INTO t VALUES (1)")

    async with PoolManager(URL, connector=fake, min_size=0, sleep=Sleeps()) as pool:
        with pytest.raises(psycopg2.errors.UniqueViolation):
            await pool.run_transaction(work)
        with pytest.raises(QueryParameterError, match="retries: expected an integer >= 0"):
            await pool.run_transaction(work, retries=-1)
    assert len(calls) == 1
