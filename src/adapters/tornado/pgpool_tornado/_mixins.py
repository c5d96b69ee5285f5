"""The mixins: lifecycle and status on the application, queries and error mapping on handlers.

Settings parsing, retries, timeouts and error classification live in pgpool_core; this
module wires the pool to the application, maps error kinds to HTTP and forwards timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from tornado import web

from pgpool_core import (
    CommitUnknownError,
    ConnectionException,
    ErrorKind,
    Listener,
    Notification,
    NotificationsMissed,
    OnDuration,
    OnError,
    PoolClosedError,
    PoolError,
    PoolManager,
    PoolSettings,
    PoolStatus,
    PostgresConnector,
    QueryResult,
    QueryTimeoutError,
    SettingsError,
    TransactionRolledBackError,
    classify,
    sqlstate,
)
from pgpool_core._listener import validate_channel
from pgpool_core._logs import fields
from pgpool_core._metrics import comment_tags
from pgpool_core._probes import Heartbeat, Probe, liveness, readiness, startup
from pgpool_core._session import apply_on_error
from pgpool_core._streams import DEFAULT_BATCH

T = TypeVar("T")

try:  # tornado-problem-details is optional
    import problemdetails
except ImportError:  # pragma: no cover - installed in the test environment
    problemdetails = None

__all__ = [
    "ERROR_FORMATS",
    "ERROR_RESPONSES",
    "SPROCKETS_POSTGRES_RESPONSES",
    "ApplicationMixin",
    "ErrorResponse",
    "MetricsRequestHandler",
    "PostgresHTTPError",
    "QueryParameters",
    "RequestHandlerMixin",
    "StatusRequestHandler",
    "Timeout",
]

LOGGER = logging.getLogger("pgpool.tornado")

QueryParameters: TypeAlias = "dict[str, Any] | list[Any] | tuple[Any, ...] | None"
"""Query parameters: a sequence for ``%s`` placeholders, a mapping for ``%(name)s``."""

Timeout: TypeAlias = "int | float | None"
"""Seconds, or None for the pool's defaults."""


@dataclass(frozen=True)
class ErrorResponse:
    """The HTTP answer for one :class:`~pgpool_core.ErrorKind`.

    .. versionadded:: 0.1
    """

    status: int
    title: str
    #: Seconds for a ``Retry-After`` header; None sends none.
    retry_after: int | None = None


#: ErrorKind -> HTTP answer. Codes and titles follow sprockets-postgres where it had them.
#: Kinds missing here (``OTHER``) are not database errors and are re-raised unchanged.
#: Rendered as ``application/problem+json`` (the default ``postgres_error_format``).
ERROR_RESPONSES: Mapping[ErrorKind, ErrorResponse] = {
    ErrorKind.CONNECTION_FAILURE: ErrorResponse(503, "Database Connection Error", 1),
    ErrorKind.UNAVAILABLE: ErrorResponse(503, "Database Unavailable", 1),
    ErrorKind.POOL_EXHAUSTED: ErrorResponse(503, "Database Busy", 1),
    ErrorKind.QUERY_TIMEOUT: ErrorResponse(500, "Query Timeout"),
    ErrorKind.UNIQUE_VIOLATION: ErrorResponse(409, "Unique Violation"),
    ErrorKind.FOREIGN_KEY_VIOLATION: ErrorResponse(409, "Foreign Key Violation"),
    ErrorKind.TRANSACTION_CONFLICT: ErrorResponse(409, "Transaction Conflict", 1),
    ErrorKind.COMMIT_UNKNOWN: ErrorResponse(500, "Transaction Outcome Unknown"),
    ErrorKind.OPERATIONAL: ErrorResponse(503, "Database Error"),
    ErrorKind.DATABASE: ErrorResponse(500, "Database Error"),
}

#: sprockets-postgres 1.8.1's answers, for ``postgres_error_format = "sprockets-postgres"``,
#: by the class of failure its ``on_postgres_error`` tested for, in its order (see
#: :func:`sprockets_postgres_response`): no ``Retry-After``, and the body is Tornado's HTML
#: error page (or the ``problemdetails.Problem`` when tornado-problem-details is
#: installed). A COMMIT whose outcome is unknown has no upstream counterpart (upstream
#: reported it as a connection error, inviting a retry that may apply it twice) and keeps
#: its own answer.
SPROCKETS_POSTGRES_RESPONSES: Mapping[str, ErrorResponse] = {
    "connection": ErrorResponse(503, "Database Connection Error"),
    "timeout": ErrorResponse(500, "Query Timeout"),
    "foreign_key": ErrorResponse(409, "Foreign Key Violation"),
    "unique": ErrorResponse(409, "Unique Violation"),
    "operational": ErrorResponse(503, "Database Error"),
    "database": ErrorResponse(500, "Database Error"),
    "commit_unknown": ErrorResponse(500, "Transaction Outcome Unknown"),
}


