"""The exceptions pgpool raises. Driver errors from SQL pass through as psycopg2 errors."""

from __future__ import annotations

import asyncio
import sys

__all__ = [
    "CommitUnknownError",
    "ConfigurationError",
    "ConnectionException",
    "PoolClosedError",
    "PoolError",
    "PoolTimeoutError",
    "PoolUnavailableError",
    "QueryParameterError",
    "QueryResultError",
    "QueryTimeoutError",
    "SettingsError",
    "TooManyRequestsError",
    "TransactionRolledBackError",
    "TransactionUsageError",
]


class PoolError(Exception):
    """Base of every error pgpool itself raises.

    .. versionadded:: 0.1
    """


class ConnectionException(PoolError):
    """No working connection could be had (the sprockets-postgres name, kept for adapters).

    .. versionadded:: 0.1
    """


class PoolUnavailableError(ConnectionException):
    """The database could not be reached; the message carries the last (redacted) connect
    error.

    .. versionadded:: 0.1
    """


class ConfigurationError(PoolUnavailableError):
    """The server refused the configured connection, or the configuration cannot work:
    authentication failed, unknown role or database, unknown host, no SRV records.

    Retrying will not help until the configuration (or the credentials) change; the pool
    keeps retrying in the background anyway, so rotated credentials are picked up.

    .. versionadded:: 0.1
    """


if sys.version_info >= (3, 11):

    class PoolTimeoutError(ConnectionException, TimeoutError):
        """No connection became free within ``acquire_timeout``; the message has the pool's numbers.

        Also a :class:`TimeoutError` (and so an ``asyncio.TimeoutError``).

        .. versionadded:: 0.1
        """

    class QueryTimeoutError(PoolError, TimeoutError):
        """A statement ran past its deadline and was cancelled on the server.

        .. versionadded:: 0.1
        """

else:  # pragma: no cover - Python 3.10, where asyncio.TimeoutError is a separate class

    class PoolTimeoutError(ConnectionException, TimeoutError, asyncio.TimeoutError):
        """No connection became free within ``acquire_timeout``; the message has the pool's numbers.

        Also a :class:`TimeoutError` and an ``asyncio.TimeoutError``.

        .. versionadded:: 0.1
        """

    class QueryTimeoutError(PoolError, TimeoutError, asyncio.TimeoutError):
        """A statement ran past its deadline and was cancelled on the server.

        .. versionadded:: 0.1
        """


class TransactionRolledBackError(PoolError):
    """The transaction did not commit: the server rolled it back, or holds nothing of it.

    Raised instead of a COMMIT that cannot succeed: a statement failed inside the
    transaction (and the block went on), a statement outlived its timeout, or the
    connection was lost before COMMIT. ``first_error`` (also the
    ``__cause__``) is the failure that doomed it, if there was one; :func:`~pgpool_core.classify`
    and :func:`~pgpool_core.sqlstate` see through to it, so adapters answer as they would
    for that error. Nothing of the transaction is on the server: retrying it is safe.

    .. versionadded:: 0.2
    """

    def __init__(self, message: str, first_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.first_error = first_error


class CommitUnknownError(PoolError):
    """COMMIT was sent but its answer was lost (the connection died, or no answer came within
    the bound), so whether the transaction committed is unknown.

    Never retry blindly: the transaction may be on the server. ``xid`` is its transaction id
    when known: ``SELECT txid_status(xid)`` on any connection tells the outcome. With
    ``resolve_commits`` (or ``transaction(resolve_commit=True)``) the pool asks that itself
    and raises this only when the server could not answer within the bound.

    .. versionadded:: 0.2
    """

    def __init__(self, message: str, xid: int | None = None) -> None:
        super().__init__(message)
        self.xid = xid


class TransactionUsageError(PoolError, RuntimeError):
    """``transaction()`` used in a way whose outcome the pool could not report truthfully;
    nothing was sent. Inside the block: a transaction-control statement (``COMMIT``,
    ``ROLLBACK``, ``BEGIN``...: leave the block to commit, raise to roll back, use
    ``SAVEPOINT`` / ``ROLLBACK TO SAVEPOINT`` for partial rollbacks), a nested
    ``transaction()`` on the same connector, or a statement after the transaction ended;
    after the block: any use of its connector.

    .. versionadded:: 0.2
    """


class PoolClosedError(ConnectionException):
    """The pool is stopping or stopped, or was never started.

    .. versionadded:: 0.1
    """


class TooManyRequestsError(ConnectionException):
    """``max_waiting`` requests already wait for a connection; this one is shed at once.

    .. versionadded:: 0.1
    """


class QueryParameterError(PoolError, ValueError):
    """The parameters could not be bound to the statement (wrong count, missing key, a NUL
    character, an unadaptable value); nothing was sent. ``__cause__`` is the driver's error.

    .. versionadded:: 0.1
    """


class QueryResultError(PoolError, ValueError):
    """The statement completed on the server (outside a transaction: it is committed), but
    its result could not be turned into Python values (e.g. a date past year 9999);
    ``__cause__`` is the conversion error.

    .. versionadded:: 0.2
    """


class SettingsError(PoolError, ValueError):
    """A setting is invalid; the message names the key, where it came from, and the value.

    .. versionadded:: 0.1
    """
