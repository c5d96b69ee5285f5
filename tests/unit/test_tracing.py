"""Spans per statement (pgpool_core.otel with a tracer provider) over the fakes: names and
attributes under the database client conventions, failures, the acquire event, parents,
and no spans for the pool's own probes."""

from __future__ import annotations

import psycopg2.errors
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pgpool_core import PoolManager, otel
from pgpool_core.otel import span_name
from pgpool_core.testing import FakeConnector

from fake_support import URL


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_one_client_span_per_statement_without_parameter_values(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    fake.on("FROM items", rows=[{"id": 1}])
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        otel.instrument(pool, tracer_provider=provider)
        await pool.execute(
            "SELECT id FROM items WHERE owner = %s", ["secret-owner"], metric_name="items"
        )
    [span] = exporter.get_finished_spans()
    assert span.name == "SELECT items"
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        "db.system.name": "postgresql",
        "db.namespace": "main",
        "db.query.text": "SELECT id FROM items WHERE owner = %s",
        "db.operation.name": "SELECT",
        "db.collection.name": "items",
        "server.address": "db",
        "server.port": 5432,
        "pgpool.role": "writer",
        "pgpool.metric_name": "items",
    }
    assert "secret-owner" not in str(span.to_json())
    assert "s3cret" not in str(span.to_json())  # the URL's password
    [event] = span.events
    assert event.name == "pgpool.connection.acquired"
    assert span.status.status_code is StatusCode.UNSET


async def test_a_failure_is_on_its_span(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    fake.on("^INSERT", error=psycopg2.errors.UniqueViolation("duplicate key"))
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        otel.instrument(pool, tracer_provider=provider)
        with pytest.raises(psycopg2.errors.UniqueViolation):
            await pool.execute("INSERT INTO items VALUES (1)")
    [span] = exporter.get_finished_spans()
    assert span.name == "INSERT items"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "psycopg2.errors.UniqueViolation"
    assert span.attributes["db.response.status_code"] == "23505"


async def test_spans_are_children_of_the_current_span_and_cover_blocks(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        otel.instrument(pool, tracer_provider=provider)
        with provider.get_tracer("test").start_as_current_span("GET /items") as request:
            async with pool.transaction() as tx:
                await tx.execute("UPDATE items SET n = n + 1")
                await tx.execute("DELETE FROM items WHERE n > 9")
    finished = {span.name: span for span in exporter.get_finished_spans()}
    assert set(finished) == {"GET /items", "UPDATE items", "DELETE items"}
    for name in ("UPDATE items", "DELETE items"):
        parent = finished[name].parent
        assert parent is not None
        assert parent.span_id == request.get_span_context().span_id


async def test_the_pools_own_probes_make_no_spans(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with PoolManager(URL, connector=fake, min_size=0, validate_idle_after=0) as pool:
        otel.instrument(pool, tracer_provider=provider)
        status = await pool.status()  # a SELECT 1 probe
        assert status.available
        await pool.execute("SELECT 2")  # checkout validation pings first, then the statement
    assert [span.name for span in exporter.get_finished_spans()] == ["SELECT"]
    assert [s for c in fake.connections for s in c.statements].count("SELECT 1") >= 2


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("select * from public.items where id = %s", "SELECT public.items"),
        ("INSERT INTO items (id) VALUES (%s)", "INSERT items"),
        ("update only items set x = 1", "UPDATE items"),
        ("DELETE FROM items", "DELETE items"),
        ("SELECT 1", "SELECT"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ("SELECT * FROM a; DELETE FROM b", "SELECT"),
        ("  ", "postgresql"),
        ("SELECT extract(year FROM created_at) FROM orders", "SELECT orders"),
        ("SELECT * FROM ONLY orders", "SELECT orders"),
        ("SELECT * FROM public.f(...)", "SELECT public.f"),
    ],
)
def test_span_names_never_guess(sql: str, name: str) -> None:
    assert span_name(sql)[0] == name


async def test_sqlcommenter_names_the_span_in_the_statement_sent(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        otel.instrument(
            pool, tracer_provider=provider, sqlcommenter=True, comment={"application": "my shop"}
        )
        await pool.execute("SELECT 1;")
        await pool.execute("SELECT %s", ["100%"])
    first, second = exporter.get_finished_spans()
    sent = [s for c in fake.connections for s in c.statements]
    context = first.get_span_context()
    assert context is not None
    traceparent = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    assert sent[0] == f"SELECT 1\n/*application='my%20shop',traceparent='{traceparent}'*/"
    # With parameters, the comment's % are doubled: psycopg2 reads % as a placeholder.
    assert sent[1].startswith("SELECT %s\n/*application='my%%20shop',traceparent='00-")
    assert first.attributes is not None
    # The span keeps the text as written, literals replaced by ?.
    assert first.attributes["db.query.text"] == "SELECT ?;"
    assert "100%" not in sent[1]
    del second


async def test_sqlcommenter_is_off_by_default(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, _exporter = spans
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        otel.instrument(pool, tracer_provider=provider)
        await pool.execute("SELECT 1")
    assert [s for c in fake.connections for s in c.statements] == ["SELECT 1"]


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD ?"),
        ("SELECT * FROM t WHERE card = 4111111111111111", "SELECT * FROM t WHERE card = ?"),
        ("SELECT $$secret$$, E'it''s', t1.x FROM t1", "SELECT ?, ?, t1.x FROM t1"),
        (
            "SELECT * FROM t WHERE a = %s AND b = %(b)s",
            "SELECT * FROM t WHERE a = %s AND b = %(b)s",
        ),
    ],
)
def test_literals_never_reach_a_span(sql: str, shown: str) -> None:
    assert otel.sanitize(sql) == shown


async def test_a_trailing_line_comment_does_not_swallow_the_sqlcomment(
    fake: FakeConnector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, _exporter = spans
    async with PoolManager(URL, connector=fake, min_size=0) as pool:
        otel.instrument(pool, tracer_provider=provider, sqlcommenter=True)
        await pool.execute("SELECT 1 -- a note")
        await pool.callproc("public.f", [1])
    sent = [s for c in fake.connections for s in c.statements]
    assert sent[0].startswith("SELECT 1 -- a note\n/*traceparent='00-")
    names = [span.name for span in _exporter.get_finished_spans()]
    assert names == ["SELECT", "SELECT public.f"]
