"""Test support for pgpool users and for pgpool itself, in two layers.

**Unit-test doubles** (no database, no pytest): :class:`FakeConnector` drives a
``PoolManager`` (``PoolManager(connector=FakeConnector())``) and, like the
:class:`FakeConnection` objects it opens, can fail, block or hang on demand (:class:`Script`).
Importing them loads nothing else from this package.

**Server provisioning**: a throwaway PostgreSQL (:class:`PostgresServer`,
:func:`start_first_available`), a fault-injecting :class:`TcpProxy` and a :class:`PgBouncer`
in front of it. These names are loaded on first access, so the doubles never pay for them.
The pytest plugin built on them lives in ``pgpool_core.testing._plugin`` (``pytest11`` entry
point ``pgpool``, registered on install) and provides a server per test session and a fresh
database per test:

- ``postgres_server``: a :class:`PostgresServer` handle (``url``, ``stop``, ``start``,
  ``restart``, ``activity``, ``query``, ``terminate_backends``);
- ``postgres_url``: a superuser libpq URL on that server;
- ``postgres_db_url``: the URL of a new, empty database, dropped after the test;
- ``postgres_proxy``: a :class:`TcpProxy` in front of that server, for fault tests
  (``rewrite(url)``, ``blackhole()``, ``refuse()``, ``reset()``, ``heal()``);
- ``pgbouncer``: a :class:`PgBouncer` (transaction pooling) in front of that server
  (``url_for(url)``, ``stop()``, ``start()``, ``restart()``);
- ``postgres_replication``: a :class:`PostgresReplication` of this test's own, a primary and
  a streaming standby (``primary``, ``standby``, ``promote()``, ``rebuild_standby()``,
  ``pause_replay()``, ``lag()``, ``wait_caught_up()``, ``set_synchronous()``); it needs local
  or embedded binaries (:func:`start_replication` starts one outside pytest).

The server comes from, in order: ``PGPOOL_TEST_DSN``; testcontainers when a Docker engine
answers; local PostgreSQL binaries (``initdb`` + ``pg_ctl``, run as an unprivileged user
when the tests run as root); the ``embedded`` extra's binaries.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._fakes import FakeConnection, FakeConnector, FakeCursor, Script

if TYPE_CHECKING:
    from ._discovery import DSN_ENV, SEARCH_DIRS_ENV, SOURCE_ENV, Source
    from ._pgbouncer import PgBouncer, PgBouncerUnavailable

    # The fixtures and hooks stay importable from here for existing code, but are not
    # part of ``__all__``: pytest gets them from ``_plugin`` through the entry point.
    from ._plugin import pgbouncer as pgbouncer
    from ._plugin import postgres_db_url as postgres_db_url
    from ._plugin import postgres_proxy as postgres_proxy
    from ._plugin import postgres_server as postgres_server
    from ._plugin import postgres_url as postgres_url
    from ._plugin import pytest_collection_finish as pytest_collection_finish
    from ._plugin import pytest_configure as pytest_configure
    from ._proxy import ProxyMode, TcpProxy
    from ._replication import PostgresReplication, start_replication
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
    "FakeCursor",
    "PgBouncer",
    "PgBouncerUnavailable",
    "PostgresReplication",
    "PostgresServer",
    "ProxyMode",
    "Script",
    "ServerControlUnavailable",
    "ServerStartError",
    "Source",
    "TcpProxy",
    "start_first_available",
    "start_replication",
]

#: Server-provisioning names, each imported from its module on first access (PEP 562).
_LAZY: dict[str, str] = {
    "DSN_ENV": "._discovery",
    "SEARCH_DIRS_ENV": "._discovery",
    "SOURCE_ENV": "._discovery",
    "Source": "._discovery",
    "PgBouncer": "._pgbouncer",
    "PgBouncerUnavailable": "._pgbouncer",
    "ProxyMode": "._proxy",
    "TcpProxy": "._proxy",
    "PostgresReplication": "._replication",
    "start_replication": "._replication",
    "PostgresServer": "._server",
    "ServerControlUnavailable": "._server",
    "ServerStartError": "._server",
    "start_first_available": "._server",
    # Importable for compatibility only; not listed in __all__ or dir().
    "pgbouncer": "._plugin",
    "postgres_db_url": "._plugin",
    "postgres_proxy": "._plugin",
    "postgres_server": "._plugin",
    "postgres_url": "._plugin",
    "pytest_collection_finish": "._plugin",
    "pytest_configure": "._plugin",
}

if not TYPE_CHECKING:
    # Hidden from type checkers so that a misspelt name is still an error for them.

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value


def __dir__() -> list[str]:
    return sorted(name for name in {*globals(), *__all__} if name in __all__ or name not in _LAZY)
