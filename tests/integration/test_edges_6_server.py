"""Edges found by a hostile review, on a real server: a text ending the transaction
itself is never read as a plain COMMIT or ROLLBACK (and so never retried); a stream whose
consumer is slower than its timeout still commits after its last row."""

from __future__ import annotations

import asyncio

import psycopg2.errors
import pytest

from pgpool_core import CommitUnknownError, PoolManager, PostgresConnector


async def test_a_text_that_commits_then_rolls_back_is_unknown_and_never_retried(
    postgres_db_url: str,
) -> None:
    async with PoolManager(postgres_db_url, min_size=1, max_size=2) as pool:
        await pool.execute("CREATE TABLE a (n int)")
        runs = 0

        async def fn(tx: PostgresConnector) -> None:
            nonlocal runs
            runs += 1
            await tx.execute("SAVEPOINT s")
            with pytest.raises(psycopg2.errors.SerializationFailure):
                await tx.execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
                )
            await tx.execute("ROLLBACK TO SAVEPOINT s; INSERT INTO a VALUES (1); COMMIT; ROLLBACK")

        with pytest.raises(CommitUnknownError, match="several statements"):
            await pool.run_transaction(fn, retries=2)
        assert runs == 1
        assert (await pool.execute("SELECT count(*) AS c FROM a")).row == {"c": 1}


async def test_a_text_ending_in_commit_after_a_rollback_is_not_reported_committed(
    postgres_db_url: str,
) -> None:
    async with PoolManager(postgres_db_url, min_size=1, max_size=2) as pool:
        await pool.execute("CREATE TABLE b (n int)")

        async def block() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO b VALUES (1)")
                await tx.execute("SELECT 1; ROLLBACK; SELECT 2; COMMIT")

        with pytest.raises(CommitUnknownError):
            await block()
        assert (await pool.execute("SELECT count(*) AS c FROM b")).row == {"c": 0}


async def test_a_slow_consumer_of_a_small_stream_still_commits(postgres_db_url: str) -> None:
    async with PoolManager(postgres_db_url, min_size=1) as pool:
        await pool.execute("CREATE TABLE seen (n int)")
        seen = []
        async for row in pool.stream("SELECT n FROM generate_series(1, 5) AS n", timeout=0.5):
            seen.append(row["n"])
            await asyncio.sleep(0.15)  # the consumer's own work: 0.75 s in all
        assert seen == [1, 2, 3, 4, 5]
        assert pool.in_use == 0
