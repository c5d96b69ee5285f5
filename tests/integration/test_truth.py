"""What the pool reports is what happened on the server: each case checks the rows and
pg_stat_activity afterwards, not only the exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import (
    CommitUnknownError,
    ErrorKind,
    PoolManager,
    PoolState,
    QueryParameterError,
    QueryResultError,
    QueryTimeoutError,
    SettingsError,
    TransactionRolledBackError,
    TransactionUsageError,
    classify,
    sqlstate,
)
from pgpool_core.testing import PostgresServer, TcpProxy

from db_support import database_of, wait_for_condition

SCHEMA = """
CREATE TABLE truth (token text PRIMARY KEY);
INSERT INTO truth VALUES ('taken');
CREATE TABLE slow (token text);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
-- A deferred trigger runs at COMMIT: a row in "slow" makes COMMIT itself take 0.3 s.
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


@pytest.fixture
async def url(postgres_db_url: str) -> str:
    with psycopg2.connect(postgres_db_url) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    conn.close()
    return postgres_db_url


@pytest.fixture
async def pool(url: str) -> AsyncIterator[PoolManager]:
    async with PoolManager(url, min_size=1, max_size=4, cancel_timeout=3) as manager:
        yield manager


def _tokens(server: PostgresServer, db: str) -> set[str]:
    with server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT token FROM truth")
        return {str(token) for (token,) in cur.fetchall()}


def _states(server: PostgresServer, db: str) -> Counter[str]:
    return Counter(str(row["state"]) for row in server.activity(db))


async def _clean(server: PostgresServer, db: str) -> None:
    """No backend of the database is running a statement or idle in a transaction."""
    await wait_for_condition(
        lambda: (
            not {"active", "idle in transaction", "idle in transaction (aborted)"}
            & set(_states(server, db))
        )
    )


