"""Throwaway PostgreSQL servers for tests: a handle that can stop, start, restart and inspect.

Three backends sit behind :class:`PostgresServer`: an existing server named by a DSN
(no lifecycle control), a testcontainers container, and a cluster of our own made by
``initdb`` + ``pg_ctl`` from local or embedded binaries. The local cluster is guarded by a
watchdog process, so the postmaster and its directory go away even when pytest is killed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions

from pgpool_core._connector import REFUSED_BY_SERVER
from pgpool_core._redact import passwords_in, scrub

from ._discovery import (
    Probes,
    Source,
    SourcePlan,
    docker_available,
    find_embedded_bindir,
    find_local_bindir,
    plan_sources,
    server_os_user,
)

__all__ = [
    "PostgresServer",
    "ServerControlUnavailable",
    "ServerStartError",
    "start_first_available",
    "start_server",
]

SUPERUSER = "postgres"
STARTUP_TIMEOUT = 60.0


class ServerStartError(RuntimeError):
    """A source was available but the server did not come up.

    .. versionadded:: 0.1
    """


class ServerControlUnavailable(RuntimeError):
    """The server cannot be stopped or started (e.g. it was given by ``PGPOOL_TEST_DSN``).

    .. versionadded:: 0.1
    """


class _Backend(Protocol):
    url: str

    def stop(self, mode: str) -> None: ...
    def start(self) -> None: ...
    def is_running(self) -> bool: ...
    def close(self) -> None: ...


class PostgresServer:
    """A handle on the test server.

    ``url`` is a superuser libpq URL (TCP on 127.0.0.1 for servers we start). ``stop``,
    ``start`` and ``restart`` keep the address, so pools built on ``url`` reconnect to the
    same place. Control methods raise :class:`ServerControlUnavailable` for DSN servers.

    .. versionadded:: 0.1
    """

    def __init__(self, source: Source, backend: _Backend, version: str) -> None:
        self.source = source
        self.version = version
        self._backend = backend

    @property
    def url(self) -> str:
        """A libpq URL of a password-less superuser on this server."""
        return self._backend.url

    @property
    def controllable(self) -> bool:
        """Whether ``stop``/``start`` work (false for a server given by ``PGPOOL_TEST_DSN``)."""
        return not isinstance(self._backend, _ExternalBackend)

    @property
    def postmaster_pid(self) -> int | None:
        """The postmaster's pid for clusters this plugin started, else ``None``."""
        backend = self._backend
        return backend.postmaster_pid() if isinstance(backend, LocalCluster) else None

    @property
    def directory(self) -> Path | None:
        """The temp directory of a cluster this plugin started (removed at session end)."""
        backend = self._backend
        return backend.base if isinstance(backend, LocalCluster) else None

    def __repr__(self) -> str:
        return f"<PostgresServer source={self.source.value} version={self.version}>"

    def url_for(
        self, database: str | None = None, *, user: str | None = None, password: str | None = None
    ) -> str:
        """The server URL with another database, user and/or password."""
        return replace_url(self.url, database=database, user=user, password=password)

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``), waiting until it is down."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode={mode!r}: expected 'smart', 'fast' or 'immediate'")
        self._backend.stop(mode)

    def start(self) -> None:
        """Start the server on the same address and wait until it accepts connections."""
        self._backend.start()
        _wait_until_accepting(self.url, STARTUP_TIMEOUT)

    def restart(self, mode: str = "fast") -> None:
        """:meth:`stop` in ``mode``, then :meth:`start`: every connection is cut."""
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        """Whether the server process is up."""
        return self._backend.is_running()

    def close(self) -> None:
        """Stop the server and remove everything it left behind. Idempotent."""
        self._backend.close()

    # -- inspection ----------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self, database: str | None = None) -> Iterator[psycopg2.extensions.connection]:
        """A short-lived autocommit superuser connection (synchronous, for test setup)."""
        conn = psycopg2.connect(self.url_for(database), connect_timeout=10)
        try:
            conn.autocommit = True
            yield conn
        finally:
            conn.close()

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run one statement as superuser and return its rows as dicts (``[]`` if none)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            if cur.description is None:
                return []
            names = [column.name for column in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def activity(self, database: str | None = None) -> list[dict[str, Any]]:
        """Client backends from ``pg_stat_activity`` (this helper's own excluded)."""
        sql = (
            "SELECT pid, datname, usename, application_name, state, query, backend_start,"
            " xact_start, query_start, state_change, wait_event_type, wait_event"
            " FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        if database is None:
            return self.query(sql)
        return self.query(sql + " AND datname = %s", [database])

    def terminate_backends(self, database: str | None = None) -> int:
        """``pg_terminate_backend`` every other client backend (of one database); returns count."""
        rows = self.query(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%s::text IS NULL OR datname = %s::text)",
            [database, database],
        )
        return int(rows[0]["n"])


def replace_url(
    url: str,
    *,
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if user is not None or password is not None:
        current_user, _, hostport = netloc.rpartition("@")
        name = user if user is not None else current_user.partition(":")[0]
        auth = urllib.parse.quote(name, safe="")
        if password is not None:
            auth += ":" + urllib.parse.quote(password, safe="")
        netloc = f"{auth}@{hostport}"
    path = parts.path if database is None else "/" + urllib.parse.quote(database, safe="")
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


#: Connect failures that waiting cannot heal: the server answered and refused us (the
#: pool's own list, plus a role without CONNECT on the database).
_REFUSALS = (*REFUSED_BY_SERVER, "permission denied")


def _wait_until_accepting(url: str, timeout: float) -> None:
    """Block until the server answers a real query, or raise with the last error. A
    refusal (authentication, unknown role or database) raises at once: retrying it for
    ``timeout`` would only delay the same answer."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    delay = 0.02
    while time.monotonic() < deadline:
        try:
            conn = psycopg2.connect(url, connect_timeout=5)
        except psycopg2.OperationalError as exc:
            last = exc
            message = " ".join(str(exc).split())
            if any(refusal in message for refusal in _REFUSALS):
                raise ServerStartError(f"the server refused the connection: {message}") from None
        else:
            conn.close()
            return
        # The server gives no event to wait on across processes; back off between tries.
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    raise ServerStartError(f"server did not accept connections within {timeout:.0f} s: {last}")


def _server_version(url: str) -> str:
    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        return str(conn.info.parameter_status("server_version") or "?").split()[0]
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- source 1: an existing server ---------------------------------------------------------


class _ExternalBackend:
    def __init__(self, url: str) -> None:
        self.url = url

    def _refuse(self) -> None:
        raise ServerControlUnavailable(
            "this server was given by PGPOOL_TEST_DSN; the tests cannot stop or start it"
        )

    def stop(self, mode: str) -> None:
        self._refuse()

    def start(self) -> None:
        self._refuse()

    def is_running(self) -> bool:
        return True

    def close(self) -> None:
        pass


# -- source 2: testcontainers -------------------------------------------------------------


class _ContainerBackend:  # pragma: no cover - needs a Docker engine, absent on our CI
    def __init__(self, image: str = "postgres:16-alpine") -> None:
        from testcontainers.postgres import PostgresContainer

        # A fixed host port keeps the URL valid across container restarts.
        self._port = free_port()
        container = PostgresContainer(
            image, username=SUPERUSER, password="postgres", dbname="postgres"
        )
        container.with_bind_ports(5432, self._port)
        container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
        container.start()
        self._container = container
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self._port}/postgres"

    def stop(self, mode: str) -> None:
        self._container.get_wrapped_container().stop(timeout=0 if mode == "immediate" else 10)

    def start(self) -> None:
        self._container.get_wrapped_container().start()

    def is_running(self) -> bool:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")

    def close(self) -> None:
        self._container.stop()


# -- sources 3 and 4: a cluster of our own -------------------------------------------------

# Runs as this (possibly root) process's user, holding the read end of a pipe. When the
# pipe closes, however pytest ended (teardown, Ctrl-C, SIGKILL), it stops the postmaster
# and removes the directory. It ignores SIGINT and has its own session, so a Ctrl-C at the
# terminal cannot kill it before it has cleaned up.
_WATCHDOG = r"""
import os, shutil, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
base, pg_ctl, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.stdin.buffer.read()
data = os.path.join(base, "data")
if os.path.exists(os.path.join(data, "postmaster.pid")):
    kwargs = {} if uid < 0 else {"user": uid, "group": gid, "extra_groups": []}
    subprocess.run([pg_ctl, "stop", "-D", data, "-m", "immediate", "-w", "-t", "30"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base, **kwargs)
shutil.rmtree(base, ignore_errors=True)
"""

_SERVER_SETTINGS = {
    # Throwaway data: durability buys nothing and costs seconds per test run.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
    "log_connections": "off",
    "logging_collector": "off",
    "max_prepared_transactions": "10",
}

# Superuser: trusted, so test URLs need no password. Other roles must authenticate over
# TCP, so wrong-password and secret-redaction tests meet a real password check.
_PG_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all postgres ::1/128 trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


class LocalCluster:
    """``initdb`` + ``pg_ctl`` in a temp dir on a free port, TCP 127.0.0.1 and a unix socket."""

    def __init__(
        self,
        bindir: Path,
        *,
        os_user: pwd.struct_passwd | None = None,
        port: int | None = None,
        initdb: bool = True,
        settings: Mapping[str, str] | None = None,
        hba: str = "",
    ) -> None:
        """``initdb=False`` leaves ``data`` absent, for a copy (``pg_basebackup``) to fill;
        call :meth:`configure` once it is there. ``settings`` are appended to
        ``postgresql.conf`` after the defaults (so they win), ``hba`` lines to ``pg_hba.conf``.
        """
        self.bindir = bindir
        self.os_user = os_user
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.hba = hba
        self.base = Path(tempfile.mkdtemp(prefix="pgpool-test-"))
        self.data = self.base / "data"
        self.socket_dir = self.base
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._closed = False
        try:
            os.chmod(self.base, 0o755)
            if os_user is not None:
                os.chown(self.base, os_user.pw_uid, os_user.pw_gid)
            self._start_watchdog()
            if initdb:
                self._initdb()
        except BaseException:
            self.close()
            raise

    def _start_watchdog(self) -> None:
        uid, gid = (self.os_user.pw_uid, self.os_user.pw_gid) if self.os_user else (-1, -1)
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(self.base),
                str(self.bindir / "pg_ctl"),
                str(uid),
                str(gid),
            ],
            stdin=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.os_user is not None:
            kwargs.update(user=self.os_user.pw_uid, group=self.os_user.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        try:
            return subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
                cwd=self.base,
                env=env,
                **kwargs,
            )
        except subprocess.CalledProcessError as exc:
            output = (exc.stderr or exc.stdout).strip()[-2000:]
            raise ServerStartError(f"{args[0]} failed (exit {exc.returncode}): {output}") from exc

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self.configure()
        (self.data / "pg_hba.conf").write_text(_PG_HBA + self.hba, encoding="utf-8")

    def configure(self) -> None:
        """Append the test settings, this cluster's address and ``settings`` to
        ``postgresql.conf``; later lines win, so this also re-addresses a copied data dir."""
        conf = "".join(f"{key} = '{value}'\n" for key, value in _SERVER_SETTINGS.items())
        conf += f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
        conf += f"unix_socket_directories = '{self.socket_dir}'\n"
        conf += "".join(f"{key} = '{value}'\n" for key, value in self.settings.items())
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write(conf)

    def start(self) -> None:
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.base / "server.log"),
            "-w", "-t", str(int(STARTUP_TIMEOUT)),
        )  # fmt: skip

    def stop(self, mode: str) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.base / "server.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.is_running():
            try:
                self.stop("fast")
            except (ServerStartError, subprocess.TimeoutExpired):
                with contextlib.suppress(ServerStartError, subprocess.TimeoutExpired):
                    self.stop("immediate")
        watchdog = self._watchdog
        if watchdog is not None:
            # Closing the pipe is the watchdog's signal; it removes the directory.
            if watchdog.stdin is not None:
                watchdog.stdin.close()
            try:
                watchdog.wait(timeout=60)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def start_server(plan: SourcePlan) -> PostgresServer:
    """Bring up the server a plan describes and return its handle (raises on failure)."""
    backend: _Backend
    if plan.source is Source.DSN:
        assert plan.dsn is not None
        backend = _ExternalBackend(plan.dsn)
    elif plan.source is Source.TESTCONTAINERS:  # pragma: no cover - needs Docker
        backend = _ContainerBackend()
    else:
        assert plan.bindir is not None
        cluster = LocalCluster(plan.bindir, os_user=server_os_user(os.geteuid()))
        try:
            cluster.start()
        except BaseException as exc:
            tail = cluster.log_tail()
            cluster.close()
            if isinstance(exc, ServerStartError) and tail:
                raise ServerStartError(f"{exc}\nserver log:\n{tail}") from exc
            raise
        backend = cluster
    try:
        _wait_until_accepting(backend.url, STARTUP_TIMEOUT)
        version = _server_version(backend.url)
    except BaseException:
        backend.close()
        raise
    return PostgresServer(plan.source, backend, version)


def start_first_available(
    env: Mapping[str, str] | None = None,
) -> tuple[PostgresServer | None, list[str]]:
    """Start the first source that works, in the documented order.

    Returns the server (or ``None``) and why each passed-over source was not used. The
    caller owns the server: ``close()`` it when done.

    .. versionadded:: 0.1
    """
    probes = Probes(
        docker_available=docker_available,
        find_local_bindir=find_local_bindir,
        find_embedded_bindir=find_embedded_bindir,
    )
    try:
        plans, problems = plan_sources(os.environ if env is None else env, probes)
    except ValueError as exc:
        return None, [str(exc)]
    for plan in plans:
        try:
            return start_server(plan), problems
        except Exception as exc:  # try the next source, keep the reason (without secrets)
            secrets = passwords_in(plan.dsn) if plan.dsn else set()
            problems.append(scrub(f"{plan.source.value}: {exc}", secrets))
    return None, problems
