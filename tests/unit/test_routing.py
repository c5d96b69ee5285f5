"""Read routing with fake connectors: where reads and writes go, the lag guard, fallback,
read-your-writes sessions, status and metrics per member."""

from __future__ import annotations

import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from pgpool_core import (
    PoolManager,
    PoolSettings,
    PoolState,
    PoolTimeoutError,
    PoolUnavailableError,
    SettingsError,
)
from pgpool_core._routing import LAG_SQL, Readers, Replica
from pgpool_core.testing import FakeConnector

from fake_support import URL


def _connector(lag: float | None = 0.0, *, standby: bool = True) -> FakeConnector:
    connector = FakeConnector()
    connector.on(r"^SELECT 1", rows=[{"?column?": 1}])
    connector.on(r"pg_is_in_recovery", rows=[{"standby": standby, "lag": lag}])
    return connector


def _ran(connector: FakeConnector) -> list[str]:
    """What ran on the connector's connections (the lag samples left out)."""
    return [sql for conn in connector.connections for sql in conn.statements if sql != LAG_SQL]


@dataclass
class Cluster:
    pool: PoolManager
    writer: FakeConnector
    readers: list[FakeConnector] = field(default_factory=list)


async def _cluster(n: int = 2, **options: object) -> Cluster:
    writer = _connector()
    readers = [_connector() for _ in range(n)]
    pool = PoolManager(
        URL,
        connector=writer,
        read_connectors=readers,
        min_size=0,
        max_size=2,
        acquire_timeout=0.2,
        **options,  # type: ignore[arg-type]
    )
    await pool.start()
    await pool.sample_readers()
    return Cluster(pool, writer, readers)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await _cluster()
    yield c
    await c.pool.stop(timeout=0.5)


async def test_reads_go_to_a_reader_and_writes_to_the_writer(cluster: Cluster) -> None:
    await cluster.pool.execute("SELECT 'read'", read_only=True)
    await cluster.pool.execute("UPDATE t SET x = 1")
    await cluster.pool.callproc("f_read", read_only=True)
    reader_sql = [sql for r in cluster.readers for sql in _ran(r)]
    assert "SELECT 'read'" in reader_sql
    assert "UPDATE t SET x = 1" not in reader_sql
    assert "UPDATE t SET x = 1" in _ran(cluster.writer)
    assert "SELECT 'read'" not in _ran(cluster.writer)
    assert any("f_read" in sql for sql in reader_sql)
    assert cluster.pool.stats()["reads_to_writer"] == 0


async def test_without_readers_reads_go_to_the_writer_uncounted(fake: FakeConnector) -> None:
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        await pool.execute("SELECT 'read'", read_only=True)
        assert "SELECT 'read'" in _ran(fake)
        assert pool.readers == ()
        assert pool.stats()["reads_to_writer"] == 0


async def test_least_busy_reader_gets_the_read(cluster: Cluster) -> None:
    """With a connection held on one reader, reads go to the other, every time."""
    first, second = cluster.pool.readers
    async with first.connector():
        for _ in range(5):
            await cluster.pool.execute("SELECT 'x'", read_only=True)
    assert _ran(cluster.readers[1]).count("SELECT 'x'") == 5
    assert "SELECT 'x'" not in _ran(cluster.readers[0])
    assert second.in_use == 0


async def test_read_only_transaction_is_begin_read_only_on_a_reader(cluster: Cluster) -> None:
    """BEGIN READ ONLY, on a reader, and no transaction id even when resolving commits
    (a standby cannot assign one)."""
    async with cluster.pool.transaction(read_only=True, resolve_commit=True) as conn:
        await conn.execute("SELECT 'in tx'")
    reader_sql = [sql for r in cluster.readers for sql in _ran(r)]
    assert reader_sql[-3:] == ["BEGIN READ ONLY", "SELECT 'in tx'", "COMMIT"]
    assert not any("txid_current" in sql for sql in reader_sql)
    async with cluster.pool.transaction() as conn:
        await conn.execute("UPDATE t SET x = 2")
    assert _ran(cluster.writer)[-3:] == ["BEGIN", "UPDATE t SET x = 2", "COMMIT"]