def sprockets_postgres_response(exc: BaseException) -> ErrorResponse | None:
    """The answer sprockets-postgres 1.8.1 gave for the failure behind ``exc``: its
    ``isinstance`` chain, in its order, applied to what it would have seen (the statement
    error behind a :class:`~pgpool_core.TransactionRolledBackError`, the server's
    ``QueryCanceled`` behind a server-side :class:`~pgpool_core.QueryTimeoutError`).
    None for what it did not map (re-raised as is)."""
    if isinstance(exc, TransactionRolledBackError) and exc.first_error is not None:
        return sprockets_postgres_response(exc.first_error)
    if isinstance(exc, CommitUnknownError):
        return SPROCKETS_POSTGRES_RESPONSES["commit_unknown"]
    if isinstance(exc, QueryTimeoutError) and isinstance(
        exc.__cause__, psycopg2.extensions.QueryCanceledError
    ):
        exc = exc.__cause__  # the server's statement_timeout: an OperationalError upstream
    for kind, matches in _UPSTREAM_CHAIN:
        if isinstance(exc, matches):
            return SPROCKETS_POSTGRES_RESPONSES[kind]
    return None


_UPSTREAM_CHAIN: tuple[tuple[str, type[BaseException] | tuple[type[BaseException], ...]], ...] = (
    ("connection", (ConnectionException, TransactionRolledBackError)),
    ("timeout", TimeoutError),
    ("foreign_key", psycopg2.errors.ForeignKeyViolation),
    ("unique", psycopg2.errors.UniqueViolation),
    ("operational", psycopg2.OperationalError),
    ("database", psycopg2.Error),
)

#: Values of the ``postgres_error_format`` application setting.
ERROR_FORMATS = ("problem+json", "sprockets-postgres")

#: The application settings this adapter reads itself (beside the pool's ``postgres_*``),
#: each with what it does (the settings reference is generated from this).
ADAPTER_SETTINGS: dict[str, str] = {
    "postgres_error_format": (
        "``problem+json`` (default): errors answer as ``application/problem+json`` with"
        " ``status``, ``title``, ``sqlstate``; ``sprockets-postgres``: as sprockets-postgres"
        " 1.8.1 answered (its statuses, titles and HTML)."
    ),
    "postgres_prometheus": (
        "true: export the pool's metrics on ``prometheus_registry`` (default: the global"
        " registry) for :class:`~pgpool_tornado.MetricsRequestHandler`."
    ),
    "postgres_listen": (
        "``{channel: on_notify}``: LISTEN on each channel from the pool's start to its stop."
    ),
    "postgres_listen_missed": (
        "a callable given each ``NotificationsMissed`` of the ``postgres_listen`` channels."
    ),
    "postgres_shutdown_grace": (
        "seconds (at least 0, under 3600; default 0) that ``postgres_stop()`` keeps serving while"
        " readiness answers 503 draining, before it stops the pool."
    ),
    "postgres_ready_writable": (
        "true: readiness also fails while the writer's server reports itself read-only"
        " (default false)."
    ),
}


def log_fields(pool: PoolManager | None, event: str, code: str | None = None) -> dict[str, object]:
    """The ``extra=`` of the adapters' event records: the pool's name (empty before it
    exists), ``event`` and the SQLSTATE, as the pool's own records carry."""
    return fields(pool.name if pool is not None else "", event, sqlstate=code)


class PostgresHTTPError(web.HTTPError):
    """The HTTP error for a database failure when tornado-problem-details is absent.

    :class:`RequestHandlerMixin` renders it as an ``application/problem+json`` document
    (``status``, ``title``, ``sqlstate``) with its ``Retry-After`` header. Nothing from
    the statement, its parameters or the server's message reaches the body.

    .. versionadded:: 0.1
    """

    def __init__(self, response: ErrorResponse, code: str | None) -> None:
        super().__init__(response.status, reason=response.title)
        self.title = response.title
        self.sqlstate = code
        self.retry_after = response.retry_after


