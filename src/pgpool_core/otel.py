"""OpenTelemetry metrics for a pool, under the database client semantic conventions.

Needs the ``otel`` extra (``opentelemetry-api``; an SDK to export)::

    from pgpool_core.otel import instrument
    instrument(pool)  # the global MeterProvider, or instrument(pool, meter_provider=...)

Instruments (attributes ``db.client.connection.pool.name``, ``pgpool.role`` (``writer`` or
``reader``) and ``server.address`` / ``server.port`` on every metric; a pool with
``read_url`` reports each reader under its own name):
``db.client.connection.count`` (``db.client.connection.state`` idle|used),
``db.client.connection.idle.max``, ``db.client.connection.idle.min``,
``db.client.connection.max``, ``db.client.connection.pending_requests``,
``db.client.connection.timeouts``, ``db.client.connection.create_time``,
``db.client.connection.wait_time``, ``db.client.connection.use_time`` (seconds), and
``db.client.operation.duration`` (seconds; ``db.system.name=postgresql``, with
``error.type`` and ``db.response.status_code`` (SQLSTATE) on failure).

Spans (``instrument(pool, tracer_provider=...)``): one CLIENT span per statement a caller
sends (none for the pool's own probes, pings and lag samples), under the database client
conventions: name ``{db.operation.name} {db.collection.name}`` when the statement says
them plainly (else the operation, else ``postgresql``), ``db.system.name``,
``db.namespace``, ``db.query.text`` (the statement as written: parameters are never in
it), ``server.address`` / ``server.port``, ``pgpool.role``; on failure ``error.type``,
``db.response.status_code`` (SQLSTATE) and an error status. The wait for a connection is
the event ``pgpool.connection.acquired`` (attribute ``pgpool.wait_time``, seconds) on the
statement's span. Spans are children of the current span: in an instrumented Tornado
request, of the request's.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__
from ._classify import sqlstate
from ._manager import PoolManager
from ._metrics import StatementSpan, comment_tags
from ._redact import url_option

__all__ = [
    "OtelObserver",
    "OtelTracer",
    "comment_tags",
    "instrument",
    "span_name",
    "sql_comment",
]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
ROLE = "pgpool.role"


def pool_attributes(pool: PoolManager) -> dict[str, str | int]:
    """The attributes naming ``pool``: its name, role and server (no credentials)."""
    attributes: dict[str, str | int] = {POOL_NAME: pool.name, ROLE: pool.role}
    address = pool.server_address
    host, _, port = address.rpartition(":")
    if address and "," not in address and port.isdigit():
        attributes["server.address"] = host
        attributes["server.port"] = int(port)
    elif address:
        attributes["server.address"] = address  # several hosts: libpq picks one per connect
    return attributes


class OtelObserver:
    """A :class:`~pgpool_core.PoolObserver` recording into OpenTelemetry instruments.

    .. versionadded:: 0.1
    """

    def __init__(self, pool: PoolManager, meter: metrics.Meter) -> None:
        self.pool = pool
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="Time to create a new connection.",
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="Time to obtain an open connection from the pool.",
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="Time between borrowing and returning a connection.",
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="Requests that timed out waiting for a connection.",
        )
        self.operation_duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
        )
        count = "{connection}"
        gauges: list[tuple[str, str, str, Any]] = [
            ("db.client.connection.count", count, "Connections by state.", self._count),
            ("db.client.connection.idle.max", count, "Most idle connections allowed.", self._max),
            ("db.client.connection.idle.min", count, "Fewest idle connections kept.", self._min),
            ("db.client.connection.max", count, "Most open connections allowed.", self._max),
            (
                "db.client.connection.pending_requests",
                "{request}",
                "Waiting requests.",
                self._pending,
            ),
        ]
        for name, unit, description, observe in gauges:
            meter.create_observable_up_down_counter(
                name, callbacks=[_callback(observe)], unit=unit, description=description
            )

    def _members(self) -> tuple[PoolManager, ...]:
        return (self.pool, *self.pool.readers)

    def _one(self, key: str) -> Iterable[Observation]:
        for pool in self._members():
            yield Observation(pool.stats()[key], pool_attributes(pool))

    def _max(self) -> Iterable[Observation]:
        return self._one("pool_max")

    def _min(self) -> Iterable[Observation]:
        return self._one("pool_min")

    def _pending(self) -> Iterable[Observation]:
        return self._one("requests_waiting")

    def _count(self) -> Iterable[Observation]:
        for pool in self._members():
            stats = pool.stats()
            idle = stats["pool_available"]
            attributes = pool_attributes(pool)
            yield Observation(idle, {**attributes, STATE: "idle"})
            yield Observation(stats["pool_size"] - idle, {**attributes, STATE: "used"})

    # -- PoolObserver --------------------------------------------------------------------

    def connection_created(self, pool: PoolManager, seconds: float) -> None:
        self.create_time.record(seconds, pool_attributes(pool))

    def connection_waited(self, pool: PoolManager, seconds: float) -> None:
        self.wait_time.record(seconds, pool_attributes(pool))

    def connection_used(self, pool: PoolManager, seconds: float) -> None:
        self.use_time.record(seconds, pool_attributes(pool))

    def acquire_timed_out(self, pool: PoolManager) -> None:
        self.timeouts.add(1, pool_attributes(pool))

    def operation_finished(
        self, pool: PoolManager, seconds: float, error: BaseException | None
    ) -> None:
        attributes: dict[str, str | int] = {
            "db.system.name": "postgresql",
            **pool_attributes(pool),
        }
        if error is not None:
            attributes["error.type"] = f"{type(error).__module__}.{type(error).__qualname__}"
            code = sqlstate(error)
            if code:
                attributes["db.response.status_code"] = code
        self.operation_duration.record(seconds, attributes)


def _callback(observe: Any) -> Any:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return list(observe())

    return callback


_LITERALS = re.compile(
    r"(?:[EeBbXxUu]&?)?'(?:[^']|'')*'"  # quoted strings, E'', B'', X'', U&''
    r"|\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$"  # dollar-quoted
    r"|(?<![\w$])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w$])",  # numbers (not in names)
    re.DOTALL,
)


def sanitize(sql: str) -> str:
    """``sql`` with every literal replaced by ``?``: a password or a card number written
    into the text never reaches a span. Placeholders (``%s``, ``%(name)s``) stay."""
    return _LITERALS.sub("?", sql)


_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")
_TARGET = {
    "INSERT": re.compile(r"^\s*INSERT\s+INTO\s+([A-Za-z_][\w.]*)", re.IGNORECASE),
    "UPDATE": re.compile(r"^\s*UPDATE\s+(?:ONLY\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE),
    "DELETE": re.compile(r"^\s*DELETE\s+FROM\s+(?:ONLY\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE),
}


def _top_level_target(sql: str) -> str | None:
    """The table after the first FROM outside parentheses and literals (``ONLY``
    skipped), or None."""
    text = _LITERALS.sub("?", sql)
    depth = 0
    for match in re.finditer(r"[()]|\bFROM\s+(?:ONLY\s+)?([A-Za-z_][\w.]*)", text, re.IGNORECASE):
        token = match.group(0)
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            return match.group(1)
    return None


def span_name(sql: str) -> tuple[str, str | None, str | None]:
    """``(name, operation, collection)`` of a statement: the operation is its first word,
    the collection the table it plainly names (one statement only); neither is guessed.

    .. versionadded:: 0.3
    """
    first = _FIRST_WORD.match(sql)
    if first is None:
        return "postgresql", None, None
    operation = first.group(1).upper()
    target: str | None = None
    if ";" not in sql.rstrip("; \n"):
        if operation == "SELECT":
            target = _top_level_target(sql)
        elif operation in _TARGET:
            found = _TARGET[operation].search(sql)
            target = None if found is None else found.group(1)
    if target is None or target.upper() == "ONLY":
        return operation, operation, None
    return f"{operation} {target}", operation, target


@functools.lru_cache(maxsize=1024)
def _described(sql: str) -> tuple[str, str | None, str | None, str]:
    """A statement's span name, operation, collection and sanitized text: an application
    sends the same few statements over and over, so each is read once."""
    return (*span_name(sql), sanitize(sql))


class _Span:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    @property
    def span(self) -> trace.Span:
        return self._span

    def acquired(self, waited: float) -> None:
        self._span.add_event("pgpool.connection.acquired", {"pgpool.wait_time": waited})

    def end(self, error: BaseException | None) -> None:
        span = self._span
        if error is not None:
            span.set_attribute("error.type", f"{type(error).__module__}.{type(error).__qualname__}")
            code = sqlstate(error)
            if code:
                span.set_attribute("db.response.status_code", code)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


def sql_comment(span: trace.Span, tags: Mapping[str, str]) -> str:
    """A sqlcommenter comment: the span's ``traceparent`` and ``tags``, keys sorted,
    values URL-quoted as the spec says.

    .. versionadded:: 0.3
    """
    context = span.get_span_context()
    items = dict(tags)
    if context.is_valid:
        items["traceparent"] = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        )
    body = ",".join(
        f"{urllib.parse.quote(key, safe='')}='{urllib.parse.quote(str(value), safe='')}'"
        for key, value in sorted(items.items())
    )
    return f"/*{body}*/" if body else ""


class OtelTracer:
    """A :class:`~pgpool_core._metrics.StatementTracer` making OpenTelemetry spans for one
    pool (a writer or one of its readers); with ``sqlcommenter`` each statement is sent
    with a comment naming its span (and ``tags``).

    .. versionadded:: 0.3
    """

    def __init__(
        self,
        pool: PoolManager,
        tracer: trace.Tracer,
        *,
        sqlcommenter: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._tracer = tracer
        self._commenter = sqlcommenter
        self._tags = dict(tags or {})
        database = url_option(pool.settings.url, "dbname") or url_option(pool.settings.url, "user")
        self._attributes: dict[str, str | int] = {
            "db.system.name": "postgresql",
            **pool_attributes(pool),
        }
        del self._attributes[POOL_NAME]
        if database:
            self._attributes["db.namespace"] = database

    def start(self, sql: str, metric_name: str) -> _Span:
        name, operation, collection, text = _described(sql)
        attributes = {**self._attributes, "db.query.text": text}
        if operation is not None:
            attributes["db.operation.name"] = operation
        if collection is not None:
            attributes["db.collection.name"] = collection
        if metric_name:
            attributes["pgpool.metric_name"] = metric_name
        return _Span(self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes))

    def text(self, sql: str, span: StatementSpan, params: object) -> str:
        if not self._commenter or not isinstance(span, _Span):
            return sql
        extra = comment_tags.get()
        comment = sql_comment(span.span, {**self._tags, **(extra or {})})
        if not comment:
            return sql
        if params is not None:  # psycopg2 reads % in the text as a placeholder
            comment = comment.replace("%", "%%")
        # On a line of its own: a trailing "-- note" would swallow it otherwise.
        return f"{sql.rstrip().rstrip(';')}\n{comment}"


def instrument(
    pool: PoolManager,
    meter_provider: metrics.MeterProvider | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    sqlcommenter: bool = False,
    comment: Mapping[str, str] | None = None,
) -> OtelObserver:
    """Record ``pool``'s metrics with ``meter_provider`` (default: the global one), and
    with ``tracer_provider`` a span per statement (its readers' included).

    ``sqlcommenter=True`` (off by default) sends each traced statement with a
    `sqlcommenter <https://google.github.io/sqlcommenter/>`_ comment: its span's
    ``traceparent`` and the tags ``comment`` (e.g. ``{"application": "shop"}``) plus those
    of :data:`~pgpool_core.otel.comment_tags` (the Tornado adapter sets ``controller``,
    the handler's class), so ``pg_stat_activity`` and slow-query logs join to traces. A
    comment changes no session state: safe behind PgBouncer. Parameter values never go
    into it.

    .. versionadded:: 0.1
    """
    provider = meter_provider or metrics.get_meter_provider()
    observer = OtelObserver(pool, provider.get_meter("pgpool", __version__))
    pool.add_observer(observer)
    if tracer_provider is not None:
        tracer = tracer_provider.get_tracer("pgpool", __version__)
        for member in (pool, *pool.readers):
            member._metrics.tracer = OtelTracer(
                member, tracer, sqlcommenter=sqlcommenter, tags=comment
            )
    return observer
