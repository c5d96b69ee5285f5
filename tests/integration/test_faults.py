"""Fault scenarios against a real server, a real TCP proxy and a stub DNS server.

The scenario ids that test docstrings cite, defined once:

=====  ===========================================================  ==========================
id     scenario                                                     tests
=====  ===========================================================  ==========================
F1     server restart under steady load                             test_faults ``test_f1_*``
F2     every idle backend killed (``pg_terminate_backend``)         test_pool ``test_first_``
                                                                    ``request_after_all_idle_``
                                                                    ``backends_are_killed_*``
F3     server down at start, up later                               test_faults ``test_f3_*``
F4     black-holed network                                          test_faults ``test_f4_*``
F5     calling task cancelled mid-statement                         test_pool ``test_cancelled_``
                                                                    ``caller_*``
F6     client timeout mid-statement                                 test_pool ``test_client_``
                                                                    ``timeout_*``
F7     more long requests than connections (acquire timeouts)       test_faults ``test_f7_*``
F8     bad connection settings and URLs                             test_faults ``test_f8_*``
F9     many transactions, half raising                              test_pool ``test_thousand_*``
F10    stop() with work in flight                                   test_faults ``test_f10_*``
=====  ===========================================================  ==========================

Every test runs as a password-protected role with all pgpool logging captured at DEBUG;
the password must never appear in any of it. Timing numbers are printed (run with -s)
for the record; the assertions are the bounds the pool promises.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import (
    ConfigurationError,
    PoolClosedError,
    PoolManager,
    PoolState,
    PoolTimeoutError,
    PoolUnavailableError,
    SettingsError,
    SrvResolver,
)
from pgpool_core.testing import PostgresServer, TcpProxy, start_first_available
from pgpool_core.testing._server import replace_url

from db_support import database_of, wait_for_condition

SECRET = "pw-Fault-7c1e5d"
ROLE = "pgpool_app"


def report(name: str, **numbers: float) -> None:
    shown = ", ".join(f"{k}={v:.3f}" for k, v in numbers.items())
    print(f"\n[{name}] {shown}")


def grant_app_role(server: PostgresServer, database: str, password: str = SECRET) -> None:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE])
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(f"{verb} ROLE {ROLE} LOGIN PASSWORD %s", [password])
        cur.execute(f'GRANT ALL ON DATABASE "{database}" TO {ROLE}')
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(f"GRANT ALL ON SCHEMA public TO {ROLE}")


@pytest.fixture
def app_url(postgres_server: PostgresServer, postgres_db_url: str) -> str:
    """The test database as a role that needs a password (scram over TCP)."""
    grant_app_role(postgres_server, database_of(postgres_db_url))
    return replace_url(postgres_db_url, user=ROLE, password=SECRET)


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture everything pgpool (and asyncio) logs; the password must appear nowhere."""
    caplog.set_level(logging.DEBUG)
    yield
    assert SECRET not in caplog.text


@dataclass
class Outcome:
    started: float
    ended: float
    error: BaseException | None

    @property
    def took(self) -> float:
        return self.ended - self.started


async def steady_load(
    pool: PoolManager,
    stop: asyncio.Event,
    *,
    workers: int = 4,
    sql: str = "SELECT 1",
    timeout: float | None = None,
) -> list[Outcome]:
    """Requests back to back (5 ms apart per worker) until ``stop``; every outcome."""
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while not stop.is_set():
            started = loop.time()
            error: BaseException | None = None
            try:
                await pool.execute(sql, timeout=timeout)
            except Exception as exc:
                error = exc
            outcomes.append(Outcome(started, loop.time(), error))
            await asyncio.sleep(0.005)  # load shaping, not waiting for anything

    await asyncio.gather(*(worker() for _ in range(workers)))
    return outcomes


def assert_secret_free(*objects: object) -> None:
    leaked = [repr(o) for o in objects if SECRET in str(o) or SECRET in repr(o)]
    assert not leaked


