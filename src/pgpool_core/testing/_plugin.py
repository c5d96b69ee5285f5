"""The pytest side of the throwaway server: provisioning once per session, fixtures, reporting.

The server starts only when a collected test asks for one of the fixtures below, so the
plugin costs nothing in suites that do not use it. The chosen source and version are
printed right after collection as ``postgres: <source> <version>``.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ._discovery import HOW_TO_GET_ONE
from ._pgbouncer import PgBouncer, PgBouncerUnavailable
from ._proxy import TcpProxy
from ._server import PostgresServer, start_first_available

__all__ = [
    "postgres_db_url",
    "postgres_server",
    "postgres_url",
    "pytest_collection_finish",
    "pytest_configure",
]

FIXTURES = frozenset({"postgres_server", "postgres_url", "postgres_db_url"})
TEMPLATE_DB = "pgpool_template"


@dataclass
class Provisioned:
    """What this session got: a server, or the reasons there is none."""

    server: PostgresServer | None = None
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.server is not None:
            return f"{self.server.source.value} {self.server.version}"
        return "unavailable (" + "; ".join(self.problems) + ")"


_KEY = pytest.StashKey[Provisioned]()


def in_ci(env: os._Environ[str] | dict[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def provision(config: pytest.Config) -> Provisioned:
    """Start (once) the first source that works; later calls return the same result."""
    if _KEY in config.stash:
        return config.stash[_KEY]
    server, problems = start_first_available(os.environ)
    result = Provisioned(server, problems)
    config.stash[_KEY] = result
    if server is not None:
        config.add_cleanup(server.close)
        _create_template(server)
    return result


#: Contrib extensions installed into the template when the server ships them.
TEMPLATE_EXTENSIONS = ("hstore", "uuid-ossp")


def _create_template(server: PostgresServer) -> None:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [TEMPLATE_DB])
        if cur.fetchone() is not None:
            return
        cur.execute(f'CREATE DATABASE "{TEMPLATE_DB}" TEMPLATE template0')
    with server.connect(TEMPLATE_DB) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)",
            [list(TEMPLATE_EXTENSIONS)],
        )
        for (name,) in cur.fetchall():
            cur.execute(f'CREATE EXTENSION IF NOT EXISTS "{name}"')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: the test uses the throwaway PostgreSQL of the pgpool plugin"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in session.items):
        return
    result = provision(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"postgres: {result.describe()}")


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> PostgresServer:
    """The session's throwaway server (a :class:`PostgresServer` handle).

    With no source available, tests using it are skipped with a hint how to get one,
    except when ``CI`` is set, where they fail.
    """
    result = provision(pytestconfig)
    if result.server is None:
        problems = "; ".join(result.problems)
        message = f"no PostgreSQL for the tests: {problems}. To get one: {HOW_TO_GET_ONE}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return result.server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A libpq URL of a password-less superuser on the session's server."""
    return postgres_server.url


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test only (a copy of a template), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with postgres_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    try:
        yield postgres_server.url_for(name)
    finally:
        # A fault test may leave the server down; bring it back for the tests after it.
        if postgres_server.controllable and not postgres_server.is_running():
            postgres_server.start()
        with postgres_server.connect() as conn, conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_proxy(postgres_server: PostgresServer) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` on loopback in front of the session's server, closed afterwards.

    ``postgres_proxy.rewrite(url)`` routes any URL of that server through it.
    """
    parts = urllib.parse.urlsplit(postgres_server.url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncer]:
    """A :class:`PgBouncer` in transaction pooling mode in front of the session's server.

    Skipped when pgbouncer is not installed, except when ``CI`` is set, where it fails.
    """
    try:
        bouncer = PgBouncer(postgres_server.url)
    except PgBouncerUnavailable as exc:
        if in_ci():
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    with bouncer:
        yield bouncer