class ApplicationMixin:
    """Adds a :class:`~pgpool_core.PoolManager` to a ``tornado.web.Application``.

    Settings come from the application settings (``postgres_url``,
    ``postgres_max_pool_size``, ...) then ``POSTGRES_*`` environment variables. Call
    :meth:`postgres_start` before serving and :meth:`postgres_stop` when done.

    .. versionadded:: 0.1
    """

    #: Seconds the ``SELECT 1`` of :meth:`postgres_status` may take.
    POSTGRES_STATUS_TIMEOUT = 1.0

    settings: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The pool (None before :meth:`postgres_start` and after :meth:`postgres_stop`).
        self.postgres_pool: PoolManager | None = None

    def postgres_settings(self) -> PoolSettings:
        """The pool settings from the application settings and the environment.

        :raises SettingsError: naming the bad key and value.
        """
        return PoolSettings.from_mapping(self.settings, also_known=ADAPTER_SETTINGS)

    async def postgres_start(self, *, wait: bool = False) -> None:
        """Create and open the pool. Lazy: succeeds with the database down, unless ``wait``.

        :raises SettingsError: a missing ``postgres_url`` or a bad setting.
        :raises ConfigurationError: (``wait``) authentication failed, unknown database...
        :raises PoolUnavailableError: (``wait``) the database could not be reached.
        """
        if self.postgres_pool is not None:
            return
        error_format = self.settings.get("postgres_error_format", ERROR_FORMATS[0])
        if error_format not in ERROR_FORMATS:
            raise SettingsError(
                f"postgres_error_format: expected one of {', '.join(ERROR_FORMATS)},"
                f" got {error_format!r}"
            )
        listen = self._postgres_listen_settings()
        _grace(self.settings.get("postgres_shutdown_grace", 0))  # refused before opening
        pool = PoolManager(settings=self.postgres_settings())
        self.postgres_draining = False
        if self.settings.get("postgres_prometheus"):
            from pgpool_core import prometheus

            prometheus.instrument(pool, self.settings.get("prometheus_registry") or _registry())
        await pool.start(wait=wait)
        self.postgres_pool = pool
        self.postgres_heartbeat.start()
        missed = self.settings.get("postgres_listen_missed")
        for channel, on_notify in listen.items():
            await pool.listen(channel, on_notify=on_notify, on_missed=missed)

    def _postgres_listen_settings(self) -> dict[str, Callable[[Notification], object]]:
        """The application setting ``postgres_listen``: ``{channel: on_notify}``, listened
        to for the application's life (``postgres_listen_missed``: the ``on_missed``
        callback for all of them), checked before anything starts."""
        listen = self.settings.get("postgres_listen") or {}
        missed = self.settings.get("postgres_listen_missed")
        if not isinstance(listen, Mapping) or not all(
            isinstance(channel, str) and callable(callback) for channel, callback in listen.items()
        ):
            raise SettingsError(
                f"postgres_listen: expected a mapping of channel names to callables, got {listen!r}"
            )
        if missed is not None and not callable(missed):
            raise SettingsError(f"postgres_listen_missed: expected a callable, got {missed!r}")
        for channel in listen:
            validate_channel(channel)
        return dict(listen)

    @property
    def postgres_heartbeat(self) -> Heartbeat:
        """The event loop's lag, measured from :meth:`postgres_start` to
        :meth:`postgres_stop` (for :class:`LivenessRequestHandler`)."""
        heartbeat: Heartbeat | None = self.__dict__.get("_postgres_heartbeat")
        if heartbeat is None:
            heartbeat = self.__dict__["_postgres_heartbeat"] = Heartbeat()
        return heartbeat

    #: True from the start of :meth:`postgres_stop`: :class:`ReadinessRequestHandler`
    #: answers 503 "draining" (see the setting ``postgres_shutdown_grace``).
    postgres_draining: bool = False

    async def postgres_stop(self, timeout: float = 4.0) -> None:
        """Stop the pool: work in flight gets ``timeout`` seconds, then is cancelled.

        Idempotent, and safe to cancel: the pool finishes stopping on its own, and a later
        call waits for that (within its own ``timeout``) before forgetting the pool.
        """
        pool = self.postgres_pool
        if pool is None:
            return
        grace = _grace(self.settings.get("postgres_shutdown_grace", 0))
        if grace and not self.postgres_draining:
            # Readiness says "draining" at once; requests keep being served meanwhile, so
            # that the load balancer stops sending them before the pool goes.
            self.postgres_draining = True
            await asyncio.sleep(grace)
        self.postgres_draining = True
        self.postgres_heartbeat.stop()
        await pool.stop(timeout)
        if self.postgres_pool is pool:
            self.postgres_pool = None

    @property
    def postgres_is_connected(self) -> bool:
        """True while the pool is open and its latest connect or query succeeded."""
        return self.postgres_pool is not None and self.postgres_pool.is_available

    async def postgres_status(self) -> dict[str, Any]:
        """``{'available': bool, 'pool_size': int, 'pool_free': int}``; never raises.

        ``available`` comes from a real outcome (a recent success or a bounded
        ``SELECT 1``); a saturated but healthy pool is available without queueing a probe.
        """
        pool = self.postgres_pool
        if pool is None:
            return {"available": False, "pool_size": 0, "pool_free": 0}
        status = await pool.status(probe_timeout=self.POSTGRES_STATUS_TIMEOUT)
        result: dict[str, Any] = {
            "available": status.available,
            "pool_size": status.pool_size,
            "pool_free": status.pool_free,
        }
        if status.readers:  # with read_url: each reader, and why it gets no reads
            result["readers"] = [_member(reader) for reader in status.readers]
        return result

    async def postgres_listen(
        self,
        *channels: str,
        on_notify: Callable[[Notification], object] | None = None,
        on_missed: Callable[[NotificationsMissed], object] | None = None,
        check_interval: float = 5.0,
    ) -> Listener:
        """A :class:`~pgpool_core.Listener` on ``channels`` for the application's life
        (see :meth:`pgpool_core.PoolManager.listen`): e.g. ``on_notify`` fans out to open
        WebSocket handlers, ``on_missed`` tells them to reload. Closed by
        :meth:`postgres_stop`. Call it once the pool is started (in sprockets.http, after
        ``postgres_started``).

        :raises PoolClosedError: the pool is not started.
        """
        pool = self.postgres_pool
        if pool is None:
            raise PoolClosedError("the PostgreSQL pool is not started: postgres_listen needs it")
        return await pool.listen(
            *channels, on_notify=on_notify, on_missed=on_missed, check_interval=check_interval
        )

    def postgres_connector(
        self,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
        timeout: Timeout = None,
        *,
        read_only: bool = False,
        writer: bool = False,
    ) -> AbstractAsyncContextManager[PostgresConnector]:
        """A :class:`~pgpool_core.PostgresConnector` on one pooled connection (an async
        context manager); ``read_only=True``: a reader's connection when one is fit
        (``postgres_read_url``), unless ``writer``.

        As in sprockets-postgres, a failure to get a connection also goes to
        ``on_error('postgres_connector', exc)``: the exception it returns is raised;
        if it returns None, the block gets ``None`` instead of a connector.
        """

        def checkout_failed(exc: PoolError) -> None:
            apply_on_error(on_error, "postgres_connector", exc)

        pool: PoolManager | None = self.postgres_pool
        if pool is None:
            return _NoPool(checkout_failed)
        return pool.connector(
            on_error,
            on_duration,
            timeout,
            checkout_failed=checkout_failed,
            read_only=read_only,
            writer=writer,
        )