async def test_f1_restart_under_steady_load(
    restartable_server: PostgresServer, app_url: str
) -> None:
    """F1: a server restart under load; every request started once the server accepts
    connections again succeeds, and the first within 1 s."""
    loop = asyncio.get_running_loop()
    async with PoolManager(app_url, min_size=2, max_size=4, acquire_timeout=3) as pool:
        await pool.wait_ready()
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(pool, stop))
        await asyncio.sleep(0.3)  # load runs before the restart
        t_down = loop.time()
        await asyncio.to_thread(restartable_server.restart)
        t_up = loop.time()
        await asyncio.sleep(1.5)  # and after it
        stop.set()
        outcomes = await load
        status = await pool.status()
    after = [o for o in outcomes if o.started >= t_up]
    failed_after = [o.error for o in after if o.error is not None]
    during = [o for o in outcomes if t_down <= o.started < t_up]
    first_ok = min(o.ended for o in after if o.error is None) - t_up
    report(
        "F1",
        outage=t_up - t_down,
        requests_after_up=len(after),
        failures_after_up=len(failed_after),
        failures_during=sum(o.error is not None for o in during),
        first_success_after_up=first_ok,
        slowest_failure=max((o.took for o in outcomes if o.error), default=0.0),
    )
    assert failed_after == []
    assert len(after) > 50
    assert first_ok <= 1.0
    assert_secret_free(status, *(o.error for o in outcomes if o.error))


async def test_f3_down_at_start_then_up(restartable_server: PostgresServer, app_url: str) -> None:
    """F3: start() succeeds with the server down; requests fail fast with
    PoolUnavailableError; the first success comes within 1 s of the server being up."""
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(restartable_server.stop)
    pool = PoolManager(app_url, min_size=1, max_size=4, acquire_timeout=5)
    await pool.start()
    try:
        failures: list[Outcome] = []
        success = loop.create_future()

        async def probe() -> None:
            while True:
                started = loop.time()
                try:
                    await pool.execute("SELECT 1")
                except PoolUnavailableError as exc:
                    failures.append(Outcome(started, loop.time(), exc))
                    continue
                success.set_result(loop.time())
                return

        prober = asyncio.create_task(probe())
        await asyncio.sleep(3.0)  # the outage the scenario asks for
        assert pool.state is PoolState.RECONNECTING
        await asyncio.to_thread(restartable_server.start)
        t_up = loop.time()
        first_ok = await asyncio.wait_for(success, 5) - t_up
        await prober
        slowest = max(o.took for o in failures)
        report("F3", failures=len(failures), slowest_failure=slowest, first_success=first_ok)
        assert len(failures) >= 3
        assert slowest < 1.0  # fail fast: acquire_timeout is 5 s
        assert first_ok <= 1.0
        assert "Connection refused" in str(failures[0].error)
        assert_secret_free(*(o.error for o in failures), await pool.status(), pool.stats())
    finally:
        await pool.stop()


async def test_f4_blackhole_bounds_every_call_and_recovers(
    postgres_server: PostgresServer, app_url: str, postgres_proxy: TcpProxy
) -> None:
    """F4: 10 s of black-holed network: every call returns within acquire + query + 1 s,
    the event loop never stalls, and requests succeed again within 1 s of healing."""
    loop = asyncio.get_running_loop()
    acquire, query = 0.5, 1.0
    bound = acquire + query + 1.0
    pool = PoolManager(
        postgres_proxy.rewrite(app_url),
        min_size=2,
        max_size=4,
        acquire_timeout=acquire,
        query_timeout=query,
        connect_timeout=0.3,
        cancel_timeout=0.5,
    )
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.02)
            lags.append(loop.time() - before - 0.02)

    tick = asyncio.create_task(ticker())
    await pool.start(wait=True)
    try:
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(pool, stop, sql="SELECT pg_sleep(0.05)"))
        await asyncio.sleep(0.3)
        postgres_proxy.blackhole()
        t_hole = loop.time()
        await asyncio.sleep(10.0)  # the partition the scenario asks for
        postgres_proxy.heal()
        t_heal = loop.time()
        await asyncio.sleep(1.5)
        stop.set()
        outcomes = await load
    finally:
        await pool.stop(1.0)
        tick.cancel()
    slowest = max(o.took for o in outcomes)
    in_hole = [o for o in outcomes if t_hole <= o.started < t_heal]
    first_ok = min(o.ended for o in outcomes if o.started >= t_heal and o.error is None) - t_heal
    report(
        "F4",
        calls=len(outcomes),
        calls_in_hole=len(in_hole),
        slowest_call=slowest,
        bound=bound,
        recovery_after_heal=first_ok,
        max_loop_lag=max(lags),
    )
    assert slowest <= bound
    # Nothing gets through the hole: calls that start and end inside it all fail.
    assert all(o.error is not None for o in in_hole if o.ended < t_heal)
    assert first_ok <= 1.0
    assert max(lags) < 0.25
    assert_secret_free(*(o.error for o in outcomes if o.error))
    db = database_of(app_url)
    await wait_for_condition(lambda: not postgres_server.activity(db), timeout=5)


