"""Read replicas and failover on real streaming replication (the plugin's primary +
standby): reads on the standby and writes on the primary (the server says which), read-
your-writes, the lag guard, a promotion under load with no acknowledged commit lost, an
old primary rebuilt as a standby picked up as a reader, PgBouncer in front of each member,
and both adapters."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg2.errors
import pytest
from sprockets.http import app as sprockets_app
from sprockets.http import testing as sprockets_testing
from tornado import httpclient, httpserver, web

import pgpool_sprockets
import pgpool_tornado
from pgpool_core import PoolManager, PoolUnavailableError, sqlstate
from pgpool_core.testing import PgBouncer, PostgresServer
from pgpool_core.testing._replication import PostgresReplication

from db_support import wait_for_condition

WHERE = "SELECT inet_server_port() AS port, pg_is_in_recovery() AS standby"


def port_of(server: PostgresServer) -> int:
    port = urllib.parse.urlsplit(server.url).port
    assert port is not None
    return port


def with_query(url: str, **query: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(query)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> float:
    """Run the loop until ``condition()`` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def until_async(condition: Callable[[], Any], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def pool(postgres_replication: PostgresReplication) -> AsyncIterator[PoolManager]:
    rep = postgres_replication
    rep.primary.query("CREATE TABLE items (id int PRIMARY KEY, note text)")
    rep.wait_caught_up()
    manager = PoolManager(
        rep.primary.url,
        read_url=with_query(rep.standby.url, target_session_attrs="standby"),
        min_size=1,
        max_size=4,
        max_replica_lag=1.0,
    )
    await manager.start(wait=True)
    await manager.sample_readers()
    yield manager
    await manager.stop()


async def test_reads_on_the_standby_writes_on_the_primary(
    pool: PoolManager, postgres_replication: PostgresReplication
) -> None:
    rep = postgres_replication
    read = await pool.execute(WHERE, read_only=True)
    assert read.row == {"port": port_of(rep.standby), "standby": True}
    write = await pool.execute(f"INSERT INTO items VALUES (1, 'w') RETURNING {WHERE[7:]}")
    assert write.row is not None
    assert (write.row["port"], write.row["standby"]) == (port_of(rep.primary), False)
    async with pool.transaction(read_only=True) as tx:
        assert (await tx.execute(WHERE)).row == {"port": port_of(rep.standby), "standby": True}
    async with pool.connector(read_only=True) as conn:
        assert (await conn.execute(WHERE)).row == {"port": port_of(rep.standby), "standby": True}
    assert (await pool.execute(WHERE)).row == {"port": port_of(rep.primary), "standby": False}
    # A write sent as a read is refused by the standby, and changes nothing anywhere.
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        await pool.execute("INSERT INTO items VALUES (2, 'as a read')", read_only=True)
    # A read-only transaction on the writer (writer=True) refuses writes as well.
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        async with pool.transaction(read_only=True, writer=True) as tx:
            await tx.execute("INSERT INTO items VALUES (3, 'read-only tx')")
    assert rep.primary.query("SELECT id FROM items ORDER BY id") == [{"id": 1}]
    # The standby is still a reader, the primary kept its connections (no drain for the
    # 25006 of a reader), and nothing is left in a transaction on either server.
    status = await pool.status()
    assert status.readers[0].excluded is None
    assert status.counters["failovers"] == 0
    for server in (rep.primary, rep.standby):
        assert not [a for a in server.activity() if a["state"] != "idle"]


async def test_read_your_writes_in_a_session(
    pool: PoolManager, postgres_replication: PostgresReplication
) -> None:
    rep = postgres_replication
    rep.pause_replay()  # the standby cannot see anything written from now on
    try:
        session = pool.session()
        async with session.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (10, 'mine')")
        mine = await session.execute(
            "SELECT note, inet_server_port() AS port FROM items", read_only=True
        )
        assert mine.rows == [{"note": "mine", "port": port_of(rep.primary)}]
        # Another session (another request) reads from the standby: it has not seen it.
        other = await pool.session().execute(
            "SELECT count(*) AS n, inet_server_port() AS port FROM items", read_only=True
        )
        assert other.row == {"n": 0, "port": port_of(rep.standby)}
    finally:
        rep.resume_replay()


async def test_a_lagging_reader_gets_no_reads_until_it_catches_up(
    pool: PoolManager, postgres_replication: PostgresReplication
) -> None:
    rep = postgres_replication
    rep.pause_replay()
    try:
        rep.primary.query("INSERT INTO items VALUES (20, 'unseen')")
        written = time.monotonic()

        async def excluded() -> bool:
            return (await pool.status()).readers[0].excluded is not None

        await until_async(excluded)
        delay = time.monotonic() - written
        # Excluded once the lag passed max_replica_lag (1 s), within one sampling
        # interval (0.5 s) after that, plus the time the checks themselves take.
        assert delay < 1.0 + 0.5 + 1.0, delay
        print(f"lag-exclusion delay after the write: {delay:.2f} s")
        status = await pool.status()
        assert "replay lag" in str(status.readers[0].excluded)
        before = pool.stats()["reads_to_writer"]
        read = await pool.execute(
            "SELECT note, inet_server_port() AS port FROM items", read_only=True
        )
        assert read.rows == [{"note": "unseen", "port": port_of(rep.primary)}]
        assert pool.stats()["reads_to_writer"] == before + 1
    finally:
        rep.resume_replay()

    async def fit() -> bool:
        return (await pool.status()).readers[0].excluded is None

    await until_async(fit)
    read = await pool.execute("SELECT note, inet_server_port() AS port FROM items", read_only=True)
    assert read.rows == [{"note": "unseen", "port": port_of(rep.standby)}]


async def test_without_fallback_a_lagging_reader_is_a_typed_error(
    postgres_replication: PostgresReplication,
) -> None:
    rep = postgres_replication
    async with PoolManager(
        rep.primary.url, read_url=rep.standby.url, max_replica_lag=0.2, read_fallback=False
    ) as pool:
        await pool.sample_readers()
        rep.pause_replay()
        try:
            rep.primary.query("CREATE TABLE lagged (n int)")

            async def refused() -> bool:
                try:
                    await pool.execute("SELECT 1", read_only=True)
                except PoolUnavailableError as exc:
                    return "replay lag" in str(exc) and "read_fallback is off" in str(exc)
                return False

            await until_async(refused)
        finally:
            rep.resume_replay()


async def test_a_standby_cut_off_from_a_live_primary_is_excluded(
    pool: PoolManager, postgres_replication: PostgresReplication
) -> None:
    """The standby replayed all it received, so its own measure says 0; but it receives
    nothing any more while the primary goes on: behind, by the writer's clock."""
    rep = postgres_replication
    original = rep.standby.query("SHOW primary_conninfo")[0]["primary_conninfo"]
    rep.standby.query("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'")
    rep.standby.query("SELECT pg_reload_conf()")
    try:

        def cut_off() -> bool:
            streaming = "SELECT count(*) AS n FROM pg_stat_wal_receiver WHERE status = 'streaming'"
            return rep.standby.query(streaming)[0]["n"] == 0

        await wait_for_condition(cut_off, timeout=10)
        await pool.execute("INSERT INTO items VALUES (30, 'not streamed')")

        async def excluded() -> bool:
            return (await pool.status()).readers[0].excluded is not None

        await until_async(excluded)
        status = (await pool.status()).readers[0]
        assert "replay lag" in str(status.excluded)
        read = await pool.execute(
            "SELECT note, inet_server_port() AS port FROM items", read_only=True
        )
        assert read.rows == [{"note": "not streamed", "port": port_of(rep.primary)}]
    finally:
        rep.standby.query("ALTER SYSTEM SET primary_conninfo = %s", [original])
        rep.standby.query("SELECT pg_reload_conf()")


async def test_a_caught_up_standby_restarted_while_the_primary_is_down_serves_reads(
    postgres_replication: PostgresReplication,
) -> None:
    rep = postgres_replication
    rep.primary.query("CREATE TABLE items (id int PRIMARY KEY)")
    rep.primary.query("INSERT INTO items VALUES (1)")
    rep.wait_caught_up()
    rep.primary.stop()
    rep.standby.restart()
    async with PoolManager(
        rep.primary.url,
        read_url=with_query(rep.standby.url, target_session_attrs="standby"),
        min_size=0,
        max_replica_lag=5.0,
        connect_timeout=1.0,
    ) as pool:
        await pool.sample_readers()
        assert (await pool.status()).readers[0].excluded is None
        read = await pool.execute(
            "SELECT count(*) AS n, inet_server_port() AS port FROM items", read_only=True
        )
        assert read.row == {"n": 1, "port": port_of(rep.standby)}


async def test_a_reader_url_with_its_own_credentials_uses_them(
    postgres_replication: PostgresReplication,
) -> None:
    """The writer's rotating password= is not sent to a reader whose URL has its own."""
    rep = postgres_replication
    rep.primary.query("CREATE ROLE app LOGIN PASSWORD 'writer-pw'")
    rep.primary.query("CREATE ROLE ro LOGIN PASSWORD 'reader-pw'")
    rep.wait_caught_up()
    async with PoolManager(
        rep.primary.url_for(user="app"),
        password=lambda: "writer-pw",
        read_url=rep.standby.url_for(user="ro", password="reader-pw"),
        min_size=1,
    ) as pool:
        await pool.sample_readers()
        read = await pool.execute("SELECT current_user AS who", read_only=True)
        write = await pool.execute("SELECT current_user AS who")
        assert (read.row, write.row) == ({"who": "ro"}, {"who": "app"})
        status = await pool.status()
        assert "reader-pw" not in repr(status.as_dict())
        assert "writer-pw" not in repr(status.as_dict())


# -- failover -----------------------------------------------------------------------------


class MixedLoad:
    """Two tasks inserting ids (recording each acknowledged one) and two reading
    (recording which server answered), until :meth:`stop`."""

    def __init__(self, pool: PoolManager) -> None:
        self.pool = pool
        self.acked: list[tuple[float, int]] = []
        self.write_errors: list[tuple[float, BaseException]] = []
        self.reads: list[tuple[float, int]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._write(k)) for k in (0, 1)]
        self._tasks += [asyncio.ensure_future(self._read()) for _ in range(2)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self, first: int) -> None:
        n = first
        while not self._stop.is_set():
            try:
                await self.pool.execute("INSERT INTO acked VALUES (%s)", [n])
                self.acked.append((time.monotonic(), n))
            except Exception as exc:  # down, reconnecting: the pool fails fast
                self.write_errors.append((time.monotonic(), exc))
                await asyncio.sleep(0.01)  # pace this load generator's retries
            n += 2

    async def _read(self) -> None:
        while not self._stop.is_set():
            try:
                row = (await self.pool.execute(WHERE, read_only=True)).row
            except Exception:
                await asyncio.sleep(0.01)  # pace this load generator's retries
                continue
            assert row is not None
            self.reads.append((time.monotonic(), row["port"]))