async def test_read_only_transaction_without_readers_is_read_only_on_the_writer(
    fake: FakeConnector,
) -> None:
    pool = PoolManager(URL, connector=fake, min_size=0)
    async with pool, pool.transaction(read_only=True) as conn:
        await conn.execute("SELECT 2")
    assert _ran(fake)[-3:] == ["BEGIN READ ONLY", "SELECT 2", "COMMIT"]


async def test_connector_read_only_pins_a_reader_connection(cluster: Cluster) -> None:
    async with cluster.pool.connector(read_only=True) as conn:
        await conn.execute("SELECT 'a'")
        await conn.execute("SELECT 'b'")
    [used] = [r for r in cluster.readers if "SELECT 'a'" in _ran(r)]
    assert "SELECT 'b'" in _ran(used)
    assert "SELECT 'a'" not in _ran(cluster.writer)


async def test_lagging_reader_is_excluded_and_reads_fall_back() -> None:
    c = await _cluster(1, max_replica_lag=1.0)
    try:
        c.readers[0].on(r"pg_is_in_recovery", rows=[{"standby": True, "lag": 5.0}])
        await c.pool.sample_readers()
        await c.pool.execute("SELECT 'fresh?'", read_only=True)
        assert "SELECT 'fresh?'" in _ran(c.writer)
        assert c.pool.stats()["reads_to_writer"] == 1
        status = await c.pool.status()
        [reader] = status.readers
        assert reader.lag == 5.0
        # The sampled 5 s plus the moments since the sample (its upper bound).
        assert re.fullmatch(r"replay lag 5(\.\d+)? s > max_replica_lag 1 s", str(reader.excluded))
        # Caught up: back on the reader.
        c.readers[0].on(r"pg_is_in_recovery", rows=[{"standby": True, "lag": 0.0}])
        await c.pool.sample_readers()
        await c.pool.execute("SELECT 'again'", read_only=True)
        assert "SELECT 'again'" in _ran(c.readers[0])
        assert (await c.pool.status()).readers[0].excluded is None
    finally:
        await c.pool.stop(timeout=0.5)


async def test_no_fit_reader_without_fallback_is_a_typed_error_naming_why() -> None:
    c = await _cluster(1, max_replica_lag=1.0, read_fallback=False)
    try:
        c.readers[0].on(r"pg_is_in_recovery", rows=[{"standby": True, "lag": 9.0}])
        await c.pool.sample_readers()
        before = len(_ran(c.writer))
        with pytest.raises(
            PoolUnavailableError, match=r"replay lag 9(\.\d+)? s > max_replica_lag 1 s"
        ):
            await c.pool.execute("SELECT 'x'", read_only=True)
        with pytest.raises(PoolUnavailableError, match="read_fallback is off"):
            async with c.pool.transaction(read_only=True):
                pass
        assert len(_ran(c.writer)) == before  # nothing sent anywhere
        assert "SELECT 'x'" not in _ran(c.readers[0])
        # The hook semantics of a checkout failure apply.
        seen: list[str] = []
        result = await c.pool.execute(
            "SELECT 'x'", read_only=True, on_error=lambda name, exc: seen.append(name)
        )
        assert seen == ["postgres_connector"]
        assert result.rows == []
        await c.pool.execute("UPDATE t SET x = 1")  # writes are unaffected
    finally:
        await c.pool.stop(timeout=0.5)


async def test_reader_down_gets_no_reads_and_the_writer_serves_them() -> None:
    writer, reader = _connector(), _connector()
    reader.fail_next = 1_000
    pool = PoolManager(
        URL, connector=writer, read_connectors=[reader], min_size=1, acquire_timeout=0.2
    )
    async with pool:
        await pool.execute("SELECT 'r'", read_only=True)
        assert "SELECT 'r'" in _ran(writer)
        status = await pool.status()
        assert status.readers[0].excluded is not None
        assert status.readers[0].role == "reader"
        assert status.role == "writer"


