import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pgpool_core import PoolManager, otel
from pgpool_core.probes import liveness, readiness, startup


@pytest.mark.asyncio
async def test_probes_resize_and_spans(postgres_db_url: str) -> None:
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    async with PoolManager(postgres_db_url, min_size=1, max_size=4) as pool:
        otel.instrument(pool, tracer_provider=tracing)
        assert (await liveness()).ok
        assert readiness(pool).ok
        sql = "SELECT count(*) FROM pg_class WHERE relkind = %s"
        await asyncio.gather(pool.execute(sql, ["r"]), pool.execute(sql, ["v"]))
        assert startup(pool).ok  # min_size connections open
        pool.resize(min_size=1, max_size=2)
        assert pool.stats()["pool_max"] == 2
    names = [span.name for span in spans.get_finished_spans()]
    assert names == ["SELECT pg_class", "SELECT pg_class"]
    text = spans.get_finished_spans()[0].attributes["db.query.text"]
    assert text.endswith("relkind = %s")  # the statement as written, never the values