async def test_f7_fifty_long_queries_on_five_connections(
    postgres_server: PostgresServer, app_url: str
) -> None:
    """F7: 50 concurrent pg_sleep(1) on max 5: the first 5 to arrive run, the other 45
    get PoolTimeoutError at acquire_timeout (+-10%), never more than 5 backends."""
    loop = asyncio.get_running_loop()
    db = database_of(app_url)
    async with PoolManager(app_url, min_size=0, max_size=5, acquire_timeout=0.5) as pool:
        peak = 0
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, len(postgres_server.activity(db)))

        sampler = asyncio.create_task(asyncio.to_thread(sample))

        async def one(i: int) -> tuple[int, float, BaseException | None]:
            started = loop.time()
            try:
                await pool.execute("SELECT pg_sleep(1)")
            except PoolTimeoutError as exc:
                return i, loop.time() - started, exc
            return i, loop.time() - started, None

        results = []
        for i in range(50):  # created in order: arrival order is index order
            results.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)
        done = await asyncio.gather(*results)
        sampling = False
        await sampler
    ok = [i for i, _, error in done if error is None]
    waits = [took for _, took, error in done if error is not None]
    report("F7", succeeded=len(ok), min_wait=min(waits), max_wait=max(waits), peak_backends=peak)
    assert ok == [0, 1, 2, 3, 4]
    assert len(waits) == 45
    assert 0.45 <= min(waits) <= max(waits) <= 0.55
    assert peak <= 5


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"password": "wrong-password"}, ConfigurationError, "password authentication failed"),
        ({"database": "no_such_database"}, ConfigurationError, "does not exist"),
        ({"host": "no-such-host.invalid"}, ConfigurationError, "could not translate host name"),
    ],
    ids=["wrong-password", "unknown-database", "unknown-host"],
)
async def test_f8_bad_connection_settings_are_typed_errors(
    app_url: str, change: dict[str, str], error: type[Exception], message: str
) -> None:
    """F8: wrong password, unknown database, unknown host: a typed error naming the
    cause at start(wait=True) and on requests of a lazily started pool, never a timeout;
    a correct pool works right after."""
    host = change.pop("host", None)
    url = replace_url(app_url, **change)
    if host is not None:
        url = url.replace("127.0.0.1", host).replace("localhost", host)
    started = time.monotonic()
    with pytest.raises(error, match=message) as info:
        await PoolManager(url, connect_timeout=5).start(wait=True)
    assert time.monotonic() - started < 2.0
    assert_secret_free(info.value)
    async with PoolManager(url, min_size=0, acquire_timeout=5) as lazy:
        with pytest.raises(error, match=message):
            await lazy.execute("SELECT 1")
        assert_secret_free(await lazy.status(), repr(lazy))
    async with PoolManager(app_url) as good:
        assert (await good.execute("SELECT 1 AS ok")).row == {"ok": 1}


@pytest.mark.parametrize(
    "url",
    ["postgresql://app:pw@db:99999/x", "mysql://app:pw@db/x", "postgresql+srv://a:pw@b:1/c"],
)
def test_f8_invalid_urls_fail_when_the_pool_is_built(url: str) -> None:
    """F8: an invalid URL is a SettingsError at construction, password masked."""
    with pytest.raises(SettingsError, match="url") as info:
        PoolManager(url)
    assert ":pw@" not in str(info.value)


