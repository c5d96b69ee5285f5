"""Choosing where the test PostgreSQL comes from, driven by fake probes."""

from __future__ import annotations

import os
import pwd
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgpool_core.testing._discovery import (
    Probes,
    Source,
    docker_available,
    find_local_bindir,
    plan_sources,
    server_os_user,
)

BIN = Path("/opt/pg/bin")
EMB = Path("/site/pginstall/bin")


class Calls:
    def __init__(self, docker: bool = True, local: Path | None = BIN, embedded: Path | None = EMB):
        self.docker, self.local, self.embedded = docker, local, embedded
        self.asked: list[str] = []

    def probes(self) -> Probes:
        def docker() -> bool:
            self.asked.append("docker")
            return self.docker

        def local() -> Path | None:
            self.asked.append("local")
            return self.local

        def embedded() -> Path | None:
            self.asked.append("embedded")
            return self.embedded

        return Probes(docker, local, embedded)


def test_dsn_wins_and_nothing_else_is_probed() -> None:
    """PGPOOL_TEST_DSN is used as is; no Docker ping, no binary search."""
    calls = Calls()
    plans, skipped = plan_sources({"PGPOOL_TEST_DSN": "postgresql://u@h/db"}, calls.probes())
    assert [(p.source, p.dsn) for p in plans] == [(Source.DSN, "postgresql://u@h/db")]
    assert skipped == []
    assert calls.asked == []


def test_all_available_orders_testcontainers_local_embedded() -> None:
    """With every source available the order is Docker, local binaries, embedded wheel."""
    plans, _ = plan_sources({}, Calls().probes())
    assert [p.source for p in plans] == [Source.TESTCONTAINERS, Source.LOCAL, Source.EMBEDDED]
    assert plans[1].bindir == BIN
    assert plans[2].bindir == EMB


def test_no_docker_means_local_first_and_says_why() -> None:
    """Without a Docker engine the local binaries win, and the reason is recorded."""
    plans, skipped = plan_sources({}, Calls(docker=False).probes())
    assert plans[0].source is Source.LOCAL
    assert skipped == ["testcontainers: no Docker engine answered"]


def test_hidden_binaries_fall_back_to_embedded() -> None:
    """No Docker and no local binaries leaves the embedded wheel."""
    plans, skipped = plan_sources({}, Calls(docker=False, local=None).probes())
    assert [p.source for p in plans] == [Source.EMBEDDED]
    assert len(skipped) == 2


def test_nothing_available_yields_no_plan_and_three_reasons() -> None:
    """With no source at all the plan is empty and each source says why."""
    plans, skipped = plan_sources({}, Calls(docker=False, local=None, embedded=None).probes())
    assert plans == []
    assert [reason.split(":")[0] for reason in skipped] == ["testcontainers", "local", "embedded"]


def test_source_env_restricts_and_skips_the_docker_probe() -> None:
    """PGPOOL_TEST_SOURCE=embedded,local keeps that order and never pings Docker."""
    calls = Calls()
    plans, _ = plan_sources({"PGPOOL_TEST_SOURCE": "embedded, local"}, calls.probes())
    assert [p.source for p in plans] == [Source.EMBEDDED, Source.LOCAL]
    assert "docker" not in calls.asked


def test_docker_is_another_name_for_testcontainers() -> None:
    plans, _ = plan_sources({"PGPOOL_TEST_SOURCE": "docker"}, Calls().probes())
    assert [p.source for p in plans] == [Source.TESTCONTAINERS]


def test_unknown_source_name_is_a_clear_error() -> None:
    """A typo in PGPOOL_TEST_SOURCE names the variable and the bad value."""
    with pytest.raises(ValueError, match=r"PGPOOL_TEST_SOURCE='lokal'.*lokal"):
        plan_sources({"PGPOOL_TEST_SOURCE": "lokal"}, Calls().probes())


