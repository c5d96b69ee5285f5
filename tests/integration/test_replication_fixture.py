"""The ``postgres_replication`` fixture: a real primary and a streaming standby of the
test's own, their replay, synchronous commits, failover, rebuild and cleanup."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from pgpool_core.testing import PostgresReplication, PostgresServer
from pgpool_core.testing._replication import replication_source


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (the servers offer nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def _values(server: PostgresServer) -> list[int]:
    return [row["x"] for row in server.query("SELECT x FROM t ORDER BY x")]


def _in_recovery(server: PostgresServer) -> bool:
    return bool(server.query("SELECT pg_is_in_recovery() AS r")[0]["r"])


def _commit(conn: psycopg2.extensions.connection, timeout: float = 5.0) -> None:
    """COMMIT, failing (not hanging) if it waits ``timeout`` s for a synchronous standby.
    statement_timeout cannot guard it: the server disarms it before the commit's wait."""
    failures: list[BaseException] = []

    def commit() -> None:
        try:
            conn.commit()
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        conn.cancel()  # the wait ends with a warning; the commit is already local
        thread.join(10)
        raise AssertionError(f"COMMIT still waiting after {timeout} s: {conn.notices}")
    if failures:
        raise failures[0]
    waited = [notice for notice in conn.notices if "synchronous replication" in notice]
    assert not waited, waited