async def test_f10_stop_with_queries_in_flight(
    postgres_server: PostgresServer, app_url: str
) -> None:
    """F10: stop(1.0) refuses new work at once, lets short queries finish, cancels long
    ones server-side, returns within timeout + 1 s and leaves no backend."""
    loop = asyncio.get_running_loop()
    db = database_of(app_url)
    pool = PoolManager(app_url, min_size=0, max_size=6, query_timeout=30)
    await pool.start()
    short = [asyncio.create_task(pool.execute("SELECT pg_sleep(0.3)")) for _ in range(2)]
    long = [asyncio.create_task(pool.execute("SELECT pg_sleep(20)")) for _ in range(4)]
    await wait_for_condition(
        lambda: sum(r["state"] == "active" for r in postgres_server.activity(db)) == 6
    )
    started = loop.time()
    stopping = asyncio.create_task(pool.stop(1.0))
    await asyncio.sleep(0)
    with pytest.raises(PoolClosedError):
        await pool.execute("SELECT 1")
    refused_after = loop.time() - started
    await stopping
    took = loop.time() - started
    short_results = await asyncio.gather(*short, return_exceptions=True)
    long_results = await asyncio.gather(*long, return_exceptions=True)
    left = len(postgres_server.activity(db))
    gone = await wait_for_condition(lambda: not postgres_server.activity(db), timeout=2)
    report("F10", refused_after=refused_after, stop_took=took, backends_at_return=left, gone=gone)
    assert refused_after < 0.05
    assert took <= 2.0
    assert all(not isinstance(r, BaseException) for r in short_results)
    assert all(isinstance(r, BaseException) for r in long_results)
    assert gone < 1.0


async def test_connect_tries_the_next_host_after_a_per_host_deadline(
    app_url: str, postgres_proxy: TcpProxy
) -> None:
    """A black-holed first host costs one connect_timeout, then the second host serves."""
    postgres_proxy.blackhole()
    real = app_url.split("@", 1)[1].split("/", 1)[0]
    url = app_url.replace(real, f"127.0.0.1:{postgres_proxy.port},{real}")
    started = time.monotonic()
    async with PoolManager(url, min_size=0, connect_timeout=0.4) as pool:
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
    took = time.monotonic() - started
    report("per-host", took=took)
    assert 0.4 <= took < 1.2


@pytest.fixture(scope="module")
def second_server() -> Iterator[PostgresServer]:
    server, _ = start_first_available()
    if server is None:
        pytest.skip("no second PostgreSQL server available")
    try:
        yield server
    finally:
        server.close()


