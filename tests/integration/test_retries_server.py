"""Safe retries on a real PostgreSQL: conflicting SERIALIZABLE transactions both commit
through run_transaction; a backend terminated under an idempotent read is invisible."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg2.errors
import pytest

from pgpool_core import PoolManager, PostgresConnector
from pgpool_core.testing import PostgresServer

from db_support import database_of, wait_for_condition


@pytest.fixture
async def pool(postgres_db_url: str) -> AsyncIterator[PoolManager]:
    async with PoolManager(postgres_db_url, min_size=2, max_size=4) as manager:
        await manager.execute("CREATE TABLE doctors (name text PRIMARY KEY, on_call bool)")
        await manager.execute("INSERT INTO doctors VALUES ('alice', true), ('bob', true)")
        yield manager


async def test_conflicting_serializable_transactions_both_commit_through_retries(
    pool: PoolManager, postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    """Write skew: each takes one doctor off call if another is on call. Run together,
    SERIALIZABLE refuses one (40001); its retry sees the other's commit and keeps its
    doctor on call. Both calls return, each attempt's outcome is on the server."""
    read: list[str] = []
    both_read = asyncio.Event()  # asyncio.Barrier is 3.11+
    attempts: dict[str, int] = {"alice": 0, "bob": 0}

    def going_off(name: str):  # type: ignore[no-untyped-def]
        async def work(tx: PostgresConnector) -> bool:
            attempts[name] += 1
            await tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            row = (await tx.execute("SELECT count(*) AS n FROM doctors WHERE on_call")).row
            if attempts[name] == 1:  # the first attempts overlap
                read.append(name)
                if len(read) == 2:
                    both_read.set()
                await both_read.wait()
            if row is None or row["n"] < 2:
                return False  # stays on call
            await tx.execute("UPDATE doctors SET on_call = false WHERE name = %s", [name])
            return True

        return work

    results = await asyncio.gather(
        pool.run_transaction(going_off("alice"), retries=3),
        pool.run_transaction(going_off("bob"), retries=3),
    )
    assert sorted(results) == [False, True]  # one went off call, the other stayed
    assert sorted(attempts.values()) == [1, 2]  # the refused one ran again
    on_call = (await pool.execute("SELECT count(*) AS n FROM doctors WHERE on_call")).row
    assert on_call == {"n": 1}
    database = database_of(postgres_db_url)
    assert not [
        a for a in postgres_server.activity(database) if a["state"] == "idle in transaction"
    ]


async def test_retries_exhausted_raise_the_last_conflict_with_its_attempts(
    pool: PoolManager,
) -> None:
    blocker_ready = asyncio.Event()
    release = asyncio.Event()

    async def hold_lock() -> None:
        async with pool.transaction() as tx:
            await tx.execute("SELECT * FROM doctors WHERE name = 'alice' FOR UPDATE")
            blocker_ready.set()
            await release.wait()

    holder = asyncio.create_task(hold_lock())
    await blocker_ready.wait()

    async def nowait(tx: PostgresConnector) -> None:
        await tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        await tx.execute("SELECT * FROM doctors WHERE name = 'alice' FOR UPDATE NOWAIT")

    with pytest.raises(psycopg2.errors.LockNotAvailable):  # 55P03: not a conflict, no retry
        await pool.run_transaction(nowait, retries=3)
    release.set()
    await holder


async def test_terminated_backend_under_an_idempotent_read_is_invisible(
    pool: PoolManager, postgres_server: PostgresServer, postgres_db_url: str
) -> None:
    database = database_of(postgres_db_url)
    read = asyncio.create_task(
        pool.execute("SELECT pg_sleep(0.3), count(*) AS n FROM doctors", idempotent=True)
    )

    def sleeping() -> bool:
        return any(
            "pg_sleep(0.3)" in (a["query"] or "") for a in postgres_server.activity(database)
        )

    await wait_for_condition(sleeping)
    [victim] = [
        a["pid"]
        for a in postgres_server.activity(database)
        if "pg_sleep(0.3)" in (a["query"] or "")
    ]
    postgres_server.query("SELECT pg_terminate_backend(%s)", [victim])
    result = await read
    assert result.row is not None
    assert result.row["n"] == 2
    # Not marked idempotent: the caller hears what happened.
    plain = asyncio.create_task(pool.execute("SELECT pg_sleep(0.3), 1 AS one"))

    def sleeping_plain() -> bool:
        activity = postgres_server.activity(database)
        return any("1 AS one" in (a["query"] or "") for a in activity)

    await wait_for_condition(sleeping_plain)
    [victim] = [
        a["pid"] for a in postgres_server.activity(database) if "1 AS one" in (a["query"] or "")
    ]
    postgres_server.query("SELECT pg_terminate_backend(%s)", [victim])
    with pytest.raises(psycopg2.OperationalError):
        await plain
    # And on the server: it was not sent again, its backend is gone, nothing is left open.
    activity = postgres_server.activity(database)
    assert victim not in [a["pid"] for a in activity]
    assert not [a for a in activity if "1 AS one" in (a["query"] or "") and a["state"] != "idle"]
    assert all(a["xact_start"] is None for a in activity)
