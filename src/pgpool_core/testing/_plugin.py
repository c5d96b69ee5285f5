"""The pytest side of the throwaway server: provisioning once per session, fixtures, reporting.

The server starts only when a collected test asks for one of the fixtures below, so the
plugin costs nothing in suites that do not use it. The chosen source and version are
printed right after collection as ``postgres: <source> <version>``.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg2
import psycopg2.errors
import pytest

from ._discovery import DSN_ENV, HOW_TO_GET_ONE, Source
from ._pgbouncer import PgBouncer, PgBouncerUnavailable
from ._proxy import TcpProxy
from ._replication import PostgresReplication, replication_source, start_replication
from ._server import PostgresServer, start_first_available

__all__ = [
    "postgres_db_url",
    "postgres_server",
    "postgres_url",
    "pytest_collection_finish",
    "pytest_configure",
]

FIXTURES = frozenset({"postgres_server", "postgres_url", "postgres_db_url"})
#: The template of every test database (on a server given by PGPOOL_TEST_DSN, one per
#: session with a unique suffix, dropped when the session ends).
TEMPLATE_DB = "pgpool_template"


@dataclass
class Provisioned:
    """What this session got: a server, or the reasons there is none; the template that
    ``postgres_db_url`` copies, or why it could not be made."""

    server: PostgresServer | None = None
    problems: list[str] = field(default_factory=list)
    template: str = TEMPLATE_DB
    template_problem: str | None = None

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
        if server.source is Source.DSN:  # someone else's server: leave nothing behind
            result.template = f"{TEMPLATE_DB}_{uuid.uuid4().hex[:8]}"
            config.add_cleanup(lambda: _drop_template(server, result.template))
        result.template_problem = _create_template(server, result.template)
    return result


#: Contrib extensions installed into the template when the server ships them.
TEMPLATE_EXTENSIONS = ("hstore", "uuid-ossp")


def _create_template(server: PostgresServer, template: str) -> str | None:
    """Create the template (once); returns why it could not be, in one line. Extensions
    the role may not create are left out of it (tests that need them will say so)."""
    try:
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template])
            if cur.fetchone() is not None:
                return None
            cur.execute(f'CREATE DATABASE "{template}" TEMPLATE template0')
        with server.connect(template) as conn, conn.cursor() as cur:  # autocommit
            cur.execute(
                "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)",
                [list(TEMPLATE_EXTENSIONS)],
            )
            for (name,) in cur.fetchall():
                with contextlib.suppress(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(f'CREATE EXTENSION IF NOT EXISTS "{name}"')
    except psycopg2.errors.InsufficientPrivilege:
        user = urllib.parse.urlsplit(server.url).username or "the role"
        return (
            f"postgres_db_url needs the CREATEDB privilege, which {user} of {DSN_ENV} lacks"
            f" (ALTER ROLE {user} CREATEDB), or use a server the tests may own"
        )
    except psycopg2.Error as exc:
        return f"cannot create the template database {template}: {' '.join(str(exc).split())}"
    return None


def _drop_database(server: PostgresServer, name: str) -> None:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_template(server: PostgresServer, name: str) -> None:
    with contextlib.suppress(psycopg2.Error):  # the server is gone: nothing left to drop
        _drop_database(server, name)


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
        if os.environ.get(DSN_ENV, "").strip():  # the server asked for did not work
            pytest.fail(f"{DSN_ENV}: {problems}", pytrace=False)
        message = f"no PostgreSQL for the tests: {problems}. To get one: {HOW_TO_GET_ONE}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return result.server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A libpq URL on the session's server: a password-less superuser's on a server the
    plugin started; with ``PGPOOL_TEST_DSN``, that URL (and that role's rights)."""
    return postgres_server.url


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer, pytestconfig: pytest.Config) -> Iterator[str]:
    """A fresh, empty database for this test only (a copy of a template), dropped afterwards."""
    result = provision(pytestconfig)
    if result.template_problem is not None:
        pytest.fail(result.template_problem, pytrace=False)
    name = f"t_{uuid.uuid4().hex[:16]}"
    with postgres_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{result.template}"')
    try:
        yield postgres_server.url_for(name)
    finally:
        # A fault test may leave the server down; bring it back for the tests after it.
        if postgres_server.controllable and not postgres_server.is_running():
            postgres_server.start()
        _drop_database(postgres_server, name)


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


@pytest.fixture
def postgres_replication() -> Iterator[PostgresReplication]:
    """A fresh :class:`PostgresReplication` for this test: a primary and a streaming
    standby of its own (not the session's server), closed afterwards.

    It needs local or embedded PostgreSQL binaries (``pg_basebackup`` included); without
    them, or when ``PGPOOL_TEST_DSN`` names the session's server, tests using it are
    skipped, except when ``CI`` is set, where they fail.
    """
    plan, problems = replication_source(os.environ)
    if plan is None or plan.bindir is None:
        message = f"no primary + standby for the tests: {'; '.join(problems)}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with start_replication(plan.bindir, source=plan.source) as pair:
        yield pair
