"""The small units the pool is built from, each on its own: no pool, no database."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg2
import pytest

from pgpool_core import PoolSettings, RetryPolicy
from pgpool_core._bag import FAILOVER_DRAIN_INTERVAL, Bag, Slot
from pgpool_core._connector import TxStatus
from pgpool_core._metrics import RECENT_SUCCESS, Health, PoolStatus, Recorder
from pgpool_core._opening import Opener, reconnect
from pgpool_core._returns import needs_restore
from pgpool_core._stopping import OwnedTasks
from pgpool_core.testing import FakeConnector

SECRET = "s3cr#t-pw"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _opener(connector: FakeConnector, clock: Clock, health: Health) -> tuple[Opener, Recorder]:
    recorder = Recorder(subject=None)
    settings = PoolSettings(
        url=f"postgresql://app:{SECRET}@db:5432/main", connect_timeout=2, max_lifetime=100
    )
    opener = Opener(
        connector,
        settings,
        clock=clock,
        jitter=lambda: 0.95,
        recorder=recorder,
        health=health,
        password=None,
    )
    return opener, recorder


async def test_opener_stamps_times_and_counts_a_success() -> None:
    clock = Clock()
    health = Health(clock)
    opener, recorder = _opener(FakeConnector(), clock, health)
    slot = await opener.open(generation=3)
    assert (slot.created, slot.last_used, slot.generation) == (100.0, 100.0, 3)
    assert slot.expires == pytest.approx(100.0 + 95.0)  # max_lifetime jittered down
    assert recorder.counters.connections_num == 1
    assert health.healthy
    assert health.last_success == 100.0


async def test_opener_counts_a_failure_and_describes_it_without_the_password() -> None:
    clock = Clock()
    health = Health(clock)
    failure = psycopg2.OperationalError(f'password authentication failed for "{SECRET}"')
    opener, recorder = _opener(FakeConnector(fail_next=1, failure=failure), clock, health)
    with pytest.raises(psycopg2.OperationalError):
        await opener.open(generation=0)
    assert recorder.counters.connections_errors == 1
    assert recorder.counters.connections_num == 0
    assert not health.healthy
    assert health.last_error is not None
    assert "password authentication failed" in health.last_error
    assert SECRET not in health.last_error
    assert SECRET[:4] not in health.last_error


async def test_reconnect_waits_the_policy_then_stops_at_the_first_success() -> None:
    delays: list[float] = []
    results = iter([False, False, True])
    attempts = 0

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        return next(results)

    policy = RetryPolicy(initial=0.1, multiplier=2, maximum=0.3, jitter=0)
    await reconnect(
        policy, sleep=sleep, rand=lambda: 0.0, down=lambda: True, reserve=lambda: True,
        attempt=attempt,
    )  # fmt: skip
    assert delays == [0.1, 0.2, 0.3]
    assert attempts == 3


async def test_reconnect_ends_when_the_pool_is_up_again_and_skips_a_full_pool() -> None:
    down = [True, True, True, False]  # read before each sleep and after it
    reserved = iter([False])
    attempts = 0

    async def sleep(_seconds: float) -> None:
        pass

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        return False

    await reconnect(
        RetryPolicy(), sleep=sleep, rand=lambda: 0.5, down=lambda: down.pop(0),
        reserve=lambda: next(reserved), attempt=attempt,
    )  # fmt: skip
    assert attempts == 0  # no room the first time; recovered by another connect after
    assert down == []


def test_failover_retires_a_generation_once_per_interval_and_ignores_old_news() -> None:
    bag: Bag[Any] = Bag(min_size=0, max_size=4)
    conn: Any = type("Conn", (), {"closed": False})()
    idle = Slot(conn, 0.0, 1e9, 0.0)
    bag.size = 1
    bag.check_in(idle, 0.0)
    assert bag.failover(generation=0, now=10.0) == [idle]
    assert bag.generation == 1
    # A second write error on the same server within the interval is the same failover.
    assert bag.failover(generation=1, now=10.0 + FAILOVER_DRAIN_INTERVAL / 2) is None
    # A late error from a connection of the retired generation is not news.
    assert bag.failover(generation=0, now=100.0) is None
    assert bag.failover(generation=1, now=10.0 + FAILOVER_DRAIN_INTERVAL) == []
    assert bag.generation == 2


async def test_health_confirm_uses_a_recent_success_then_the_probe() -> None:
    clock = Clock()
    health = Health(clock)
    probes: list[str] = []

    async def ok() -> None:
        probes.append("ok")

    async def broken() -> None:
        probes.append("broken")
        raise psycopg2.OperationalError("server closed the connection")

    health.succeeded()
    assert await health.confirm(broken, all_busy=False)  # recent: no round trip
    assert probes == []
    clock.now += RECENT_SUCCESS
    assert not await health.confirm(broken, all_busy=False)
    assert await health.confirm(ok, all_busy=False)
    assert probes == ["broken", "ok"]
    # Every connection busy: no probe queued behind real work; the latest outcome says.
    health.failed("down")
    assert not await health.confirm(ok, all_busy=True)
    assert probes == ["broken", "ok"]


async def test_health_confirm_lets_the_callers_cancellation_through() -> None:
    health = Health(Clock())

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await health.confirm(cancelled, all_busy=False)


def test_pool_status_of_a_stats_snapshot() -> None:
    stats = {
        "pool_min": 1,
        "pool_max": 4,
        "pool_size": 3,
        "pool_available": 2,
        "requests_waiting": 0,
        "requests_num": 7,
    }
    status = PoolStatus.of(
        stats, state="open", available=True, in_use=1, connecting=0, name="db", last_error=None
    )
    assert (status.pool_size, status.pool_free, status.pool_min, status.pool_max) == (3, 2, 1, 4)
    assert status.counters == {"requests_num": 7}
    assert stats["pool_size"] == 3  # the snapshot itself is left alone


class _Conn:
    def __init__(self, *, busy: bool = False) -> None:
        self._busy = busy

    def is_busy(self) -> bool:
        return self._busy


def test_needs_restore() -> None:
    def slot(conn: _Conn) -> Slot:
        return Slot(conn, 0.0, 1.0, 0.0)  # type: ignore[arg-type]

    idle, intrans, inerror = TxStatus.IDLE, TxStatus.INTRANS, TxStatus.INERROR
    assert not needs_restore(slot(_Conn()), idle, roll_back=True)
    assert needs_restore(slot(_Conn(busy=True)), TxStatus.ACTIVE, roll_back=False)
    assert needs_restore(slot(_Conn()), intrans, roll_back=True)
    assert needs_restore(slot(_Conn()), inerror, roll_back=True)
    assert not needs_restore(slot(_Conn()), inerror, roll_back=False)  # closed instead
    cancelling = slot(_Conn())
    loop = asyncio.new_event_loop()
    try:
        cancelling.cancel_in_flight = loop.create_future()
        assert needs_restore(cancelling, idle, roll_back=False)
    finally:
        loop.close()


async def test_owned_tasks_by_kind_single_flight_reconnect() -> None:
    tasks = OwnedTasks(lambda: "db")
    release = asyncio.Event()
    started = 0

    async def loop() -> None:
        nonlocal started
        started += 1
        await release.wait()

    tasks.reconnect(loop)
    tasks.reconnect(loop)  # already running: not a second loop
    await asyncio.sleep(0)
    assert started == 1
    assert len(tasks.connects) == 1
    (task,) = tasks.connects
    assert task.get_name().startswith("pgpool-reconnect-db-")
    release.set()
    await task  # its set's done callback ran first: it is gone from the set
    assert not tasks.connects
    release.clear()
    tasks.reconnect(loop)  # ended: a new one may start
    await asyncio.sleep(0)
    assert started == 2
    release.set()
    await asyncio.gather(*tasks.connects)