async def test_failover_under_load_loses_no_acknowledged_commit(
    postgres_replication: PostgresReplication,
) -> None:
    """Stop the primary under a mixed load, promote the standby: reads go on from the
    standby while the primary is down, writes resume within 2 s of the promotion, every
    acknowledged commit is on the promoted server; then the old primary, rebuilt as a
    standby, is taken up as the reader without restarting the pool."""
    rep = postgres_replication
    rep.primary.query("CREATE TABLE acked (id int PRIMARY KEY)")
    rep.set_synchronous(True)  # remote_apply: a commit is acknowledged once the standby has it
    a, b = port_of(rep.primary), port_of(rep.standby)
    hosts = f"127.0.0.1:{a},127.0.0.1:{b}"
    pool = PoolManager(
        f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write",
        read_url=f"postgresql://postgres@{hosts}/postgres?target_session_attrs=standby",
        min_size=2,
        max_size=4,
        max_replica_lag=1.0,
        connect_timeout=2,
        acquire_timeout=1,
        query_timeout=2,
    )
    await pool.start(wait=True)
    await pool.sample_readers()
    load = MixedLoad(pool)
    acked, reads, write_errors = load.acked, load.reads, load.write_errors
    try:
        await until(lambda: len(acked) >= 20 and len(reads) >= 20)
        await asyncio.to_thread(rep.primary.stop, "immediate")
        down = time.monotonic()
        last_ack_before = max(t for t, _ in acked)
        await until(lambda: sum(1 for t, _ in reads if t > down) >= 20)  # reads go on
        await asyncio.to_thread(rep.promote)
        promoted = time.monotonic()
        await until(lambda: any(t > promoted for t, _ in acked), timeout=5)
        first_write = min(t for t, _ in acked if t > promoted)
        outage = first_write - promoted
        print(
            f"writes: {first_write - last_ack_before:.2f} s without a commit in all,"
            f" {outage:.2f} s after the promotion; reads while the primary was down:"
            f" {sum(1 for t, _ in reads if down < t < promoted)}"
        )
        assert outage < 2.0

        # The promoted node stops serving as a reader (it asked for a standby).
        async def reader_out() -> bool:
            return (await pool.status()).readers[0].excluded is not None

        await until_async(reader_out)
        # The old primary comes back as a standby of the new one: it becomes the reader.
        await asyncio.to_thread(rep.rebuild_standby)
        await until(lambda: any(port == a for t, port in reads if t > promoted), timeout=15)
    finally:
        await load.stop()
        await pool.stop()
    reads_during_outage = [port for t, port in reads if down < t < promoted]
    assert reads_during_outage
    assert set(reads_during_outage) == {b}  # the standby served them
    on_new_primary = {row["id"] for row in rep.primary.query("SELECT id FROM acked")}
    missing = {n for _, n in acked} - on_new_primary
    assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
    # The writer never kept a connection to a read-only server once writes resumed.
    late_read_only = [e for t, e in write_errors if t > first_write and sqlstate(e) == "25006"]
    assert not late_read_only


