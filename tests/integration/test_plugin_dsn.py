"""The pytest plugin in someone else's project, pointed at their server by
``PGPOOL_TEST_DSN``: a role without CREATEDB, a wrong password, and what is left behind.
Each case runs a child pytest against the session's real server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pgpool_core.testing import PostgresServer

CHILD_TESTS = textwrap.dedent(
    """
    import psycopg2

    def test_url(postgres_url):
        psycopg2.connect(postgres_url).close()

    def test_db(postgres_db_url):
        psycopg2.connect(postgres_db_url).close()
    """
)


def _run_child(tmp_path: Path, dsn: str) -> tuple[subprocess.CompletedProcess[str], float]:
    (tmp_path / "test_child.py").write_text(CHILD_TESTS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "CI")}
    env.pop("COVERAGE_PROCESS_START", None)
    env["PGPOOL_TEST_DSN"] = dsn
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.monotonic() - started


def _role(server: PostgresServer, name: str, *options: str) -> str:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {name}")
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw-{name}' {' '.join(options)}")
    return server.url_for("postgres", user=name, password=f"pw-{name}")


def _databases(server: PostgresServer) -> set[str]:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {name for (name,) in cur.fetchall()}


def test_role_without_createdb_gets_one_line_naming_the_privilege(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """No INTERNALERROR: postgres_url works; postgres_db_url fails with one line that
    names CREATEDB and the role."""
    url = _role(postgres_server, "pgpool_no_createdb", "NOCREATEDB")
    before = _databases(postgres_server)
    done, _ = _run_child(tmp_path, url)
    output = done.stdout + done.stderr
    assert "INTERNALERROR" not in output
    assert done.returncode == 1, output
    assert "1 passed, 1 error" in output  # a fixture that fails is an error
    assert (
        "postgres_db_url needs the CREATEDB privilege, which pgpool_no_createdb of"
        " PGPOOL_TEST_DSN lacks (ALTER ROLE pgpool_no_createdb CREATEDB)"
    ) in output
    assert "pw-pgpool_no_createdb" not in output
    assert _databases(postgres_server) == before


def test_wrong_password_fails_at_once(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """An error that cannot heal is not retried for a minute, and is not a skip: the tests
    fail at once, saying the server refused the password."""
    url = _role(postgres_server, "pgpool_wrong_pw").replace("pw-pgpool_wrong_pw", "nope")
    done, seconds = _run_child(tmp_path, url)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "2 errors" in output or "2 error" in output, output
    assert "password authentication failed" in output
    assert "nope" not in output.replace("no PostgreSQL", "")
    assert seconds < 30, f"took {seconds:.1f} s"
    assert [r for r in postgres_server.activity() if r["usename"] == "pgpool_wrong_pw"] == []


def test_createdb_role_leaves_nothing_behind(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """With CREATEDB both tests pass, and the session's template and test databases are
    gone from the user's server afterwards."""
    url = _role(postgres_server, "pgpool_createdb", "CREATEDB")
    before = _databases(postgres_server)
    done, _ = _run_child(tmp_path, url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert _databases(postgres_server) == before


def test_malformed_dsn_password_stays_out_of_the_failure(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """libpq quotes a bad percent-escape back, password included: the failure that
    reaches the user's terminal has it masked."""
    url = _role(postgres_server, "pgpool_bad_dsn").replace("pw-pgpool_bad_dsn", "se%zzkret9")
    done, _ = _run_child(tmp_path, url)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "invalid percent-encoded token" in output
    assert "zzkret9" not in output
    assert "se%zz" not in output
