"""PoolManager against a real PostgreSQL: every behaviour of the engine, end to end."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import (
    ErrorKind,
    PoolManager,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryParameterError,
    QueryTimeoutError,
    TooManyRequestsError,
    classify,
    sqlstate,
)
from pgpool_core.testing import PostgresServer

from db_support import database_of, wait_for_condition


@pytest.fixture
async def pool(postgres_db_url: str) -> AsyncIterator[PoolManager]:
    async with PoolManager(postgres_db_url, min_size=1, max_size=4, acquire_timeout=5) as manager:
        await manager.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
        yield manager


def _backends(server: PostgresServer, db: str, state: str | None = None) -> list[dict[str, object]]:
    rows = server.activity(db)
    return [r for r in rows if state is None or r["state"] == state]


async def test_results_multi_row_no_row_and_no_result_set(pool: PoolManager) -> None:
    """Rows as dicts; one row; no row; INSERT without RETURNING gives the affected count."""
    inserted = await pool.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    assert (inserted.row_count, inserted.rows, inserted.row) == (3, [], None)
    many = await pool.execute("SELECT id, name FROM items ORDER BY id")
    assert many.rows == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    assert (len(many), many.row) == (3, None)
    one = await pool.execute("SELECT name FROM items WHERE id = %(id)s", {"id": 2})
    assert one.row == {"name": "b"}
    none = await pool.execute("SELECT name FROM items WHERE id = %s", [99])
    assert (none.row_count, none.rows, none.row) == (0, [], None)
    updated = await pool.execute("UPDATE items SET name = 'z' WHERE id > 1")
    assert updated.row_count == 2


async def test_client_timeout_cancels_the_server_query(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """F6: pg_sleep(10) with timeout=0.5 raises within 0.7 s, leaves no active backend, and the
    next query succeeds on the same number of backends."""
    db = database_of(postgres_db_url)
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        await pool.execute("SELECT 1")
        backends_before = {r["pid"] for r in _backends(postgres_server, db)}
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            await pool.execute("SELECT pg_sleep(10)", timeout=0.5)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 0.7, elapsed
        await wait_for_condition(lambda: not _backends(postgres_server, db, "active"), timeout=1.0)
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
        assert {r["pid"] for r in _backends(postgres_server, db)} == backends_before


async def test_server_statement_timeout_is_a_query_timeout(postgres_db_url: str) -> None:
    """A server statement_timeout surfaces as QueryTimeoutError, and the pool carries on."""
    url = postgres_db_url + "?options=-c%20statement_timeout%3D100"
    async with PoolManager(url, min_size=0, max_size=1) as pool:
        with pytest.raises(QueryTimeoutError, match="statement timeout"):
            await pool.execute("SELECT pg_sleep(5)")
        assert (await pool.execute("SELECT 2 AS two")).row == {"two": 2}


async def test_cancelled_caller_leaves_no_server_query(
    pool: PoolManager, postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """F5: Cancelling the calling task cancels the statement server-side within 1 s."""
    db = database_of(postgres_db_url)
    task = asyncio.create_task(pool.execute("SELECT pg_sleep(10)"))
    await wait_for_condition(lambda: bool(_backends(postgres_server, db, "active")))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    took = await wait_for_condition(
        lambda: not _backends(postgres_server, db, "active"), timeout=1.0
    )
    assert took < 1.0
    assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}


async def test_thousand_requests_half_failing_leave_a_clean_pool(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """F9: 1000 transactions, half raising: free == size, <= max_size backends, none idle in
    transaction, and the failed halves left no rows behind."""
    db = database_of(postgres_db_url)
    async with PoolManager(postgres_db_url, min_size=1, max_size=5, acquire_timeout=30) as pool:
        await pool.execute("CREATE TABLE log (n int)")
        seen_pids: set[int] = set()

        async def one(n: int) -> None:
            async with pool.transaction() as tx:
                pid = await tx.execute("SELECT pg_backend_pid() AS pid")
                seen_pids.add(int(pid.row["pid"]))  # type: ignore[index]
                await tx.execute("INSERT INTO log VALUES (%s)", [n])
                if n % 2:
                    raise ValueError(n)

        results = await asyncio.gather(*(one(n) for n in range(1000)), return_exceptions=True)
        assert sum(isinstance(r, ValueError) for r in results) == 500
        assert all(r is None or isinstance(r, ValueError) for r in results)
        stats = pool.stats()
        assert stats["pool_available"] == stats["pool_size"]
        assert len(seen_pids) <= 5
        assert (await pool.execute("SELECT count(*) AS n FROM log")).row == {"n": 500}
        assert not _backends(postgres_server, db, "idle in transaction")
        assert not _backends(postgres_server, db, "idle in transaction (aborted)")


async def test_error_inside_transaction_rolls_back_and_reuses_the_connection(
    pool: PoolManager,
) -> None:
    """A failing statement in a transaction rolls back; the same backend serves next."""
    pid = (await pool.execute("SELECT pg_backend_pid() AS pid")).row

    async def insert_twice() -> None:
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (1, 'a')")
            await tx.execute("INSERT INTO items VALUES (1, 'again')")

    with pytest.raises(psycopg2.errors.UniqueViolation):
        await insert_twice()
    assert (await pool.execute("SELECT count(*) AS n FROM items")).row == {"n": 0}
    assert (await pool.execute("SELECT pg_backend_pid() AS pid")).row == pid


async def test_killed_connection_is_discarded_and_replaced(
    pool: PoolManager, postgres_server: PostgresServer
) -> None:
    """pg_terminate_backend of a pooled connection: the error passes through, the loss is
    counted, the next request gets a new backend."""
    pid = (await pool.execute("SELECT pg_backend_pid() AS pid")).row["pid"]  # type: ignore[index]
    async with pool.connection() as conn:
        postgres_server.query("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg2.OperationalError):
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1")
    assert pool.stats()["connections_lost"] + pool.stats()["returns_bad"] >= 1
    new_pid = (await pool.execute("SELECT pg_backend_pid() AS pid")).row["pid"]  # type: ignore[index]
    assert new_pid != pid


async def test_acquire_timeout_when_every_connection_is_busy(postgres_db_url: str) -> None:
    """With max_size busy, a request fails with PoolTimeoutError at acquire_timeout."""
    async with PoolManager(postgres_db_url, min_size=0, max_size=2, acquire_timeout=0.3) as pool:
        busy = [asyncio.create_task(pool.execute("SELECT pg_sleep(2)")) for _ in range(2)]
        await wait_for_condition(
            lambda: pool.stats()["pool_size"] == 2 and not pool.stats()["pool_available"]
        )
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError, match=r"size=2, in use=2"):
            await pool.execute("SELECT 1")
        assert 0.27 <= time.monotonic() - started < 0.5
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)


async def test_max_lifetime_replaces_old_connections(postgres_db_url: str) -> None:
    """A connection past max_lifetime is replaced by a new backend."""
    async with PoolManager(postgres_db_url, min_size=1, max_size=1, max_lifetime=0.2) as pool:
        first = (await pool.execute("SELECT pg_backend_pid() AS pid")).row
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (await pool.execute("SELECT pg_backend_pid() AS pid")).row == first:
            assert loop.time() < deadline, "the connection was never replaced"
            await asyncio.sleep(0.05)
        assert pool.stats()["connections_num"] >= 2


async def test_status_reports_real_availability(postgres_db_url: str) -> None:
    """Before start: unavailable and 0/0; open: available with sizes; after stop: unavailable."""
    pool = PoolManager(postgres_db_url, min_size=2, max_size=3)
    before = await pool.status()
    assert (before.available, before.pool_size, before.pool_free) == (False, 0, 0)
    await pool.start()
    status = await pool.status()
    assert status.available
    assert status.as_dict()["pool_max"] == 3
    await pool.stop()
    assert not (await pool.status()).available


async def test_application_name_from_url_and_setting_reach_the_server(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """application_name in the URL wins; the setting applies when the URL has none."""
    db = database_of(postgres_db_url)
    async with PoolManager(
        postgres_db_url + "?application_name=from-url", application_name="x"
    ) as pool:
        await pool.execute("SELECT 1")
        assert {r["application_name"] for r in _backends(postgres_server, db)} == {"from-url"}
    async with PoolManager(postgres_db_url, application_name="from-setting") as pool:
        await pool.execute("SELECT 1")
        assert "from-setting" in {r["application_name"] for r in _backends(postgres_server, db)}


def _has_extension(server: PostgresServer, name: str) -> bool:
    return bool(server.query("SELECT 1 FROM pg_available_extensions WHERE name = %s", [name]))


async def test_uuid_json_and_hstore_registration(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """enable_uuid returns uuid.UUID; enable_json and enable_hstore decode their types."""
    if not _has_extension(postgres_server, "hstore"):
        pytest.skip(f"this {postgres_server.source.value} server has no hstore extension")
    async with PoolManager(postgres_db_url, enable_hstore=True, enable_json=True) as pool:
        row = (
            await pool.execute(
                "SELECT '7d5b7a8e-1c1f-4c4c-9a7a-0d8c2b7f5a11'::uuid AS u, '{\"a\": 1}'::json AS j,"
                " 'k=>v'::hstore AS h"
            )
        ).row
        assert row == {
            "u": uuid.UUID("7d5b7a8e-1c1f-4c4c-9a7a-0d8c2b7f5a11"),
            "j": {"a": 1},
            "h": {"k": "v"},
        }
        assert (await pool.execute("SELECT %s AS h", [{"x": "y"}])).row == {"h": {"x": "y"}}


async def test_callproc_calls_a_function(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """callproc('uuid_generate_v4') returns one row holding a UUID."""
    if not _has_extension(postgres_server, "uuid-ossp"):
        pytest.skip(f"this {postgres_server.source.value} server has no uuid-ossp extension")
    async with PoolManager(postgres_db_url) as pool:
        result = await pool.callproc("uuid_generate_v4")
        assert isinstance(result.row["uuid_generate_v4"], uuid.UUID)  # type: ignore[index]


@pytest.mark.parametrize(
    ("sql", "params", "error"),
    [
        ("SELEC 1", None, psycopg2.errors.SyntaxError),
        ("SELECT %s, %s", [1], QueryParameterError),
        ("SELECT %(a)s", {"b": 1}, QueryParameterError),
        ("SELECT %s", ["a\x00b"], QueryParameterError),
        ("SELECT %s::text", [b"\xff\xfe".decode("latin-1")], None),
        (
            "SELECT convert_from(%s, 'UTF8')",
            [psycopg2.Binary(b"\xff\xfe")],
            psycopg2.errors.CharacterNotInRepertoire,
        ),
    ],
    ids=["bad-sql", "param-count", "param-name", "nul-byte", "latin1-text", "non-utf8-bytes"],
)
async def test_bad_input_is_a_clear_error_and_the_pool_stays_healthy(
    pool: PoolManager, sql: str, params: object, error: type[BaseException] | None
) -> None:
    """Each bad input raises its own typed error; the pool answers right after."""
    if error is None:
        await pool.execute(sql, params)
    else:
        with pytest.raises(error):
            await pool.execute(sql, params)
    assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
    assert pool.stats()["pool_available"] == pool.stats()["pool_size"]


async def test_large_parameter_round_trips(pool: PoolManager) -> None:
    """A 10 MB parameter goes through and comes back intact."""
    big = "x" * (10 * 1024 * 1024)
    assert (await pool.execute("SELECT length(%s) AS n", [big])).row == {"n": len(big)}


async def test_waiters_are_served_in_arrival_order(postgres_db_url: str) -> None:
    """With one connection busy, requests queued in order complete in that order."""
    async with PoolManager(postgres_db_url, min_size=1, max_size=1, acquire_timeout=10) as pool:
        await pool.execute("SELECT 1")
        holder = asyncio.create_task(pool.execute("SELECT pg_sleep(0.3)"))
        await wait_for_condition(lambda: pool.stats()["pool_available"] == 0)
        finished: list[int] = []

        async def request(n: int) -> None:
            await pool.execute("SELECT %s", [n])
            finished.append(n)

        tasks = []
        for n in range(8):
            tasks.append(asyncio.create_task(request(n)))
            await wait_for_condition(lambda n=n: pool.stats()["requests_waiting"] == n + 1)
        await asyncio.gather(holder, *tasks)
        assert finished == list(range(8))


async def test_max_waiting_sheds_at_once_with_a_real_server(postgres_db_url: str) -> None:
    """max_waiting=2: the third queued request fails immediately with TooManyRequestsError."""
    async with PoolManager(
        postgres_db_url, min_size=1, max_size=1, max_waiting=2, acquire_timeout=10
    ) as pool:
        await pool.execute("SELECT 1")
        holder = asyncio.create_task(pool.execute("SELECT pg_sleep(0.3)"))
        await wait_for_condition(lambda: pool.stats()["pool_available"] == 0)
        queued = [asyncio.create_task(pool.execute("SELECT 1")) for _ in range(2)]
        await wait_for_condition(lambda: pool.stats()["requests_waiting"] == 2)
        started = time.monotonic()
        with pytest.raises(TooManyRequestsError, match="max_waiting=2"):
            await pool.execute("SELECT 1")
        assert time.monotonic() - started < 0.05
        await asyncio.gather(holder, *queued)


async def test_connect_is_bounded_by_connect_timeout() -> None:
    """A server that accepts TCP but never answers fails the request within connect_timeout."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nothing ever answers
    port = silent.getsockname()[1]
    try:
        async with PoolManager(
            f"postgresql://app:s3cret@127.0.0.1:{port}/db", min_size=0, connect_timeout=0.3
        ) as pool:
            started = time.monotonic()
            with pytest.raises(PoolUnavailableError) as info:
                await pool.execute("SELECT 1")
            assert 0.3 <= time.monotonic() - started < 0.6
            assert "s3cret" not in str(info.value)
            assert pool.stats()["connections_errors"] == 1
    finally:
        silent.close()


