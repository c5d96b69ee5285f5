import asyncio

import psycopg2.errors
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pgpool_core import PoolManager, otel


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider keeping its spans in memory (an application exports them)."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


@pytest.mark.asyncio
async def test_one_span_per_statement(postgres_db_url: str) -> None:
    provider, spans = tracing()
    async with PoolManager(postgres_db_url) as pool:
        otel.instrument(pool, tracer_provider=provider)
        await pool.execute("CREATE TABLE items (id int, secret text)")
        await pool.execute("INSERT INTO items VALUES (%s, 'hunter2')", [7])
        with pytest.raises(psycopg2.errors.UndefinedColumn):
            await pool.execute("SELECT nope FROM items WHERE id = %s", [7])
    _create, insert, select = spans.get_finished_spans()
    assert (insert.name, insert.kind) == ("INSERT items", SpanKind.CLIENT)
    assert insert.attributes["db.system.name"] == "postgresql"
    assert insert.attributes["db.namespace"] == postgres_db_url.rsplit("/", 1)[1]
    # The statement as written, literals replaced: neither 7 nor 'hunter2' is in it.
    assert insert.attributes["db.query.text"] == "INSERT INTO items VALUES (%s, ?)"
    assert [event.name for event in insert.events] == ["pgpool.connection.acquired"]
    assert select.status.status_code is StatusCode.ERROR
    assert select.attributes["db.response.status_code"] == "42703"  # the SQLSTATE
    assert select.attributes["error.type"] == "psycopg2.errors.UndefinedColumn"


@pytest.mark.asyncio
async def test_sqlcommenter_puts_the_trace_in_pg_stat_activity(postgres_db_url: str) -> None:
    provider, spans = tracing()
    async with PoolManager(postgres_db_url, max_size=2) as pool:
        otel.instrument(pool, tracer_provider=provider, sqlcommenter=True, comment={"app": "shop"})
        running = asyncio.create_task(pool.execute("SELECT pg_sleep(0.5) AS slow"))
        find = "SELECT query FROM pg_stat_activity WHERE query LIKE %s"
        for _ in range(100):  # until the server runs it
            seen = await pool.execute(find, ["SELECT pg_sleep(0.5) AS slow%"])
            if seen.row is not None:
                break
            await asyncio.sleep(0.01)
        await running
    [slow] = [s for s in spans.get_finished_spans() if "slow" in s.attributes["db.query.text"]]
    assert slow.attributes["db.query.text"] == "SELECT pg_sleep(?) AS slow"
    context = slow.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    # What the server saw: the statement, then the comment on a line of its own.
    assert seen.row["query"] == (
        f"SELECT pg_sleep(0.5) AS slow\n/*app='shop',traceparent='{traceparent}'*/"
    )