async def test_session_reads_its_writes_from_the_writer(cluster: Cluster) -> None:
    session = cluster.pool.session()
    await session.execute("SELECT 'before'", read_only=True)
    assert not session.wrote
    async with session.transaction() as conn:
        await conn.execute("INSERT INTO t VALUES (1)")
    assert session.wrote
    await session.execute("SELECT 'after'", read_only=True)
    async with session.transaction(read_only=True) as conn:
        await conn.execute("SELECT 'after, in tx'")
    writer_sql = _ran(cluster.writer)
    reader_sql = [sql for r in cluster.readers for sql in _ran(r)]
    assert "SELECT 'before'" in reader_sql
    assert "SELECT 'after'" in writer_sql
    assert writer_sql[-3:] == ["BEGIN READ ONLY", "SELECT 'after, in tx'", "COMMIT"]
    # Another session (another request) reads from the readers again.
    await cluster.pool.session().execute("SELECT 'other'", read_only=True)
    assert "SELECT 'other'" in [sql for r in cluster.readers for sql in _ran(r)]


async def test_observers_hear_readers_with_their_role(cluster: Cluster) -> None:
    roles: list[tuple[str, str]] = []

    class Observer:
        def connection_created(self, pool: PoolManager, seconds: float) -> None:
            pass

        def connection_waited(self, pool: PoolManager, seconds: float) -> None:
            pass

        def connection_used(self, pool: PoolManager, seconds: float) -> None:
            pass

        def acquire_timed_out(self, pool: PoolManager) -> None:
            pass

        def operation_finished(
            self, pool: PoolManager, seconds: float, error: BaseException | None
        ) -> None:
            roles.append((pool.role, pool.name))

    cluster.pool.add_observer(Observer())
    await cluster.pool.execute("SELECT 'r'", read_only=True)
    await cluster.pool.execute("UPDATE t SET x = 1")
    assert [role for role, _ in roles] == ["reader", "writer"]
    assert roles[0][1] != roles[1][1]


async def test_stop_stops_the_readers(cluster: Cluster) -> None:
    await cluster.pool.stop(timeout=0.5)
    assert all(r.state is PoolState.CLOSED for r in cluster.pool.readers)
    assert all(not r.open_connections for r in cluster.readers)


# -- settings -------------------------------------------------------------------------------


def test_read_url_from_the_environment_one_or_several() -> None:
    one = PoolSettings.from_env({"POSTGRES_READ_URL": "postgresql://r1/db"})
    assert one.read_url == ("postgresql://r1/db",)
    two = PoolSettings.from_env(
        {"POSTGRES_READ_URL": "postgresql://r1/db  postgresql://r2/db?target_session_attrs=any"}
    )
    assert two.read_url == ("postgresql://r1/db", "postgresql://r2/db?target_session_attrs=any")
    dsn = PoolSettings.from_env({"POSTGRES_READ_URL": "host=r1 dbname=db"})
    assert dsn.read_url == ("host=r1 dbname=db",)
    lag = PoolSettings.from_env({"POSTGRES_MAX_REPLICA_LAG": "2.5", "POSTGRES_READ_FALLBACK": "no"})
    assert (lag.max_replica_lag, lag.read_fallback) == (2.5, False)


def test_bad_read_url_names_the_setting_and_no_secret() -> None:
    with pytest.raises(SettingsError) as caught:
        PoolSettings(read_url=("postgresql://r1/db", "postgresql://u:s3cr3t@h:99999/db"))
    assert str(caught.value).startswith("read_url[1]: invalid port")
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(SettingsError, match="max_replica_lag: must be >= 0"):
        PoolSettings(max_replica_lag=-1)