def set_read_only(server: PostgresServer, on: bool) -> None:
    """Flip the server's default and wait until new sessions see it (a reload is async)."""
    value = "on" if on else "off"
    server.query(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
    server.query("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while (
        server.query("SHOW default_transaction_read_only")[0]["default_transaction_read_only"]
        != value
    ):
        assert time.monotonic() < deadline, "configuration reload never took effect"
        time.sleep(0.01)  # the server offers no notification for a finished reload


async def test_failover_write_on_standby_drains_and_finds_the_new_primary(
    postgres_server: PostgresServer, postgres_db_url: str, second_server: PostgresServer
) -> None:
    """Two servers behind one multi-host URL with target_session_attrs=read-write: when
    the primary turns read-only and the other one writable, the first write fails with
    25006, the pool drains, and the next write lands on the new primary."""
    db = database_of(postgres_db_url)
    with second_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    for server in (postgres_server, second_server):
        grant_app_role(server, db)
        with server.connect(db) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE marks (n int); GRANT ALL ON marks TO {ROLE}")
    hosts = ",".join(
        s.url.split("@", 1)[1].split("/", 1)[0] for s in (postgres_server, second_server)
    )
    url = f"postgresql://{ROLE}:{SECRET}@{hosts}/{db}?target_session_attrs=read-write"
    set_read_only(second_server, True)
    try:
        async with PoolManager(url, min_size=2, max_size=2) as pool:
            await pool.execute("INSERT INTO marks VALUES (1)")
            set_read_only(postgres_server, True)
            set_read_only(second_server, False)
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                await pool.execute("INSERT INTO marks VALUES (2)")
            await pool.execute("INSERT INTO marks VALUES (3)")
            assert pool.stats()["failovers"] == 1
    finally:
        set_read_only(postgres_server, False)
        set_read_only(second_server, False)
    with second_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT array_agg(n) FROM marks")
        assert cur.fetchone() == ([3],)
    with postgres_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT array_agg(n) FROM marks")
        assert cur.fetchone() == ([1],)


async def test_rotated_password_is_picked_up_at_the_next_connect(
    postgres_server: PostgresServer, app_url: str
) -> None:
    """A password callable (sync or async) is evaluated at each connect: after rotation
    and a terminated backend, the pool reconnects with the new password."""
    current = {"password": SECRET}

    async def password() -> str:
        return current["password"]

    bare = replace_url(app_url, user=ROLE)
    async with PoolManager(bare, password=password, min_size=1, max_size=1) as pool:
        await pool.execute("SELECT 1")
        rotated = SECRET + "-2"
        postgres_server.query(f"ALTER ROLE {ROLE} PASSWORD %s", [rotated])
        current["password"] = rotated
        postgres_server.terminate_backends(database_of(app_url))
        # pg_terminate_backend only signals: wait until the old session is gone.
        await wait_for_condition(lambda: not postgres_server.activity(database_of(app_url)))
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
    async with PoolManager(lambda: replace_url(app_url, password=rotated)) as pool:
        assert (await pool.execute("SELECT current_user AS u")).row == {"u": ROLE}
        assert pool.name.endswith("/" + database_of(app_url))


class StubDns(asyncio.DatagramProtocol):
    """Answers SRV queries from a dict on loopback UDP; NXDOMAIN for anything else."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[int, int, int, str]]] = {}
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        ident = data[:2]
        labels, offset = [], 12
        while data[offset]:
            size = data[offset]
            labels.append(data[offset + 1 : offset + 1 + size].decode())
            offset += size + 1
        question = data[12 : offset + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        answers = self.records.get(name, [])
        flags = 0x8180 if answers else 0x8183
        out = ident + struct.pack(">HHHHH", flags, 1, len(answers), 0, 0) + question
        for priority, weight, port, target in answers:
            encoded = b"".join(bytes([len(part)]) + part.encode() for part in target.split("."))
            rdata = struct.pack(">HHH", priority, weight, port) + encoded + b"\0"
            out += struct.pack(">HHHIH", 0xC00C, 33, 1, 30, len(rdata)) + rdata
        assert self.transport is not None
        self.transport.sendto(out, addr)


@pytest.fixture
async def stub_dns() -> AsyncIterator[tuple[StubDns, SrvResolver]]:
    loop = asyncio.get_running_loop()
    transport, stub = await loop.create_datagram_endpoint(StubDns, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    yield stub, SrvResolver(nameservers=[f"127.0.0.1:{port}"], timeout=1.0)
    transport.close()


async def test_srv_url_resolves_in_priority_order_and_again_on_reconnect(
    postgres_server: PostgresServer,
    app_url: str,
    stub_dns: tuple[StubDns, SrvResolver],
) -> None:
    """postgresql+srv:// queries _<svc>._postgresql.<domain>; the lowest priority (then
    highest weight) host is tried first; records are looked up again on reconnect."""
    from pgpool_core import AiopgConnector

    stub, resolver = stub_dns
    port = int(app_url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as first, TcpProxy("127.0.0.1", port) as second:
        name = "_db._postgresql.example.test"
        stub.records[name] = [
            (20, 1, second.port, "127.0.0.1"),
            (10, 1, first.port, "127.0.0.1"),
        ]
        db = database_of(app_url)
        url = f"postgresql+srv://{ROLE}:{SECRET}@db.example.test/{db}"
        connector = AiopgConnector(url, srv_resolver=resolver)
        async with PoolManager(url, connector=connector, min_size=0, max_size=1) as pool:
            await pool.execute("SELECT 1")
            assert (first.accepted, second.accepted) == (1, 0)
            assert stub.queries == [name]
            stub.records[name] = [(10, 1, second.port, "127.0.0.1")]
            first.reset()  # the old host goes away; the next connect looks up again
            first.refuse()
            # The reset connection is caught at checkout (the server side hung up while
            # it sat idle), so the request itself succeeds on a freshly looked-up host.
            assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
            assert second.accepted == 1
            assert stub.queries == [name, name]


async def test_srv_name_without_records_is_a_configuration_error(
    stub_dns: tuple[StubDns, SrvResolver],
) -> None:
    """No SRV records: a typed ConfigurationError naming the queried name."""
    from pgpool_core import AiopgConnector

    _, resolver = stub_dns
    url = f"postgresql+srv://{ROLE}:{SECRET}@nothing.example.test/db"
    pool = PoolManager(url, connector=AiopgConnector(url, srv_resolver=resolver))
    with pytest.raises(ConfigurationError, match=r"_nothing\._postgresql\.example\.test"):
        await pool.start(wait=True)
