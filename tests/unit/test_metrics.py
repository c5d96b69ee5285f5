"""Metrics: OpenTelemetry semantic-convention names and units (in-memory reader), and the
same numbers for Prometheus; values move under a small load with waits and a timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg2.errors
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from pgpool_core import PoolManager, PoolTimeoutError, otel, prometheus
from pgpool_core.testing import FakeConnector

from fake_support import URL

#: name -> unit, exactly as the database client semantic conventions define them.
SEMCONV = {
    "db.client.connection.count": "{connection}",
    "db.client.connection.idle.max": "{connection}",
    "db.client.connection.idle.min": "{connection}",
    "db.client.connection.max": "{connection}",
    "db.client.connection.pending_requests": "{request}",
    "db.client.connection.timeouts": "{timeout}",
    "db.client.connection.create_time": "s",
    "db.client.connection.wait_time": "s",
    "db.client.connection.use_time": "s",
    "db.client.operation.duration": "s",
}


async def small_load(pool: PoolManager, fake: FakeConnector) -> None:
    """Two requests wait behind a held connection, one times out, one SQL error."""
    gate = asyncio.Event()
    fake.on("pg_sleep", gate=gate)
    fake.on("^INSERT", error=psycopg2.errors.UniqueViolation("duplicate"))
    holder = asyncio.create_task(pool.execute("SELECT pg_sleep(1)"))
    for _ in range(100):
        await asyncio.sleep(0)
    with pytest.raises(PoolTimeoutError):
        await pool.execute("SELECT 1", timeout=0.01)
    waiter = asyncio.create_task(pool.execute("SELECT 1"))
    for _ in range(100):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, waiter)
    with pytest.raises(psycopg2.errors.UniqueViolation):
        await pool.execute("INSERT INTO t VALUES (1)")


def points(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = metric
    return found


async def test_otel_names_units_and_values() -> None:
    """Every semantic-convention instrument exists with its unit and pool name attribute;
    waits, a timeout, creations and an operation error are recorded."""
    reader = InMemoryMetricReader()
    fake = FakeConnector()
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1) as pool:
        otel.instrument(pool, MeterProvider(metric_readers=[reader]))
        await small_load(pool, fake)
        found = points(reader)
    assert {name: found[name].unit for name in SEMCONV} == SEMCONV
    assert set(found) == set(SEMCONV)
    count = {
        p.attributes["db.client.connection.state"]: p.value
        for p in found["db.client.connection.count"].data.data_points
    }
    assert count == {"idle": 1, "used": 0}
    assert all(
        p.attributes["db.client.connection.pool.name"] == "db:5432/main"
        for p in found["db.client.connection.count"].data.data_points
    )
    (timeouts,) = found["db.client.connection.timeouts"].data.data_points
    assert timeouts.value == 1
    (created,) = found["db.client.connection.create_time"].data.data_points
    assert created.count == 1
    (waited,) = found["db.client.connection.wait_time"].data.data_points
    assert waited.count == 3  # holder, waiter, the failing INSERT (the timeout never got one)
    assert waited.max > 0
    operations = {
        tuple(sorted(p.attributes.items())): p.count
        for p in found["db.client.operation.duration"].data.data_points
    }
    failed = (
        ("db.client.connection.pool.name", "db:5432/main"),
        ("db.response.status_code", "23505"),
        ("db.system.name", "postgresql"),
        ("error.type", "psycopg2.errors.UniqueViolation"),
        ("pgpool.role", "writer"),
        ("server.address", "db"),
        ("server.port", 5432),
    )
    assert operations[failed] == 1
    ok = (
        ("db.client.connection.pool.name", "db:5432/main"),
        ("db.system.name", "postgresql"),
        ("pgpool.role", "writer"),
        ("server.address", "db"),
        ("server.port", 5432),
    )
    assert operations[ok] == 2
    (maximum,) = found["db.client.connection.max"].data.data_points
    assert maximum.value == 1


async def test_prometheus_exposition_has_the_same_numbers() -> None:
    """Gauges at scrape time and histograms/counters from events, labelled by pool."""
    registry = CollectorRegistry()
    fake = FakeConnector()
    async with PoolManager(URL, connector=fake, min_size=0, max_size=1) as pool:
        prometheus.instrument(pool, registry)
        prometheus.instrument(pool, registry)  # idempotent
        await small_load(pool, fake)
        text = generate_latest(registry).decode()
    assert (
        'pgpool_connections{pool="db:5432/main",role="writer",server="db:5432",state="idle"} 1.0'
        in text
    )
    assert (
        'pgpool_connections{pool="db:5432/main",role="writer",server="db:5432",state="used"} 0.0'
        in text
    )
    assert 'pgpool_connections_max{pool="db:5432/main",role="writer",server="db:5432"} 1.0' in text
    assert 'pgpool_pending_requests{pool="db:5432/main",role="writer",server="db:5432"} 0.0' in text
    assert (
        'pgpool_connection_timeouts_total{pool="db:5432/main",role="writer",server="db:5432"} 1.0'
        in text
    )
    writer = 'pool="db:5432/main",role="writer",server="db:5432"'
    assert f"pgpool_connection_wait_seconds_count{{{writer}}} 3.0" in text
    assert f"pgpool_connection_create_seconds_count{{{writer}}} 1.0" in text
    assert (
        'pgpool_operation_duration_seconds_count{error_type="UniqueViolation",'
        'pool="db:5432/main",role="writer",server="db:5432",status_code="23505"} 1.0'
    ) in text
    assert "s3cret" not in text


async def test_readers_are_reported_under_their_role_and_server() -> None:
    """A pool with read_url: each reader's gauges and events carry role=reader and its
    server; no credential of any URL reaches a label."""
    registry = CollectorRegistry()
    memory = InMemoryMetricReader()
    writer, reader = FakeConnector(), FakeConnector()
    reader.on("pg_is_in_recovery", rows=[{"standby": True, "lag": 0.0}])
    pool = PoolManager(
        URL,
        connector=writer,
        read_connectors=[reader],
        min_size=0,
        max_size=1,
        read_url="postgresql://app:s3cret@replica:6432/main",
    )
    async with pool:
        prometheus.instrument(pool, registry)
        otel.instrument(pool, MeterProvider(metric_readers=[memory]))
        await pool.sample_readers()
        await pool.execute("SELECT 'r'", read_only=True)
        text = generate_latest(registry).decode()
        found = points(memory)
    labels = 'pool="replica:6432/main",role="reader",server="replica:6432"'
    assert f'pgpool_connections{{{labels},state="idle"}} 1.0' in text
    assert f"pgpool_connections_max{{{labels}}} 1.0" in text
    assert "s3cret" not in text
    roles = {
        (
            p.attributes["pgpool.role"],
            p.attributes["server.address"],
            p.attributes.get("server.port"),
        )
        for p in found["db.client.connection.count"].data.data_points
    }
    assert roles == {("writer", "db", 5432), ("reader", "replica", 6432)}
    [read] = [
        p
        for p in found["db.client.operation.duration"].data.data_points
        if p.attributes["pgpool.role"] == "reader"
    ]
    assert read.count == 3  # the background task's first lag sample, ours, and the read