def _member(status: PoolStatus) -> dict[str, Any]:
    """One reader in ``postgres_status()``: no URL, no secret; the redacted last error."""
    return {
        "name": status.name,
        "role": status.role,
        "server": status.server,
        "state": status.state,
        "available": status.available,
        "pool_size": status.pool_size,
        "pool_free": status.pool_free,
        "lag": status.lag,
        "excluded": status.excluded,
    }


@contextlib.asynccontextmanager
async def _transaction_on(
    connector_block: AbstractAsyncContextManager[PostgresConnector | None],
    read_only: bool,
    settings: Mapping[str, object] | None,
) -> AsyncIterator[PostgresConnector]:
    """A transaction on the connector of an overridden ``postgres_connector``."""
    async with connector_block as connector:
        if connector is None:
            raise PoolClosedError("no database connection for the transaction")
        async with connector.transaction(read_only=read_only, settings=settings):
            yield connector


class _Waited:
    """A request's block on the database, watched for a client that hangs up (see
    :attr:`RequestHandlerMixin.postgres_cancel_on_disconnect`)."""

    __slots__ = ("_block", "_handler", "_task")

    def __init__(
        self, handler: RequestHandlerMixin, block: AbstractAsyncContextManager[PostgresConnector]
    ) -> None:
        self._handler = handler
        self._block = block
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> PostgresConnector:
        self._task = self._handler._postgres_wait()
        try:
            return await self._block.__aenter__()
        except BaseException as exc:
            self._handler._postgres_waited(self._task, exc)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        handler, task = self._handler, self._task
        try:
            await self._block.__aexit__(kind, exc, tb)
        except asyncio.CancelledError as error:
            if getattr(error, "pgpool_outcome", None) == "committed" and (
                handler._postgres_disconnected
            ):
                # The client left while COMMIT ran, and the server committed: the block
                # succeeded, so what follows it in the handler runs.
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()
                handler._postgres_waited(task, None)
                return
            handler._postgres_waited(task, error)
            raise
        except BaseException as error:
            handler._postgres_waited(task, error)
            raise
        handler._postgres_waited(task, exc)


