"""The pools the benchmark compares, each written the way its own users write it.

Every contender answers the same three workloads, each including its acquire and release:

  W1  ``SELECT 1``
  W2  100 rows x 5 columns, returned as dicts
  W3  ``BEGIN`` / ``UPDATE`` one random row / ``COMMIT``

A contender whose package is not installed is skipped with the reason (``pip install
-e '.[bench]'`` installs them all).
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
from typing import Any, ClassVar, Protocol

W2_SQL = "SELECT a, b, c, d, e FROM bench_rows"
W3_SQL = "UPDATE bench_tx SET n = n + 1 WHERE id = %s"
W3_ROWS = 1000


class Contender(Protocol):
    name: str
    needs: ClassVar[tuple[str, ...]]
    # Optional: ``max_tasks``, the most tasks of a cell it runs in (default: every cell).

    async def open(self, url: str, size: int) -> None: ...
    async def select1(self) -> None: ...
    async def rows(self) -> None: ...
    async def update(self) -> None: ...
    async def close(self) -> None: ...


class Aiopg:
    """The baseline: aiopg.Pool, acquire + cursor (``async with pool.cursor()`` is broken in
    aiopg 1.4)."""

    name = "aiopg"
    needs: ClassVar[tuple[str, ...]] = ("aiopg",)

    async def open(self, url: str, size: int) -> None:
        import aiopg
        import psycopg2.extras

        self._dict_cursor = psycopg2.extras.RealDictCursor
        self.pool = await aiopg.create_pool(url, minsize=size, maxsize=size, timeout=60)

    async def select1(self) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT 1")
            await cur.fetchall()

    async def rows(self) -> None:
        async with (
            self.pool.acquire() as conn,
            conn.cursor(cursor_factory=self._dict_cursor) as cur,
        ):
            await cur.execute(W2_SQL)
            await cur.fetchall()

    async def update(self) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute(W3_SQL, [random.randrange(W3_ROWS)])
            await cur.execute("COMMIT")

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


class Pgpool:
    """This project: ``PoolManager.execute`` and ``transaction()`` with default settings."""

    name = "pgpool"
    needs: ClassVar[tuple[str, ...]] = ("pgpool_core",)

    async def open(self, url: str, size: int) -> None:
        from pgpool_core import PoolManager

        self.pool = PoolManager(url, min_size=size, max_size=size, acquire_timeout=60)
        await self.pool.start(wait=True)

    async def select1(self) -> None:
        await self.pool.execute("SELECT 1")

    async def rows(self) -> None:
        await self.pool.execute(W2_SQL)

    async def update(self) -> None:
        async with self.pool.transaction() as tx:
            await tx.execute(W3_SQL, [random.randrange(W3_ROWS)])

    async def close(self) -> None:
        await self.pool.stop()


class _DropSpans:
    """A span exporter that keeps nothing: the cost measured is making the spans."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class PgpoolSpans(Pgpool):
    """pgpool with a span per statement (OpenTelemetry SDK, batch processor): the
    tracing overhead, next to plain pgpool."""

    name = "pgpool+spans"
    needs: ClassVar[tuple[str, ...]] = ("pgpool_core", "opentelemetry.sdk")
    #: The tracing overhead shows at 1 and 16 tasks; the larger cells would add a minute to
    #: the full mode and say nothing more.
    max_tasks: ClassVar[int] = 16

    async def open(self, url: str, size: int) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from pgpool_core import otel

        await super().open(url, size)
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(_DropSpans()))  # type: ignore[arg-type]
        otel.instrument(self.pool, tracer_provider=self.provider)

    async def close(self) -> None:
        await super().close()
        self.provider.shutdown()


