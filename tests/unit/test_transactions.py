"""Transaction outcomes on the fake driver: what leaving transaction() reports is what the
server did. Each test checks what was sent (the fake records every statement), not only
the exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import (
    CommitUnknownError,
    ErrorKind,
    PoolManager,
    PostgresConnector,
    QueryParameterError,
    QueryResultError,
    QueryTimeoutError,
    SettingsError,
    TransactionRolledBackError,
    TransactionUsageError,
    TxStatus,
    classify,
    sqlstate,
)
from pgpool_core._transaction import BEGIN_WITH_XID, refuse_commit
from pgpool_core.testing import FakeConnection, FakeConnector

from fake_support import URL, until


class Clock:
    """The pool's clock: real time, plus jumps the test makes (``clock.now += 0.25``) to
    stand for time spent elsewhere; the loop's timers keep running in real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    @property
    def now(self) -> float:
        return time.monotonic() + self.offset

    @now.setter
    def now(self, value: float) -> None:
        self.offset += value - self.now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def pool(fake: FakeConnector, clock: Clock) -> AsyncIterator[PoolManager]:
    fake.on(r"^INSERT .*'dup'", error=psycopg2.errors.UniqueViolation("duplicate key"))
    fake.on(r"txid_current", rows=[{"xid": 4242, "started": "boot-1"}])
    manager = PoolManager(
        URL, connector=fake, min_size=0, max_size=2, clock=clock, cancel_timeout=5.0
    )
    await manager.start()
    yield manager
    await manager.stop(timeout=0.5)


def _conn(fake: FakeConnector) -> FakeConnection:
    (conn,) = fake.connections
    return conn


def _sent(fake: FakeConnector) -> list[str]:
    return [sql for conn in fake.connections for sql in conn.statements]


async def _settled(pool: PoolManager) -> None:
    await until(lambda: pool.stats()["pool_size"] == pool.stats()["pool_available"])


async def test_commit_is_not_sent_after_the_deadline(
    pool: PoolManager, fake: FakeConnector, clock: Clock
) -> None:
    """A block that outlives its timeout gets QueryTimeoutError; COMMIT is never sent, the
    transaction is rolled back."""

    async def outlive_the_deadline() -> None:
        async with pool.transaction(timeout=0.2) as tx:
            await tx.execute("INSERT INTO t VALUES ('late')")
            clock.now += 0.25  # application code spends past the deadline

    with pytest.raises(QueryTimeoutError, match="before COMMIT was sent; it was rolled back"):
        await outlive_the_deadline()
    assert _sent(fake) == ["BEGIN", "INSERT INTO t VALUES ('late')", "ROLLBACK"]
    assert _conn(fake).status is TxStatus.IDLE


async def test_statement_after_the_deadline_is_not_sent(
    pool: PoolManager, fake: FakeConnector, clock: Clock
) -> None:
    """connector(timeout=...): a statement issued once the deadline passed is not sent."""
    async with pool.connector(timeout=0.2) as connector:
        await connector.execute("SELECT 1")
        clock.now += 0.3
        with pytest.raises(QueryTimeoutError, match="nothing was sent"):
            await connector.execute("DELETE FROM t")
    assert "DELETE FROM t" not in _sent(fake)


