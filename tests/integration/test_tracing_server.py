"""Spans through a Tornado request on a real PostgreSQL: the statement's span is a child
of the request's span (as the Tornado instrumentation makes it current), with the real
server's address and database."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tornado import httpclient, httpserver, web

import pgpool_tornado
from pgpool_core import PoolManager, otel
from pgpool_core.testing import PgBouncer, PostgresServer

from db_support import database_of, wait_for_condition

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


class App(pgpool_tornado.ApplicationMixin, web.Application):
    pass


class Items(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    async def get(self) -> None:
        # What opentelemetry-instrumentation-tornado does for each request.
        with PROVIDER.get_tracer("tornado").start_as_current_span("GET /items"):
            result = await self.postgres_execute(
                "SELECT count(*) AS n FROM pg_class WHERE relname <> %s", ["hidden"]
            )
        assert result is not None
        self.write(result.row or {})


async def test_statement_span_is_a_child_of_the_request_span(postgres_db_url: str) -> None:
    app = App([("/items", Items)], postgres_url=postgres_db_url)
    await app.postgres_start(wait=True)
    assert app.postgres_pool is not None
    otel.instrument(app.postgres_pool, tracer_provider=PROVIDER)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{sock.getsockname()[1]}/items")
        assert json.loads(response.body)["n"] > 0
    finally:
        client.close()
        server.stop()
        await app.postgres_stop()
    spans = {span.name: span for span in EXPORTER.get_finished_spans()}
    request, statement = spans["GET /items"], spans["SELECT pg_class"]
    assert statement.parent is not None
    assert statement.parent.span_id == request.context.span_id
    assert statement.context.trace_id == request.context.trace_id
    attributes = dict(statement.attributes or {})
    assert attributes["db.namespace"] == database_of(postgres_db_url)
    assert attributes["server.port"] == urllib.parse.urlsplit(postgres_db_url).port
    assert attributes["db.query.text"] == "SELECT count(*) AS n FROM pg_class WHERE relname <> %s"
    assert "hidden" not in json.dumps(statement.to_json())


async def test_sqlcommenter_joins_pg_stat_activity_to_the_trace(
    postgres_db_url: str, postgres_server: PostgresServer, pgbouncer: PgBouncer
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    database = database_of(postgres_db_url)
    for url, bouncer in ((postgres_db_url, False), (pgbouncer.url_for(postgres_db_url), True)):
        async with PoolManager(url, pgbouncer=bouncer) as pool:
            otel.instrument(pool, tracer_provider=provider, sqlcommenter=True)
            running = asyncio.create_task(pool.execute("SELECT pg_sleep(%s)", [0.3]))

            def seen() -> list[str]:
                return [
                    str(a["query"])
                    for a in postgres_server.activity(database)
                    if "pg_sleep" in str(a["query"])
                ]

            await wait_for_condition(lambda: bool(seen()))
            [query] = seen()
            await running
        span = exporter.get_finished_spans()[-1]
        context = span.get_span_context()
        assert context is not None
        assert (
            f"traceparent='00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}'"
            in query
        )