class _NoPool:
    """``postgres_connector()`` before the pool exists: the failure goes to ``on_error``."""

    def __init__(self, checkout_failed: Callable[[PoolError], None]) -> None:
        self._checkout_failed = checkout_failed

    async def __aenter__(self) -> PostgresConnector:
        self._checkout_failed(PoolClosedError("the PostgreSQL pool is not started"))
        return None  # type: ignore[return-value]  # swallowed by the hook, as upstream

    async def __aexit__(self, *_exc: object) -> None:
        return None


class RequestHandlerMixin:
    """Query helpers for ``tornado.web.RequestHandler`` subclasses (sprockets-postgres names).

    Errors go through :meth:`on_postgres_error`, durations through
    :meth:`on_postgres_timing`; override either to change the behaviour. The application
    setting ``postgres_error_format`` picks the answers: ``"problem+json"`` (default,
    :data:`ERROR_RESPONSES`) or ``"sprockets-postgres"`` (upstream's exact responses,
    :data:`SPROCKETS_POSTGRES_RESPONSES`).

    .. versionadded:: 0.1
    """

    application: Any
    #: Where :meth:`~pgpool_tornado.RequestHandlerMixin.on_postgres_error` logs
    #: (``pgpool_sprockets`` uses upstream's ``sprockets-postgres`` logger).
    postgres_logger: logging.Logger = LOGGER
    #: The default of ``read_only`` for this handler's calls (e.g. True on a handler
    #: that only reads). Read-your-writes: once the request has made a call that is not
    #: read-only, its later reads run on the writer.
    postgres_read_only: bool = False
    _postgres_wrote: bool = False
    #: When the HTTP client disconnects while the request waits on the database, the
    #: statement is cancelled on the server, a transaction in progress rolls back, the
    #: connection returns to the pool and the request ends with 499 (nobody reads it).
    #: False lets the request run to its end.
    postgres_cancel_on_disconnect: bool = True
    _postgres_waiting: dict[asyncio.Task[Any], int] | None = None
    _postgres_disconnected: bool = False

    def on_connection_close(self) -> None:
        """The client hung up: cancel the database work it was waiting for (see
        :attr:`postgres_cancel_on_disconnect`)."""
        super().on_connection_close()  # type: ignore[misc]
        waiting = self._postgres_waiting
        if not self.postgres_cancel_on_disconnect or not waiting:
            return
        self._postgres_disconnected = True
        for task in list(waiting):
            if not task.done():
                task.cancel("the HTTP client disconnected")

    def _postgres_wait(self) -> asyncio.Task[Any] | None:
        """A database call of this request starts on the current task (returned: the call
        ends with :meth:`_postgres_waited` on it, whichever task that runs in)."""
        comment_tags.set({"controller": type(self).__name__, "framework": "tornado"})
        task = asyncio.current_task()
        if task is None:
            return None
        if self._postgres_waiting is None:
            self._postgres_waiting = {}
        self._postgres_waiting[task] = self._postgres_waiting.get(task, 0) + 1
        return task

    def _postgres_waited(self, task: asyncio.Task[Any] | None, exc: BaseException | None) -> None:
        """The call made on ``task`` ended with ``exc``. A cancellation this mixin made for
        a client that hung up becomes an ordinary 499, unless the server committed (see
        ``_Waited``); the task goes on: nothing outside asked it to stop."""
        waiting = self._postgres_waiting
        if task is not None and waiting is not None and task in waiting:
            waiting[task] -= 1
            if not waiting[task]:
                del waiting[task]
        if isinstance(exc, asyncio.CancelledError) and self._postgres_disconnected:
            if task is not None and hasattr(task, "uncancel"):  # Python 3.11+
                task.uncancel()
            outcome = getattr(exc, "pgpool_outcome", None)
            if outcome is not None:
                self.postgres_logger.warning(
                    "client disconnected during COMMIT; the transaction %s",
                    outcome,
                    extra=self._postgres_log_fields("commit_after_disconnect"),
                )
            raise web.HTTPError(499, reason="Client Closed Request") from None

    def _postgres_log_fields(self, event: str, code: str | None = None) -> dict[str, object]:
        return log_fields(getattr(self.application, "postgres_pool", None), event, code)

    def _postgres_route(self, read_only: bool | None) -> tuple[bool, bool]:
        """``(read_only, writer)`` for a call: the handler's default, and the writer once
        this request has written."""
        reads = self.postgres_read_only if read_only is None else read_only
        if not reads:
            self._postgres_wrote = True
        return reads, self._postgres_wrote

    async def postgres_execute(
        self,
        sql: str,
        parameters: QueryParameters = None,
        metric_name: str = "",
        *,
        timeout: Timeout = None,
        read_only: bool | None = None,
        idempotent: bool = False,
    ) -> QueryResult | None:
        """Run one statement; ``timeout`` bounds the whole call (waiting included).
        ``read_only=True`` (default: :attr:`postgres_read_only`) lets it run on a reader;
        ``idempotent=True`` runs it once more if its connection dies under it.

        Returns None when :meth:`on_postgres_error` returned None for its error (swallowed),
        as sprockets-postgres does."""
        return await self._postgres_one(
            sql,
            parameters,
            metric_name,
            timeout,
            read_only=read_only,
            idempotent=idempotent,
            callproc=False,
        )

    async def postgres_callproc(
        self,
        name: str,
        parameters: QueryParameters = None,
        metric_name: str = "",
        *,
        timeout: Timeout = None,
        read_only: bool | None = None,
        idempotent: bool = False,
    ) -> QueryResult | None:
        """Call a stored function; like :meth:`postgres_execute`."""
        return await self._postgres_one(
            name,
            parameters,
            metric_name,
            timeout,
            read_only=read_only,
            idempotent=idempotent,
            callproc=True,
        )

    async def _postgres_one(
        self,
        sql: str,
        parameters: Any,
        metric_name: str,
        timeout: Timeout,
        *,
        read_only: bool | None,
        idempotent: bool,
        callproc: bool,
    ) -> QueryResult | None:
        # One statement: the pool's hook-aware fast path, no connector context needed.
        pool: PoolManager | None = self.application.postgres_pool
        if pool is None:
            error = PoolClosedError("the PostgreSQL pool is not started")
            apply_on_error(self.on_postgres_error, "postgres_connector", error)
            return None  # swallowed by the hook
        swallowed = False

        def on_error(name: str, exc: Exception) -> Exception | None:
            nonlocal swallowed
            replacement = self.on_postgres_error(name, exc)
            swallowed = replacement is None
            return replacement

        reads, writer = self._postgres_route(read_only)
        run = pool.callproc if callproc else pool.execute
        task = self._postgres_wait()
        try:
            result = await run(
                sql,
                parameters,
                metric_name=metric_name,
                timeout=timeout,
                on_error=on_error,
                on_duration=self.on_postgres_timing,
                read_only=reads,
                writer=writer,
                idempotent=idempotent,
            )
        except BaseException as exc:
            self._postgres_waited(task, exc)
            raise
        self._postgres_waited(task, None)
        return None if swallowed else result

    def postgres_transaction(
        self,
        timeout: Timeout = None,
        *,
        read_only: bool | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> AbstractAsyncContextManager[PostgresConnector]:
        """``BEGIN`` ... ``COMMIT`` on one connection; ``ROLLBACK`` on any error (an async
        context manager giving a :class:`~pgpool_core.PostgresConnector`).

        ``timeout`` bounds the whole transaction, waiting for the connection included.
        ``read_only=True`` (default: :attr:`postgres_read_only`): ``BEGIN READ ONLY``, on
        a reader when one is fit and this request has not written. ``settings`` hold for
        this transaction only (``SET LOCAL``, values bound: e.g. a tenant id for RLS).
        """
        reads, writer = self._postgres_route(read_only)

        def checkout_failed(exc: PoolError) -> None:
            apply_on_error(self.on_postgres_error, "postgres_connector", exc)
            raise PoolClosedError("no database connection for the transaction")

        application = self.application
        if type(application).postgres_connector is not ApplicationMixin.postgres_connector:
            # The application overrides postgres_connector: go through it, as upstream did
            # (watched for a client that hangs up like any other block).
            return _Waited(
                self,
                _transaction_on(
                    application.postgres_connector(
                        self.on_postgres_error, self.on_postgres_timing, timeout
                    ),
                    reads,
                    settings,
                ),
            )
        pool: PoolManager | None = application.postgres_pool
        if pool is None:
            return _NoPool(checkout_failed)
        return _Waited(
            self,
            pool.transaction(
                timeout,
                on_error=self.on_postgres_error,
                on_duration=self.on_postgres_timing,
                checkout_failed=checkout_failed,
                read_only=reads,
                writer=writer,
                settings=settings,
            ),
        )

    async def postgres_stream(
        self,
        sql: str,
        parameters: QueryParameters = None,
        metric_name: str = "",
        *,
        batch: int = DEFAULT_BATCH,
        timeout: Timeout = None,
        read_only: bool | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """``async for row in self.postgres_stream(sql)``: the rows of a query too big for
        memory, through a server-side cursor (see :meth:`pgpool_core.PoolManager.stream`),
        routed like :meth:`postgres_execute`. A failure goes to :meth:`on_postgres_error`
        (under ``metric_name``, or ``postgres_stream``); if that swallows it, the rows end
        there."""
        reads, writer = self._postgres_route(read_only)
        pool: PoolManager | None = self.application.postgres_pool
        name = metric_name or "postgres_stream"
        if pool is None:
            error = PoolClosedError("the PostgreSQL pool is not started")
            apply_on_error(self.on_postgres_error, "postgres_connector", error)
            return
        stream = pool.stream(
            sql,
            parameters,
            batch=batch,
            metric_name=metric_name,
            timeout=timeout,
            read_only=reads,
            writer=writer,
        )
        task = self._postgres_wait()
        try:
            async with stream as rows:
                async for row in rows:
                    yield row
        except (psycopg2.Error, PoolError) as exc:
            self._postgres_waited(task, exc)
            apply_on_error(self.on_postgres_error, name, exc)
            return
        except BaseException as exc:
            self._postgres_waited(task, exc)
            raise
        self._postgres_waited(task, None)

    async def postgres_run_transaction(
        self,
        fn: Callable[[PostgresConnector], Awaitable[T]],
        *,
        retries: int = 3,
        timeout: Timeout = None,
        read_only: bool | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> T:
        """``await fn(tx)`` in a transaction, run again on a serialization failure or a
        deadlock (see :meth:`pgpool_core.PoolManager.run_transaction`). The final failure
        goes to :meth:`on_postgres_error` as ``postgres_transaction`` (which cannot swallow
        it: an outcome is never silenced)."""
        reads, writer = self._postgres_route(read_only)
        pool: PoolManager | None = self.application.postgres_pool
        task = self._postgres_wait()
        try:
            if pool is None:
                raise PoolClosedError("the PostgreSQL pool is not started")
            result = await pool.run_transaction(
                fn,
                retries=retries,
                timeout=timeout,
                read_only=reads,
                writer=writer,
                on_duration=self.on_postgres_timing,
                settings=settings,
            )
        except PoolClosedError as exc:
            self._postgres_waited(task, exc)
            apply_on_error(self.on_postgres_error, "postgres_connector", exc)
            raise
        except (psycopg2.Error, PoolError) as exc:
            self._postgres_waited(task, exc)
            apply_on_error(self.on_postgres_error, "postgres_transaction", exc)
            raise
        except BaseException as exc:
            self._postgres_waited(task, exc)
            raise
        self._postgres_waited(task, None)
        return result

    def on_postgres_error(self, metric_name: str, exc: Exception) -> Exception | None:
        """Raise the HTTP error for a database failure (an override may instead return an
        exception to raise, or None to swallow).

        The kind comes from :func:`pgpool_core.classify`; :data:`ERROR_RESPONSES` gives
        the status, title and ``Retry-After``. With tornado-problem-details installed the
        error is a ``problemdetails.Problem``, else a :class:`PostgresHTTPError`; both
        carry only the status, title and SQLSTATE. Other exceptions are returned as is.
        Like sprockets-postgres, it raises rather than returns.
        """
        upstream = self.application.settings.get("postgres_error_format") == ERROR_FORMATS[1]
        response = (
            sprockets_postgres_response(exc) if upstream else ERROR_RESPONSES.get(classify(exc))
        )
        if response is None:
            return exc
        first_line = str(exc).strip().split("\n", 1)[0]
        code = sqlstate(exc)
        self.postgres_logger.error(
            "%s in %s for %s (%s)",
            type(exc).__name__,
            type(self).__name__,
            metric_name or "query",
            first_line,
            extra=self._postgres_log_fields("request_error", code),
        )
        error: Exception
        if upstream:  # exactly what sprockets-postgres raised
            if problemdetails is not None:
                error = problemdetails.Problem(status_code=response.status, title=response.title)
            else:
                error = web.HTTPError(response.status, reason=response.title)
        elif problemdetails is not None:
            error = problemdetails.Problem(
                status_code=response.status, title=response.title, sqlstate=code
            )
            error.retry_after = response.retry_after  # type: ignore[attr-defined]
        else:
            error = PostgresHTTPError(response, code)
        # Raised, not returned, as sprockets-postgres did: an override that calls
        # super().on_postgres_error(...) without returning its value still raises.
        raise error from exc

    def on_postgres_timing(self, metric_name: str, duration: float) -> None:
        """Record a statement's duration: ``self.influxdb.set_field`` (sprockets-influxdb),
        else ``self.record_timing`` (sprockets.mixins.metrics), else a DEBUG log."""
        if hasattr(self, "influxdb"):
            self.influxdb.set_field(metric_name, duration)
        elif hasattr(self, "record_timing"):
            self.record_timing(duration, metric_name)
        else:
            self.postgres_logger.debug("Postgres query %s duration: %s", metric_name, duration)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Add ``Retry-After`` to database errors and render :class:`PostgresHTTPError`
        (and, without an ``ErrorWriter``, a ``problemdetails.Problem``) as a problem
        document; everything else goes to the next ``write_error``. With
        ``postgres_error_format = "sprockets-postgres"`` a Problem is left to the next
        ``write_error``, as upstream left it."""
        handler = cast(web.RequestHandler, self)
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            handler.set_header("Retry-After", str(retry_after))
        document: dict[str, Any] | None = None
        if isinstance(error, PostgresHTTPError):
            document = {"status": status_code, "title": error.title, "sqlstate": error.sqlstate}
        elif (
            problemdetails is not None
            and isinstance(error, problemdetails.Problem)
            and not isinstance(self, problemdetails.ErrorWriter)
            and self.application.settings.get("postgres_error_format") != ERROR_FORMATS[1]
        ):
            document = dict(error.document)  # no ErrorWriter in this handler: render it here
        if document is not None:
            handler.set_header("Content-Type", "application/problem+json")
            handler.finish(json.dumps(document))
            return
        super().write_error(status_code, **kwargs)  # type: ignore[misc]


def _registry() -> Any:
    import prometheus_client

    return prometheus_client.REGISTRY


class MetricsRequestHandler(web.RequestHandler):
    """``GET`` -> the Prometheus exposition format of the ``prometheus_registry`` setting
    (default: prometheus_client's global registry). Needs the ``prometheus`` extra; the
    pool's metrics are there when the application has ``postgres_prometheus=True``.

    .. versionadded:: 0.1
    """

    def get(self, *_args: Any, **_kwargs: Any) -> None:
        import prometheus_client

        registry = self.settings.get("prometheus_registry") or prometheus_client.REGISTRY
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.finish(prometheus_client.generate_latest(registry))


def _grace(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise SettingsError(
            f"postgres_shutdown_grace: expected seconds >= 0 and < 3600, got {value!r}"
        )
    return float(value)


class _ProbeHandler(web.RequestHandler):
    """A probe's answer as JSON, 200 or 503, never cached."""

    def answer(self, probe: Probe) -> None:
        self.set_status(probe.status)
        self.set_header("Cache-Control", "no-store")
        self.finish(probe.body)


class LivenessRequestHandler(_ProbeHandler):
    """``GET`` -> 200 while the process and its event loop answer (loop lag below 1 s);
    never depends on the database (an outage must not restart the pod).

    .. versionadded:: 0.3
    """

    async def get(self, *_args: Any, **_kwargs: Any) -> None:
        application = self.application
        beat = application.postgres_heartbeat if isinstance(application, ApplicationMixin) else None
        self.answer(await liveness(heartbeat=beat))


class ReadinessRequestHandler(_ProbeHandler):
    """``GET`` -> 200 while the pool serves (open, or reconnecting for under 5 s), is not
    shedding requests (``max_waiting``) and the application is not draining for a
    shutdown; with the setting ``postgres_ready_writable`` also while the writer is
    writable (as its connections last reported). Each member (writer, readers) is in the
    body. No statement is sent and no connection taken.

    .. versionadded:: 0.3
    """

    async def get(self, *_args: Any, **_kwargs: Any) -> None:
        application = cast(ApplicationMixin, self.application)
        self.answer(
            readiness(
                application.postgres_pool,
                draining=application.postgres_draining,
                require_writable=bool(self.settings.get("postgres_ready_writable", False)),
            )
        )


class StartupRequestHandler(_ProbeHandler):
    """``GET`` -> 200 once the pool has opened ``min_size`` connections.

    .. versionadded:: 0.3
    """

    async def get(self, *_args: Any, **_kwargs: Any) -> None:
        self.answer(startup(cast(ApplicationMixin, self.application).postgres_pool))


class StatusRequestHandler(web.RequestHandler):
    """``GET`` -> 200 (or 503 when the database is unavailable) with the service's status:
    ``application``, ``environment`` and ``version`` from the settings ``service``,
    ``environment`` and ``version``, and the pool's numbers under ``postgres``.

    .. versionadded:: 0.1
    """

    async def get(self, *_args: Any, **_kwargs: Any) -> None:
        application = cast(ApplicationMixin, self.application)
        postgres = await application.postgres_status()
        pool = application.postgres_pool
        stats = pool.stats() if pool is not None else {}
        if not postgres["available"]:
            self.set_status(503)
        self.write(
            {
                "application": self.settings.get("service", "unknown"),
                "environment": self.settings.get("environment", "unknown"),
                "postgres": {
                    "pool_free": postgres["pool_free"],
                    "pool_size": postgres["pool_size"],
                    "pool_max": stats.get("pool_max", 0),
                    "requests_waiting": stats.get("requests_waiting", 0),
                    **({"readers": postgres["readers"]} if "readers" in postgres else {}),
                },
                "status": "ok" if postgres["available"] else "unavailable",
                "version": self.settings.get("version", "unknown"),
            }
        )
