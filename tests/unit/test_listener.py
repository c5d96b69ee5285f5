"""Listener against the fake driver: delivery, channels, reconnects, checks, callbacks, close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import ConfigurationError, PoolClosedError, QueryParameterError, RetryPolicy
from pgpool_core._listener import (
    Listener,
    Notification,
    NotificationsMissed,
    listener_connect,
    quote_channel,
)
from pgpool_core.testing import FakeConnection, FakeConnector

from fake_support import until

Event = Notification | NotificationsMissed


class Sleeps:
    """An injected sleep: records each backoff delay and only yields to the loop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make(fake: FakeConnector, sleeps: Sleeps, *channels: str, **options: Any) -> Listener:
    options.setdefault("connect_timeout", 1.0)
    return Listener(
        fake.connect, channels, retry=RetryPolicy(), sleep=sleeps, name="test", **options
    )


async def next_event(events: AsyncIterator[Event], within: float = 5.0) -> Event:
    """The iterator's next event, waited for (bounded)."""
    return await asyncio.wait_for(events.__anext__(), within)


async def test_notifications_arrive_in_order_with_channel_payload_and_pid(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """Every notification reaches on_notify and each iterator, in the order sent."""
    seen: list[Notification] = []
    listener = make(fake, sleeps, "a", "b", on_notify=seen.append)
    await listener.start()
    first, second = aiter(listener), aiter(listener)
    (conn,) = fake.connections
    assert conn.messages == ['LISTEN "a"; LISTEN "b"']
    assert conn.listening == {"a", "b"}
    assert listener.connected
    assert listener.backend_pid == conn.backend_pid

    sent = [("a", "1", 7), ("b", "2", 8), ("a", "3", 7)]
    for channel, payload, pid in sent:
        assert fake.notify(channel, payload, pid) == 1
    expected = [Notification(c, p, pid) for c, p, pid in sent]
    assert [await next_event(first) for _ in sent] == expected
    assert [await next_event(second) for _ in sent] == expected
    assert seen == expected
    await listener.close()


async def test_channel_names_are_quoted_identifiers(fake: FakeConnector, sleeps: Sleeps) -> None:
    """Names are sent as quoted identifiers, matched exactly as written."""
    assert quote_channel('my "chan"') == '"my ""chan"""'
    listener = make(fake, sleeps)
    await listener.start()
    await listener.listen('my "chan"', "Mixed Case", "é" * 31)
    (conn,) = fake.connections
    assert conn.messages[-1] == (
        'LISTEN "my ""chan"""; LISTEN "Mixed Case"; LISTEN "' + "é" * 31 + '"'
    )
    assert conn.listening == {'my "chan"', "Mixed Case", "é" * 31}
    assert listener.channels == frozenset(conn.listening)
    await listener.close()


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 64, "é" * 32, 42])
async def test_invalid_channel_names_raise_before_anything_is_sent(
    fake: FakeConnector, sleeps: Sleeps, bad: Any
) -> None:
    """Empty, NUL, over 63 bytes or not a str: a ValueError naming the parameter."""
    with pytest.raises(QueryParameterError, match="channel") as info:
        make(fake, sleeps, "ok", bad)
    assert isinstance(info.value, ValueError)
    assert fake.attempts == 0
    listener = make(fake, sleeps, "ok")
    await listener.start()
    (conn,) = fake.connections
    sent = list(conn.messages)
    for call in (listener.listen, listener.unlisten):
        with pytest.raises(QueryParameterError, match="channel"):
            await call("fine", bad)
    assert conn.messages == sent
    assert listener.channels == {"ok"}
    await listener.close()


