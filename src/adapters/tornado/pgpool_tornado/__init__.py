"""Tornado adapter: PostgreSQL for ``tornado.web.Application`` via pgpool_core.

A drop-in successor to sprockets-postgres' mixins (same names and semantics) on a plain
Tornado application; ``pgpool_sprockets`` adds the sprockets.http lifecycle hooks.

.. versionadded:: 0.1
"""

from __future__ import annotations

from pgpool_core import ConnectionException, PostgresConnector, QueryResult

from ._mixins import (
    ERROR_FORMATS,
    ERROR_RESPONSES,
    SPROCKETS_POSTGRES_RESPONSES,
    ApplicationMixin,
    ErrorResponse,
    LivenessRequestHandler,
    MetricsRequestHandler,
    PostgresHTTPError,
    QueryParameters,
    ReadinessRequestHandler,
    RequestHandlerMixin,
    StartupRequestHandler,
    StatusRequestHandler,
    Timeout,
)

__all__ = [
    "ERROR_FORMATS",
    "ERROR_RESPONSES",
    "SPROCKETS_POSTGRES_RESPONSES",
    "ApplicationMixin",
    "ConnectionException",
    "ErrorResponse",
    "LivenessRequestHandler",
    "MetricsRequestHandler",
    "PostgresConnector",
    "PostgresHTTPError",
    "QueryParameters",
    "QueryResult",
    "ReadinessRequestHandler",
    "RequestHandlerMixin",
    "StartupRequestHandler",
    "StatusRequestHandler",
    "Timeout",
]
