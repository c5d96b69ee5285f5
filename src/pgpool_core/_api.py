"""The pool's calls: one statement (:meth:`QueryApi.execute`), a transaction, a pinned
connector, the raw connection, read routing among readers and read-your-writes sessions.

A mixin of :class:`~pgpool_core.PoolManager`, which provides the checkout, the release and
the session tools these calls run on (declared below, so each use is checked).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._bag import Slot
from ._classify import ErrorKind, classify, sqlstate
from ._listener import (
    Listener,
    Notification,
    NotificationsMissed,
    listener_connect,
    validate_channel,
)
from ._logs import fields, logger
from ._redact import first_line
from ._result import QueryResult
from ._routing import WRITER_LSN_SQL, parse_lsn
from ._session import (
    ConnectorBlock,
    OnDuration,
    OnError,
    PostgresConnector,
    SessionTools,
    apply_on_error,
    broke,
)
from ._sessions import Session
from ._state import PoolState
from ._statements import Deadline, check_timeout
from ._streams import DEFAULT_BATCH, RowStream
from .errors import PoolClosedError, PoolError, PoolUnavailableError, QueryParameterError

if TYPE_CHECKING:
    from ._checkout import Checkout, NotStarted
    from ._config import PoolSettings
    from ._manager import PoolManager
    from ._members import ReaderSet
    from ._metrics import Recorder
    from ._retry import RetryPolicy

__all__ = ["QueryApi"]

LOGGER = logger("pool")

_SERVING = (PoolState.OPEN, PoolState.RECONNECTING)

T = TypeVar("T")


def _count_attempts(exc: BaseException, attempts: int) -> None:
    """Say on the error how many attempts ran (its ``attempts``, and a note)."""
    with contextlib.suppress(AttributeError, TypeError):  # an exception without __dict__
        exc.attempts = attempts  # type: ignore[attr-defined]
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(f"pgpool: after {attempts} attempt(s) of the transaction")


async def _refuse(error: PoolError, *_args: object) -> tuple[Slot, Deadline]:
    raise error


class QueryApi:
    """The calls of :class:`~pgpool_core.PoolManager` (see there)."""

    if TYPE_CHECKING:  # provided by PoolManager
        name: str
        _checkout: Checkout | NotStarted
        _metrics: Recorder
        _readers: ReaderSet[PoolManager] | None
        _retry: RetryPolicy
        settings: PoolSettings
        _run_once: Callable[..., Awaitable[QueryResult]]
        _sleep: Callable[[float], Awaitable[None]]
        _tools: SessionTools

        def _release(self, slot: Slot, bad: bool = False) -> None: ...

    def _pool(self) -> PoolManager:
        """This object as the pool it is a part of."""
        return cast("PoolManager", self)

    @property
    def readers(self) -> tuple[PoolManager, ...]:
        """The pools of ``read_url``, one per reader (empty without readers)."""
        return () if self._readers is None else self._readers.pools

    async def sample_readers(self) -> None:
        """Sample every reader's role and replay lag now (a background task does this
        every interval; see ``max_replica_lag``)."""
        if self._readers is not None:
            await self._readers.sample()

    def _for_read(self, on_error: OnError | None = None) -> PoolManager | None:
        """The pool a read goes to: the fittest reader, else (``read_fallback``) this one;
        None when there is none and ``on_error`` swallowed the error saying so.

        :raises PoolUnavailableError: no reader fit and ``read_fallback`` off.
        """
        if self._readers is None:
            return self._pool()
        try:
            reader = self._readers.choose()
        except PoolUnavailableError as exc:
            apply_on_error(on_error, "postgres_connector", exc)
            return None  # swallowed by the hook
        return reader or self._fell_back()

    async def _wal_position(self, timeout: float) -> int | None:
        """The writer's WAL position (None if it cannot say: down, or not a primary)."""
        try:
            row = (await self.probe(WRITER_LSN_SQL, timeout)).row
        except Exception:  # the readers' sample goes on without it
            return None
        return parse_lsn(row["lsn"]) if row else None

    def _fell_back(self) -> PoolManager:
        self._metrics.counters.reads_to_writer += 1
        return self._pool()

    def session(self) -> Session:
        """A read-your-writes scope: reads (``read_only=True``) go to readers until the
        session sends anything else, then to the writer for the rest of the session."""
        return Session(self._pool())

    @contextlib.asynccontextmanager
    async def _holding(
        self, timeout: float | None, metric_name: str = ""
    ) -> AsyncIterator[tuple[Slot, Deadline]]:
        slot, deadline = await self._checkout.take_for(timeout, metric_name)
        try:
            yield slot, deadline
        except BaseException as exc:
            self._release(slot, broke(slot, exc))
            raise
        self._release(slot)

    async def execute(
        self,
        sql: str,
        params: Any = None,
        *,
        metric_name: str = "",
        timeout: float | None = None,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
        read_only: bool = False,
        writer: bool = False,
        idempotent: bool = False,
    ) -> QueryResult:
        """Run one statement on a pooled connection and return its :class:`QueryResult`.

        :param timeout: seconds for the whole call (waiting + running), the wait still
            capped by ``acquire_timeout``; default ``acquire_timeout`` to get a
            connection, then ``query_timeout`` to run.
        :param read_only: the statement only reads: it may run on a reader (see
            ``read_url``); nothing checks that it does not write (a reader refuses writes).
        :param writer: run on the writer even when ``read_only`` (a read that must see
            this client's latest writes; :meth:`session` does this for you).
        :param idempotent: running the statement twice is harmless: if its connection
            dies under it (lost, terminated, or a read-only server after a failover), it
            runs once more on another connection, within the same deadline. Never for a
            statement that must not run twice.
        :raises PoolTimeoutError: no connection free in time.
        :raises QueryTimeoutError: the statement ran out of time (cancelled server-side).
        :raises psycopg2.Error: errors from the SQL itself, unwrapped.

        ``on_error`` and ``on_duration`` are the hooks of :meth:`connector` (a failure to
        get a connection reaches ``on_error`` as ``"postgres_connector"``), without
        holding a connector: the fast path for one statement.
        """
        pool = self._for_read(on_error) if read_only and not writer else self._pool()
        if pool is None:
            return QueryResult(0, [])  # no reader, and the hook swallowed that
        return await pool._run_once(
            sql,
            params,
            timeout=check_timeout(timeout),
            metric_name=metric_name,
            on_error=on_error,
            on_duration=on_duration,
            callproc=False,
            idempotent=idempotent,
        )

    async def callproc(
        self,
        name: str,
        params: Any = None,
        *,
        metric_name: str = "",
        timeout: float | None = None,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
        read_only: bool = False,
        writer: bool = False,
        idempotent: bool = False,
    ) -> QueryResult:
        """Call a stored function (``SELECT * FROM name(params)``); like :meth:`execute`."""
        pool = self._for_read(on_error) if read_only and not writer else self._pool()
        if pool is None:
            return QueryResult(0, [])  # no reader, and the hook swallowed that
        return await pool._run_once(
            name,
            params,
            timeout=check_timeout(timeout),
            metric_name=metric_name,
            on_error=on_error,
            on_duration=on_duration,
            callproc=True,
            idempotent=idempotent,
        )

    def stream(
        self,
        sql: str,
        params: Any = None,
        *,
        batch: int = DEFAULT_BATCH,
        metric_name: str = "",
        timeout: float | None = None,
        read_only: bool = False,
        writer: bool = False,
    ) -> RowStream:
        """The rows of a query too big for memory: ``async for row in pool.stream(sql)``.

        A server-side cursor in a transaction of its own (``BEGIN`` / ``DECLARE ... NO
        SCROLL CURSOR`` / ``FETCH FORWARD batch`` ... / ``COMMIT``), so the client holds one
        batch at a time. ``timeout`` (default ``query_timeout``) bounds each statement,
        not the whole stream; a consumer may take its time between batches. Leaving the
        loop early rolls the transaction back and releases the connection (see
        :class:`RowStream`). ``read_only`` and ``writer`` route it as :meth:`execute`.

        .. versionadded:: 0.3
        """
        per_statement = check_timeout(timeout)
        pool = self._pool()
        return RowStream(
            lambda: pool.transaction(per_statement, read_only=read_only, writer=writer),
            None,
            sql,
            params,
            batch=batch,
            metric_name=metric_name,
            renew=per_statement or pool.settings.query_timeout,
        )

    async def probe(self, sql: str, timeout: float) -> QueryResult:
        """One statement of the pool's own (a health probe, a replica's lag sample): no
        hooks and no span; bounded by ``timeout``."""
        return await self._run_once(
            sql,
            None,
            timeout=timeout,
            metric_name="",
            on_error=None,
            on_duration=None,
            callproc=False,
            trace=False,
        )

    async def listen(
        self,
        *channels: str,
        on_notify: Callable[[Notification], object] | None = None,
        on_missed: Callable[[NotificationsMissed], object] | None = None,
        check_interval: float = 5.0,
    ) -> Listener:
        """A started :class:`Listener` on ``channels``: ``async for event in listener``
        gets each :class:`Notification`, and one :class:`NotificationsMissed` after each
        outage (re-sync then); or give callbacks. It has a connection of its own, outside
        the pool's ``max_size``, reconnects with the pool's backoff and LISTENs again after
        an outage, checks an idle connection every ``check_interval`` seconds, and is
        closed by :meth:`stop` (or its own ``close()``).

        Behind PgBouncer, LISTEN works in session pooling mode only.

        .. versionadded:: 0.3
        """
        pool = self._pool()
        if not pool.state.serving:
            raise PoolClosedError(f"pool {self.name} is {pool.state.value}: start it first")
        if pool.settings.pgbouncer and not pool._warned_listen:
            pool._warned_listen = True
            LOGGER.warning(
                "pool %s: LISTEN through PgBouncer works in session pooling mode only;"
                " in transaction mode notifications are lost",
                self.name,
                extra=fields(self.name, "listen_behind_pgbouncer"),
            )
        assert pool._connector is not None  # set by start()
        listener = Listener(
            listener_connect(pool._connector),
            channels,
            retry=pool._retry,
            connect_timeout=pool.settings.connect_timeout,
            check_interval=check_interval,
            on_notify=on_notify,
            on_missed=on_missed,
            name=self.name,
            sleep=pool._sleep,
            describe=pool._opener.describe,
            on_closed=pool._listeners.discard,
        )
        pool._listeners.add(listener)  # before any await: stop() meanwhile closes it
        try:
            await listener.start()
        except BaseException:
            await listener.close(0)
            raise
        if pool.state not in _SERVING:  # stop() began while it started
            await listener.close(0)
            raise PoolClosedError(f"pool {self.name} is {pool.state.value}")
        return listener

    async def notify(self, channel: str, payload: str = "") -> None:
        """``pg_notify(channel, payload)``, both bound as parameters (a notification is
        delivered when the sending transaction commits: here, at once)."""
        if not isinstance(payload, str):
            raise QueryParameterError(f"payload: expected a str, got {type(payload).__name__}")
        await self.execute("SELECT pg_notify(%s, %s)", [validate_channel(channel), payload])

    async def run_transaction(
        self,
        fn: Callable[[PostgresConnector], Awaitable[T]],
        *,
        retries: int = 3,
        timeout: float | None = None,
        read_only: bool = False,
        writer: bool = False,
        resolve_commit: bool | None = None,
        on_duration: OnDuration | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> T:
        """``await fn(tx)`` in a :meth:`transaction`, run again (up to ``retries`` more
        times, with the reconnect backoff between) when the server rolled it back for a
        serialization failure (40001) or a deadlock (40P01), and only then: each retry
        starts from a transaction of which nothing was committed. ``fn`` may run several
        times, so it must not have effects outside the database that cannot repeat.

        ``timeout`` bounds all attempts together. Returns what ``fn`` returned in the
        attempt that committed. Otherwise the last attempt's error is raised as it is, with
        ``attempts`` (how many ran) set on it and in its notes.
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise QueryParameterError(f"retries: expected an integer >= 0, got {retries!r}")
        bound = check_timeout(timeout)
        clock, pool = self._tools.clock, self._pool()
        end = None if bound is None else clock() + bound
        attempt = 1
        while True:
            left = None if end is None else max(end - clock(), 0.0)
            try:
                async with pool.transaction(
                    left,
                    resolve_commit=resolve_commit,
                    on_duration=on_duration,
                    read_only=read_only,
                    writer=writer,
                    settings=settings,
                ) as tx:
                    return await fn(tx)
            except Exception as exc:
                delay = pool._retry.next_delay(attempt - 1)
                if (
                    classify(exc) is not ErrorKind.TRANSACTION_CONFLICT
                    or attempt > retries
                    or (end is not None and clock() + delay >= end)
                ):
                    _count_attempts(exc, attempt)
                    raise
                LOGGER.info(
                    "transaction rolled back by the server (%s); attempt %d of %d in %.3f s",
                    first_line(exc),
                    attempt + 1,
                    retries + 1,
                    delay,
                    extra=fields(self.name, "transaction_retry", sqlstate=sqlstate(exc)),
                )
                last = exc
            await pool._sleep(delay)
            if end is not None and clock() >= end:  # the pause outlasted the bound
                _count_attempts(last, attempt)
                raise last
            attempt += 1

    def transaction(
        self,
        timeout: float | None = None,
        *,
        resolve_commit: bool | None = None,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
        checkout_failed: Callable[[PoolError], None] | None = None,
        read_only: bool = False,
        writer: bool = False,
        settings: Mapping[str, object] | None = None,
    ) -> ConnectorBlock:
        """``BEGIN`` ... ``COMMIT`` on one connection; ``ROLLBACK`` if the block raises
        (an async context manager giving a :class:`PostgresConnector`). ``read_only=True``:
        ``BEGIN READ ONLY``, on a reader when there is one fit (see ``read_url``) unless
        ``writer=True`` keeps it on the writer.

        ``timeout`` bounds the whole transaction, from waiting for the connection (that
        wait still capped by ``acquire_timeout``) to COMMIT; without it, ``query_timeout``
        does, from checkout.
        Leaving the block without an error commits, and returns only if the server
        committed: see :meth:`PostgresConnector.transaction` for what each error means.
        ``settings`` hold for this transaction only (see
        :meth:`PostgresConnector.transaction`).
        ``resolve_commit`` overrides the ``resolve_commits`` setting for this transaction;
        ``on_error``, ``on_duration`` and ``checkout_failed`` are :meth:`connector`'s.
        """
        return self._block(
            timeout,
            on_error,
            on_duration,
            read_only,
            writer,
            transaction=True,
            resolve_commit=resolve_commit,
            settings=settings,
            checkout_failed=checkout_failed,
        )

    def connector(
        self,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
        timeout: float | None = None,
        *,
        checkout_failed: Callable[[PoolError], None] | None = None,
        read_only: bool = False,
        writer: bool = False,
    ) -> ConnectorBlock:
        """A connector pinned to one connection for the block, with sprockets-postgres hooks
        (an async context manager giving a :class:`PostgresConnector`). ``read_only=True``:
        the connection is a reader's when one is fit (see ``read_url``) unless ``writer``.

        ``on_error(metric_name, exc)`` returns the exception to raise, or None to swallow
        it (the call then returns an empty result); ``on_duration(metric_name, seconds)``
        gets each statement's duration. ``checkout_failed(exc)``, if given, gets a failure
        to check a connection out: it raises, or returns and the block gets None.
        """
        return self._block(
            timeout, on_error, on_duration, read_only, writer, checkout_failed=checkout_failed
        )

    def _block(
        self,
        timeout: float | None,
        on_error: OnError | None,
        on_duration: OnDuration | None,
        read_only: bool,
        writer: bool,
        **options: Any,
    ) -> ConnectorBlock:
        """The block of :meth:`connector` and :meth:`transaction` (``timeout`` is checked on
        entering, as a failure to check out; so is finding no reader)."""
        pool = self._pool()
        take_for = self._checkout.take_for
        if read_only and not writer and self._readers is not None:
            try:
                pool = self._readers.choose() or self._fell_back()
                take_for = pool._checkout.take_for
            except PoolUnavailableError as exc:
                take_for = functools.partial(_refuse, exc)  # fails at the block's entry

        def make(slot: Slot, deadline: Deadline) -> PostgresConnector:
            return PostgresConnector(
                slot, deadline, pool._tools, on_error=on_error, on_duration=on_duration
            )

        return ConnectorBlock(
            take_for, make, pool._release, timeout, read_only=read_only, **options
        )

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """The checked-out aiopg connection itself (escape hatch). Returned on exit: rolled
        back if left in a transaction, discarded if left busy or broken."""
        async with self._holding(check_timeout(timeout)) as (slot, _deadline):
            yield slot.conn.handle