def test_read_urls_are_redacted_everywhere() -> None:
    settings = PoolSettings(url=URL, read_url="postgresql://u:hunter2@r1/db")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.as_dict())
    pool = PoolManager(settings=settings)
    assert "hunter2" not in repr(pool) + pool.readers[0].name + pool.readers[0].server_address
    assert pool.readers[0].server_address == "r1:5432"


# -- the routing unit -----------------------------------------------------------------------


@dataclass
class StubReader:
    name: str
    in_use: int = 0
    state: PoolState = PoolState.OPEN
    last_error: str | None = None
    recycled: int = 0
    row: dict[str, object] = field(default_factory=lambda: {"standby": True, "lag": 0.0})

    def recycle(self) -> None:
        self.recycled += 1

    async def probe(self, sql: str, timeout: float):  # type: ignore[no-untyped-def]
        assert sql == LAG_SQL
        from pgpool_core import QueryResult

        return QueryResult(1, [self.row])


async def test_ties_are_broken_at_random_and_busier_readers_lose() -> None:
    a, b, c = StubReader("a"), StubReader("b"), StubReader("c", in_use=1)
    readers = Readers(
        [Replica(a), Replica(b), Replica(c)],
        max_lag=0,
        fallback=True,
        clock=time.monotonic,
        rand=random.Random(7).random,
    )
    await readers.sample(1.0)
    picks = [readers.pick() for _ in range(200)]
    assert {p.name for p in picks if p} == {"a", "b"}
    assert 60 < sum(p is a for p in picks) < 140


async def test_a_promoted_reader_that_should_be_a_standby_is_recycled_and_excluded() -> None:
    promoted = StubReader("r", row={"standby": False, "lag": None})
    readers = Readers(
        [Replica(promoted, wants_standby=True)], max_lag=0, fallback=True, clock=time.monotonic
    )
    assert readers.pick() is None  # not checked yet: a standby is required
    await readers.sample(1.0)
    assert promoted.recycled == 1
    assert readers.pick() is None
    assert "not a standby" in readers.why_none()
    promoted.row = {"standby": True, "lag": 0.0}  # reconnected to a standby
    await readers.sample(1.0)
    assert readers.pick() is promoted


async def test_a_reader_not_open_is_excluded_with_its_state_and_error() -> None:
    down = StubReader("r", state=PoolState.RECONNECTING, last_error="connection refused")
    readers = Readers([Replica(down)], max_lag=0, fallback=True, clock=time.monotonic)
    await readers.sample(1.0)
    assert readers.pick() is None
    assert readers.why_none() == "r: reconnecting (connection refused)"


@pytest.mark.parametrize(
    "joined",
    [
        "host=127.0.0.1 port=2 dbname=db,postgresql://ro:hunter2@127.0.0.1:3/db",
        "postgresql://r1/db,host=r2 password=hunter2",
        "postgresql://r1/db?application_name=x&options=postgresql://ro:hunter2@r2/db",
    ],
)
def test_urls_run_together_are_refused_naming_the_setting_not_the_secret(joined: str) -> None:
    """libpq would read the second URL into the first one's dbname or a query value, where
    no redaction looks for a password: refused, for url and read_url alike."""
    for build in (lambda: PoolSettings(url=joined), lambda: PoolSettings(read_url=[joined])):
        with pytest.raises(SettingsError) as caught:
            build()
        assert "holds another URL or a password" in str(caught.value)
        assert "hunter2" not in str(caught.value)


def test_several_read_urls_in_one_string_by_spaces_or_commas() -> None:
    settings = PoolSettings(
        read_url="postgresql://a:1,b:2/db?target_session_attrs=standby,postgresql://c/db"
        " postgresql://ro:hunter2@d/db"
    )
    assert settings.read_url == (
        "postgresql://a:1,b:2/db?target_session_attrs=standby",
        "postgresql://c/db",
        "postgresql://ro:hunter2@d/db",
    )
    assert "hunter2" not in repr(settings)