def test_docker_probe_missing_socket_is_false(tmp_path: Path) -> None:
    """An absent engine socket answers False at once."""
    assert docker_available({"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}) is False


def test_docker_probe_unsupported_scheme_is_false() -> None:
    """ssh:// and other hosts are not probed here."""
    assert docker_available({"DOCKER_HOST": "ssh://user@host"}) is False


@pytest.fixture
def silent_unix_server(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts but never answers, like a wedged engine."""
    path = str(tmp_path / "d.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    stop = threading.Event()

    def accept() -> None:
        conn, _ = server.accept()
        stop.wait()
        conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        server.close()
        thread.join(timeout=5)


def test_docker_probe_gives_up_fast_on_a_silent_engine(silent_unix_server: str) -> None:
    """A socket that never replies costs at most the probe's bound, not a hang."""
    started = time.monotonic()
    assert docker_available({"DOCKER_HOST": f"unix://{silent_unix_server}"}, timeout=0.1) is False
    assert time.monotonic() - started < 1.0


def test_docker_probe_accepts_a_200_ping(tmp_path: Path) -> None:
    """An engine answering ``HTTP/1.1 200 OK`` to /_ping counts as available."""
    path = str(tmp_path / "ok.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert docker_available({"DOCKER_HOST": f"unix://{path}"}) is True
    finally:
        thread.join(timeout=5)
        server.close()


def _fake_bindir(root: Path, name: str) -> Path:
    bindir = root / name / "bin"
    bindir.mkdir(parents=True)
    for exe in ("initdb", "pg_ctl", "postgres"):
        (bindir / exe).write_text("#!/bin/sh\n")
        (bindir / exe).chmod(0o755)
    return bindir


def test_search_dirs_pick_the_highest_version(tmp_path: Path) -> None:
    """Among several installed versions the newest is chosen."""
    _fake_bindir(tmp_path, "9.6")
    newest = _fake_bindir(tmp_path, "16")
    _fake_bindir(tmp_path, "15")
    found = find_local_bindir(
        {"PATH": "", "PGPOOL_TEST_PG_DIRS": f"{tmp_path}/*/bin"},
        pg_config_bindir=lambda env: None,
    )
    assert found == newest


def test_pg_config_bindir_beats_the_search_dirs(tmp_path: Path) -> None:
    """``pg_config --bindir`` names the installation to use when present."""
    chosen = _fake_bindir(tmp_path, "14")
    _fake_bindir(tmp_path, "17")
    found = find_local_bindir(
        {"PATH": "", "PGPOOL_TEST_PG_DIRS": f"{tmp_path}/*/bin"},
        pg_config_bindir=lambda env: str(chosen),
    )
    assert found == chosen


def test_empty_search_dirs_and_path_hide_the_binaries() -> None:
    """PGPOOL_TEST_PG_DIRS='' and an empty PATH find nothing, even where PostgreSQL is installed."""
    assert find_local_bindir({"PATH": "", "PGPOOL_TEST_PG_DIRS": ""}) is None


def test_directory_without_pg_ctl_is_not_enough(tmp_path: Path) -> None:
    """initdb alone (a client-only install) does not count."""
    bindir = _fake_bindir(tmp_path, "15")
    (bindir / "pg_ctl").unlink()
    assert (
        find_local_bindir(
            {"PATH": str(bindir), "PGPOOL_TEST_PG_DIRS": ""}, pg_config_bindir=lambda e: None
        )
        is None
    )


def _pw(name: str, uid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", "/nonexistent", "/bin/false"))


USERS = {"postgres": _pw("postgres", 101), "nobody": _pw("nobody", 65534), "root": _pw("root", 0)}


def _lookup(name: str) -> pwd.struct_passwd:
    return USERS[name]


def test_non_root_runs_the_binaries_as_itself() -> None:
    """A normal user needs no switch."""
    assert server_os_user(1000, {}, _lookup) is None


def test_root_runs_the_binaries_as_postgres() -> None:
    """As root the binaries run as ``postgres`` when that user exists."""
    entry = server_os_user(0, {}, _lookup)
    assert entry is not None
    assert entry.pw_name == "postgres"


def test_root_without_postgres_user_falls_back_to_nobody() -> None:
    """Without a ``postgres`` user, ``nobody`` is used."""
    entry = server_os_user(0, {}, lambda name: {"nobody": USERS["nobody"]}[name])
    assert entry is not None
    assert entry.pw_name == "nobody"


def test_root_never_picks_a_uid_zero_user() -> None:
    """An override naming a uid-0 account is refused with the variable's name."""
    with pytest.raises(RuntimeError, match="PGPOOL_TEST_PG_OS_USER"):
        server_os_user(0, {"PGPOOL_TEST_PG_OS_USER": "root"}, _lookup)


def test_real_probe_of_this_process_user_is_consistent() -> None:
    """On this machine the real lookup agrees with the euid rule."""
    entry = server_os_user(os.geteuid())
    assert (entry is None) == (os.geteuid() != 0)
