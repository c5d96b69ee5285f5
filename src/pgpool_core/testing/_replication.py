"""A throwaway primary and one streaming standby, for tests of failover and read replicas.

Each node is a :class:`LocalCluster` (temp dir, own free port on 127.0.0.1, watchdog, an
unprivileged OS user when the tests run as root) behind a :class:`PostgresServer` handle.
The standby is a ``pg_basebackup -R`` copy of the primary that streams through a physical
replication slot, so it never falls irrecoverably behind. Every wait polls the condition
itself (``pg_stat_replication``, replay LSNs) against a deadline.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2
import psycopg2.extensions

from ._discovery import (
    DSN_ENV,
    SOURCE_ENV,
    Probes,
    Source,
    SourcePlan,
    find_embedded_bindir,
    find_local_bindir,
    plan_sources,
    server_os_user,
)
from ._server import (
    STARTUP_TIMEOUT,
    SUPERUSER,
    LocalCluster,
    PostgresServer,
    ServerStartError,
    _server_version,
    _wait_until_accepting,
)

__all__ = ["PostgresReplication", "replication_source", "start_replication"]

#: The nodes' ``cluster_name`` (also their ``application_name`` in ``pg_stat_replication``
#: and the name of the slot each streams through, when it is the standby).
NODE_NAMES = ("pgpool_a", "pgpool_b")

#: On top of the test server settings. ``synchronous_commit`` goes back to ``on``: a commit
#: then has its WAL written when it returns (cheap, fsync is off), so a standby can be
#: waited for up to the primary's ``pg_current_wal_lsn()`` right after it.
_REPLICATION_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "wal_receiver_status_interval": "1s",
    # A standby whose primary was down reconnects this soon after it is back (default 5s).
    "wal_retrieve_retry_interval": "200ms",
    "synchronous_commit": "on",
}

_REPLICATION_HBA = "host replication postgres 127.0.0.1/32 trust\n"

#: What a bindir needs beyond initdb/pg_ctl/postgres.
_BASEBACKUP = "pg_basebackup"


def replication_source(env: Mapping[str, str]) -> tuple[SourcePlan | None, list[str]]:
    """The local or embedded binaries a primary + standby can be made from, honouring
    ``PGPOOL_TEST_SOURCE``; else ``None`` and why not. A session pointed at a server by
    ``PGPOOL_TEST_DSN`` gets none: its user asked for no server of ours."""
    if env.get(DSN_ENV, "").strip():
        return None, [
            f"{DSN_ENV} is set, and a primary + standby needs PostgreSQL server binaries"
            " of its own (unset it to use local or embedded ones)"
        ]
    # Docker is not probed (no ping): its plan, if wanted, is only dropped below.
    probes = Probes(
        docker_available=lambda: True,
        find_local_bindir=find_local_bindir,
        find_embedded_bindir=find_embedded_bindir,
    )
    try:
        plans, problems = plan_sources(env, probes)
    except ValueError as exc:
        return None, [str(exc)]
    candidates = [plan for plan in plans if plan.bindir is not None]
    if not candidates and not problems:
        problems.append(
            f"{SOURCE_ENV}={env.get(SOURCE_ENV, '')!r} allows only testcontainers, and a"
            " primary + standby needs local or embedded binaries"
        )
    for plan in candidates:
        assert plan.bindir is not None
        if os.access(plan.bindir / _BASEBACKUP, os.X_OK):
            return plan, problems
        problems.append(f"{plan.source.value}: {plan.bindir} has no {_BASEBACKUP}")
    return None, problems


def start_replication(
    bindir: Path, *, source: Source = Source.LOCAL, timeout: float = STARTUP_TIMEOUT
) -> PostgresReplication:
    """Start a primary and a streaming standby from the binaries in ``bindir``; the caller
    owns the pair (``close()`` it, or use it as a context manager).

    .. versionadded:: 0.3
    """
    return PostgresReplication(bindir, source=source, timeout=timeout)


@dataclass
class _Node:
    name: str
    cluster: LocalCluster
    server: PostgresServer | None = None

    @property
    def handle(self) -> PostgresServer:
        assert self.server is not None, f"{self.name} never started"
        return self.server


class PostgresReplication:
    """A primary and one streaming standby, each a :class:`PostgresServer` handle.

    ``primary`` and ``standby`` are the current roles: :meth:`promote` swaps them, and
    :meth:`rebuild_standby` turns the node held by ``standby`` (say the old primary) into
    a fresh standby of ``primary``. Each node can be stopped and started through its
    handle; a restarted standby resumes streaming (:meth:`wait_streaming`).

    .. versionadded:: 0.3
    """

    def __init__(
        self, bindir: Path, *, source: Source = Source.LOCAL, timeout: float = STARTUP_TIMEOUT
    ) -> None:
        self.bindir = bindir
        self.source = source
        self._closed = False
        os_user = server_os_user(os.geteuid())
        self._nodes: list[_Node] = []
        try:
            for index, (name, port) in enumerate(zip(NODE_NAMES, _free_ports(2), strict=True)):
                cluster = self._cluster(name, os_user, port=port, initdb=index == 0)
                self._nodes.append(_Node(name, cluster))
            self._primary, self._standby = self._nodes
            self._start_node(self._primary, timeout)
            self._clone(self._standby, timeout)
        except BaseException:
            self.close()
            raise

    def _cluster(
        self, name: str, os_user: pwd.struct_passwd | None, *, port: int, initdb: bool
    ) -> LocalCluster:
        return LocalCluster(
            self.bindir,
            os_user=os_user,
            port=port,
            initdb=initdb,
            settings={**_REPLICATION_SETTINGS, "cluster_name": name},
            hba=_REPLICATION_HBA,
        )

    def __repr__(self) -> str:
        return (
            f"<PostgresReplication primary={self._primary.name}:{self._primary.cluster.port}"
            f" standby={self._standby.name}:{self._standby.cluster.port}>"
        )

    def __enter__(self) -> PostgresReplication:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def primary(self) -> PostgresServer:
        """The current primary (after :meth:`promote`, the promoted node)."""
        return self._primary.handle

    @property
    def standby(self) -> PostgresServer:
        """The current standby (after :meth:`promote`, the old primary, until rebuilt)."""
        return self._standby.handle

    @property
    def primary_name(self) -> str:
        """The primary's ``cluster_name`` (``pgpool_a`` or ``pgpool_b``)."""
        return self._primary.name

    @property
    def standby_name(self) -> str:
        """The standby's ``cluster_name``: its ``application_name`` in ``pg_stat_replication``."""
        return self._standby.name

    # -- replay ------------------------------------------------------------------------

    def lag(self) -> float:
        """Replay lag in seconds as the standby sees it: ``0.0`` when it has replayed all
        it received, else the age of the last transaction it replayed (the time since it
        started, if it has replayed none yet)."""
        row = self.standby.query(
            "SELECT pg_is_in_recovery() AS recovery,"
            " CASE WHEN pg_last_wal_receive_lsn() IS NULL"
            "   OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0"
            " ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - COALESCE("
            "   pg_last_xact_replay_timestamp(), pg_postmaster_start_time())))"
            " END AS lag"
        )[0]
        if not row["recovery"]:
            raise RuntimeError(f"{self._standby.name} is not in recovery (rebuild_standby())")
        return float(row["lag"])

    def pause_replay(self, timeout: float = 30.0) -> None:
        """Pause WAL replay on the standby (it keeps receiving) and wait until it is paused."""
        self.standby.query("SELECT pg_wal_replay_pause()")
        if _major(self.standby.version) >= 14:
            paused = "SELECT pg_get_wal_replay_pause_state() = 'paused'"
        else:  # pragma: no cover - PostgreSQL 13 and older
            paused = "SELECT pg_is_wal_replay_paused()"
        _poll(self.standby, paused, (), timeout, f"{self._standby.name} pausing replay")

    def resume_replay(self) -> None:
        """Resume WAL replay on the standby."""
        self.standby.query("SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed the primary's WAL up to its current
        ``pg_current_wal_lsn()``: every commit returned so far is visible on it."""
        target = self.primary.query("SELECT pg_current_wal_lsn()::text AS lsn")[0]["lsn"]
        _poll(
            self.standby,
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
            [target],
            timeout,
            f"{self._standby.name} replaying up to {target}",
            status="SELECT pg_last_wal_receive_lsn()::text AS received,"
            " pg_last_wal_replay_lsn()::text AS replayed,"
            " pg_is_in_recovery() AS recovery",
        )

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until the primary streams to the standby (say after either restarted)."""
        _poll(
            self.primary,
            "SELECT EXISTS (SELECT FROM pg_stat_replication"
            " WHERE application_name = %s AND state = 'streaming')",
            [self._standby.name],
            timeout,
            f"{self._primary.name} streaming to {self._standby.name}",
            status="SELECT application_name, state, sync_state FROM pg_stat_replication",
        )

    # -- synchronous replication ---------------------------------------------------------

    def set_synchronous(self, enabled: bool = True, timeout: float = 30.0) -> None:
        """Make commits on the primary wait until the standby has applied them
        (``synchronous_standby_names = '*'``, ``synchronous_commit = remote_apply``), and
        wait until ``pg_stat_replication`` shows the standby as ``sync``. ``enabled=False``
        resets both, and commits stop waiting for the standby."""
        primary = self.primary
        with primary.connect() as conn, conn.cursor() as cur:
            if enabled:
                cur.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                cur.execute("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
            else:
                cur.execute("ALTER SYSTEM RESET synchronous_standby_names")
                cur.execute("ALTER SYSTEM RESET synchronous_commit")
            cur.execute("SELECT pg_reload_conf()")
        if enabled:
            ready = (
                "SELECT current_setting('synchronous_standby_names') = '*' AND EXISTS ("
                " SELECT FROM pg_stat_replication"
                " WHERE application_name = %s AND sync_state = 'sync')"
            )
            params: list[str] = [self._standby.name]
        else:
            ready = "SELECT current_setting('synchronous_standby_names') = ''"
            params = []
        _poll(
            primary,
            ready,
            params,
            timeout,
            f"{self._primary.name} {'with' if enabled else 'without'} a synchronous standby",
            status="SELECT application_name, state, sync_state FROM pg_stat_replication",
        )
        _checkpointer_barrier(primary)

    # -- failover ------------------------------------------------------------------------

    def promote(self, timeout: float = 30.0) -> None:
        """Promote the standby (``pg_ctl promote``) and wait until it leaves recovery. Its
        copy of the primary's synchronous replication settings is reset, so its commits
        never wait for a standby it does not have. Then ``primary`` is the promoted node
        and ``standby`` the old primary (stopped or not; see :meth:`rebuild_standby`)."""
        node = self._standby
        deadline = time.monotonic() + timeout
        # Reset before the promotion too (ALTER SYSTEM works in recovery), so that not one
        # commit on the new primary waits; and again after it, in case it was not.
        with contextlib.suppress(psycopg2.Error):
            _reset_synchronous(node.handle, _left(deadline))
        node.cluster._run(
            "pg_ctl", "promote", "-D", str(node.cluster.data), "-w",
            "-t", str(max(1, int(_left(deadline)))),
            timeout=_left(deadline) + 10,
        )  # fmt: skip
        _poll(
            node.handle,
            "SELECT NOT pg_is_in_recovery()",
            (),
            _left(deadline),
            f"{node.name} leaving recovery",
        )
        _reset_synchronous(node.handle, _left(deadline))
        self._primary, self._standby = node, self._primary

    def rebuild_standby(self, timeout: float = 60.0) -> None:
        """Make the node held by ``standby`` a fresh streaming standby of ``primary``: stop
        it, wipe its data directory, ``pg_basebackup -R`` from ``primary``, start it on the
        same port and wait until it streams."""
        self._clone(self._standby, timeout)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop both nodes and remove their directories. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # The standby first: stopped after its primary, it would retry to connect.
        primary = getattr(self, "_primary", None)
        for node in sorted(self._nodes, key=lambda n: n is primary):
            if node.server is not None:
                node.server.close()
            else:
                node.cluster.close()

    # -- internals -----------------------------------------------------------------------

    def _start_node(self, node: _Node, timeout: float) -> None:
        cluster = node.cluster
        try:
            cluster.start()
        except ServerStartError as exc:
            tail = cluster.log_tail()
            if tail:
                raise ServerStartError(f"{node.name}: {exc}\nserver log:\n{tail}") from exc
            raise
        _wait_until_accepting(cluster.url, timeout)
        if node.server is None:
            node.server = PostgresServer(self.source, cluster, _server_version(cluster.url))

    def _clone(self, node: _Node, timeout: float) -> None:
        """``node`` (stopped or not) becomes a new standby of the current primary."""
        deadline = time.monotonic() + timeout
        primary, cluster = self._primary, node.cluster
        if cluster.is_running():
            try:
                cluster.stop("fast")
            except (ServerStartError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        _fresh_slot(primary.handle, node.name, _left(deadline))
        if cluster.data.exists():
            shutil.rmtree(cluster.data)
        cluster._run(
            _BASEBACKUP, "-D", str(cluster.data), "-h", "127.0.0.1",
            "-p", str(primary.cluster.port), "-U", SUPERUSER, "-w",
            "-R", "-S", node.name, "-X", "stream", "-c", "fast", "--no-sync",
            timeout=_left(deadline),
        )  # fmt: skip
        # The copy holds the primary's port, socket dir and cluster_name: later lines win.
        cluster.configure()
        self._start_node(node, _left(deadline))
        self.wait_streaming(_left(deadline))


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: the sockets are held together, since the kernel
    readily hands out one port twice to sockets bound and closed in turn."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _poll(
    server: PostgresServer,
    sql: str,
    params: Sequence[Any],
    timeout: float,
    what: str,
    *,
    status: str | None = None,
) -> None:
    """Run ``sql`` (one boolean) on ``server`` until it is true, on one connection (a new
    one if the server drops it), backing off from 5 ms to 100 ms; ``TimeoutError`` naming
    ``what`` and the result of ``status`` (or the last error) at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    conn: psycopg2.extensions.connection | None = None
    last: object = None
    try:
        while True:
            try:
                if conn is None:
                    conn = psycopg2.connect(server.url, connect_timeout=5)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    row = cur.fetchone()
                if row is not None and row[0]:
                    return
                last = row
                if status is not None and time.monotonic() >= deadline:
                    with conn.cursor() as cur:
                        cur.execute(status)
                        last = cur.fetchall()
            except psycopg2.OperationalError as exc:
                last = " ".join(str(exc).split())
                if conn is not None:
                    conn.close()
                    conn = None
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not within {timeout:.1f} s (last: {last})")
            # No event crosses the process boundary to wait on: back off between looks.
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    finally:
        if conn is not None:
            conn.close()


def _checkpointer_barrier(server: PostgresServer) -> None:
    """Whether commits wait for a synchronous standby is published by the checkpointer
    when it re-reads the configuration; a CHECKPOINT, which it serves only after handling
    the reload signal sent with ours, makes sure it has."""
    server.query("CHECKPOINT")


def _reset_synchronous(server: PostgresServer, timeout: float) -> None:
    """Reset the synchronous replication settings and wait until they are in force."""
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("ALTER SYSTEM RESET synchronous_standby_names")
        cur.execute("ALTER SYSTEM RESET synchronous_commit")
        cur.execute("SELECT pg_reload_conf()")
    _poll(
        server,
        "SELECT current_setting('synchronous_standby_names') = ''",
        (),
        timeout,
        "synchronous_standby_names reset",
    )
    _checkpointer_barrier(server)


def _fresh_slot(primary: PostgresServer, name: str, timeout: float) -> None:
    """A new physical slot ``name`` on ``primary``, reserving WAL from now on (an old one
    of that name is dropped once its walsender is gone)."""
    _poll(
        primary,
        "SELECT NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s AND active)",
        [name],
        timeout,
        f"slot {name} released",
    )
    primary.query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        [name],
    )
    primary.query("SELECT pg_create_physical_replication_slot(%s, true)", [name])
