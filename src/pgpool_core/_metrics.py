"""What the pool counts and tells: typed counters, the observer protocol, the status record,
and the one recorder that bumps a counter and notifies observers in the same call."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._manager import PoolManager

__all__ = ["Counters", "Health", "PoolObserver", "PoolStatus", "Recorder"]

#: How recent a real success must be for status() to skip its own round trip.
RECENT_SUCCESS = 1.0


#: sqlcommenter tags of the current context (the Tornado adapter sets ``controller``, the
#: handler's class), added to those given to ``pgpool_core.otel.instrument``.
comment_tags: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "pgpool_comment_tags", default=None
)


class StatementSpan(Protocol):
    """One caller's statement, traced: told when it got its connection and how it ended."""

    def acquired(self, waited: float) -> None: ...
    def end(self, error: BaseException | None) -> None: ...


class StatementTracer(Protocol):
    """Starts a span per caller's statement (never for the pool's own probes, pings and
    samples). ``sql`` is the statement as written, parameters apart."""

    def start(self, sql: str, metric_name: str) -> StatementSpan: ...

    def text(self, sql: str, span: StatementSpan, params: object) -> str:
        """The statement as sent (``sql``, or with a comment naming the span: see
        ``sqlcommenter`` in :mod:`pgpool_core.otel`)."""
        ...


class PoolObserver(Protocol):
    """Receives the pool's events, for metrics exporters (see ``pgpool_core.otel`` and
    ``pgpool_core.prometheus``). Called on the event loop; must not block. Sizes are read
    from :meth:`PoolManager.stats` when needed.

    .. versionadded:: 0.1
    """

    def connection_created(self, pool: PoolManager, seconds: float) -> None:
        """A connection opened, taking ``seconds``."""

    def connection_waited(self, pool: PoolManager, seconds: float) -> None:
        """A request got a connection after ``seconds`` (0 when one was idle)."""

    def connection_used(self, pool: PoolManager, seconds: float) -> None:
        """A connection came back after being held ``seconds``."""

    def acquire_timed_out(self, pool: PoolManager) -> None:
        """A request gave up waiting for a connection (``PoolTimeoutError``)."""

    def operation_finished(
        self, pool: PoolManager, seconds: float, error: BaseException | None
    ) -> None:
        """A caller's statement finished after ``seconds``, failed with ``error`` if set."""


@dataclass(slots=True)
class Counters:
    """The pool's counters, under psycopg_pool's names where it has them (``*_ms`` in ms)."""

    requests_num: int = 0
    requests_queued: int = 0
    requests_wait_ms: int = 0
    requests_errors: int = 0
    usage_ms: int = 0
    returns_bad: int = 0
    connections_num: int = 0
    connections_ms: int = 0
    connections_errors: int = 0
    connections_lost: int = 0
    query_timeouts: int = 0
    leaks_detected: int = 0
    failovers: int = 0
    #: Reads (``read_only=True``) sent to the writer because no reader was fit.
    reads_to_writer: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTER_NAMES}


_COUNTER_NAMES = tuple(field.name for field in dataclasses.fields(Counters))


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of the pool for health checks and dashboards.

    ``available`` comes from a real outcome: a success within the last second, or a
    bounded ``SELECT 1``. ``pool_size`` counts open connections, ``pool_free`` idle ones,
    ``connecting`` those being opened. ``role`` is ``writer`` or ``reader``; a writer with
    readers lists their statuses in ``readers``, each with its replay ``lag`` (seconds, from
    the latest sample; None before one) and why it gets no reads (``excluded``, None when
    it is fit).

    .. versionadded:: 0.1
    """

    state: str
    available: bool
    pool_size: int
    pool_free: int
    pool_min: int
    pool_max: int
    in_use: int
    waiting: int
    connecting: int
    name: str
    last_error: str | None
    counters: Mapping[str, int]
    role: str = "writer"
    server: str = ""
    lag: float | None = None
    excluded: str | None = None
    readers: tuple[PoolStatus, ...] = ()

    @classmethod
    def of(cls, stats: dict[str, int], **fields: Any) -> PoolStatus:
        """A status from a :meth:`PoolManager.stats` snapshot (sizes and counters) and the
        fields that are not in it."""
        counters = dict(stats)
        return cls(
            pool_size=counters.pop("pool_size"),
            pool_free=counters.pop("pool_available"),
            pool_min=counters.pop("pool_min"),
            pool_max=counters.pop("pool_max"),
            waiting=counters.pop("requests_waiting"),
            counters=counters,
            **fields,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``/status``): every field, counters and readers included."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["counters"] = dict(self.counters)
        data["readers"] = [reader.as_dict() for reader in self.readers]
        return data


class Recorder:
    """Counts the pool's events and tells the observers, one method per event.

    ``subject`` is what observers are told the events are about (the pool); the recorder
    only passes it on.
    """

    __slots__ = ("counters", "observers", "subject", "tracer")

    def __init__(self, subject: Any) -> None:
        self.subject = subject
        #: Spans for the callers' statements (``pgpool_core.otel``), or None.
        self.tracer: StatementTracer | None = None
        self.counters = Counters()
        self.observers: tuple[PoolObserver, ...] = ()

    def add(self, observer: PoolObserver) -> None:
        self.observers = (*self.observers, observer)

    def remove(self, observer: PoolObserver) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def connection_created(self, seconds: float) -> None:
        self.counters.connections_num += 1
        self.counters.connections_ms += int(seconds * 1000)
        for observer in self.observers:
            observer.connection_created(self.subject, seconds)

    def connection_waited(self, seconds: float) -> None:
        for observer in self.observers:
            observer.connection_waited(self.subject, seconds)

    def connection_used(self, seconds: float) -> None:
        self.counters.usage_ms += int(seconds * 1000)
        for observer in self.observers:
            observer.connection_used(self.subject, seconds)

    def leak_detected(self) -> None:
        self.counters.leaks_detected += 1

    def acquire_timed_out(self) -> None:
        self.counters.requests_errors += 1
        for observer in self.observers:
            observer.acquire_timed_out(self.subject)

    def operation_finished(self, seconds: float, error: BaseException | None) -> None:
        for observer in self.observers:
            observer.operation_finished(self.subject, seconds, error)


class Health:
    """The latest real outcome: whether a connect or statement last succeeded, when the last
    success was, and the last failure's (redacted) description."""

    __slots__ = ("_clock", "healthy", "last_error", "last_success")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.healthy = False
        self.last_success = float("-inf")
        self.last_error: str | None = None

    def succeeded(self) -> None:
        self.last_success = self._clock()
        self.healthy = True

    def failed(self, description: str) -> None:
        self.healthy = False
        self.last_error = description

    def succeeded_within(self, seconds: float) -> bool:
        return self.healthy and self._clock() - self.last_success < seconds

    async def confirm(self, probe: Callable[[], Awaitable[object]], *, all_busy: bool) -> bool:
        """Whether the pool serves now, from a real outcome: a success within
        :data:`RECENT_SUCCESS`; else, when every connection is busy, the latest outcome (no
        probe queued behind real work); else ``probe()`` (a bounded round trip) succeeding.
        A cancelled caller's cancellation propagates."""
        if self.succeeded_within(RECENT_SUCCESS):
            return True
        if all_busy:
            return self.healthy
        try:
            await probe()
        except Exception:
            return False
        return True
