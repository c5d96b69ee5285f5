"""Prometheus metrics for pools (extra ``prometheus``: prometheus_client).

The numbers of :mod:`pgpool_core.otel` under Prometheus names, labels ``pool``, ``role``
(``writer`` or ``reader``: a pool with ``read_url`` reports each reader) and ``server``
(``host:port``)::

    from pgpool_core.prometheus import instrument
    instrument(pool)  # registers on prometheus_client.REGISTRY, or registry=...

Gauges ``pgpool_connections{state="idle"|"used"}``, ``pgpool_connections_max``,
``pgpool_connections_idle_min``, ``pgpool_connections_idle_max``,
``pgpool_pending_requests``; counter ``pgpool_connection_timeouts_total``; histograms
``pgpool_connection_create_seconds``, ``pgpool_connection_wait_seconds``,
``pgpool_connection_use_seconds`` and ``pgpool_operation_duration_seconds`` (labels
``pool``, ``status_code`` (SQLSTATE) and ``error_type`` on failure, else empty).

.. versionadded:: 0.1
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._classify import sqlstate
from ._manager import PoolManager

__all__ = ["PoolCollector", "PrometheusObserver", "instrument"]

_LABELS = ("pool", "role", "server")


def _labels(pool: PoolManager) -> list[str]:
    return [pool.name, pool.role, pool.server_address]


_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PoolCollector(Collector):
    """Sizes read from the pools at scrape time.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self.pools: list[PoolManager] = []

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "pgpool_connections", "Open connections by state.", labels=[*_LABELS, "state"]
        )
        families = {
            key: GaugeMetricFamily(name, help_text, labels=list(_LABELS))
            for key, name, help_text in (
                ("pool_max", "pgpool_connections_max", "Most connections open at once."),
                ("pool_min", "pgpool_connections_idle_min", "Connections kept even when idle."),
                ("idle_max", "pgpool_connections_idle_max", "Most idle connections kept."),
                ("requests_waiting", "pgpool_pending_requests", "Requests waiting."),
            )
        }
        for pool in (member for owner in self.pools for member in (owner, *owner.readers)):
            stats = pool.stats()
            idle = stats["pool_available"]
            labels = _labels(pool)
            connections.add_metric([*labels, "idle"], idle)
            connections.add_metric([*labels, "used"], stats["pool_size"] - idle)
            stats["idle_max"] = stats["pool_max"]
            for key, family in families.items():
                family.add_metric(labels, stats[key])
        yield connections
        yield from families.values()


class PrometheusObserver:
    """A :class:`~pgpool_core.PoolObserver` recording into prometheus_client metrics.

    .. versionadded:: 0.1
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.collector = PoolCollector()
        registry.register(self.collector)

        def histogram(name: str, help_text: str, *labels: str) -> Histogram:
            return Histogram(
                name, help_text, [*_LABELS, *labels], registry=registry, buckets=_BUCKETS
            )

        self.create = histogram("pgpool_connection_create_seconds", "Time to open a connection.")
        self.wait = histogram("pgpool_connection_wait_seconds", "Time to get a connection.")
        self.use = histogram("pgpool_connection_use_seconds", "Time a connection was held.")
        self.timeouts = Counter(
            "pgpool_connection_timeouts", "Requests that timed out.", _LABELS, registry=registry
        )
        self.operations = histogram(
            "pgpool_operation_duration_seconds", "Statement duration.", "status_code", "error_type"
        )

    def connection_created(self, pool: PoolManager, seconds: float) -> None:
        self.create.labels(*_labels(pool)).observe(seconds)

    def connection_waited(self, pool: PoolManager, seconds: float) -> None:
        self.wait.labels(*_labels(pool)).observe(seconds)

    def connection_used(self, pool: PoolManager, seconds: float) -> None:
        self.use.labels(*_labels(pool)).observe(seconds)

    def acquire_timed_out(self, pool: PoolManager) -> None:
        self.timeouts.labels(*_labels(pool)).inc()

    def operation_finished(
        self, pool: PoolManager, seconds: float, error: BaseException | None
    ) -> None:
        code = (sqlstate(error) or "") if error is not None else ""
        kind = type(error).__name__ if error is not None else ""
        self.operations.labels(*_labels(pool), code, kind).observe(seconds)


#: One observer per registry, forgotten with the registry (an id() key could be reused by
#: a later registry and hand it an observer registered elsewhere).
_OBSERVERS: weakref.WeakKeyDictionary[CollectorRegistry, PrometheusObserver] = (
    weakref.WeakKeyDictionary()
)


def instrument(pool: PoolManager, registry: CollectorRegistry = REGISTRY) -> PrometheusObserver:
    """Export ``pool``'s metrics on ``registry`` (one set of metrics per registry).

    .. versionadded:: 0.1
    """
    observer = _OBSERVERS.get(registry)
    if observer is None:
        observer = _OBSERVERS[registry] = PrometheusObserver(registry)
    if pool not in observer.collector.pools:
        observer.collector.pools.append(pool)
        pool.add_observer(observer)
    return observer
