"""The demo service as a newcomer runs it: the curl lines of the getting-started page
answer, Ctrl-C stops it cleanly and removes its throwaway PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgpool_core.testing import PostgresServer
from pgpool_core.testing._server import free_port

ROOT = Path(__file__).resolve().parents[2]


def documented_curl_lines() -> list[str]:
    text = (ROOT / "docs" / "getting-started.md").read_text()
    block = text.split("<!-- demo-curl", 1)[1].split("<!-- /demo-curl -->", 1)[0]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read the service's log until a line matches (the log is how it says it is ready)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")
def test_documented_curl_examples_against_the_demo_then_ctrl_c(postgres_server: object) -> None:
    """Starts demo/service.py with no POSTGRES_URL, runs every documented curl line, then
    SIGINT: exit 0 within 10 s and the throwaway server's directory is gone."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_URL"}
    env["PORT"] = str(port)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "service.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = wait_for_line(process, r"throwaway PostgreSQL .* in (\S+)", 60)
        directory = Path(started.rsplit(" in ", 1)[1].strip())
        assert directory.exists()
        # The test environment has pgpool[uvloop]: the demo runs on it.
        wait_for_line(process, r"serving on http://127\.0\.0\.1:\d+ on uvloop", 10)
        wait_for_line(process, r"schema ready", 10)  # created by an on_start callback
        outputs = []
        for line in documented_curl_lines():
            command = shlex.split(line.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
            assert done.returncode == 0, (line, done.stderr)
            outputs.append(done.stdout)
        status, created, listed, one, updated, deleted, metrics, live, ready, warm = outputs
        assert json.loads(status)["status"] == "ok"
        assert json.loads(created)["name"] == "apple"
        assert [item["name"] for item in json.loads(listed)] == ["apple"]
        assert json.loads(one)["id"] == json.loads(created)["id"]
        assert json.loads(updated)["name"] == "pear"
        assert deleted.strip() == "204"
        assert "pgpool_operation_duration_seconds_count{" in metrics
        assert live.strip() == "200"
        assert json.loads(ready)["status"] == "ok"
        assert json.loads(ready)["members"][0]["role"] == "writer"
        assert json.loads(warm)["status"] == "ok"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
            assert process.stdout is not None
            rest = process.stdout.read()
            process.stdout.close()
    assert code == 0, rest
    assert "throwaway PostgreSQL removed" in rest
    assert not directory.exists()


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "demo" / "service.py")],
        env={**{k: v for k, v in os.environ.items() if k != "POSTGRES_URL"}, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_on_a_taken_port_says_so_in_one_line(postgres_url: str) -> None:
    """A port in use is one line naming the port and PORT, exit 1, no traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = _run_demo({"PORT": str(port), "POSTGRES_URL": postgres_url})
    assert done.returncode == 1, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use; set PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_with_a_refused_password_exits_non_zero(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """A password the server refuses: CRITICAL, a clean stop, and exit status 78."""
    from pgpool_core.testing._server import replace_url

    with postgres_server.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS pgpool_demo_app")
        cur.execute("CREATE ROLE pgpool_demo_app LOGIN PASSWORD 'the-password'")
    url = replace_url(postgres_url, user="pgpool_demo_app", password="not-the-password")
    done = _run_demo({"PORT": str(free_port()), "POSTGRES_URL": url})
    assert done.returncode == 78, done.stderr
    assert "PostgreSQL is misconfigured" in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout
    assert [r for r in postgres_server.activity() if r["usename"] == "pgpool_demo_app"] == []
