"""sprockets.http adapter: pgpool for ``sprockets.http.app.Application``.

Change ``import sprockets_postgres`` to ``import pgpool_sprockets as sprockets_postgres``:
the mixins, ``StatusRequestHandler``, ``QueryResult``, ``ConnectionException`` and the
``postgres_*`` settings keep their names and meaning. The pool opens from the runner's
``on_start`` callback and closes from its ``shutdown`` callback.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import logging
import typing
from typing import Any

from pgpool_core import (
    ConfigurationError,
    ConnectionException,
    PoolUnavailableError,
    PostgresConnector,
    QueryResult,
    SettingsError,
)
from pgpool_tornado import (
    ERROR_FORMATS,
    ERROR_RESPONSES,
    SPROCKETS_POSTGRES_RESPONSES,
    ErrorResponse,
    LivenessRequestHandler,
    MetricsRequestHandler,
    PostgresHTTPError,
    QueryParameters,
    ReadinessRequestHandler,
    StartupRequestHandler,
    StatusRequestHandler,
    Timeout,
)
from pgpool_tornado import ApplicationMixin as _TornadoApplicationMixin
from pgpool_tornado import RequestHandlerMixin as _TornadoRequestHandlerMixin
from pgpool_tornado._mixins import log_fields

__all__ = [
    "DEFAULT_POSTGRES_CONNECTION_TIMEOUT",
    "DEFAULT_POSTGRES_CONNECTION_TTL",
    "DEFAULT_POSTGRES_HSTORE",
    "DEFAULT_POSTGRES_JSON",
    "DEFAULT_POSTGRES_MAX_POOL_SIZE",
    "DEFAULT_POSTGRES_MIN_POOL_SIZE",
    "DEFAULT_POSTGRES_QUERY_TIMEOUT",
    "DEFAULT_POSTGRES_UUID",
    "ERROR_FORMATS",
    "ERROR_RESPONSES",
    "EXIT_MISCONFIGURED",
    "LOGGER",
    "SPROCKETS_POSTGRES_RESPONSES",
    "ApplicationMixin",
    "ConnectionException",
    "ErrorResponse",
    "LivenessRequestHandler",
    "MetricsRequestHandler",
    "OptionalCallable",
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

#: sprockets-postgres' logger, kept under its name: this adapter's messages (start, stop,
#: request errors) reach the filters and alerts that were set up for it. The pool's own
#: messages (reconnects, leaks, stops) log under ``pgpool``.
LOGGER = logging.getLogger("sprockets-postgres")

# sprockets-postgres 1.8.1's module constants, with its values (strings where it had
# strings). They document the defaults; the pool reads PoolSettings' own.
DEFAULT_POSTGRES_CONNECTION_TIMEOUT = 10
DEFAULT_POSTGRES_CONNECTION_TTL = 300
DEFAULT_POSTGRES_HSTORE = "FALSE"
DEFAULT_POSTGRES_JSON = "FALSE"
DEFAULT_POSTGRES_MAX_POOL_SIZE = "10"
DEFAULT_POSTGRES_MIN_POOL_SIZE = "1"
DEFAULT_POSTGRES_QUERY_TIMEOUT = 120
DEFAULT_POSTGRES_UUID = "TRUE"

OptionalCallable = typing.Optional[typing.Callable]  # type: ignore[type-arg]  # noqa: UP045
"""Type annotation of an optional callable (sprockets-postgres' name)."""

#: Seconds the shutdown callback gives queries in flight (sprockets.http allows ~5 s).
SHUTDOWN_TIMEOUT = 3.0

#: The process exit status after a configuration the database refused (EX_CONFIG): a
#: supervisor or Kubernetes sees the start failed. sprockets.http's runner exits 70
#: (EX_SOFTWARE) for a failed ``before_run`` callback.
EXIT_MISCONFIGURED = 78


class ApplicationMixin(_TornadoApplicationMixin):
    """Opens the pool on ``on_start`` and closes it on ``shutdown``.

    A missing ``postgres_url`` or a configuration the server refuses (bad setting,
    authentication failure, unknown database or host) logs CRITICAL and stops the
    application, once; the process then exits with :data:`EXIT_MISCONFIGURED` (78), not
    0. A database that is merely down at boot does not: requests get 503 until the pool
    reconnects.

    .. versionadded:: 0.1
    """

    runner_callbacks: dict[str, list[Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set once the ``on_start`` callback has finished, whatever its outcome.
        self.postgres_started = asyncio.Event()
        self._postgres_stop_requested = False
        self.runner_callbacks["on_start"].append(self._postgres_on_start)
        self.runner_callbacks["shutdown"].append(self._postgres_shutdown)

    async def _postgres_on_start(self, _app: Any, loop: Any) -> None:
        try:
            await self.postgres_start()
            assert self.postgres_pool is not None
            await self.postgres_pool.wait_ready()
        except (SettingsError, ConfigurationError) as exc:
            LOGGER.critical(
                "PostgreSQL is misconfigured, stopping: %s",
                exc,
                extra=log_fields(self.postgres_pool, "misconfigured"),
            )
            self._postgres_stop_application(loop)
        except PoolUnavailableError as exc:
            LOGGER.warning(
                "PostgreSQL is unavailable at start (%s); answering 503 until it is back",
                exc,
                extra=log_fields(self.postgres_pool, "unavailable_at_start"),
            )
        finally:
            self.postgres_started.set()

    def _postgres_stop_application(self, loop: Any) -> None:
        if not self._postgres_stop_requested:
            self._postgres_stop_requested = True
            self.stop(loop)  # type: ignore[attr-defined]

    def _postgres_shutdown(self, *_args: Any) -> Any:
        if self._postgres_stop_requested:
            _exit_when_stopped(self.postgres_exit_status)
        return asyncio.ensure_future(self.postgres_stop(SHUTDOWN_TIMEOUT))

    @property
    def postgres_exit_status(self) -> int:
        """What the process exits with: :data:`EXIT_MISCONFIGURED` once PostgreSQL refused
        the configuration at start, else 0."""
        return EXIT_MISCONFIGURED if self._postgres_stop_requested else 0


def _exit_when_stopped(status: int) -> None:
    """Exit with ``status`` once sprockets.http's shutdown has finished and stops the loop.

    sprockets.http offers no way to report a failed start: its runner returns normally and
    the process exits 0. So the loop's ``stop()`` is wrapped, for this one shutdown, to
    raise ``SystemExit(status)`` after stopping: asyncio lets SystemExit through the loop,
    out of ``sprockets.http.run()``.
    """
    from tornado import ioloop

    loop = ioloop.IOLoop.current()
    stop = loop.stop

    def stop_then_exit() -> None:
        loop.stop = stop  # type: ignore[method-assign]
        stop()
        raise SystemExit(status)

    loop.stop = stop_then_exit  # type: ignore[method-assign]


class RequestHandlerMixin(_TornadoRequestHandlerMixin):
    """:class:`pgpool_tornado.RequestHandlerMixin`, logging request errors under
    sprockets-postgres' logger name.

    .. versionadded:: 0.1
    """

    postgres_logger = LOGGER
