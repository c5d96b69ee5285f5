"""A throwaway PgBouncer in front of the test server, for tests of transaction pooling.

PgBouncer refuses to run as root, so (like the PostgreSQL binaries) it runs as an
unprivileged user when the tests run as root. It dies with the test process
(``PR_SET_PDEATHSIG``), so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg2

from ._discovery import server_os_user
from ._server import free_port, replace_url

__all__ = ["PgBouncer", "PgBouncerUnavailable", "find_pgbouncer"]

SEARCH = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")
_PR_SET_PDEATHSIG = 1


class PgBouncerUnavailable(RuntimeError):
    """No pgbouncer binary (install it: ``apt-get install pgbouncer``).

    .. versionadded:: 0.1
    """


def find_pgbouncer() -> Path | None:
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    return next((Path(p) for p in SEARCH if os.access(p, os.X_OK)), None)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PgBouncer:
    """pgbouncer on 127.0.0.1:<free port> forwarding every database to ``server_url``.

    ``url_for(url)`` routes a URL of that server through it; ``stop()`` / ``start()`` /
    ``restart()`` for outages; ``close()`` removes everything.

    .. versionadded:: 0.1
    """

    def __init__(self, server_url: str, *, pool_mode: str = "transaction") -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerUnavailable("pgbouncer not found (apt-get install pgbouncer)")
        self.binary = binary
        self.pool_mode = pool_mode
        self.os_user = server_os_user(os.geteuid())
        self.port = free_port()
        target = urllib.parse.urlsplit(server_url)
        self.base = Path(tempfile.mkdtemp(prefix="pgpool-pgbouncer-"))
        self._process: subprocess.Popen[bytes] | None = None
        config = f"""\
[databases]
* = host={target.hostname} port={target.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.base}/userlist.txt
pool_mode = {pool_mode}
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = {self.base}/pgbouncer.log
pidfile = {self.base}/pgbouncer.pid
admin_users = postgres
"""
        (self.base / "pgbouncer.ini").write_text(config, encoding="utf-8")
        (self.base / "userlist.txt").write_text('"postgres" ""\n', encoding="utf-8")
        if self.os_user is not None:
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, self.os_user.pw_uid, self.os_user.pw_gid)
        self.url = replace_url(server_url)
        self.server_url = server_url

    def __repr__(self) -> str:
        return f"<PgBouncer 127.0.0.1:{self.port} {self.pool_mode}>"

    def url_for(self, url: str) -> str:
        """``url`` (of the server behind) with host and port of this pgbouncer."""
        parts = urllib.parse.urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urllib.parse.urlunsplit(
            parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}")
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until it answers a query through to the server."""
        kwargs: dict[str, Any] = {}
        if self.os_user is not None:
            kwargs.update(user=self.os_user.pw_uid, group=self.os_user.pw_gid, extra_groups=[])
        self._process = subprocess.Popen(
            [str(self.binary), str(self.base / "pgbouncer.ini")],
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call
            **kwargs,
        )
        deadline = time.monotonic() + timeout
        url = self.url_for(self.server_url)
        while True:
            try:
                with contextlib.closing(psycopg2.connect(url, connect_timeout=2)) as conn:
                    conn.autocommit = True
                    conn.cursor().execute("SELECT 1")
                return
            except psycopg2.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.base / "pgbouncer.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"pgbouncer did not start: {log}") from None
                time.sleep(0.05)  # nothing to wait on: the port opens when it is ready

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM): client connections are cut."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self) -> None:
        """:meth:`stop`, then :meth:`start`: client connections are cut."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove its files. Idempotent."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
