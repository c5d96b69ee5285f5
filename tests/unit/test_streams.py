"""Streaming with fake connections: the cursor's statements, batches, early exits."""

from __future__ import annotations

import gc

import pytest

from pgpool_core import PoolManager, QueryParameterError
from pgpool_core.testing import FakeConnector, Script

from fake_support import URL, until


class Batches:
    """``fake.script_for`` answering each FETCH with the next batch of rows."""

    def __init__(self, fake: FakeConnector, batches: list[list[dict[str, int]]]) -> None:
        self.real, self.batches = fake.script_for, list(batches)
        fake.script_for = self  # type: ignore[method-assign]

    def __call__(self, sql: str) -> Script | None:
        if sql.startswith("FETCH FORWARD"):
            rows = self.batches.pop(0) if self.batches else []
            return Script("FETCH", rows=rows, row_count=len(rows))
        return self.real(sql)


def ran(fake: FakeConnector) -> list[str]:
    return [sql for conn in fake.connections for sql in conn.statements]


def rows(start: int, stop: int) -> list[dict[str, int]]:
    return [{"n": n} for n in range(start, stop)]


async def test_rows_arrive_batch_by_batch_in_one_transaction(fake: FakeConnector) -> None:
    Batches(fake, [rows(0, 3), rows(3, 6), rows(6, 7)])
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        got = [row["n"] async for row in pool.stream("SELECT n FROM t WHERE k = %s", [1], batch=3)]
        assert got == list(range(7))
        assert pool.in_use == 0
    statements = ran(fake)
    assert statements[0] == "BEGIN"
    assert statements[1].startswith("DECLARE pgpool_stream_")
    assert statements[1].endswith("NO SCROLL CURSOR FOR SELECT n FROM t WHERE k = %s")
    assert [s for s in statements if s.startswith("FETCH")] == [
        f"FETCH FORWARD 3 FROM {statements[1].split()[1]}"
    ] * 3
    assert statements[-1] == "COMMIT"


async def test_leaving_early_rolls_back_and_releases(fake: FakeConnector) -> None:
    Batches(fake, [rows(0, 2), rows(2, 4), rows(4, 6)])
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        async with pool.stream("SELECT n FROM t", batch=2) as stream:
            async for row in stream:
                if row["n"] == 2:
                    break
        assert pool.in_use == 0
        assert ran(fake)[-1] == "ROLLBACK"
        # A bare loop left early: released once the loop lets go of the iterator.
        Batches(fake, [rows(0, 2), rows(2, 4)])
        async for row in pool.stream("SELECT n FROM t", batch=2):
            if row["n"] == 1:
                break
        gc.collect()
        await until(lambda: pool.in_use == 0)
        assert ran(fake)[-1] == "ROLLBACK"


async def test_an_error_in_the_consumer_rolls_back(fake: FakeConnector) -> None:
    Batches(fake, [rows(0, 2), rows(2, 4)])

    async def consume(pool: PoolManager) -> None:
        async with pool.stream("SELECT n FROM t", batch=2) as stream:
            async for _row in stream:
                raise RuntimeError("consumer")

    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(RuntimeError, match="consumer"):
            await consume(pool)
        assert pool.in_use == 0
    assert ran(fake)[-1] == "ROLLBACK"


async def test_in_the_callers_transaction_the_cursor_is_closed_and_it_goes_on(
    fake: FakeConnector,
) -> None:
    Batches(fake, [rows(0, 1)])
    async with PoolManager(URL, connector=fake, min_size=0) as pool, pool.transaction() as tx:
        await tx.execute("UPDATE t SET n = n + 1")
        got = [row async for row in tx.stream("SELECT n FROM t", batch=5)]
        await tx.execute("UPDATE t SET n = n - 1")
    assert got == rows(0, 1)
    statements = ran(fake)
    assert statements[-3].startswith("CLOSE pgpool_stream_")
    assert statements[-2:] == ["UPDATE t SET n = n - 1", "COMMIT"]


@pytest.mark.parametrize("batch", [0, -1, 1.5, True, "10"])
async def test_a_bad_batch_is_refused_before_anything_is_sent(
    fake: FakeConnector, batch: object
) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        with pytest.raises(QueryParameterError, match=r"batch: expected an integer >= 1"):
            pool.stream("SELECT 1", batch=batch)  # type: ignore[arg-type]
    assert ran(fake) == []