async def test_block_outliving_its_timeout_commits_nothing(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """transaction(timeout=0.2) whose block spends 0.25 s then exits: QueryTimeoutError, and
    the row is NOT on the server (it used to be committed behind the timeout error)."""
    db = database_of(url)

    async def outlive() -> None:
        async with pool.transaction(timeout=0.2) as tx:
            await tx.execute("INSERT INTO truth VALUES ('late')")
            await asyncio.sleep(0.25)  # application work past the deadline

    with pytest.raises(QueryTimeoutError, match="before COMMIT was sent"):
        await outlive()
    assert "late" not in _tokens(postgres_server, db)
    await _clean(postgres_server, db)


async def test_connector_statement_after_its_deadline_is_not_sent(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """connector(timeout=0.2): a DELETE issued after the deadline is not sent; rows stay."""
    db = database_of(url)
    async with pool.connector(timeout=0.2) as connector:
        await connector.execute("SELECT 1")
        await asyncio.sleep(0.25)
        with pytest.raises(QueryTimeoutError, match="nothing was sent"):
            await connector.execute("DELETE FROM truth")
    assert _tokens(postgres_server, db) == {"taken"}


@pytest.mark.parametrize("swallow", ["except", "on_error"])
async def test_swallowed_statement_error_is_reported_as_a_rollback(
    pool: PoolManager, url: str, postgres_server: PostgresServer, swallow: str
) -> None:
    """A unique violation caught by the block (or swallowed by an on_error hook returning
    None) used to end in a silent ROLLBACK reported as success: now
    TransactionRolledBackError naming 23505, and indeed nothing of it is on the server."""
    db = database_of(url)

    async def body() -> None:
        if swallow == "except":
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO truth VALUES ('kept')")
                with contextlib.suppress(psycopg2.errors.UniqueViolation):
                    await tx.execute("INSERT INTO truth VALUES ('taken')")
        else:
            hooked = pool.connector(on_error=lambda _name, _exc: None)
            async with hooked as connector, connector.transaction():
                await connector.execute("INSERT INTO truth VALUES ('kept')")
                await connector.execute("INSERT INTO truth VALUES ('taken')")

    with pytest.raises(TransactionRolledBackError, match="SQLSTATE 23505") as caught:
        await body()
    assert classify(caught.value) is ErrorKind.UNIQUE_VIOLATION
    assert sqlstate(caught.value) == "23505"
    assert "kept" not in _tokens(postgres_server, db)
    await _clean(postgres_server, db)


async def test_commit_cut_by_a_terminated_backend_is_resolved(
    url: str, postgres_server: PostgresServer
) -> None:
    """pg_terminate_backend while COMMIT runs (a deferred trigger makes it slow): without
    resolve the caller gets CommitUnknownError; with it, txid_status says aborted, which
    the rows confirm."""
    db = database_of(url)
    async with PoolManager(url, min_size=0, max_size=2, cancel_timeout=3) as pool:
        for resolve, expected in ((False, CommitUnknownError), (True, TransactionRolledBackError)):
            token = f"terminated-{resolve}"

            async def commit_slowly(token: str = token, resolve: bool = resolve) -> None:
                async with pool.transaction(resolve_commit=resolve) as tx:
                    await tx.execute("INSERT INTO truth VALUES (%s)", [token])
                    await tx.execute("INSERT INTO slow VALUES (%s)", [token])

            task = asyncio.create_task(commit_slowly())
            await wait_for_condition(
                lambda: any(r["query"] == "COMMIT" for r in postgres_server.activity(db))
            )
            postgres_server.terminate_backends(db)
            with pytest.raises(expected):
                await task
            assert token not in _tokens(postgres_server, db)


async def test_commit_whose_answer_was_lost_is_resolved_as_committed(
    url: str, postgres_server: PostgresServer, postgres_proxy: TcpProxy
) -> None:
    """The client's connection is cut (real TCP RST through a proxy) while the server is
    committing; the server finishes the commit. With resolve_commits the pool asks
    txid_status on a new connection and reports the commit, which the rows confirm."""
    db = database_of(url)
    async with PoolManager(
        postgres_proxy.rewrite(url), min_size=0, max_size=2, cancel_timeout=5, resolve_commits=True
    ) as pool:

        async def commit_slowly() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO truth VALUES ('answer-lost')")
                await tx.execute("INSERT INTO slow VALUES ('answer-lost')")

        task = asyncio.create_task(commit_slowly())
        await wait_for_condition(
            lambda: any(r["query"] == "COMMIT" for r in postgres_server.activity(db))
        )
        postgres_proxy.reset()  # the answer to COMMIT can no longer arrive
        await wait_for_condition(lambda: postgres_proxy.open_links == 0)
        postgres_proxy.heal()
        await task  # resolved: committed
    assert "answer-lost" in _tokens(postgres_server, db)


async def test_cancelled_caller_after_commit_was_sent_gets_the_commit_finished(
    url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled while its (slow) COMMIT runs: the pool lets COMMIT finish, logs the outcome
    with the xid, and re-raises the cancellation; the row is there. Cancelled before COMMIT:
    nothing of it is there and no backend is left idle in transaction."""
    caplog.set_level(logging.DEBUG, logger="pgpool")
    db = database_of(url)
    async with PoolManager(url, min_size=0, max_size=2, resolve_commits=True) as pool:

        async def commit_slowly() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO truth VALUES ('cancelled-late')")
                await tx.execute("INSERT INTO slow VALUES ('cancelled-late')")

        task = asyncio.create_task(commit_slowly())
        await wait_for_condition(
            lambda: any(r["query"] == "COMMIT" for r in postgres_server.activity(db))
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "cancelled-late" in _tokens(postgres_server, db)
        assert re.search(
            r"caller cancelled while COMMIT ran \(xid \d+\); the transaction committed", caplog.text
        )

        async def sleep_in_transaction() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO truth VALUES ('cancelled-early')")
                await tx.execute("SELECT pg_sleep(10)")

        task = asyncio.create_task(sleep_in_transaction())
        await wait_for_condition(
            lambda: any("pg_sleep(10)" in str(r["query"]) for r in postgres_server.activity(db))
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _clean(postgres_server, db)
        assert "cancelled-early" not in _tokens(postgres_server, db)


async def test_cancelled_stop_still_stops_and_cancels_the_statement(
    url: str, postgres_server: PostgresServer
) -> None:
    """wait_for(stop(5), 0.3) while pg_sleep(10) runs: the pool still closes, a later stop()
    returns within its own bound, and nothing keeps running on the server."""
    db = database_of(url)
    pool = PoolManager(url, min_size=1, max_size=2)
    await pool.start()
    statement = asyncio.create_task(pool.execute("SELECT pg_sleep(10)"))
    await wait_for_condition(lambda: _states(postgres_server, db)["active"] == 1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(pool.stop(5), 0.3)
    started = time.monotonic()
    await pool.stop(0.2)
    assert time.monotonic() - started < 0.2 + 1.0 + 0.25
    assert pool.state is PoolState.CLOSED
    with pytest.raises(Exception, match="pool stopped before the statement finished"):
        await statement
    await wait_for_condition(lambda: not postgres_server.activity(db), timeout=2.0)


async def test_statements_and_arguments_are_checked_before_sending(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """A NUL in the SQL used to run as 'DELETE FROM truth' (libpq stops at the NUL); an
    unadaptable parameter raised a raw ProgrammingError; timeout='5' a TypeError. Now typed
    errors naming the culprit, nothing sent, the pool healthy."""
    db = database_of(url)
    with pytest.raises(QueryParameterError, match="NUL"):
        await pool.execute("DELETE FROM truth\x00 WHERE token = 'x'")
    with pytest.raises(QueryParameterError, match="index 1 has type set"):
        await pool.execute("SELECT %s, %s", [1, {2}])
    with pytest.raises(QueryParameterError, match="key 'b' has type object"):
        await pool.execute("SELECT %(a)s, %(b)s", {"a": 1, "b": object()})
    for bad in ("5", True):
        with pytest.raises(SettingsError, match="timeout"):
            await pool.execute("DELETE FROM truth", timeout=bad)  # type: ignore[arg-type]
    assert _tokens(postgres_server, db) == {"taken"}
    assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
    assert (await pool.status()).available


# -- the truth test --------------------------------------------------------------------------


@dataclass
class Plan:
    token: str
    timeout: float | None
    work: float  # seconds of "application code" before leaving the block
    error: str  # "", "caught", "hooked" (swallowed by on_error), "raised"
    slow_commit: bool
    cancel_after: float | None
    resolve: bool
    told: str = ""  # committed | rolled back | unknown | cancelled
    xid: int | None = None


def _plan(rng: random.Random, n: int) -> Plan:
    cancel = rng.random() < 0.25
    return Plan(
        token=f"t{n}",
        timeout=rng.choice([None, None, rng.uniform(0.02, 0.4)]),
        work=rng.choice([0.0, 0.0, rng.uniform(0.0, 0.1)]),
        error=rng.choice(["", "", "", "caught", "hooked", "raised"]),
        slow_commit=rng.random() < 0.15,
        cancel_after=rng.uniform(0.0, 0.15) if cancel else None,
        resolve=cancel or rng.random() < 0.5,
    )


async def _run(pool: PoolManager, plan: Plan) -> None:
    async def statements(tx: object) -> None:
        execute = tx.execute  # type: ignore[attr-defined]
        row = (await execute("SELECT txid_current() AS xid")).row
        plan.xid = int(row["xid"])
        await execute("INSERT INTO truth VALUES (%s)", [plan.token])
        if plan.error == "caught":
            with contextlib.suppress(psycopg2.errors.UniqueViolation):
                await execute("INSERT INTO truth VALUES ('taken')")
        elif plan.error in ("hooked", "raised"):
            await execute("INSERT INTO truth VALUES ('taken')")
        if plan.slow_commit:
            await execute("INSERT INTO slow VALUES (%s)", [plan.token])
        if plan.work:
            await asyncio.sleep(plan.work)  # application code between statements and COMMIT

    try:
        if plan.error == "hooked":
            hooked = pool.connector(on_error=lambda _name, _exc: None, timeout=plan.timeout)
            async with hooked as connector, connector.transaction(resolve_commit=plan.resolve):
                await statements(connector)
        else:
            async with pool.transaction(plan.timeout, resolve_commit=plan.resolve) as tx:
                await statements(tx)
    except asyncio.CancelledError:
        plan.told = "cancelled"
        raise
    except CommitUnknownError:
        plan.told = "unknown"
    except Exception:
        plan.told = "rolled back"
    else:
        plan.told = "committed"


async def _terminator(
    server: PostgresServer, db: str, rng: random.Random, stop: asyncio.Event
) -> int:
    """pg_terminate_backend of a random busy backend now and then, COMMITs preferred."""
    killed = 0
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.02, 0.12))  # chaos at random moments, not a wait
        rows = await asyncio.to_thread(server.activity, db)
        busy = [r for r in rows if r["state"] != "idle"]
        committing = [r for r in busy if r["query"] == "COMMIT"]
        victims = committing or busy
        if victims:
            pid = rng.choice(victims)["pid"]
            await asyncio.to_thread(server.query, "SELECT pg_terminate_backend(%s)", [pid])
            killed += 1
    return killed


async def test_truth_reported_outcomes_match_the_server(
    url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Hundreds of concurrent transactions with random deadlines, caller cancellations,
    statement errors (caught, swallowed by a hook, raised) and pg_terminate_backend of busy
    backends: every outcome a caller was told matches the rows on the server; no leaked
    connection, no backend left busy or idle in transaction, stats consistent."""
    caplog.set_level(logging.DEBUG, logger="pgpool")
    seed = int(os.environ.get("PGPOOL_TRUTH_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    db = database_of(url)
    plans = [_plan(rng, n) for n in range(500)]
    stop = asyncio.Event()
    async with PoolManager(
        url, min_size=2, max_size=6, acquire_timeout=20, cancel_timeout=3
    ) as pool:
        chaos = asyncio.create_task(_terminator(postgres_server, db, rng, stop))
        limit = asyncio.Semaphore(12)

        async def one(plan: Plan) -> None:
            async with limit:
                task = asyncio.create_task(_run(pool, plan))
                if plan.cancel_after is not None:
                    asyncio.get_running_loop().call_later(plan.cancel_after, task.cancel)
                try:
                    await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise

        await asyncio.gather(*(one(plan) for plan in plans))
        stop.set()
        killed = await chaos
        await _clean(postgres_server, db)
        await wait_for_condition(
            lambda: pool.stats()["pool_size"] == pool.stats()["pool_available"]
        )
        stats = pool.stats()
        assert stats["requests_waiting"] == 0
        assert (await pool.status()).in_use == 0
        # No backend the pool does not know of (one terminated while idle is still
        # counted until its next checkout finds it dead).
        backends = len(postgres_server.activity(db))
        assert backends <= stats["pool_size"]
        assert stats["pool_size"] <= 6
    _check_told(plans, _tokens(postgres_server, db), caplog.text, f"seed={seed} killed={killed}")
    await wait_for_condition(lambda: not postgres_server.activity(db), timeout=2.0)


def _check_told(plans: list[Plan], present: set[str], log: str, run: str) -> None:
    """Every outcome a caller was told matches the rows on the server; a caller cancelled
    while its COMMIT ran matches the outcome the pool logged for its xid."""
    verdicts = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(
            r"caller cancelled while COMMIT ran \(xid (\d+)\); the transaction (\w+(?: back)?)",
            log,
        )
    }
    mismatches = []
    for plan in plans:
        on_server = plan.token in present
        if plan.told == "committed":
            ok = on_server
        elif plan.told == "rolled back":
            ok = not on_server
        elif plan.told == "unknown":
            ok = not plan.resolve  # with resolve on, a lost COMMIT must be resolved
        else:  # cancelled: before COMMIT was sent nothing commits; after, the log says
            verdict = verdicts.get(plan.xid or -1)
            if verdict in (None, "rolled back"):
                ok = not on_server
            else:
                ok = on_server or verdict == "unknown"
        if not ok:
            mismatches.append((plan, on_server))
    told = Counter(plan.told for plan in plans)
    summary = f"{run} told={dict(told)} cancelled-after-COMMIT={len(verdicts)}"
    print(summary)
    assert not mismatches, f"{summary}: {mismatches[:5]}"
    assert all(told[kind] for kind in ("committed", "rolled back", "cancelled")), summary


async def test_statement_timeout_caught_in_the_block_never_commits(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """A statement times out, the block catches it and goes on while the statement
    completes on the server: the caller was told "rolled back", so nothing of the
    transaction may commit (it used to: COMMIT went out once the statement had finished)."""
    db = database_of(url)

    async def catch_the_timeout() -> None:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO truth VALUES ('before')")
            with contextlib.suppress(QueryTimeoutError):
                await tx.execute("INSERT INTO truth SELECT 'slow' FROM pg_sleep(0.3)", timeout=0.05)
            await asyncio.sleep(0.4)  # application work while the statement completes

    with pytest.raises(TransactionRolledBackError, match="ran out of time"):
        await catch_the_timeout()
    await _clean(postgres_server, db)
    assert _tokens(postgres_server, db) == {"taken"}


async def test_unreadable_result_says_the_statement_ran(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """A result psycopg2 cannot convert (a date past year 9999) used to raise a bare
    ValueError after the INSERT had committed: now QueryResultError says it ran, and the
    row is indeed there; the pool stays healthy."""
    db = database_of(url)
    with pytest.raises(QueryResultError, match="completed on the server") as caught:
        await pool.execute("INSERT INTO truth VALUES ('y10k') RETURNING '10000-01-01'::date AS d")
    assert isinstance(caught.value.__cause__, ValueError)
    assert "y10k" in _tokens(postgres_server, db)
    assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}


# -- BEGIN travels with the first statement ------------------------------------------------


@pytest.mark.parametrize("swallow", ["except", "on_error"])
async def test_first_statement_rejected_whole_still_aborts_the_transaction(
    pool: PoolManager, url: str, postgres_server: PostgresServer, swallow: str
) -> None:
    """BEGIN goes in the same message as the block's first statement. A syntax error makes
    the server reject the whole message, BEGIN included: the pool then runs them one by
    one, so the block is in an aborted transaction exactly as if BEGIN had gone alone. The
    next statement is refused by the server (25P02) instead of autocommitting, and leaving
    the block reports the rollback; nothing is on the server."""
    db = database_of(url)

    async def body() -> None:
        hooks = {"on_error": lambda _name, _exc: None} if swallow == "on_error" else {}
        async with pool.connector(**hooks) as connector, connector.transaction():  # type: ignore[arg-type]
            with contextlib.suppress(psycopg2.errors.SyntaxError):
                await connector.execute("INSRT INTO truth VALUES ('typo')")
            if swallow == "except":
                with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
                    await connector.execute("INSERT INTO truth VALUES ('after')")
            else:
                await connector.execute("INSERT INTO truth VALUES ('after')")

    with pytest.raises(TransactionRolledBackError, match="SQLSTATE 42601"):
        await body()
    assert _tokens(postgres_server, db) == {"taken"}
    await _clean(postgres_server, db)


async def test_first_statement_timeout_rolls_back_on_the_server(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """The first statement (sent with its BEGIN) runs out of time: the caller hears at once
    that the transaction is rolled back, the statement is cancelled on the server, and its
    row never appears."""
    db = database_of(url)
    with pytest.raises(QueryTimeoutError, match="the transaction is rolled back"):
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO truth SELECT 'slow' FROM pg_sleep(2)", timeout=0.2)
    await _clean(postgres_server, db)
    assert _tokens(postgres_server, db) == {"taken"}


async def test_cursor_first_in_a_transaction_runs_inside_it(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """The connector's cursor used before any execute() still runs inside the transaction
    (its first call sends the pending BEGIN): a block that then raises leaves nothing."""
    db = database_of(url)

    async def change_mind() -> None:
        async with pool.transaction() as tx:
            await tx.cursor.execute("INSERT INTO truth VALUES ('via-cursor')")
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await change_mind()
    assert _tokens(postgres_server, db) == {"taken"}
    async with pool.transaction() as tx:
        await tx.cursor.execute("INSERT INTO truth VALUES ('via-cursor')")
    assert _tokens(postgres_server, db) == {"taken", "via-cursor"}
    await _clean(postgres_server, db)


async def test_begin_travels_with_the_first_statement(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """Seen from the server: the transaction started with the message that carried the
    first statement (now(), the transaction's start, equals statement_timestamp(), the
    receipt of the current message: with BEGIN in a message of its own they differ), and
    every statement of the block ran inside the one transaction, which committed."""
    db = database_of(url)
    async with pool.transaction() as tx:
        first = (
            await tx.execute(
                "SELECT now() = statement_timestamp() AS one_message,"
                " pg_current_xact_id_if_assigned() IS NULL AS no_xid_yet"
            )
        ).row
        await tx.execute("INSERT INTO truth VALUES ('one-trip')")
        later = (
            await tx.execute(
                "SELECT now() < statement_timestamp() AS same_transaction,"
                " pg_current_xact_id_if_assigned() IS NOT NULL AS has_xid"
            )
        ).row
    assert first == {"one_message": True, "no_xid_yet": True}
    assert later == {"same_transaction": True, "has_xid": True}
    assert "one-trip" in _tokens(postgres_server, db)
    await _clean(postgres_server, db)


async def test_cursor_taken_before_the_transaction_runs_inside_it(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """A cursor handed out before transaction() cannot know about a pending BEGIN, so
    BEGIN is sent on entering the block: its INSERT is rolled back with the block."""
    db = database_of(url)

    async def body() -> None:
        async with pool.connector() as c:
            cur = c.cursor
            async with c.transaction():
                await cur.execute("INSERT INTO truth VALUES ('early-cursor')")
                raise RuntimeError("roll me back")

    with pytest.raises(RuntimeError, match="roll me back"):
        await body()
    assert _tokens(postgres_server, db) == {"taken"}
    await _clean(postgres_server, db)


async def test_text_that_ends_the_transaction_then_fails_is_run_once_and_reported_unknown(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """A first statement whose text commits the transaction itself and then fails: BEGIN
    goes alone (more than one statement), the text runs once, and the block's error says
    that what the text committed stays committed."""
    db = database_of(url)
    with pytest.raises(CommitUnknownError, match="ended the transaction itself") as caught:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO truth VALUES ('once'); COMMIT; SELECT 1/0")
    assert isinstance(caught.value.__cause__, psycopg2.errors.DivisionByZero)
    assert _tokens(postgres_server, db) == {"taken", "once"}
    await _clean(postgres_server, db)


async def test_begin_waits_while_an_earlier_statement_still_runs(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """An earlier statement of the connector still runs (its caller gave up): the
    transaction's first statement is refused before sending, and its BEGIN stays pending
    for the next statement, which therefore runs inside the transaction and is rolled back
    with it."""
    db = database_of(url)

    async def body() -> None:
        async with pool.connector() as c:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(c.execute("SELECT pg_sleep(0.5)"), 0.1)
            async with c.transaction():
                with pytest.raises(QueryParameterError, match="nothing was sent"):
                    await c.execute("INSERT INTO truth VALUES ('a')")
                await wait_for_condition(lambda: _states(postgres_server, db)["active"] == 0)
                await c.execute("INSERT INTO truth VALUES ('b')")
                raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        await body()
    assert _tokens(postgres_server, db) == {"taken"}
    await _clean(postgres_server, db)


async def test_a_transaction_left_running_blocks_the_next_on_its_connector(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """T1's statement outlives its timeout (the caller hears "rolled back"); the connector
    still holds the connection, busy or in T1's transaction. T2 on that connector is
    refused before sending (it would run inside T1 and commit T1's row); the release at the
    connector's end rolls T1 back."""
    db = database_of(url)
    async with pool.connector() as c:
        with pytest.raises(QueryTimeoutError, match="rolled back"):
            async with c.transaction():
                await c.execute("INSERT INTO truth SELECT 't1' FROM pg_sleep(0.5)", timeout=0.1)
        with pytest.raises(TransactionUsageError, match="nothing was sent"):
            async with c.transaction():
                await c.execute("INSERT INTO truth VALUES ('t2')")
    await _clean(postgres_server, db)
    assert _tokens(postgres_server, db) == {"taken"}


async def test_a_first_message_rejected_after_its_timeout_reports_a_rollback(
    pool: PoolManager, url: str, postgres_server: PostgresServer
) -> None:
    """The first message (BEGIN and a statement the parser needs about a second to reject)
    outlives its timeout; the caller catches that and leaves the block. The server ran
    nothing of it: the report is a rollback, not a COMMIT of unknown outcome."""
    db = database_of(url)
    slow_to_reject = "SELECT " + "1+" * 3_000_000 + ")"

    async def body() -> None:
        async with pool.transaction() as tx:
            with contextlib.suppress(QueryTimeoutError):
                await tx.execute(slow_to_reject, timeout=0.2)
            await wait_for_condition(lambda: _states(postgres_server, db)["active"] == 0)

    with pytest.raises(TransactionRolledBackError):
        await body()
    assert _tokens(postgres_server, db) == {"taken"}
    await _clean(postgres_server, db)
