"""The throwaway server: reachable through aiopg, restartable through its handle, per-test DBs."""

from __future__ import annotations

import aiopg
import psycopg2

from pgpool_core.testing import PostgresServer


async def _select_version(url: str) -> str:
    async with aiopg.connect(url, timeout=10) as conn, conn.cursor() as cur:
        await cur.execute("SELECT version()")
        row = await cur.fetchone()
    return str(row[0])


async def test_aiopg_reaches_the_server(postgres_url: str, postgres_server: PostgresServer) -> None:
    """A real round trip through aiopg returns the server's version string."""
    version = await _select_version(postgres_url)
    assert version.startswith("PostgreSQL ")
    assert postgres_server.version.split(".")[0] in version


async def test_restart_through_the_handle_then_connect_again(
    restartable_server: PostgresServer,
) -> None:
    """Stopping refuses connections; after start the same URL works again with a new postmaster."""
    postgres_server = restartable_server
    before = postgres_server.query("SELECT pg_postmaster_start_time() AS t")[0]["t"]
    postgres_server.stop()
    assert not postgres_server.is_running()
    try:
        psycopg2.connect(postgres_server.url, connect_timeout=2).close()
    except psycopg2.OperationalError:
        pass
    else:
        raise AssertionError("a stopped server accepted a connection")
    postgres_server.start()
    assert postgres_server.is_running()
    assert (await _select_version(postgres_server.url)).startswith("PostgreSQL ")
    after = postgres_server.query("SELECT pg_postmaster_start_time() AS t")[0]["t"]
    assert after > before


def test_each_test_gets_its_own_empty_database(
    postgres_db_url: str, postgres_server: PostgresServer
) -> None:
    """The per-test database exists, is empty, and differs from the server's default one."""
    database = postgres_db_url.rsplit("/", 1)[1]
    assert database.startswith("t_")
    conn = psycopg2.connect(postgres_db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            assert cur.fetchone() == (database, 0)
    finally:
        conn.close()
    assert any(row["datname"] == database for row in postgres_server.activity()) is False