class PsycopgPool:
    """psycopg 3 (binary) with psycopg_pool: autocommit connections (no COMMIT after each
    W1/W2 statement, its best case), ``conn.transaction()`` for W3."""

    name = "psycopg_pool"
    needs: ClassVar[tuple[str, ...]] = ("psycopg", "psycopg_pool")

    async def open(self, url: str, size: int) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        self._dict_row = dict_row
        self.pool: Any = AsyncConnectionPool(
            url, min_size=size, max_size=size, open=False, timeout=60, kwargs={"autocommit": True}
        )
        await self.pool.open(wait=True, timeout=60)

    async def select1(self) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT 1")
            await cur.fetchall()

    async def rows(self) -> None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=self._dict_row) as cur:
            await cur.execute(W2_SQL)
            await cur.fetchall()

    async def update(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(W3_SQL, [random.randrange(W3_ROWS)])

    async def close(self) -> None:
        await self.pool.close()


class Asyncpg:
    """asyncpg's own pool with its default reset on release (``RESET ALL``, unlisten,
    advisory unlock: one round trip per release)."""

    name = "asyncpg"
    needs: ClassVar[tuple[str, ...]] = ("asyncpg",)
    reset: Any = None  # asyncpg's default

    async def open(self, url: str, size: int) -> None:
        import asyncpg

        self.pool: Any = await asyncpg.create_pool(
            url, min_size=size, max_size=size, reset=self.reset
        )

    async def select1(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetch("SELECT 1")

    async def rows(self) -> None:
        async with self.pool.acquire() as conn:
            [dict(r) for r in await conn.fetch(W2_SQL)]

    async def update(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE bench_tx SET n = n + 1 WHERE id = $1", random.randrange(W3_ROWS)
            )

    async def close(self) -> None:
        await self.pool.close()


async def _no_reset(_conn: Any) -> None:
    """asyncpg's ``reset=`` hook that sends nothing (its local cleanup still runs)."""


class AsyncpgNoReset(Asyncpg):
    """asyncpg without the reset query on release: what its fastest users configure."""

    name = "asyncpg (no reset)"
    reset = staticmethod(_no_reset)


class SprocketsPostgres:
    """sprockets-postgres 1.8.1 (what the adapters replace): its ``postgres_connector`` as its
    RequestHandlerMixin uses it, outside HTTP."""

    name = "sprockets-postgres"
    needs: ClassVar[tuple[str, ...]] = ("sprockets_postgres", "sprockets.http")

    async def open(self, url: str, size: int) -> None:
        from sprockets.http import app as sprockets_app
        from sprockets_postgres import ApplicationMixin

        class Application(ApplicationMixin, sprockets_app.Application):  # type: ignore[misc]
            pass

        self.app: Any = Application(
            [], postgres_url=url, postgres_max_pool_size=size, postgres_min_pool_size=size
        )
        self.app._postgres_connected = asyncio.Event()
        self.app._postgres_reconnect = asyncio.Lock()
        if not await self.app._postgres_connect():
            raise RuntimeError("sprockets-postgres did not connect")

    async def select1(self) -> None:
        async with self.app.postgres_connector() as connector:
            await connector.execute("SELECT 1")

    async def rows(self) -> None:
        async with self.app.postgres_connector() as connector:
            await connector.execute(W2_SQL)

    async def update(self) -> None:
        async with self.app.postgres_connector() as connector, connector.transaction():
            await connector.execute(W3_SQL, [random.randrange(W3_ROWS)])

    async def close(self) -> None:
        await self.app._postgres_shutdown(None)


ALL: tuple[type[Any], ...] = (
    Aiopg,
    Pgpool,
    PgpoolSpans,
    PsycopgPool,
    Asyncpg,
    AsyncpgNoReset,
    SprocketsPostgres,
)


def available() -> tuple[list[type[Any]], list[str]]:
    """The contenders whose packages import, and why each other one is skipped."""
    found, skipped = [], []
    for contender in ALL:
        missing = [m for m in contender.needs if importlib.util.find_spec(m) is None]
        if missing:
            skipped.append(f"{contender.name}: {', '.join(missing)} not installed")
        else:
            found.append(contender)
    return found, skipped
