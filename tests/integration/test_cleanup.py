"""No postmaster outlives the test run that started it, however the run ends."""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pgpool_core.testing import PostgresServer

CHILD_TEST = textwrap.dedent(
    """
    import json, sys, threading

    def test_hold_the_server(postgres_server):
        watchdog = postgres_server._backend._watchdog.pid
        print(json.dumps({"pid": postgres_server.postmaster_pid, "watchdog": watchdog,
                          "dir": str(postgres_server.directory)}), file=sys.__stdout__, flush=True)
        threading.Event().wait()  # until the parent interrupts this run
    """
)


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait on a pidfd (no polling) until ``pid`` exits; True if it did within ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _first_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    """Read the child's output on a thread (select() cannot see a text pipe's buffer)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the child run did not report its server: {seen}") from None
        if not line:
            raise AssertionError(f"the child run ended early: {''.join(seen)}")
        if line.startswith("{"):
            return dict(json.loads(line))
        seen.append(line)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_run_leaves_no_postmaster(
    sig: signal.Signals, tmp_path: Path, restartable_server: PostgresServer
) -> None:
    """After Ctrl-C or SIGKILL of pytest, its postmaster is gone and its directory removed."""
    if restartable_server.postmaster_pid is None:
        pytest.skip(f"the {restartable_server.source.value} source starts no local postmaster")
    (tmp_path / "test_child.py").write_text(CHILD_TEST, encoding="utf-8")
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    (tmp_path / "pytest.ini").write_text(ini, encoding="utf-8")
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("COVERAGE_PROCESS_START", None)
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as proc:
        try:
            info = _first_json_line(proc, 120)
            assert Path(str(info["dir"])).is_dir()
            os.kill(proc.pid, sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    postmaster, watchdog = int(str(info["pid"])), int(str(info["watchdog"]))
    assert _wait_for_exit(postmaster, 30), f"postmaster {postmaster} still running"
    # The watchdog removes the directory once the postmaster is down, then exits.
    assert _wait_for_exit(watchdog, 30), "the watchdog did not finish"
    assert not Path(str(info["dir"])).exists(), f"{info['dir']} was not removed"