# -- PgBouncer in front of each member ----------------------------------------------------


async def test_routing_through_pgbouncer_in_front_of_each_member(
    postgres_replication: PostgresReplication,
) -> None:
    rep = postgres_replication
    try:
        writer_bouncer = PgBouncer(rep.primary.url)
        reader_bouncer = PgBouncer(rep.standby.url)
    except Exception as exc:  # pgbouncer not installed
        pytest.skip(str(exc))
    with writer_bouncer, reader_bouncer:
        async with PoolManager(
            writer_bouncer.url_for(rep.primary.url),
            read_url=reader_bouncer.url_for(rep.standby.url),
            pgbouncer=True,
            max_replica_lag=1.0,
        ) as pool:
            await pool.sample_readers()
            await pool.execute("CREATE TABLE bounced (n int)")
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO bounced VALUES (1)")
            rep.wait_caught_up()
            read = await pool.execute(
                "SELECT count(*) AS n, inet_server_port() AS port FROM bounced", read_only=True
            )
            assert read.row == {"n": 1, "port": port_of(rep.standby)}
            async with pool.transaction(read_only=True) as tx:
                row = (await tx.execute(WHERE)).row
            assert row == {"port": port_of(rep.standby), "standby": True}
            status = await pool.status()
            assert status.readers[0].lag == 0.0
            assert status.readers[0].excluded is None


