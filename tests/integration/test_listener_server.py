"""Listener against a real server: delivery, restart, terminated backend, black-holed
network, close. Each test checks the server side in ``pg_stat_activity``.

The listener connects as a password-protected role with pgpool logging captured at DEBUG;
the password must appear nowhere. Recovery times are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pgpool_core import AiopgConnector, RetryPolicy
from pgpool_core._listener import Listener, Notification, NotificationsMissed, listener_connect
from pgpool_core._redact import describe_error
from pgpool_core.testing import PostgresServer, TcpProxy
from pgpool_core.testing._server import replace_url

from db_support import database_of, wait_for_condition

SECRET = "pw-Listen-3f9a2c"
ROLE = "pgpool_listener"

Event = Notification | NotificationsMissed


def report(name: str, **numbers: float) -> None:
    shown = ", ".join(f"{k}={v:.3f}" for k, v in numbers.items())
    print(f"\n[{name}] {shown}")


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert SECRET not in caplog.text


@pytest.fixture
def app_url(postgres_server: PostgresServer, postgres_db_url: str) -> str:
    """The test database as a role that needs a password."""
    database = database_of(postgres_db_url)
    with postgres_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE])
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(f"{verb} ROLE {ROLE} LOGIN PASSWORD %s", [SECRET])
        cur.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {ROLE}')
    return replace_url(postgres_db_url, user=ROLE, password=SECRET)


class Probe:
    """The server side, seen from a superuser connection: notify, find the listener's
    backend, terminate it."""

    def __init__(self, server: PostgresServer, database: str) -> None:
        self.server = server
        self.database = database
        self.app = f"listener-{uuid.uuid4().hex[:8]}"

    def notify(self, channel: str, payload: str) -> int:
        """pg_notify() from a session of its own (autocommit); that session's pid."""
        with self.server.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), pg_notify(%s, %s)", [channel, payload])
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    def backends(self) -> list[dict[str, Any]]:
        """The listener's backends (by application_name) in pg_stat_activity."""
        rows = self.server.activity(self.database)
        return [row for row in rows if row["application_name"] == self.app]

    def terminate(self, pid: int) -> None:
        self.server.query("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture
def probe(postgres_server: PostgresServer, postgres_db_url: str) -> Probe:
    return Probe(postgres_server, database_of(postgres_db_url))


def make(url: str, probe: Probe, *channels: str, **options: Any) -> tuple[Listener, list[Event]]:
    """A listener on ``url`` named by the probe; its on_missed calls are recorded."""
    missed: list[Event] = []
    connector = AiopgConnector(url, application_name=probe.app)
    options.setdefault("connect_timeout", 2.0)
    listener = Listener(
        listener_connect(connector),
        channels,
        retry=RetryPolicy(),
        on_missed=missed.append,
        name=probe.app,
        describe=lambda exc: connector.redact(describe_error(exc, ())),
        **options,
    )
    return listener, missed


async def next_event(events: AsyncIterator[Event], within: float = 10.0) -> Event:
    return await asyncio.wait_for(events.__anext__(), within)


async def until(condition: Callable[[], bool], within: float) -> float:
    """Re-check local state (bounded) until it holds; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if loop.time() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.005)
    return loop.time() - started


async def assert_round_trip(events: AsyncIterator[Event], probe: Probe, channel: str) -> None:
    """A notification sent now arrives, with the sender's pid, and is the next event."""
    payload = uuid.uuid4().hex
    pid = await asyncio.to_thread(probe.notify, channel, payload)
    assert await next_event(events) == Notification(channel, payload, pid)


async def assert_listening_backend(listener: Listener, probe: Probe, *channels: str) -> int:
    """Exactly one backend of the listener, the one it says, LISTENing (its last statement)."""
    pid = listener.backend_pid
    assert pid is not None

    def only_ours() -> bool:
        return [row["pid"] for row in probe.backends()] == [pid]

    await wait_for_condition(only_ours)
    (row,) = probe.backends()
    assert row["state"] == "idle"
    for channel in channels:
        assert f'LISTEN "{channel}"' in row["query"]
    return pid


async def test_notifications_arrive_with_channel_payload_and_pid(
    app_url: str, probe: Probe
) -> None:
    """pg_notify() from another session reaches the listener with channel, payload and the
    sender's pid; other channels do not; names are matched exactly as written."""
    listener, missed = make(app_url, probe, "jobs", 'Mixed "Case"')
    loop = asyncio.get_running_loop()
    started = loop.time()
    await listener.start()
    connected = loop.time() - started
    events = aiter(listener)
    await assert_listening_backend(listener, probe, "jobs", 'Mixed ""Case""')
    await asyncio.to_thread(probe.notify, "other", "ignored")
    await asyncio.to_thread(probe.notify, "JOBS", "ignored")
    sent = loop.time()
    await assert_round_trip(events, probe, "jobs")
    latency = loop.time() - sent
    await assert_round_trip(events, probe, 'Mixed "Case"')
    await listener.listen("late")
    await assert_round_trip(events, probe, "late")
    await listener.unlisten("late")
    await asyncio.to_thread(probe.notify, "late", "ignored")
    await assert_round_trip(events, probe, "jobs")
    assert missed == []
    await listener.close()
    report("listener-notify", connect=connected, notify_round_trip=latency)


async def test_server_restart_is_recovered_with_one_missed_event(
    restartable_server: PostgresServer, app_url: str, probe: Probe
) -> None:
    """After a real restart the listener LISTENs on a new backend, reports the gap exactly
    once, and notifications sent afterwards arrive."""
    listener, missed = make(app_url, probe, "jobs")
    await listener.start()
    events = aiter(listener)
    old_pid = await assert_listening_backend(listener, probe, "jobs")
    await assert_round_trip(events, probe, "jobs")
    down = time.time()
    await asyncio.to_thread(restartable_server.restart)
    up = time.time()
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    assert gap.lost_at <= down <= up
    assert gap.restored_at >= gap.lost_at
    assert "terminating connection" in gap.reason or "closed" in gap.reason
    await assert_round_trip(events, probe, "jobs")
    assert missed == [gap]
    new_pid = await assert_listening_backend(listener, probe, "jobs")
    assert new_pid != old_pid
    await listener.close()
    report(
        "listener-restart",
        restart=up - down,
        recovery_after_up=gap.restored_at - up,
        window=gap.restored_at - gap.lost_at,
    )


async def test_terminated_backend_is_replaced_with_one_missed_event(
    app_url: str, probe: Probe
) -> None:
    """pg_terminate_backend of the listener's backend: it LISTENs again at once on a new
    backend, reports the gap once, and later notifications arrive."""
    listener, missed = make(app_url, probe, "jobs", "audit")
    await listener.start()
    events = aiter(listener)
    old_pid = await assert_listening_backend(listener, probe, "jobs", "audit")
    killed = time.time()
    await asyncio.to_thread(probe.terminate, old_pid)
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    assert gap.reason.endswith("terminating connection due to administrator command")
    await assert_round_trip(events, probe, "audit")
    await assert_round_trip(events, probe, "jobs")
    assert missed == [gap]
    new_pid = await assert_listening_backend(listener, probe, "jobs", "audit")
    assert new_pid != old_pid
    await listener.close()
    report("listener-terminate", recovery=gap.restored_at - killed)


async def test_black_holed_connection_is_detected_while_idle_and_recovered(
    app_url: str, probe: Probe, postgres_proxy: TcpProxy
) -> None:
    """With the network black-holed while idle, the check finds it within
    check_interval + bound; after heal() the listener is back; a notification sent in
    the gap falls inside the reported window and is never delivered late."""
    check_interval, connect_timeout = 1.0, 0.5
    listener, missed = make(
        postgres_proxy.rewrite(app_url),
        probe,
        "jobs",
        check_interval=check_interval,
        connect_timeout=connect_timeout,
    )
    await listener.start()
    events = aiter(listener)
    old_pid = await assert_listening_backend(listener, probe, "jobs")
    await assert_round_trip(events, probe, "jobs")
    loop = asyncio.get_running_loop()
    holed = loop.time()
    postgres_proxy.blackhole()
    in_gap = time.time()
    await asyncio.to_thread(probe.notify, "jobs", "sent-in-the-gap")
    detected = await until(lambda: not listener.connected, check_interval + connect_timeout + 1)
    accepted = postgres_proxy.accepted
    await until(lambda: postgres_proxy.accepted > accepted, 2.0)  # a reconnect in the hole
    healed = time.time()
    postgres_proxy.heal()
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    assert "no answer" in gap.reason
    assert gap.lost_at <= in_gap <= gap.restored_at
    recovery = gap.restored_at - healed
    assert recovery < connect_timeout + RetryPolicy().maximum + 1
    await assert_round_trip(events, probe, "jobs")  # not "sent-in-the-gap": it is lost
    assert missed == [gap]
    assert await assert_listening_backend(listener, probe) != old_pid  # the old one ended
    await listener.close()
    report(
        "listener-blackhole",
        detect=detected,
        detect_bound=check_interval + connect_timeout,
        recovery_after_heal=recovery,
        since_blackhole=loop.time() - holed,
    )


async def test_close_leaves_no_listener_backend(app_url: str, probe: Probe) -> None:
    """close() is quick and the listener's backend leaves pg_stat_activity."""
    listener, _ = make(app_url, probe, "jobs")
    await listener.start()
    await assert_listening_backend(listener, probe, "jobs")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await listener.close()
    took = loop.time() - started
    assert took < 1.0
    assert not listener.connected
    gone = await wait_for_condition(lambda: not probe.backends())
    report("listener-close", close=took, backend_gone=gone)


async def test_listener_socket_gets_keepalives(app_url: str) -> None:
    """enable_keepalives sets SO_KEEPALIVE and the idle/interval/count on the socket."""
    conn = await AiopgConnector(app_url).connect(5.0)
    try:
        conn.enable_keepalives(7, 2, 4)
        sock = socket.socket(fileno=os.dup(conn._raw.fileno()))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        finally:
            sock.close()
    finally:
        conn.close()