async def test_reconnect_listens_again_and_reports_one_gap(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """A terminated session: what came before is delivered, then one NotificationsMissed,
    then notifications on the new session, which LISTENs on every channel."""
    missed: list[NotificationsMissed] = []
    listener = make(fake, sleeps, "a", on_missed=missed.append)
    await listener.start()
    await listener.listen("b")
    events = aiter(listener)
    old = fake.connections[0]
    fake.notify("a", "before")
    fake.fail_next = 3  # the server is still down for three attempts
    old.terminate()

    assert await next_event(events) == Notification("a", "before", 1)
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    assert gap.lost_at <= gap.restored_at
    assert (
        gap.reason == "OperationalError: FATAL: terminating connection due to administrator command"
    )
    assert missed == [gap]
    assert fake.attempts == 5  # start, three failures, success
    assert len(sleeps.delays) == 4
    assert all(0 < d <= RetryPolicy().maximum for d in sleeps.delays)

    new = fake.open_connections[0]
    assert new is not old
    assert old.closed
    assert new.listening == {"a", "b"}
    assert listener.backend_pid == new.backend_pid
    fake.notify("b", "after")
    assert await next_event(events) == Notification("b", "after", 1)
    assert missed == [gap]
    await listener.close()


async def test_start_while_down_connects_later_and_reports_the_gap(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """start() does not raise for an outage; the listener connects in the background."""
    fake.fail_next = 2
    listener = make(fake, sleeps, "a")
    events = aiter(listener)
    await listener.start()
    assert not listener.connected
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    assert "connection refused" in gap.reason
    assert listener.connected
    assert fake.open_connections[0].listening == {"a"}
    await listener.close()


async def test_start_raises_when_the_configuration_is_refused(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """A refused configuration raises from start(); nothing runs in the background."""
    fake.failure = ConfigurationError("password authentication failed for user app")
    fake.fail_next = 1
    listener = make(fake, sleeps, "a")
    with pytest.raises(ConfigurationError):
        await listener.start()
    assert listener._task is None
    assert fake.attempts == 1
    await listener.start()  # may be retried once fixed
    assert listener.connected
    await listener.close()


@pytest.mark.parametrize("failure", ["hang", "close_connection", "error"])
async def test_a_failing_idle_check_reconnects(
    fake: FakeConnector, sleeps: Sleeps, failure: str
) -> None:
    """After check_interval of silence SELECT 1 must answer within the bound; if it hangs
    or fails the connection is replaced and the gap reported."""
    behaviour: dict[str, Any] = {
        "hang": {"hang": True},
        "close_connection": {"close_connection": True},
        "error": {"error": psycopg2.OperationalError("SSL SYSCALL error: EOF detected")},
    }[failure]
    check = fake.on(r"^SELECT 1", **behaviour)
    listener = make(fake, sleeps, "a", check_interval=0.02, connect_timeout=0.02)
    await listener.start()
    events = aiter(listener)
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    fake.scripts.remove(check)  # the new session's checks pass
    if failure == "hang":
        assert "no answer from the server within 0.020 s" in gap.reason
    old, new = fake.connections[0], fake.connections[1]
    assert old.closed
    assert old.statements[-1] == "SELECT 1"
    assert new.listening == {"a"}
    await until(lambda: new.statements.count("SELECT 1") >= 2)
    assert not new.closed
    assert listener.connected
    fake.notify("a", "x")
    assert await next_event(events) == Notification("a", "x", 1)
    await listener.close()


async def test_quiet_connection_is_checked_and_kept(fake: FakeConnector, sleeps: Sleeps) -> None:
    """Checks that pass keep the connection; keepalives follow check_interval."""
    listener = make(fake, sleeps, "a", check_interval=0.01, connect_timeout=1.0)
    await listener.start()
    (conn,) = fake.connections
    assert conn.keepalives == (1, 1, 3)
    await until(lambda: conn.statements.count("SELECT 1") >= 3)
    assert fake.attempts == 1
    assert listener.connected
    await listener.close()
    slow = make(fake, sleeps, check_interval=30.0)
    await slow.start()
    assert fake.connections[-1].keepalives == (30, 10, 3)
    await slow.close()


async def test_notifications_during_a_check_are_not_lost(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """A notification arriving while SELECT 1 runs is delivered after it."""
    gate = asyncio.Event()
    fake.on(r"^SELECT 1", gate=gate)
    listener = make(fake, sleeps, "a", check_interval=0.01, connect_timeout=5.0)
    await listener.start()
    events = aiter(listener)
    (conn,) = fake.connections
    await until(conn.is_busy)
    fake.notify("a", "during")
    gate.set()
    assert await next_event(events) == Notification("a", "during", 1)
    assert not conn.closed
    await listener.close()


async def test_callback_exceptions_are_logged_and_delivery_goes_on(
    fake: FakeConnector, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    """on_notify / on_missed raising (or their coroutines failing) stops nothing; the log
    names the callback and masks passwords."""
    calls: list[Event] = []

    def on_notify(event: Notification) -> None:
        calls.append(event)
        if event.payload == "boom":
            raise ValueError("cannot reach postgresql://app:s3cret@db/main")

    async def on_missed(event: NotificationsMissed) -> None:
        calls.append(event)
        raise RuntimeError("async boom")

    listener = make(fake, sleeps, "a", on_notify=on_notify, on_missed=on_missed)
    await listener.start()
    events = aiter(listener)
    fake.notify("a", "boom")
    fake.notify("a", "fine")
    assert [await next_event(events) for _ in range(2)] == calls
    fake.connections[0].terminate()
    assert isinstance(await next_event(events), NotificationsMissed)
    fake.notify("a", "later")
    assert await next_event(events) == Notification("a", "later", 1)
    await until(lambda: "async boom" in caplog.text)
    assert [type(c).__name__ for c in calls] == [
        "Notification",
        "Notification",
        "NotificationsMissed",
        "Notification",
    ]
    assert "on_notify raised ValueError: cannot reach postgresql://app:***@db/main" in caplog.text
    assert "on_missed raised RuntimeError: async boom" in caplog.text
    assert "s3cret" not in caplog.text
    assert all(r.name == "pgpool.listener" for r in caplog.records)
    assert "listener_callback_failed" in {getattr(r, "event", None) for r in caplog.records}
    await listener.close()


async def test_unlisten_stops_delivery_of_those_channels(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """After unlisten() returns, nothing of those channels is delivered, even what was
    already received; other channels go on."""
    listener = make(fake, sleeps, "a", "b")
    await listener.start()
    events = aiter(listener)
    (conn,) = fake.connections
    conn.notify("a", "received, not yet delivered")
    await listener.unlisten("a", "never-listened")
    await listener.unlisten()
    assert conn.messages[-1] == 'UNLISTEN "a"'
    assert conn.listening == {"b"}
    assert listener.channels == {"b"}
    fake.notify("b", "kept")
    assert await next_event(events) == Notification("b", "kept", 1)
    conn.terminate()
    assert isinstance(await next_event(events), NotificationsMissed)
    assert fake.open_connections[0].listening == {"b"}
    await listener.close()


async def test_listen_while_disconnected_is_remembered(fake: FakeConnector, sleeps: Sleeps) -> None:
    """listen() before start() or during an outage LISTENs once connected."""
    listener = make(fake, sleeps, "a")
    await listener.listen("early")
    assert fake.attempts == 0
    await listener.start()
    assert fake.connections[0].listening == {"a", "early"}
    gate = asyncio.Event()
    fake.gate = gate
    events = aiter(listener)
    fake.connections[0].terminate()
    await until(lambda: fake.attempts == 2)
    await listener.listen("during")
    gate.set()
    assert isinstance(await next_event(events), NotificationsMissed)
    assert fake.open_connections[0].listening == {"a", "early", "during"}
    await listener.close()


async def test_listen_refused_by_the_server_raises_and_is_not_kept(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """A LISTEN the server refuses raises the driver's error; the channel is not kept."""
    listener = make(fake, sleeps, "a")
    await listener.start()
    fake.on(r"LISTEN", error=psycopg2.errors.ReadOnlySqlTransaction("cannot execute LISTEN"))
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        await listener.listen("b")
    assert listener.channels == {"a"}
    assert fake.connections[0].listening == {"a"}
    assert listener.connected
    await listener.close()


async def test_close_ends_iterators_and_the_background_task(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """close() sends UNLISTEN *, closes the connection, ends pending iterators after the
    events they hold, stops the task; it is idempotent and listeners do not reopen."""
    listener = make(fake, sleeps, "a")
    await listener.start()
    task = listener._task
    assert task is not None
    events = aiter(listener)
    received: list[Event] = []

    subscribed = aiter(listener)  # events count from here, not from the task's start

    async def consume() -> None:
        async for event in subscribed:
            received.append(event)

    consumer = asyncio.create_task(consume())
    fake.notify("a", "last")
    await until(lambda: received)
    (conn,) = fake.connections
    await listener.close()
    await listener.close()
    assert conn.closed
    assert conn.messages[-1] == "UNLISTEN *"
    assert task.done()
    assert not listener.connected
    await asyncio.wait_for(consumer, 5)
    assert received == [Notification("a", "last", 1)]
    assert await next_event(events) == Notification("a", "last", 1)
    for _ in range(2):
        with pytest.raises(StopAsyncIteration):
            await next_event(events)
    with pytest.raises(StopAsyncIteration):
        await next_event(aiter(listener))
    with pytest.raises(PoolClosedError):
        await listener.listen("b")
    with pytest.raises(PoolClosedError):
        await listener.start()


@pytest.mark.parametrize("where", ["check", "connect", "backoff"])
async def test_close_is_bounded_whatever_the_listener_waits_for(
    fake: FakeConnector, sleeps: Sleeps, where: str
) -> None:
    """close() returns within its timeout with a check hanging, a connect hanging, or a
    backoff under way, and leaves no connection open."""
    loop = asyncio.get_running_loop()
    listener = make(fake, sleeps, "a", check_interval=0.01, connect_timeout=30.0)
    if where == "check":
        fake.on(r"^SELECT 1", hang=True, ignore_cancel=True)
    await listener.start()
    conn = fake.connections[0]
    if where == "check":
        await until(conn.is_busy)
    elif where == "connect":
        fake.hang = True
        conn.terminate()
        await until(lambda: fake.attempts == 2)
    else:
        never = asyncio.Event()

        async def stuck(delay: float) -> None:
            await never.wait()

        listener._sleep = stuck
        conn.terminate()
        await until(lambda: not listener.connected)
    started = loop.time()
    await listener.close(timeout=1.0)
    assert loop.time() - started < 1.0
    assert listener._task is not None
    assert listener._task.done()
    assert not fake.open_connections


async def test_close_during_start_leaves_nothing_open(fake: FakeConnector, sleeps: Sleeps) -> None:
    """A close() while start() connects: start() raises PoolClosedError, nothing stays open."""
    gate = asyncio.Event()
    fake.gate = gate
    listener = make(fake, sleeps, "a")
    starting = asyncio.create_task(listener.start())
    await until(lambda: fake.attempts == 1)
    await listener.close()
    gate.set()
    with pytest.raises(PoolClosedError):
        await starting
    assert not fake.open_connections
    assert listener._task is None


async def test_close_during_a_failing_start_starts_nothing(
    fake: FakeConnector, sleeps: Sleeps
) -> None:
    """A close() while start()'s first connect fails: no background task is left."""
    gate = asyncio.Event()
    fake.gate, fake.fail_next = gate, 1
    listener = make(fake, sleeps, "a")
    starting = asyncio.create_task(listener.start())
    await until(lambda: fake.attempts == 1)
    await listener.close()
    gate.set()
    await asyncio.wait_for(starting, 5)
    assert listener._task is None
    assert fake.attempts == 1


async def test_listener_connect_refuses_connections_without_notifications() -> None:
    """A connector whose connections cannot deliver notifications is a configuration error."""

    class Plain:
        closed = False

        def close(self) -> None:
            self.closed = True

    class PlainConnector:
        def __init__(self) -> None:
            self.conn = Plain()

        async def connect(self, timeout: float) -> Any:
            return self.conn

    plain = PlainConnector()
    with pytest.raises(ConfigurationError, match="cannot deliver notifications"):
        await listener_connect(plain)(1.0)
    assert plain.conn.closed
    fake = FakeConnector()
    assert isinstance(await listener_connect(fake)(1.0), FakeConnection)


async def test_settings_are_checked(fake: FakeConnector, sleeps: Sleeps) -> None:
    """Non-positive timeouts are refused naming the setting."""
    with pytest.raises(ValueError, match="check_interval"):
        make(fake, sleeps, check_interval=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        make(fake, sleeps, connect_timeout=-1)
    assert make(fake, sleeps, "one-channel").channels == {"one-channel"}


async def test_lost_connection_is_logged_without_secrets(
    fake: FakeConnector, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    """The loss and the recovery are logged under "pgpool"; the reason masks passwords."""
    caplog.set_level(logging.DEBUG, logger="pgpool")
    fake.failure = psycopg2.OperationalError("cannot connect: password=s3cret host=db")
    listener = make(fake, sleeps, "a")
    await listener.start()
    events = aiter(listener)
    fake.fail_next = 1
    fake.connections[0].terminate()
    gap = await next_event(events)
    assert isinstance(gap, NotificationsMissed)
    assert "connection lost" in caplog.text
    assert "listening again" in caplog.text
    assert "password=***" in caplog.text
    assert "s3cret" not in caplog.text
    await listener.close()
