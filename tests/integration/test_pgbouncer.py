"""The pool behind a real PgBouncer in transaction pooling mode: statements, transactions,
timeouts cancelled through PgBouncer, no session state left behind, a PgBouncer restart,
and warnings for statements that need session state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from pgpool_core import PoolManager, QueryTimeoutError
from pgpool_core.testing import PgBouncer, PostgresServer

from db_support import database_of, wait_for_condition


@pytest.fixture
async def pool(pgbouncer: PgBouncer, postgres_db_url: str) -> AsyncIterator[PoolManager]:
    manager = PoolManager(
        pgbouncer.url_for(postgres_db_url), pgbouncer=True, min_size=1, max_size=4
    )
    await manager.start(wait=True)
    yield manager
    await manager.stop()


async def test_statements_and_transactions_through_pgbouncer(pool: PoolManager) -> None:
    """Rows, a committed transaction and a rolled-back one, all through PgBouncer."""
    await pool.execute("CREATE TABLE t (n int)")
    async with pool.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES (1), (2)")

    async def failing() -> None:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await failing()
    assert (await pool.execute("SELECT array_agg(n ORDER BY n) AS ns FROM t")).row == {"ns": [1, 2]}


async def test_timeout_is_cancelled_through_pgbouncer_and_leaves_no_session_state(
    pool: PoolManager, postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    """A timed-out pg_sleep is cancelled on the server (via PgBouncer's cancel
    forwarding) within 1 s, and no statement_timeout or other setting is left set."""
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        await pool.execute("SELECT pg_sleep(10)", timeout=0.3)
    assert time.monotonic() - started < 0.6
    db = database_of(postgres_db_url)

    def sleep_ended() -> bool:
        running = [r for r in postgres_server.activity(db) if "pg_sleep" in (r["query"] or "")]
        return not running or running[0]["state"] != "active"

    await wait_for_condition(sleep_ended, timeout=1.0)
    assert not [r for r in postgres_server.activity(db) if r["state"] == "active"]
    shown = await asyncio.gather(*(pool.execute("SHOW statement_timeout") for _ in range(8)))
    assert {r.row["statement_timeout"] for r in shown if r.row} == {"0"}


async def test_pool_recovers_after_pgbouncer_restarts(
    pool: PoolManager, pgbouncer: PgBouncer
) -> None:
    """PgBouncer restarted: requests succeed again within 1 s of it being back."""
    assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
    await asyncio.to_thread(pgbouncer.restart)
    back = time.monotonic()
    while True:
        try:
            await pool.execute("SELECT 1")
            break
        except Exception:
            assert time.monotonic() - back < 1.0
    assert time.monotonic() - back < 1.0


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SET search_path = public", "session SET"),
        ("LISTEN jobs", "LISTEN"),
        ("SELECT pg_advisory_lock(42)", "session advisory lock"),
    ],
)
async def test_statements_needing_session_state_warn_once(
    pool: PoolManager, caplog: pytest.LogCaptureFixture, sql: str, kind: str
) -> None:
    """Session SET, LISTEN and session advisory locks warn (once); SET LOCAL does not."""
    caplog.set_level(logging.WARNING, "pgpool")
    async with pool.transaction() as tx:
        await tx.execute("SET LOCAL statement_timeout = 1000")
    assert not caplog.records
    await pool.execute(sql)
    await pool.execute(sql)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert kind in warnings[0]
    if "advisory" in sql:
        await pool.execute("SELECT pg_advisory_unlock_all()")