async def test_idle_connections_above_min_are_closed_in_the_background(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """After a burst, connections idle past max_idle go away on their own, down to min_size."""
    db = database_of(postgres_db_url)
    async with PoolManager(postgres_db_url, min_size=1, max_size=3, max_idle=0.3) as pool:
        await asyncio.gather(*(pool.execute("SELECT pg_sleep(0.1)") for _ in range(3)))
        assert pool.stats()["pool_size"] == 3
        took = await wait_for_condition(lambda: len(_backends(postgres_server, db)) == 1, timeout=3)
        assert took >= 0.2
        assert pool.stats()["pool_size"] == 1


async def test_min_size_is_kept_filled_in_the_background(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """start() returns at once and min_size backends appear; a killed one is discarded,
    counted and replaced. (That the *first* request after the kill succeeds is the
    checkout validation of the resilience issue; here the driver error may pass through.)"""
    db = database_of(postgres_db_url)
    async with PoolManager(postgres_db_url, min_size=3, max_size=3) as pool:
        # The server lists a backend before the client's connect has finished: wait for the
        # pool's own view too, so the kill below hits open connections, not connects.
        await wait_for_condition(
            lambda: pool.stats()["pool_available"] == 3 and len(_backends(postgres_server, db)) == 3
        )
        victims = {r["pid"] for r in _backends(postgres_server, db)}
        postgres_server.terminate_backends(db)
        failures = 0
        for _ in range(6):
            try:
                await pool.execute("SELECT 1")
            except psycopg2.OperationalError:
                failures += 1
        stats = pool.stats()
        # Each victim counted once: broken in use (returns_bad, the failed requests) or
        # found dead while idle (connections_lost).
        assert stats["returns_bad"] == failures <= 3
        assert stats["returns_bad"] + stats["connections_lost"] == 3
        await wait_for_condition(
            lambda: (
                len(_backends(postgres_server, db)) == 3
                and not victims & {r["pid"] for r in _backends(postgres_server, db)}
            )
        )


async def test_real_database_conditions_classify(pool: PoolManager) -> None:
    """Duplicate key, FK violation, 1/0, a client timeout and a statement_timeout classify."""
    await pool.execute("CREATE TABLE child (id int PRIMARY KEY, item int REFERENCES items (id))")
    await pool.execute("INSERT INTO items VALUES (1, 'a')")
    cases: list[tuple[str, float | None, ErrorKind, str | None]] = [
        ("INSERT INTO items VALUES (1, 'dup')", None, ErrorKind.UNIQUE_VIOLATION, "23505"),
        ("INSERT INTO child VALUES (1, 99)", None, ErrorKind.FOREIGN_KEY_VIOLATION, "23503"),
        ("SELECT 1/0", None, ErrorKind.DATABASE, "22012"),
        ("SELECT pg_sleep(5)", 0.2, ErrorKind.QUERY_TIMEOUT, None),
        (
            "SET LOCAL statement_timeout = 50; SELECT pg_sleep(5)",
            None,
            ErrorKind.QUERY_TIMEOUT,
            "57014",
        ),
    ]
    for sql, timeout, kind, code in cases:
        with pytest.raises(Exception) as info:  # noqa: PT011 - each case checks its own kind
            await pool.execute(sql, timeout=timeout)
        assert (classify(info.value), sqlstate(info.value)) == (kind, code), sql


async def test_first_request_after_all_idle_backends_are_killed_succeeds(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """F2: pg_terminate_backend of every idle backend; the next request still succeeds,
    the dead ones are counted as connections_lost, none as a failed request."""
    db = database_of(postgres_db_url)
    async with PoolManager(postgres_db_url, min_size=3, max_size=3, validate_idle_after=0) as pool:
        await wait_for_condition(lambda: len(_backends(postgres_server, db)) == 3)
        assert postgres_server.terminate_backends(db) == 3
        assert (await pool.execute("SELECT 1 AS ok")).row == {"ok": 1}
        # The request drops the dead ones it meets; a replacement opened meanwhile may serve
        # it before it meets the last, which a check-out or maintenance pass finds next.
        for _ in range(500):
            pool.run_maintenance()
            if pool.stats()["connections_lost"] >= 3:
                break
            await asyncio.sleep(0.01)
        assert pool.stats()["connections_lost"] == 3
        assert pool.stats()["returns_bad"] == 0
        await wait_for_condition(lambda: len(_backends(postgres_server, db)) == 3)


async def test_dead_connection_leaves_the_loop_even_if_its_descriptor_number_is_reused(
    postgres_db_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq closes the socket of a connection the server killed. If another thread gets
    the same descriptor number before aiopg checks it (aiopg asks select(), which then
    succeeds), aiopg keeps the loop's reader for that number, and the next socket the
    loop registers under it fails with FileNotFoundError (seen in CI, in a Tornado client).
    The pool's driver drops the reader as soon as psycopg2 says the connection closed."""
    import os

    import aiopg.connection

    loop = asyncio.get_running_loop()
    async with PoolManager(postgres_db_url, min_size=1, max_size=1) as pool:
        async with pool.connection() as conn:
            fileno, raw = conn._fileno, conn.raw
        # Another thread reused the number: select() on it succeeds.
        monkeypatch.setattr(aiopg.connection.select, "select", lambda *_args: ([], [], []))
        assert postgres_server.terminate_backends(database_of(postgres_db_url)) == 1
        for _ in range(500):  # the reader fires when the server's FATAL arrives
            if raw.closed:
                break
            await asyncio.sleep(0.01)
        assert raw.closed
        monkeypatch.undo()
        with socket.socket() as reused:
            dup = reused.fileno() != fileno
            if dup:  # a new socket under the old number (the lowest free one usually is)
                os.dup2(reused.fileno(), fileno)
            try:
                loop.add_writer(fileno, lambda: None)  # raised FileNotFoundError before
                loop.remove_writer(fileno)
            finally:
                if dup:
                    os.close(fileno)
        assert (await pool.execute("SELECT 1 AS one")).row == {"one": 1}


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_failed_connects_leave_no_registration_behind(
    postgres_db_url: str, postgres_server: PostgresServer, loop_kind: str
) -> None:
    """A connect the server refuses closes its socket inside libpq. aiopg kept its writer
    registered under that number; uvloop also closed its poll handle and kept it, so the
    next connection given that number failed at once with ``RuntimeError: unable to
    perform operation on <UVPoll closed=True>`` (seen as 4 failed requests after a restart
    in the F1 fault test under uvloop). Refused and good connects alternate here on both
    loops: every good one works, and the server holds exactly the connections we opened."""
    import uvloop

    from pgpool_core._connector import AiopgConnector
    from pgpool_core.testing._server import free_port

    port = urllib.parse.urlsplit(postgres_db_url).port
    refused = postgres_db_url.replace(f":{port}/", f":{free_port()}/")
    assert refused != postgres_db_url
    db = database_of(postgres_db_url)

    async def scenario() -> None:
        bad, good = AiopgConnector(refused), AiopgConnector(postgres_db_url)
        opened = []
        for _ in range(20):
            with pytest.raises(psycopg2.OperationalError, match="refused"):
                await bad.connect(5)
            opened.append(await good.connect(5))
        assert len(_backends(postgres_server, db)) == 20
        for conn in opened:
            conn.close()
        await wait_for_condition(lambda: not _backends(postgres_server, db))

    (uvloop.run if loop_kind == "uvloop" else asyncio.run)(scenario())
