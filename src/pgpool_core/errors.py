"""The exceptions pgpool raises. Driver errors from SQL pass through as psycopg2 errors."""

from __future__ import annotations

import asyncio
import sys

__all__ = [
    "ConfigurationError",
    "ConnectionException",
    "PoolClosedError",
    "PoolError",
    "PoolTimeoutError",
    "PoolUnavailableError",
    "QueryParameterError",
    "QueryTimeoutError",
    "SettingsError",
    "TooManyRequestsError",
]


class PoolError(Exception):
    """Base of every error pgpool itself raises."""


class ConnectionException(PoolError):
    """No working connection could be had (the sprockets-postgres name, kept for adapters)."""


class PoolUnavailableError(ConnectionException):
    """The database could not be reached; ``__cause__`` holds the (redacted) connect error."""


class ConfigurationError(PoolUnavailableError):
    """The server refused the configured connection, or the configuration cannot work:
    authentication failed, unknown role or database, unknown host, no SRV records.

    Retrying will not help until the configuration (or the credentials) change; the pool
    keeps retrying in the background anyway, so rotated credentials are picked up.
    """


if sys.version_info >= (3, 11):

    class PoolTimeoutError(ConnectionException, TimeoutError):
        """No connection became free within ``acquire_timeout``; the message has the pool's numbers.

        Also a :class:`TimeoutError` (and so an ``asyncio.TimeoutError``).
        """

    class QueryTimeoutError(PoolError, TimeoutError):
        """A statement ran past its deadline and was cancelled on the server."""

else:  # pragma: no cover - Python 3.10, where asyncio.TimeoutError is a separate class

    class PoolTimeoutError(ConnectionException, TimeoutError, asyncio.TimeoutError):
        """No connection became free within ``acquire_timeout``; the message has the pool's numbers.

        Also a :class:`TimeoutError` and an ``asyncio.TimeoutError``.
        """

    class QueryTimeoutError(PoolError, TimeoutError, asyncio.TimeoutError):
        """A statement ran past its deadline and was cancelled on the server."""


class PoolClosedError(ConnectionException):
    """The pool is stopping or stopped, or was never started."""


class TooManyRequestsError(ConnectionException):
    """``max_waiting`` requests already wait for a connection; this one is shed at once."""


class QueryParameterError(PoolError, ValueError):
    """The parameters could not be bound to the statement (wrong count, missing key, a NUL
    character, an unadaptable value); nothing was sent. ``__cause__`` is the driver's error."""


class SettingsError(PoolError, ValueError):
    """A setting is invalid; the message names the key, where it came from, and the value."""