async def test_caught_statement_error_makes_the_transaction_report_a_rollback(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """A failed statement caught inside the block: leaving it raises TransactionRolledBackError
    naming the first failure; COMMIT is not sent (PostgreSQL would answer ROLLBACK)."""

    async def catch_and_go_on() -> None:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('kept')")
            with pytest.raises(psycopg2.errors.UniqueViolation):
                await tx.execute("INSERT INTO t VALUES ('dup')")

    with pytest.raises(TransactionRolledBackError, match="SQLSTATE 23505") as caught:
        await catch_and_go_on()
    error = caught.value
    assert isinstance(error.first_error, psycopg2.errors.UniqueViolation)
    assert (sqlstate(error), classify(error)) == ("23505", ErrorKind.UNIQUE_VIOLATION)
    assert "COMMIT" not in _sent(fake)
    assert _sent(fake)[-1] == "ROLLBACK"
    await _settled(pool)


async def test_error_swallowed_by_on_error_cannot_turn_into_a_commit(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """on_error returning None swallows the statement's error (sprockets-postgres semantics),
    but not the transaction's outcome: the hook sees it as postgres_transaction and None
    still raises."""
    seen: list[tuple[str, type[BaseException]]] = []

    def on_error(name: str, exc: Exception) -> Exception | None:
        seen.append((name, type(exc)))
        return None

    swallowed: list[int] = []

    async def swallow(connector: PostgresConnector) -> None:
        async with connector.transaction():
            await connector.execute("INSERT INTO t VALUES ('kept')")
            result = await connector.execute("INSERT INTO t VALUES ('dup')", metric_name="dup")
            swallowed.append(result.row_count)

    async with pool.connector(on_error=on_error) as connector:
        with pytest.raises(TransactionRolledBackError):
            await swallow(connector)
    assert swallowed == [0]
    assert seen == [
        ("dup", psycopg2.errors.UniqueViolation),
        ("postgres_transaction", TransactionRolledBackError),
    ]
    assert "COMMIT" not in _sent(fake)


async def test_on_error_replacement_is_raised_for_the_outcome(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """An exception the hook returns for the outcome is raised from it."""

    class Mapped(Exception):
        pass

    def on_error(name: str, exc: Exception) -> Exception | None:
        return Mapped(name) if name == "postgres_transaction" else None

    async with pool.connector(on_error=on_error) as connector:
        with pytest.raises(Mapped) as caught:
            async with connector.transaction():
                await connector.execute("INSERT INTO t VALUES ('dup')")
    assert isinstance(caught.value.__cause__, TransactionRolledBackError)


async def test_savepoint_recovery_still_commits(pool: PoolManager, fake: FakeConnector) -> None:
    """A failure rolled back to a savepoint leaves the transaction usable: it commits."""
    async with pool.transaction() as tx:
        await tx.execute("SAVEPOINT s")
        with pytest.raises(psycopg2.errors.UniqueViolation):
            await tx.execute("INSERT INTO t VALUES ('dup')")
        await tx.execute("ROLLBACK TO SAVEPOINT s")
        await tx.execute("INSERT INTO t VALUES ('other')")
    assert _sent(fake)[-1] == "COMMIT"


@pytest.mark.parametrize(
    "control",
    [
        "COMMIT",
        " rollback",
        "END",
        "ABORT",
        "BEGIN",
        "COMMIT AND CHAIN",
        "PREPARE TRANSACTION 'x'",
        "/* done */ COMMIT",
        "-- done\n  /* really\n */ ROLLBACK",
    ],
)
async def test_transaction_control_inside_the_block_is_refused(
    pool: PoolManager, fake: FakeConnector, control: str
) -> None:
    """The block's own COMMIT / ROLLBACK / BEGIN would make the reported outcome a guess
    (a COMMIT and then more statements, a COMMIT AND CHAIN then an error): refused before
    sending; the pool rolls back; savepoints stay allowed."""

    async def run() -> None:
        async with pool.transaction() as tx:
            await tx.execute("SAVEPOINT s")
            await tx.execute("ROLLBACK TO SAVEPOINT s")
            await tx.execute(control)

    with pytest.raises(TransactionUsageError, match="nothing was sent"):
        await run()
    assert _sent(fake) == ["BEGIN", "SAVEPOINT s", "ROLLBACK TO SAVEPOINT s", "ROLLBACK"]


@pytest.mark.parametrize(
    "statement", ["-- COMMIT\nSELECT 1", "/* rollback */ SELECT 1", "ROLLBACK TO SAVEPOINT s"]
)
async def test_transaction_words_in_comments_are_not_transaction_control(
    pool: PoolManager, fake: FakeConnector, statement: str
) -> None:
    async with pool.transaction() as tx:
        await tx.execute("SAVEPOINT s")
        await tx.execute(statement)
    assert _sent(fake)[-2:] == [statement, "COMMIT"]


async def test_timed_out_statement_dooms_its_transaction(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """A statement timeout caught by the block: the statement may still complete, so
    nothing more is sent and COMMIT is refused; the caller was told "rolled back" and it is."""
    gate = asyncio.Event()
    fake.on("^UPDATE", gate=gate)

    async def run() -> None:
        async with pool.transaction() as tx:
            with contextlib.suppress(QueryTimeoutError):
                await tx.execute("UPDATE t SET x = 1", timeout=0.02)
            gate.set()  # the statement completes on the server after all
            with pytest.raises(TransactionRolledBackError, match="nothing was sent"):
                await tx.execute("INSERT INTO t VALUES (2)")

    # The UPDATE (sent with its BEGIN) may still be running at COMMIT: libpq then reports
    # the transaction active, and that is what the refusal says, with the first failure.
    with pytest.raises(
        TransactionRolledBackError,
        match=r"(ran out of time|still running at COMMIT; first failure: QueryTimeoutError)",
    ):
        await run()
    await _settled(pool)
    assert "COMMIT" not in _sent(fake)
    assert "INSERT INTO t VALUES (2)" not in _sent(fake)


async def test_nested_transaction_and_stale_connector_are_refused(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """transaction() twice on one connector, or a connector used after its block: refused,
    nothing sent (it would run on a connection someone else may hold)."""
    async with pool.connector() as connector, connector.transaction():
        with pytest.raises(TransactionUsageError):
            async with connector.transaction():
                pass
    with pytest.raises(TransactionUsageError, match="block has ended"):
        await connector.execute("INSERT INTO t VALUES (1)")
    assert "INSERT INTO t VALUES (1)" not in _sent(fake)


async def test_commit_answered_after_the_deadline_reports_the_commit(
    pool: PoolManager, fake: FakeConnector, clock: Clock
) -> None:
    """Once COMMIT is sent the deadline does not cut it: its answer, late, is the outcome."""
    gate = asyncio.Event()
    fake.on("^COMMIT", gate=gate)

    async def run() -> None:
        async with pool.transaction(timeout=0.2) as tx:
            await tx.execute("INSERT INTO t VALUES ('x')")

    task = asyncio.create_task(run())
    await until(lambda: bool(fake.connections) and _conn(fake).statements[-1:] == ["COMMIT"])
    clock.now += 1.0  # past the deadline, within deadline + cancel_timeout
    await asyncio.sleep(0)
    gate.set()
    await task  # committed: no error
    assert _conn(fake).cancel_requests == 0


async def test_cancelled_caller_waits_for_the_sent_commit(
    pool: PoolManager, fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled after COMMIT was sent: the COMMIT is neither cancelled nor abandoned; the
    caller's cancellation is re-raised once the server answered, and the outcome logged."""
    caplog.set_level(logging.DEBUG, logger="pgpool")
    gate = asyncio.Event()
    fake.on("^COMMIT", gate=gate)

    async def run() -> None:
        async with pool.transaction(resolve_commit=True) as tx:
            await tx.execute("INSERT INTO t VALUES ('x')")

    task = asyncio.create_task(run())
    await until(lambda: bool(fake.connections) and _conn(fake).statements[-1:] == ["COMMIT"])
    task.cancel()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()  # still waiting for the server's answer
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _conn(fake).cancel_requests == 0
    assert _conn(fake).status is TxStatus.IDLE
    assert "caller cancelled while COMMIT ran (xid 4242); the transaction committed" in caplog.text
    await _settled(pool)


async def test_cancelled_before_commit_sends_no_commit(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """Cancelled during a statement: no COMMIT; the release cancels it and rolls back."""
    fake.on("pg_sleep", hang=True)

    async def run() -> None:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('x')")
            await tx.execute("SELECT pg_sleep(10)")

    task = asyncio.create_task(run())
    await until(lambda: bool(fake.connections) and "SELECT pg_sleep(10)" in _sent(fake))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _settled(pool)
    assert "COMMIT" not in _sent(fake)
    assert _sent(fake)[-1] == "ROLLBACK"
    assert _conn(fake).cancel_requests == 1


async def test_connection_lost_during_commit_is_unknown(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """The connection dies while COMMIT runs: CommitUnknownError, never retryable."""
    fake.on("^COMMIT", close_connection=True)
    with pytest.raises(CommitUnknownError, match="may or may not have committed") as caught:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('x')")
    assert caught.value.xid is None
    assert classify(caught.value) is ErrorKind.COMMIT_UNKNOWN
    assert not classify(caught.value).retryable
    await _settled(pool)
    assert pool.stats()["pool_size"] == 0


@pytest.mark.parametrize(
    "case",
    [
        ("committed", "boot-1", None, ""),
        ("aborted", "boot-1", TransactionRolledBackError, "says aborted"),
        # After a restart an id whose records never reached the disk may be reused:
        # "committed" may be another transaction's; "aborted" still means ours did not.
        ("committed", "boot-2", CommitUnknownError, "the server restarted since"),
        ("aborted", "boot-2", TransactionRolledBackError, "says aborted"),
    ],
)
async def test_lost_commit_is_resolved_by_its_xid(
    pool: PoolManager, fake: FakeConnector, case: tuple[str, str, type[Exception] | None, str]
) -> None:
    """With resolve_commit, a lost COMMIT is answered by txid_status on a new connection,
    trusted as committed only from the same server life."""
    verdict, started, expected, says = case
    fake.on("^COMMIT", close_connection=True)
    fake.on("txid_status", rows=[{"status": verdict, "started": started}])

    async def run() -> None:
        async with pool.transaction(resolve_commit=True) as tx:
            await tx.execute("INSERT INTO t VALUES ('x')")

    if expected is None:
        await run()
    else:
        with pytest.raises(expected, match=says):
            await run()
    assert fake.connections[0].messages[0] == BEGIN_WITH_XID  # BEGIN sent eagerly
    assert [sql.split(",")[0] for sql in fake.connections[1].statements] == [
        "SELECT txid_status(%s) AS status"
    ]
    assert fake.connections[1].closed


async def test_unresolvable_commit_stays_unknown_within_the_bound(
    fake: FakeConnector,
) -> None:
    """A transaction still in progress on the server past the bound: CommitUnknownError
    with its xid, raised within cancel_timeout."""
    fake.on(r"txid_current", rows=[{"xid": 7, "started": "boot-1"}])
    fake.on("^COMMIT", close_connection=True)
    fake.on("txid_status", rows=[{"status": "in progress", "started": "boot-1"}])
    async with PoolManager(
        URL, connector=fake, min_size=0, cancel_timeout=0.1, resolve_commits=True
    ) as pool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(
            CommitUnknownError, match=r"txid_status\(7\) says in progress"
        ) as caught:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('x')")
        assert loop.time() - started < 1.0
        assert caught.value.xid == 7


async def test_commit_without_answer_is_unknown_and_the_connection_closed(
    fake: FakeConnector,
) -> None:
    """No answer to COMMIT by deadline + cancel_timeout: unknown, the connection closed,
    and no cancel sent (a COMMIT is never cut half way)."""
    fake.on("^COMMIT", hang=True)
    async with PoolManager(URL, connector=fake, min_size=0, cancel_timeout=0.05) as pool:
        with pytest.raises(CommitUnknownError, match="no answer came"):
            async with pool.transaction(timeout=0.05) as tx:
                await tx.execute("INSERT INTO t VALUES ('x')")
        assert _conn(fake).closed
        assert _conn(fake).cancel_requests == 0


def test_refuse_commit_decisions() -> None:
    """The pure decision: only INTRANS before the deadline sends COMMIT."""
    failure = psycopg2.errors.UniqueViolation("dup")
    assert (
        refuse_commit(TxStatus.INTRANS, deadline_passed=False, total=1, failure=None, ended_by=None)
        is None
    )
    assert (
        refuse_commit(
            TxStatus.IDLE, deadline_passed=False, total=1, failure=None, ended_by="COMMIT"
        )
        is None
    )
    cases = {
        TxStatus.INERROR: (TransactionRolledBackError, True),
        TxStatus.UNKNOWN: (TransactionRolledBackError, False),
        TxStatus.ACTIVE: (TransactionRolledBackError, False),
        TxStatus.IDLE: (TransactionRolledBackError, False),
    }
    for status, (error_type, rollback) in cases.items():
        refusal = refuse_commit(
            status, deadline_passed=False, total=1, failure=failure, ended_by="ROLLBACK"
        )
        assert refusal is not None
        assert (type(refusal.error), refusal.rollback) == (error_type, rollback), status
    late = refuse_commit(
        TxStatus.INTRANS, deadline_passed=True, total=1, failure=None, ended_by=None
    )
    assert late is not None
    assert (type(late.error), late.rollback) == (QueryTimeoutError, True)


async def test_autocommit_timeout_reports_the_confirmed_cancel(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """Outside a transaction, a timed-out statement is reported cancelled only once the server
    confirmed it; the connection is kept."""
    fake.on("pg_sleep", hang=True)
    with pytest.raises(QueryTimeoutError, match="it was cancelled on the server"):
        await pool.execute("SELECT pg_sleep(10)", timeout=0.05)
    conn = _conn(fake)
    assert (conn.cancel_requests, conn.closed) == (1, False)


async def test_autocommit_statement_that_beat_its_cancel_returns_its_result(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """The statement completed before the cancel reached it: that is the truth, so the call
    returns its result instead of claiming a cancellation."""
    gate = asyncio.Event()
    fake.on("^UPDATE", gate=gate, ignore_cancel=True, row_count=1)
    task = asyncio.create_task(pool.execute("UPDATE t SET x = 1", timeout=0.05))
    await until(lambda: bool(fake.connections) and _conn(fake).cancel_requests == 1)
    gate.set()
    assert (await task).row_count == 1


async def test_timeout_inside_a_transaction_is_reported_at_once(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """Inside a transaction the caller hears at the deadline (the transaction cannot commit);
    the release cancels the statement and rolls back."""
    fake.on("pg_sleep", hang=True)
    with pytest.raises(QueryTimeoutError, match="the transaction is rolled back"):
        async with pool.transaction(timeout=0.05) as tx:
            await tx.execute("SELECT pg_sleep(10)")
    await _settled(pool)
    assert "COMMIT" not in _sent(fake)
    assert _sent(fake)[-1] == "ROLLBACK"


async def test_nul_in_statement_is_refused_before_sending(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """libpq would stop at the NUL (DELETE FROM t\\0 WHERE ... deletes every row): refused."""
    with pytest.raises(QueryParameterError, match="NUL"):
        await pool.execute("DELETE FROM t\x00 WHERE id = 1")
    assert "DELETE" not in " ".join(_sent(fake))
    assert (await pool.execute("SELECT 1")).row == {"?column?": 1}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ([1, {1, 2}], "index 1 has type set"),
        ({"a": 1, "b": object()}, "key 'b' has type object"),
        (["ok", "nul\x00"], "index 1 contains a NUL"),
    ],
)
async def test_unadaptable_parameter_is_named(params: object, named: str) -> None:
    """A parameter psycopg2 cannot adapt is named by index or key with its type; nothing is
    sent and the pool stays healthy (real psycopg2 adaptation, fake transport)."""
    from pgpool_core._statements import _bad_parameter

    with pytest.raises(psycopg2.ProgrammingError) as raised:
        psycopg2.extensions.adapt(object())
    assert named in _bad_parameter(params, raised.value)


@pytest.mark.parametrize("bad", ["5", True, float("nan"), float("inf"), 0, -1, [1]])
async def test_bad_timeouts_are_settings_errors_everywhere(
    pool: PoolManager, fake: FakeConnector, bad: object
) -> None:
    """A non-numeric, boolean or non-positive timeout is a SettingsError naming timeout, per
    call and in transaction()/connector(); nothing is sent, the pool stays usable."""
    calls = [
        lambda: pool.execute("SELECT 1", timeout=bad),  # type: ignore[arg-type]
        lambda: pool.callproc("f", timeout=bad),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(SettingsError, match="timeout"):
            await call()
    for context in (pool.transaction, pool.connector):
        with pytest.raises(SettingsError, match="timeout"):
            async with context(timeout=bad):  # type: ignore[operator]
                pass
    async with pool.connector() as connector:
        with pytest.raises(SettingsError, match="timeout"):
            await connector.execute("SELECT 1", timeout=bad)  # type: ignore[arg-type]
    assert _sent(fake) == []
    assert (await pool.execute("SELECT 1")).row == {"?column?": 1}


async def test_unreadable_result_is_a_query_result_error(
    pool: PoolManager, fake: FakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion failure after the statement completed is not passed off as a driver
    error: QueryResultError says the statement ran; the connection is reused."""
    await pool.execute("SELECT 1")
    conn = _conn(fake)

    def unreadable() -> object:
        raise ValueError("year 10000 is out of range")

    monkeypatch.setattr(conn, "result", unreadable)
    with pytest.raises(QueryResultError, match="completed on the server"):
        await pool.execute("INSERT INTO t VALUES (1) RETURNING d")
    monkeypatch.undo()
    assert (await pool.execute("SELECT 1")).row == {"?column?": 1}
    assert len(fake.connections) == 1


# -- BEGIN travels with the first statement ------------------------------------------------


async def test_begin_goes_with_the_first_statement(pool: PoolManager, fake: FakeConnector) -> None:
    """Two round trips for BEGIN / UPDATE / COMMIT: BEGIN rides in the UPDATE's message."""
    async with pool.transaction() as tx:
        result = await tx.execute("UPDATE t SET x = %s", [1])
        await tx.execute("INSERT INTO t VALUES (2)")
    assert result.row_count == 0
    assert _conn(fake).messages == [
        "BEGIN; UPDATE t SET x = %s",
        "INSERT INTO t VALUES (2)",
        "COMMIT",
    ]


async def test_transaction_without_statements_sends_nothing(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """Nothing ran, so nothing is sent (no BEGIN, no COMMIT) and the block returns; a block
    that raises before its first statement has nothing to roll back either."""
    async with pool.transaction():
        pass
    with pytest.raises(RuntimeError, match="early"):
        async with pool.transaction():
            raise RuntimeError("early")
    assert [m for conn in fake.connections for m in conn.messages] == []


async def test_callproc_first_sends_begin_on_its_own(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """A procedure call cannot share its message: BEGIN goes first, alone."""
    async with pool.transaction() as tx:
        await tx.callproc("do_work", [1])
    assert _conn(fake).messages[0] == "BEGIN"
    assert _conn(fake).messages[-1] == "COMMIT"


async def test_begin_waits_for_a_statement_that_is_sent(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """A first statement refused before sending (a NUL in its text) takes nothing with it:
    the BEGIN goes with the next statement that is sent."""
    async with pool.transaction() as tx:
        with pytest.raises(QueryParameterError, match="nothing was sent"):
            await tx.execute("UPDATE t SET x = 1\x00")
        await tx.execute("UPDATE t SET x = %s", [2])
    assert _conn(fake).messages == ["BEGIN; UPDATE t SET x = %s", "COMMIT"]


async def test_first_statement_with_a_syntax_error_is_retried_inside_the_transaction(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """The server rejects a message with a syntax error whole (its BEGIN too): BEGIN is
    sent alone, then the statement again, which fails inside the transaction (aborting
    it), as without the shortcut."""
    fake.on("^SELEC ", error=psycopg2.errors.SyntaxError("syntax error at or near SELEC"))
    with pytest.raises(psycopg2.errors.SyntaxError):
        async with pool.transaction() as tx:
            await tx.execute("SELEC 1")
    assert _conn(fake).messages == ["BEGIN; SELEC 1", "BEGIN", "SELEC 1", "ROLLBACK"]


async def test_swallowed_timeout_before_the_first_statement_is_not_a_commit(
    pool: PoolManager, fake: FakeConnector, clock: Clock
) -> None:
    """The transaction's budget is gone before its first statement is sent ("nothing was
    sent"), and an on_error hook swallows that: leaving the block still says the transaction
    did not happen (nothing of it ran), never returns as if it had committed."""
    seen: list[str] = []

    def swallow(name: str, exc: Exception) -> None:
        seen.append(f"{name}:{type(exc).__name__}")

    async def body() -> None:
        async with pool.connector(on_error=swallow, timeout=1.0) as c, c.transaction():
            clock.now += 2
            await c.execute("INSERT INTO t VALUES (1)", metric_name="insert")

    with pytest.raises(TransactionRolledBackError, match="ran out of time"):
        await body()
    assert seen == ["insert:QueryTimeoutError", "postgres_transaction:TransactionRolledBackError"]
    assert [m for conn in fake.connections for m in conn.messages] == []


async def test_deadline_between_a_rejected_first_message_and_its_replay(
    pool: PoolManager, fake: FakeConnector, clock: Clock
) -> None:
    """The first message (BEGIN with a syntax error) is rejected whole; the deadline passes
    before the replay's BEGIN is sent. Nothing ran on the server: the block reports a
    rollback (the timeout), not an unknown commit."""
    fake.on("^SELEC ", error=psycopg2.errors.SyntaxError("syntax error at or near SELEC"))

    async def body() -> None:
        async with pool.transaction(timeout=5) as tx:
            conn: Any = tx._slot.conn
            send = conn.send

            def late(sql: str, params: Any, **kw: Any) -> Any:
                future = send(sql, params, **kw)
                if sql.startswith("BEGIN; SELEC"):
                    clock.now += 10  # the deadline passes while the answer travels
                return future

            conn.send = late
            with contextlib.suppress(QueryTimeoutError):
                await tx.execute("SELEC 1")

    with pytest.raises(TransactionRolledBackError, match="ran out of time"):
        await body()
    assert _conn(fake).messages == ["BEGIN; SELEC 1"]


async def test_first_message_rejected_after_its_timeout_is_no_unknown_commit(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """The deadline fires while the first message (BEGIN with a syntax error) is in flight;
    its answer then leaves the connection idle: the server ran nothing of the block, which
    leaving it reports as rolled back (not as a COMMIT of unknown outcome)."""
    gate = asyncio.Event()
    fake.on("^SELEC ", error=psycopg2.errors.SyntaxError("syntax error"), gate=gate)

    async def body() -> None:
        async with pool.connector(on_error=lambda _n, _e: None) as c, c.transaction():
            await c.execute("SELEC 1", timeout=0.05)  # the timeout, swallowed
            gate.set()
            await until(lambda: not _conn(fake).is_busy())

    with pytest.raises(TransactionRolledBackError, match="ran out of time"):
        await body()
    assert "COMMIT" not in _sent(fake)


async def test_a_second_task_on_the_connector_cannot_skip_the_pending_begin(
    pool: PoolManager, fake: FakeConnector
) -> None:
    """Two tasks on one connector (unsupported): the pending BEGIN is read and sent with no
    yield in between, so the second task's statement never goes out on its own as an
    autocommitted one."""
    fake.on("^SELECT 2", instant=True)
    async with pool.connector() as c:
        await c.execute("SELECT 2")  # answered at once: this task yields before its next send
        with contextlib.suppress(Exception):
            async with c.transaction():
                other = asyncio.ensure_future(c.execute("INSERT INTO t VALUES ('b')"))
                with contextlib.suppress(RuntimeError, QueryParameterError):
                    await c.execute("INSERT INTO t VALUES ('a')")
                with contextlib.suppress(RuntimeError, QueryParameterError):
                    await other
    assert "INSERT INTO t VALUES ('b')" not in _conn(fake).messages


async def test_a_connector_block_is_entered_once(pool: PoolManager) -> None:
    """Entering the same block object again is refused before anything is checked out (it
    would lose track of the first connection)."""
    block = pool.connector()
    async with block:
        with pytest.raises(TransactionUsageError, match="already entered"):
            async with block:
                pass
    stats = pool.stats()
    assert stats["pool_available"] == stats["pool_size"]
