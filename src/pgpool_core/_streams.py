"""Results too big for memory: a server-side cursor (``DECLARE ... NO SCROLL CURSOR`` then
``FETCH FORWARD n``) inside a transaction, rows handed out as they arrive.

psycopg2's asynchronous mode has no named cursors, but a cursor declared in SQL works in
any transaction, PgBouncer's transaction pooling included.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from ._text import one_statement
from .errors import QueryParameterError

if TYPE_CHECKING:
    from ._session import PostgresConnector

__all__ = ["DEFAULT_BATCH", "RowStream", "check_batch"]

#: Rows per FETCH by default: large enough that the round trips cost little next to the
#: rows, small enough that a batch is a few hundred kilobytes for typical rows.
DEFAULT_BATCH = 2000

_names = itertools.count(1)


def check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise QueryParameterError(f"batch: expected an integer >= 1, got {batch!r}")
    return batch


class RowStream:
    """``async for row in pool.stream(...)``: the rows of one query, ``batch`` at a time,
    each a dict as in :class:`~pgpool_core.QueryResult`.

    Reading every row ends the transaction with COMMIT; leaving early (``break``, an
    exception, a cancellation) rolls it back and releases the connection. With ``async
    with pool.stream(...) as rows`` that happens when the block ends; with a bare ``async
    for`` that is left early it happens when the loop lets go of the iterator (at once in
    CPython, through the event loop's async-generator finalizer).

    .. versionadded:: 0.3
    """

    __slots__ = (
        "_batch",
        "_connector",
        "_metric_name",
        "_open",
        "_params",
        "_renew",
        "_rows",
        "_sql",
    )

    def __init__(
        self,
        open_transaction: Callable[[], AbstractAsyncContextManager[PostgresConnector]] | None,
        connector: PostgresConnector | None,
        sql: str,
        params: Any,
        *,
        batch: int,
        metric_name: str,
        renew: float | None,
    ) -> None:
        self._open = open_transaction
        self._connector = connector
        self._sql = sql
        self._params = params
        self._batch = check_batch(batch)
        if not one_statement(sql):
            raise QueryParameterError(
                "sql: a stream reads one query (DECLARE ... CURSOR FOR it); this text has"
                " several statements; nothing was sent"
            )
        self._metric_name = metric_name
        #: Seconds each statement gets, from its own start (a stream the pool opened);
        #: None: the connector's own deadline bounds it all.
        self._renew = renew
        self._rows: AsyncGenerator[dict[str, Any], None] | None = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        # Not kept: the generator's frame refers to this object, and a reference back
        # would make a cycle, which only the cyclic GC (some time later) would free; the
        # loop that lets go of it must be its last holder, so that it is closed at once.
        return self._generate()

    async def __aenter__(self) -> AsyncIterator[dict[str, Any]]:
        self._rows = self._generate()
        return self._rows

    async def __aexit__(self, *_exc: object) -> None:
        if self._rows is not None:
            await self._rows.aclose()

    async def _generate(self) -> AsyncGenerator[dict[str, Any], None]:
        # Rows are handed out from here, one async-generator step each; the batches
        # come from _batches (a second step per batch, not per row).
        if self._open is not None:
            async with self._open() as tx:
                async for rows in self._batches(tx, close=False):
                    for row in rows:
                        yield row
            return
        connector = self._connector
        assert connector is not None
        if connector.in_transaction:
            async for rows in self._batches(connector, close=True):
                for row in rows:
                    yield row
            return
        async with connector.transaction():
            async for rows in self._batches(connector, close=False):
                for row in rows:
                    yield row

    async def _batches(
        self, tx: PostgresConnector, *, close: bool
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        name = f"pgpool_stream_{next(_names)}"
        metric, renew = self._metric_name, self._renew
        if renew is not None:
            tx._renew_deadline(renew)
        await tx.execute(f"DECLARE {name} NO SCROLL CURSOR FOR {self._sql}", self._params, metric)
        fetch = f"FETCH FORWARD {self._batch} FROM {name}"
        while True:
            if renew is not None:
                tx._renew_deadline(renew)
            rows = (await tx.execute(fetch, None, metric)).rows
            if rows:
                yield rows
            if len(rows) < self._batch:
                break
        if renew is not None:  # the COMMIT that follows gets its own bound too
            tx._renew_deadline(renew)
        if close:  # in the caller's own transaction, which goes on
            await tx.execute(f"CLOSE {name}", None, metric)
