import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pgpool_core import PoolManager, otel


@pytest.mark.asyncio
async def test_otel_metrics(postgres_db_url: str) -> None:
    reader = InMemoryMetricReader()  # an application would use an exporter's reader
    meters = MeterProvider(metric_readers=[reader])
    async with PoolManager(postgres_db_url, max_size=4) as pool:
        otel.instrument(pool, meter_provider=meters)  # without one: the global provider
        await pool.execute("SELECT 1")
        data = reader.get_metrics_data()
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    [duration] = metrics["db.client.operation.duration"].data.data_points
    assert duration.count == 1
    assert duration.attributes["db.system.name"] == "postgresql"
    assert duration.attributes["db.client.connection.pool.name"] == pool.name
    [limit] = metrics["db.client.connection.max"].data.data_points
    assert limit.value == 4