# -- the adapters -------------------------------------------------------------------------


class WhereHandler(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    """GET reads (handler default); POST writes, then reads its write."""

    postgres_read_only = True

    async def get(self) -> None:
        result = await self.postgres_execute(WHERE)
        assert result is not None
        self.write({"read": result.row})

    async def post(self) -> None:
        await self.postgres_execute("INSERT INTO items VALUES (1, 'posted')", read_only=False)
        result = await self.postgres_execute(
            "SELECT count(*) AS n, inet_server_port() AS port FROM items"
        )
        assert result is not None
        self.write({"read": result.row})


class TornadoApp(pgpool_tornado.ApplicationMixin, web.Application):
    pass


async def test_tornado_handler_reads_from_the_standby_and_its_writes_from_the_primary(
    postgres_replication: PostgresReplication,
) -> None:
    rep = postgres_replication
    rep.primary.query("CREATE TABLE items (id int PRIMARY KEY, note text)")
    rep.wait_caught_up()
    rep.pause_replay()
    app = TornadoApp(
        [("/where", WhereHandler), ("/status", pgpool_tornado.StatusRequestHandler)],
        postgres_url=rep.primary.url,
        postgres_read_url=rep.standby.url,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    client = httpclient.AsyncHTTPClient(force_instance=True)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        await app.postgres_start(wait=True)
        assert app.postgres_pool is not None
        await app.postgres_pool.sample_readers()
        got = json.loads((await client.fetch(base + "/where")).body)
        assert got["read"] == {"port": port_of(rep.standby), "standby": True}
        posted = json.loads((await client.fetch(base + "/where", method="POST", body="")).body)
        assert posted["read"] == {"n": 1, "port": port_of(rep.primary)}
        status = json.loads((await client.fetch(base + "/status")).body)
        [reader] = status["postgres"]["readers"]
        assert reader["role"] == "reader"
        assert reader["server"] == f"127.0.0.1:{port_of(rep.standby)}"
    finally:
        rep.resume_replay()
        await app.postgres_stop()
        server.stop()
        client.close()


class SprocketsApp(pgpool_sprockets.ApplicationMixin, sprockets_app.Application):
    pass


class SprocketsWhereHandler(pgpool_sprockets.RequestHandlerMixin, WhereHandler):
    pass


class TestSprocketsReplicas(sprockets_testing.SprocketsHttpTestCase):
    @pytest.fixture(autouse=True)
    def _replication(self, postgres_replication: PostgresReplication) -> None:
        self.rep = postgres_replication
        self.rep.primary.query("CREATE TABLE items (id int PRIMARY KEY, note text)")
        self.rep.wait_caught_up()

    def get_app(self) -> SprocketsApp:
        self.app = SprocketsApp(
            [("/where", SprocketsWhereHandler)],
            postgres_url=self.rep.primary.url,
            postgres_read_url=self.rep.standby.url,
        )
        return self.app

    def test_reads_on_the_standby_writes_and_their_reads_on_the_primary(self) -> None:
        self.io_loop.run_sync(self.app.postgres_started.wait, timeout=10)
        pool = self.app.postgres_pool
        assert pool is not None
        self.io_loop.run_sync(pool.sample_readers, timeout=10)
        got = json.loads(self.fetch("/where").body)
        assert got["read"] == {"port": port_of(self.rep.standby), "standby": True}
        posted = json.loads(self.fetch("/where", method="POST", body="").body)
        assert posted["read"] == {"n": 1, "port": port_of(self.rep.primary)}