def test_a_reader_url_with_its_own_password_keeps_it() -> None:
    """The writer's password= (say, a rotating one) goes to readers whose URL has none; a
    reader URL with its own credentials keeps them."""

    def rotating() -> str:
        return "writer-secret"

    pool = PoolManager(
        URL,
        password=rotating,
        read_url=["postgresql://ro:own@r1/db", "postgresql://r2/db"],
    )
    own, shared = pool.readers
    assert own._password is None
    assert shared._password is rotating


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


async def test_a_standby_cut_off_from_a_live_writer_is_behind_by_the_writers_clock() -> None:
    """The standby replayed all it received (its own measure says 0), but the writer has
    moved on: it is behind since the writer was first seen past its position."""
    clock, writer = Clock(), {"lsn": 1000}

    async def writer_lsn(_timeout: float) -> int | None:
        return writer["lsn"]

    cut_off = StubReader("r", row={"standby": True, "lag": 0.0, "replayed": _lsn(1000)})
    readers = Readers(
        [Replica(cut_off)], max_lag=1.0, fallback=True, clock=clock, writer_lsn=writer_lsn
    )
    await readers.sample(1.0)
    assert readers.pick() is cut_off
    writer["lsn"] = 2000  # a write the standby never receives
    clock.now += 0.5
    await readers.sample(1.0)
    assert readers.replicas[0].lag == 0.0  # seen just now
    clock.now += 2.0
    await readers.sample(1.0)
    assert readers.replicas[0].lag == 2.0
    assert readers.pick() is None
    assert readers.why_none() == "r: replay lag 2 s > max_replica_lag 1 s"
    cut_off.row = {"standby": True, "lag": 0.0, "replayed": _lsn(2000)}  # reconnected
    clock.now += 0.5
    await readers.sample(1.0)
    assert readers.pick() is cut_off


async def test_a_caught_up_standby_serves_while_the_writer_is_down() -> None:
    """Restarted while its primary is down, a standby knows nothing of its own lag (NULL);
    it replayed everything the writer was last seen to have: not behind."""
    clock, up = Clock(), {"lsn": 5000}

    async def writer_lsn(_timeout: float) -> int | None:
        return up["lsn"]

    standby = StubReader("r", row={"standby": True, "lag": 0.0, "replayed": _lsn(5000)})
    readers = Readers(
        [Replica(standby)], max_lag=1.0, fallback=True, clock=clock, writer_lsn=writer_lsn
    )
    await readers.sample(1.0)
    up["lsn"] = None  # type: ignore[assignment]  # the writer is down
    standby.row = {"standby": True, "lag": None, "replayed": _lsn(5000)}  # restarted
    clock.now += 30
    await readers.sample(1.0)
    assert readers.replicas[0].lag == 0.0
    assert readers.pick() is standby


async def test_between_samples_lag_is_held_at_its_upper_bound() -> None:
    """With max_replica_lag set, a reader's lag counts as its sampled lag plus the time
    since that sample: a reader whose samples time out (every connection busy) may be
    falling behind unseen, and is trusted only for its margin."""
    clock = Clock()
    busy = StubReader("r", row={"standby": True, "lag": 0.25, "replayed": _lsn(1)})
    readers = Readers([Replica(busy)], max_lag=1.0, fallback=True, clock=clock)
    await readers.sample(1.0)
    assert readers.pick() is busy

    async def saturated(*_args: object, **_kwargs: object) -> None:
        raise PoolTimeoutError("every connection busy")

    busy.probe = saturated  # type: ignore[assignment,method-assign]
    clock.now += 0.5
    await readers.sample(1.0)
    assert readers.pick() is busy  # at most 0.75 s behind
    clock.now += 0.5
    await readers.sample(1.0)
    assert readers.pick() is None
    assert readers.why_none() == "r: replay lag 1.25 s > max_replica_lag 1 s"