def _insert(server: PostgresServer, value: int) -> None:
    conn = psycopg2.connect(server.url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (%s)", [value])
        _commit(conn)
    finally:
        conn.close()


def test_standby_streams_the_primarys_writes(postgres_replication: PostgresReplication) -> None:
    """The standby is in recovery, the primary is not, and a write reaches the standby."""
    pair = postgres_replication
    assert not _in_recovery(pair.primary)
    assert _in_recovery(pair.standby)
    assert pair.primary.url != pair.standby.url
    names = pair.primary.query("SELECT current_setting('cluster_name') AS n")[0]["n"]
    assert (names, pair.standby_name) == ("pgpool_a", "pgpool_b")
    rows = pair.primary.query("SELECT application_name, state, sync_state FROM pg_stat_replication")
    assert rows == [{"application_name": "pgpool_b", "state": "streaming", "sync_state": "async"}]
    slots = pair.primary.query("SELECT slot_name, active FROM pg_replication_slots")
    assert slots == [{"slot_name": "pgpool_b", "active": True}]
    pair.primary.query("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    pair.wait_caught_up()
    assert _values(pair.standby) == [1]
    assert pair.lag() == 0.0
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        pair.standby.query("INSERT INTO t VALUES (2)")


def test_paused_replay_hides_writes_and_lag_grows(
    postgres_replication: PostgresReplication,
) -> None:
    """While replay is paused a received write stays invisible and lag() grows; after
    resume_replay() the write shows and lag() is back to 0."""
    pair = postgres_replication
    pair.primary.query("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    pair.wait_caught_up()
    pair.pause_replay()
    pair.primary.query("INSERT INTO t VALUES (2)")
    _eventually(lambda: pair.lag() > 0, "the standby receives WAL it does not replay")
    assert _values(pair.standby) == [1]
    first = pair.lag()
    second = pair.lag()
    assert 0 < first < second
    with pytest.raises(TimeoutError, match="replaying up to"):
        pair.wait_caught_up(timeout=0.2)
    pair.resume_replay()
    pair.wait_caught_up()
    assert _values(pair.standby) == [1, 2]
    _eventually(lambda: pair.lag() == 0.0, "lag back to 0")


def test_synchronous_commit_is_visible_on_the_standby_at_once(
    postgres_replication: PostgresReplication,
) -> None:
    """With set_synchronous() each COMMIT returns once the standby has applied it, so a
    read there right after sees the row without waiting; set_synchronous(False) undoes it."""
    pair = postgres_replication
    pair.primary.query("CREATE TABLE t (x int)")
    pair.set_synchronous()
    rows = pair.primary.query("SELECT application_name, sync_state FROM pg_stat_replication")
    assert rows == [{"application_name": "pgpool_b", "sync_state": "sync"}]
    setting = pair.primary.query("SHOW synchronous_commit")[0]["synchronous_commit"]
    assert setting == "remote_apply"
    conn = psycopg2.connect(pair.primary.url, connect_timeout=5)
    reader = psycopg2.connect(pair.standby.url, connect_timeout=5)
    reader.autocommit = True
    try:
        for value in range(1, 21):
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (%s)", [value])
            _commit(conn)
            with reader.cursor() as cur:  # no waiting: the commit has been applied there
                cur.execute("SELECT max(x) FROM t")
                assert cur.fetchone() == (value,)
    finally:
        conn.close()
        reader.close()
    pair.set_synchronous(False)
    rows = pair.primary.query("SELECT application_name, sync_state FROM pg_stat_replication")
    assert rows == [{"application_name": "pgpool_b", "sync_state": "async"}]
    # Commits no longer wait for the standby: with it down they still return.
    pair.standby.stop()
    _insert(pair.primary, 21)


def test_failover_promote_then_rebuild_the_old_primary(
    postgres_replication: PostgresReplication,
) -> None:
    """The standby keeps serving reads with its primary down; once promoted it takes
    writes without waiting for the synchronous standby its copy named; the old primary,
    rebuilt, streams from it."""
    pair = postgres_replication
    pair.primary.query("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    pair.set_synchronous()
    # A copy taken now carries the primary's synchronous settings (postgresql.auto.conf).
    pair.rebuild_standby()
    assert pair.standby.query("SHOW synchronous_standby_names")[0] == {
        "synchronous_standby_names": "*"
    }
    old_primary, old_standby = pair.primary, pair.standby
    old_primary.stop()
    assert _values(old_standby) == [1]  # reads go on without the primary

    pair.promote()
    assert (pair.primary, pair.standby) == (old_standby, old_primary)
    assert (pair.primary_name, pair.standby_name) == ("pgpool_b", "pgpool_a")
    assert not _in_recovery(pair.primary)
    settings = pair.primary.query(
        "SELECT current_setting('synchronous_standby_names') AS names,"
        " current_setting('synchronous_commit') AS commit"
    )
    assert settings == [{"names": "", "commit": "on"}]
    _insert(pair.primary, 2)

    pair.rebuild_standby()
    assert pair.standby is old_primary
    assert _in_recovery(pair.standby)
    rows = pair.primary.query("SELECT application_name, state FROM pg_stat_replication")
    assert rows == [{"application_name": "pgpool_a", "state": "streaming"}]
    _insert(pair.primary, 3)
    pair.wait_caught_up()
    assert _values(pair.standby) == [1, 2, 3]


def test_each_node_stops_and_starts_on_its_own(
    postgres_replication: PostgresReplication,
) -> None:
    """A restarted standby catches up on what it missed; a restarted primary streams again."""
    pair = postgres_replication
    pair.primary.query("CREATE TABLE t (x int)")
    standby_url = pair.standby.url
    pair.standby.stop()
    assert not pair.standby.is_running()
    pair.primary.query("INSERT INTO t VALUES (1)")
    pair.standby.start()
    assert pair.standby.url == standby_url
    pair.wait_streaming()
    pair.wait_caught_up()
    assert _values(pair.standby) == [1]

    pair.primary.stop()
    assert _values(pair.standby) == [1]
    pair.primary.start()
    pair.wait_streaming()
    pair.primary.query("INSERT INTO t VALUES (2)")
    pair.wait_caught_up()
    assert _values(pair.standby) == [1, 2]


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait on a pidfd until ``pid`` exits; True if it did within ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def test_close_stops_both_and_removes_everything(
    postgres_replication: PostgresReplication,
) -> None:
    """close() leaves no postmaster and no directory, and may be called again."""
    pair = postgres_replication
    nodes = (pair.primary, pair.standby)
    pids = [node.postmaster_pid for node in nodes]
    dirs = [node.directory for node in nodes]
    assert None not in pids
    assert [d is not None and d.is_dir() for d in dirs] == [True, True]
    pair.close()
    for pid in pids:
        assert _wait_for_exit(int(pid or 0), 10), f"postmaster {pid} still running"
    assert not [d for d in dirs if d is not None and d.exists()]
    pair.close()


def test_no_pair_for_a_session_on_an_existing_server(tmp_path: Path) -> None:
    """With PGPOOL_TEST_DSN the fixture skips, saying why, or fails when CI is set."""
    plan, problems = replication_source({"PGPOOL_TEST_DSN": "postgresql://x@127.0.0.1:1/x"})
    assert plan is None
    assert "PGPOOL_TEST_DSN" in problems[0]
    plan, problems = replication_source({"PGPOOL_TEST_SOURCE": "testcontainers"})
    assert plan is None
    assert "only testcontainers" in problems[0]
    child = "def test_pair(postgres_replication):\n    raise AssertionError('ran')\n"
    (tmp_path / "test_child.py").write_text(child, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "CI")}
    env.pop("COVERAGE_PROCESS_START", None)
    env["PGPOOL_TEST_DSN"] = "postgresql://nobody@127.0.0.1:1/none"
    runs = {
        ci: subprocess.Popen(  # both at once: each pays for a pytest start-up
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsE", "."],
            cwd=tmp_path,
            env={**env, "CI": ci},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for ci in ("", "true")
    }
    outcomes = {ci: run.communicate(timeout=60)[0] for ci, run in runs.items()}
    assert "1 skipped" in outcomes[""], outcomes[""]
    assert "no primary + standby for the tests: PGPOOL_TEST_DSN is set" in outcomes[""]
    assert "1 error" in outcomes["true"], outcomes["true"]
    assert "no primary + standby for the tests: PGPOOL_TEST_DSN is set" in outcomes["true"]
