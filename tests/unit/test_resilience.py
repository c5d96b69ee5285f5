"""Reconnect, fail-fast, configuration errors, leak detection and failover, on the fake."""

from __future__ import annotations

import asyncio
import logging
import math

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import (
    ConfigurationError,
    PoolClosedError,
    PoolManager,
    PoolState,
    PoolUnavailableError,
    RetryPolicy,
)
from pgpool_core.testing import FakeConnector

from fake_support import URL, until


class Backoff:
    """An injected sleep: records reconnect delays and blocks until released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.release = asyncio.Event()
        self.auto = True

    async def __call__(self, seconds: float) -> None:
        if seconds >= 1:  # the maintenance task's interval: park it
            await asyncio.Event().wait()
        self.delays.append(seconds)
        if not self.auto:
            await self.release.wait()
            self.release.clear()
        await asyncio.sleep(0)


def test_retry_policy_is_capped_jittered_and_pure() -> None:
    """Delays grow by the multiplier, never exceed the cap, and jitter only shortens them."""
    policy = RetryPolicy(initial=0.1, multiplier=2.0, maximum=0.5, jitter=0.2)
    assert [policy.next_delay(n, lambda: 0.0) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.next_delay(0, lambda: 0.999) == pytest.approx(0.1 * (1 - 0.2 * 0.999))
    assert policy.next_delay(10_000, lambda: 0.0) == 0.5  # no overflow after an hour down
    assert all(0.4 <= policy.next_delay(n) <= 0.5 for n in range(3, 50))


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 2, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 1.0}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """A policy that could busy-loop or never back off is refused with its values named."""
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


async def test_reconnect_is_single_flight_and_never_gives_up(fake: FakeConnector) -> None:
    """After a failure only one connect runs at a time, with growing delays; after 40
    failed attempts the pool still recovers and serves everyone waiting."""
    backoff = Backoff()
    backoff.auto = False
    fake.fail_next = 40
    pool = PoolManager(URL, connector=fake, min_size=0, max_size=5, sleep=backoff)
    await pool.start()
    try:
        first = [asyncio.create_task(pool.execute("SELECT 1")) for _ in range(5)]
        done = await asyncio.gather(*first, return_exceptions=True)
        assert all(isinstance(r, PoolUnavailableError) for r in done)
        assert pool.state is PoolState.RECONNECTING
        parallel = fake.attempts  # the demand-driven connects before the outage was known
        assert parallel == 5
        await until(lambda: len(backoff.delays) == 1)  # one reconnect task, parked
        assert fake.attempts == 5
        backoff.auto = True
        backoff.release.set()
        await until(lambda: fake.attempts >= 40)
        assert pool.stats()["connections_errors"] == 40
        later = await pool.execute("SELECT 1")
        assert later.row == {"?column?": 1}
        assert pool.state is PoolState.OPEN
        assert backoff.delays == sorted(backoff.delays[:4]) + backoff.delays[4:]
        assert max(backoff.delays) <= RetryPolicy().maximum
        # Single flight: every attempt after the parallel ones came from one task.
        assert len(backoff.delays) == fake.attempts - parallel
    finally:
        await pool.stop(0.1)


async def test_requests_fail_only_on_an_attempt_that_started_after_they_arrived(
    fake: FakeConnector,
) -> None:
    """While down, a request fails with the next failed attempt (fast, redacted cause);
    one that arrives during an attempt waits for the next, and is served if it succeeds."""
    backoff = Backoff()
    fake.fail_next = 1
    fake.failure = psycopg2.OperationalError('could not connect to "app:s3cret@db": refused')
    async with PoolManager(
        URL, connector=fake, min_size=0, acquire_timeout=30, sleep=backoff
    ) as pool:
        with pytest.raises(PoolUnavailableError):
            await pool.execute("SELECT 1")
        backoff.auto = False
        fake.fail_next = 1
        fake.gate = asyncio.Event()
        early = asyncio.create_task(pool.execute("SELECT 1"))  # arrives during the backoff
        await until(lambda: len(backoff.delays) == 1)
        backoff.release.set()
        await until(lambda: fake.attempts == 2)  # the attempt is running (gated)
        late = asyncio.create_task(pool.execute("SELECT 1"))  # arrives during it
        await until(lambda: pool.stats()["requests_waiting"] == 2)
        fake.gate.set()  # the attempt fails
        with pytest.raises(PoolUnavailableError) as info:
            await early
        assert "s3cret" not in str(info.value)
        assert "refused" in str(info.value)
        assert not late.done()
        backoff.release.set()  # next attempt succeeds
        assert (await late).row == {"?column?": 1}


async def test_lazy_start_while_down_then_recover(fake: FakeConnector) -> None:
    """start() succeeds with the database down; status says so without a timeout; the
    pool connects once it can."""
    fake.fail_next = 3
    async with PoolManager(URL, connector=fake, min_size=1, sleep=Backoff()) as pool:
        await until(lambda: pool.state is PoolState.RECONNECTING)
        status = await pool.status()
        assert (status.state, status.available) == ("reconnecting", False)
        assert "connection refused" in (status.last_error or "")
        await until(lambda: pool.state is PoolState.OPEN and pool.stats()["pool_size"] == 1)
        assert (await pool.status()).available


async def test_start_wait_fails_fast_with_configuration_error(fake: FakeConnector) -> None:
    """start(wait=True) raises the typed cause at once and leaves the pool closed."""
    fake.fail_next = 1
    fake.failure = ConfigurationError('password authentication failed for user "app"')
    pool = PoolManager(URL, connector=fake, min_size=1, connect_timeout=30)
    with pytest.raises(ConfigurationError, match="password authentication failed"):
        await pool.start(wait=True)
    assert pool.state is PoolState.CLOSED
    with pytest.raises(PoolClosedError):
        await pool.execute("SELECT 1")


async def test_start_wait_succeeds_when_reachable(fake: FakeConnector) -> None:
    """start(wait=True) returns once a connection works, even with min_size=0."""
    pool = PoolManager(URL, connector=fake, min_size=0)
    await pool.start(wait=True)
    try:
        assert pool.stats()["pool_available"] == 1
    finally:
        await pool.stop()


async def test_wait_ready_times_out_as_unavailable(fake: FakeConnector) -> None:
    """A connect that hangs makes wait_ready raise PoolUnavailableError at its bound."""
    fake.hang = True
    async with PoolManager(URL, connector=fake, min_size=0, connect_timeout=30) as pool:
        with pytest.raises(PoolUnavailableError, match=r"no connection within 0\.050 s"):
            await pool.wait_ready(0.05)


async def test_waiter_expiring_while_down_is_told_unavailable_not_busy(
    fake: FakeConnector,
) -> None:
    """Connects that hang (black hole) make waiters expire with PoolUnavailableError."""
    fake.fail_next = 1
    async with PoolManager(
        URL, connector=fake, min_size=0, acquire_timeout=0.05, connect_timeout=30
    ) as pool:
        with pytest.raises(PoolUnavailableError):
            await pool.execute("SELECT 1")
        fake.hang = True
        with pytest.raises(PoolUnavailableError, match=r"within 0\.050 s"):
            await pool.execute("SELECT 1")


async def test_leak_detection_warns_once_naming_the_holder(
    fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection held past the threshold logs one warning naming the call site."""
    caplog.set_level(logging.WARNING, "pgpool")
    async with PoolManager(URL, connector=fake, min_size=0, leak_detection_threshold=0.01) as pool:
        async with pool.connection():
            for _ in range(200):  # real time must pass: the threshold is wall-clock
                if pool.stats()["leaks_detected"]:
                    break
                await asyncio.sleep(0.005)
        assert pool.stats()["leaks_detected"] == 1
        leaks = [r.getMessage() for r in caplog.records if "leak_detection" in r.getMessage()]
        assert len(leaks) == 1
        assert "test_resilience.py" in leaks[0]
        assert "test_leak_detection" in leaks[0]
        await pool.execute("SELECT 1", metric_name="quick")  # released in time: no report
        assert pool.stats()["leaks_detected"] == 1


