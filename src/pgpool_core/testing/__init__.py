"""Test support for pgpool users and for pgpool itself.

Installed as a pytest plugin (``pytest11`` entry point ``pgpool``), it provides a throwaway
PostgreSQL per test session and a fresh database per test:

- ``postgres_server``: a :class:`PostgresServer` handle (``url``, ``stop``, ``start``,
  ``restart``, ``activity``, ``query``, ``terminate_backends``);
- ``postgres_url``: a superuser libpq URL on that server;
- ``postgres_db_url``: the URL of a new, empty database, dropped after the test;
- ``postgres_proxy``: a :class:`TcpProxy` in front of that server, for fault tests
  (``rewrite(url)``, ``blackhole()``, ``refuse()``, ``reset()``, ``heal()``);
- ``pgbouncer``: a :class:`PgBouncer` (transaction pooling) in front of that server
  (``url_for(url)``, ``stop()``, ``start()``, ``restart()``).

The server comes from, in order: ``PGPOOL_TEST_DSN``; testcontainers when a Docker engine
answers; local PostgreSQL binaries (``initdb`` + ``pg_ctl``, run as an unprivileged user
when the tests run as root); the ``embedded`` extra's binaries.

For unit tests without a database, :class:`FakeConnector` drives a ``PoolManager``
(``PoolManager(connector=FakeConnector())``) and can fail, block or hang on demand.

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._discovery import DSN_ENV, SEARCH_DIRS_ENV, SOURCE_ENV, Source
from ._fakes import FakeConnection, FakeConnector, Script
from ._pgbouncer import PgBouncer, PgBouncerUnavailable
from ._plugin import (
    pgbouncer,
    postgres_db_url,
    postgres_proxy,
    postgres_server,
    postgres_url,
    pytest_collection_finish,
    pytest_configure,
)
from ._proxy import ProxyMode, TcpProxy
from ._server import (
    PostgresServer,
    ServerControlUnavailable,
    ServerStartError,
    start_first_available,
)

__all__ = [
    "DSN_ENV",
    "SEARCH_DIRS_ENV",
    "SOURCE_ENV",
    "FakeConnection",
    "FakeConnector",
    "PgBouncer",
    "PgBouncerUnavailable",
    "PostgresServer",
    "ProxyMode",
    "Script",
    "ServerControlUnavailable",
    "ServerStartError",
    "Source",
    "TcpProxy",
    "pgbouncer",
    "postgres_db_url",
    "postgres_proxy",
    "postgres_server",
    "postgres_url",
    "pytest_collection_finish",
    "pytest_configure",
    "start_first_available",
]
