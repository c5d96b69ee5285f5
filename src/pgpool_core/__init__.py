"""pgpool: a framework-free asyncio connection pool for PostgreSQL, built on aiopg.

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._classify import ErrorKind, classify, sqlstate
from ._config import PoolOptions, PoolSettings, redact_dsn
from ._connector import AiopgConnector, Connector, DriverConnection, TxStatus, UrlSource
from ._listener import Listener, Notification, NotificationsMissed
from ._manager import OnDuration, OnError, PoolManager, PostgresConnector
from ._metrics import PoolObserver, PoolStatus
from ._result import QueryResult
from ._retry import RetryPolicy
from ._sessions import Session
from ._srv import SrvRecord, SrvResolver
from ._state import PoolState
from ._streams import RowStream
from .errors import (
    CommitUnknownError,
    ConfigurationError,
    ConnectionException,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryParameterError,
    QueryResultError,
    QueryTimeoutError,
    SettingsError,
    TooManyRequestsError,
    TransactionRolledBackError,
    TransactionUsageError,
)

#: The distribution's version (PEP 440), its one source: ``pyproject.toml`` reads it.
__version__ = "0.3.0.dev0"

__all__ = [
    "AiopgConnector",
    "CommitUnknownError",
    "ConfigurationError",
    "ConnectionException",
    "Connector",
    "DriverConnection",
    "ErrorKind",
    "Listener",
    "Notification",
    "NotificationsMissed",
    "OnDuration",
    "OnError",
    "PoolClosedError",
    "PoolError",
    "PoolManager",
    "PoolObserver",
    "PoolOptions",
    "PoolSettings",
    "PoolState",
    "PoolStatus",
    "PoolTimeoutError",
    "PoolUnavailableError",
    "PostgresConnector",
    "QueryParameterError",
    "QueryResult",
    "QueryResultError",
    "QueryTimeoutError",
    "RetryPolicy",
    "RowStream",
    "Session",
    "SettingsError",
    "SrvRecord",
    "SrvResolver",
    "TooManyRequestsError",
    "TransactionRolledBackError",
    "TransactionUsageError",
    "TxStatus",
    "UrlSource",
    "__version__",
    "classify",
    "redact_dsn",
    "sqlstate",
]