async def test_leak_report_names_the_metric(
    fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement running past the threshold is reported by its metric name."""
    caplog.set_level(logging.WARNING, "pgpool")
    gate = asyncio.Event()
    fake.on("pg_sleep", gate=gate)
    async with PoolManager(URL, connector=fake, min_size=0, leak_detection_threshold=0.01) as pool:
        task = asyncio.create_task(pool.execute("SELECT pg_sleep(1)", metric_name="slow-report"))
        for _ in range(200):
            if pool.stats()["leaks_detected"]:
                break
            await asyncio.sleep(0.005)
        gate.set()
        await task
        assert "metric 'slow-report'" in caplog.text


async def test_write_on_read_only_server_drains_the_pool(fake: FakeConnector) -> None:
    """SQLSTATE 25006 retires every connection (idle now, busy on return), once; the next
    request runs on a fresh connection."""
    async with PoolManager(URL, connector=fake, min_size=0, max_size=3) as pool:
        await asyncio.gather(*(pool.execute("SELECT 1") for _ in range(3)))
        assert len(fake.open_connections) >= 2
        fake.on("^INSERT", error=psycopg2.errors.ReadOnlySqlTransaction("read-only"))
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            await pool.execute("INSERT INTO t VALUES (1)")
        assert fake.open_connections == []
        assert pool.stats()["failovers"] == 1
        before = len(fake.connections)
        await pool.execute("SELECT 1")
        assert len(fake.connections) == before + 1


@pytest.mark.parametrize(("reported", "drained"), [(True, True), (None, True), (False, False)])
async def test_read_only_error_drains_only_when_the_server_is_read_only(
    fake: FakeConnector, reported: bool | None, drained: bool
) -> None:
    """25006 means failover only if the server may be read-only: one that reports its
    sessions writable (in_hot_standby and default_transaction_read_only off) refused the
    write for another reason (say, SET TRANSACTION READ ONLY), and keeps its connections."""
    async with PoolManager(URL, connector=fake, min_size=0, max_size=2) as pool:
        await pool.execute("SELECT 1")
        fake.connections[0].read_only_server = reported
        fake.on("^INSERT", error=psycopg2.errors.ReadOnlySqlTransaction("read-only"))
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            await pool.execute("INSERT INTO t VALUES (1)")
        assert pool.stats()["failovers"] == int(drained)
        assert fake.connections[0].closed is drained


async def test_read_only_transaction_write_is_never_a_failover_even_unreported(
    fake: FakeConnector,
) -> None:
    """The pool began the transaction READ ONLY itself: its 25006 is the caller's write,
    even when the server reports nothing (PostgreSQL before 14); a plain write's 25006 on
    the same connection afterwards still drains."""
    async with PoolManager(URL, connector=fake, min_size=0, max_size=2) as pool:
        fake.on("^INSERT", error=psycopg2.errors.ReadOnlySqlTransaction("read-only"))
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            async with pool.transaction(read_only=True) as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
        assert pool.stats()["failovers"] == 0
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            await pool.execute("INSERT INTO t VALUES (2)")
        assert pool.stats()["failovers"] == 1


async def test_stop_while_reconnecting_is_prompt(fake: FakeConnector) -> None:
    """A pool that is retrying stops at once: the reconnect task is cancelled."""
    backoff = Backoff()
    backoff.auto = False
    fake.fail_next = math.inf  # type: ignore[assignment]
    pool = PoolManager(URL, connector=fake, min_size=1, sleep=backoff)
    await pool.start()
    await until(lambda: pool.state is PoolState.RECONNECTING and backoff.delays)
    await asyncio.wait_for(pool.stop(1.0), 1.0)
    assert pool.state is PoolState.CLOSED


async def test_connection_opened_across_a_failover_drain_is_not_used(
    fake: FakeConnector,
) -> None:
    """A connect already in flight when the pool drains for failover may have reached the
    old primary: it is closed on arrival and another one serves the request."""
    async with PoolManager(URL, connector=fake, min_size=0, max_size=2) as pool:
        await pool.execute("SELECT 1")  # connection 1, idle
        held = asyncio.Event()
        fake.on("pg_sleep", gate=held, error=psycopg2.errors.ReadOnlySqlTransaction("r/o"))
        busy = asyncio.create_task(pool.execute("SELECT pg_sleep(1)"))  # holds 1
        await until(lambda: fake.connections[0].statements[-1] == "SELECT pg_sleep(1)")
        fake.gate = asyncio.Event()
        waiting = asyncio.create_task(pool.execute("SELECT 1"))  # connect 2, gated
        await until(lambda: fake.attempts == 2)
        held.set()  # the write fails with 25006 on connection 1: drain, while 2 connects
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            await busy
        fake.gate.set()
        assert (await waiting).row == {"?column?": 1}
        second, third = fake.connections[1], fake.connections[2]
        assert second.closed
        assert second.statements == []
        assert third.statements == ["SELECT 1"]
