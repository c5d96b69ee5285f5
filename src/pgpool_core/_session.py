"""A session on one checked-out connection (sprockets-postgres' ``PostgresConnector``), and
the one implementation of its ``on_error`` / ``on_duration`` hooks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2

from ._bag import Slot
from ._classify import connection_died, sqlstate
from ._config import PoolSettings
from ._connector import DriverConnection, TxStatus
from ._logs import fields, logger
from ._metrics import Recorder
from ._redact import first_line
from ._result import QueryResult
from ._returns import Canceller
from ._statements import Deadline, SessionStateWarnings, StatementRunner, check_timeout
from ._streams import DEFAULT_BATCH, RowStream
from ._text import one_statement
from ._transaction import BEGIN_WITH_XID, Committer, XidMark, refuse_commit
from .errors import (
    CommitUnknownError,
    PoolClosedError,
    PoolError,
    QueryParameterError,
    QueryTimeoutError,
    TransactionRolledBackError,
    TransactionUsageError,
)

__all__ = [
    "OnDuration",
    "OnError",
    "PostgresConnector",
    "SessionTools",
    "apply_on_error",
    "run_once",
]

LOGGER = logger("statements")

OnError = Callable[[str, Exception], "Exception | None"]
OnDuration = Callable[[str, float], None]

#: Statements that end or start a transaction (not SAVEPOINT, RELEASE, ROLLBACK TO).
_TRANSACTION_CONTROL = re.compile(
    # After any leading whitespace and comments (-- to the end of a line, /* ... */); a
    # comment is skipped whole (it ends at its newline), never cut short to match a word in it.
    r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*"
    r"(COMMIT|END|ABORT|BEGIN|START\s+TRANSACTION|PREPARE\s+TRANSACTION"
    r"|ROLLBACK(?!\s+(?:WORK\s+|TRANSACTION\s+)?TO\b))\b",
    re.IGNORECASE | re.DOTALL,
)


def apply_on_error(on_error: OnError | None, metric_name: str, exc: Exception) -> None:
    """sprockets-postgres' ``on_error`` semantics: the hook's None swallows ``exc`` (this
    returns), an exception it returns is raised from ``exc``, ``exc`` itself is re-raised;
    without a hook ``exc`` is raised."""
    replacement = exc if on_error is None else on_error(metric_name, exc)
    if replacement is None:
        return
    if replacement is exc:
        raise exc
    raise replacement from exc


def report_duration(
    recorder: Recorder,
    on_duration: OnDuration | None,
    metric_name: str,
    seconds: float,
    failure: BaseException | None,
) -> None:
    """A caller's statement ended: the ``on_duration`` hook, then the observers."""
    if on_duration is not None:
        on_duration(metric_name, seconds)
    recorder.operation_finished(seconds, failure)


def broke(slot: Slot, exc: BaseException) -> bool:
    """Whether a call that failed with ``exc`` leaves its connection bad (to discard, not
    restore): a driver error on a connection that is now closed."""
    return isinstance(exc, psycopg2.Error) and slot.conn.closed


async def run_once(
    tools: SessionTools,
    acquire: Callable[[float | None, str], Awaitable[tuple[Slot, Deadline]]],
    release: Callable[[Slot, bool], None],
    sql: str,
    params: Any,
    *,
    timeout: float | None,
    metric_name: str,
    on_error: OnError | None,
    on_duration: OnDuration | None,
    callproc: bool,
    idempotent: bool = False,
    trace: bool = True,
) -> QueryResult:
    """One statement on a connection of its own, with the hooks of a connector but without
    holding one: ``PoolManager.execute()``'s fast path. A failure to get a connection
    reaches ``on_error`` as ``postgres_connector``. ``trace``: a span per attempt when the
    pool traces (not for the pool's own probes).

    ``idempotent``: a statement whose connection died under it (or that met a read-only
    server after a failover) runs once more, on another connection, within what is left of
    the same deadline; running it twice must be harmless, since it may have run."""
    tracer = tools.recorder.tracer if trace else None
    span = None if tracer is None else tracer.start(_traced(sql, callproc), metric_name)
    sent = sql if span is None else tracer.text(sql, span, params)  # type: ignore[union-attr]
    clock = tools.clock
    try:
        asked = clock() if span is not None else 0.0
        slot, deadline = await acquire(timeout, metric_name)
    except BaseException as exc:
        if span is not None:
            span.end(exc)
        if not isinstance(exc, PoolError):
            raise
        apply_on_error(on_error, "postgres_connector", exc)
        return QueryResult(0, [])  # swallowed by the hook
    started = clock()
    if span is not None:
        span.acquired(started - asked)
    failure: BaseException | None = None
    try:
        result = await tools.runner.run(slot, sent, params, deadline, callproc=callproc)
    except BaseException as exc:
        failure = exc
        release(slot, broke(slot, exc))
        left = deadline.remaining(clock())
        if idempotent and connection_died(exc) and left > 0:
            pass  # run again below, once
        elif isinstance(exc, (psycopg2.Error, PoolError)):
            apply_on_error(on_error, metric_name, exc)
            return QueryResult(0, [])  # swallowed by the hook
        else:
            raise
    finally:
        if span is not None:
            span.end(failure)
        if on_duration is not None or tools.recorder.observers:
            report_duration(tools.recorder, on_duration, metric_name, clock() - started, failure)
    if failure is None:
        release(slot, False)
        return result
    LOGGER.info(
        "idempotent statement %r: %s; running it again on another connection",
        metric_name,
        first_line(failure),
        extra=fields(tools.pool_name(), "idempotent_retry", sqlstate=sqlstate(failure)),
    )
    return await run_once(
        tools,
        acquire,
        release,
        sql,
        params,
        timeout=left,
        metric_name=metric_name,
        on_error=on_error,
        on_duration=on_duration,
        callproc=callproc,
    )


@dataclass(frozen=True)
class SessionTools:
    """What a session needs from its pool: the clock, the runner, the committer, the
    recorder and the ``resolve_commits`` setting (one per pool, built at start)."""

    clock: Callable[[], float]
    runner: StatementRunner
    committer: Committer
    recorder: Recorder
    resolve_commits: bool
    pool_name: Callable[[], str]

    @classmethod
    def build(
        cls,
        settings: PoolSettings,
        *,
        clock: Callable[[], float],
        recorder: Recorder,
        canceller: Canceller,
        connect: Callable[[float], Awaitable[DriverConnection]],
        on_success: Callable[[], None],
        on_lost: Callable[[BaseException], None],
        on_read_only: Callable[[Slot], None],
        pool_name: Callable[[], str],
    ) -> SessionTools:
        """The runner and committer of one pool, wired to its callbacks (on the running loop)."""
        runner = StatementRunner(
            loop=asyncio.get_running_loop(),
            clock=clock,
            counters=recorder.counters,
            canceller=canceller,
            on_success=on_success,
            on_lost=on_lost,
            on_read_only=on_read_only,
            session_state=SessionStateWarnings(pool_name) if settings.pgbouncer else None,
        )
        committer = Committer(
            clock=clock,
            runner=runner,
            cancel_timeout=settings.cancel_timeout,
            connect=connect,
            on_success=on_success,
            on_lost=on_lost,
            pool_name=pool_name,
        )
        return cls(clock, runner, committer, recorder, settings.resolve_commits, pool_name)


def local_settings(settings: Mapping[str, object] | None) -> tuple[tuple[str, str], ...]:
    """``transaction(settings=...)`` as (name, value) text pairs, checked before anything
    is sent: names are non-empty strings, values strings, numbers or booleans (on/off).

    :raises QueryParameterError: naming the setting and the bad value.
    """
    if settings is None:
        return ()
    if not isinstance(settings, Mapping):
        raise QueryParameterError(
            f"settings: expected a mapping of names to values, got {type(settings).__name__}"
        )
    pairs: list[tuple[str, str]] = []
    for name, value in settings.items():
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise QueryParameterError(f"settings: bad setting name {name!r}")
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, (str, int, float)):
            text = str(value)
        else:
            raise QueryParameterError(
                f"settings[{name!r}]: expected a string, number or boolean, got"
                f" {type(value).__name__}"
            )
        if "\x00" in text:
            raise QueryParameterError(f"settings[{name!r}]: contains a NUL character")
        pairs.append((name, text))
    return tuple(pairs)


def _traced(sql: str, callproc: bool) -> str:
    """What a span shows of a statement: a function call as the driver sends it."""
    return f"SELECT * FROM {sql}(...)" if callproc else sql


def _one_statement(sql: str) -> bool:
    """Whether ``sql`` is one statement: only then may BEGIN share its message, so that a
    message the server rejects whole ran nothing."""
    return one_statement(sql)


class _BeginFirst:
    """A connector's cursor inside a transaction whose BEGIN is still pending: the first
    awaited call on it sends the BEGIN first."""

    def __init__(self, cursor: Any, send_begin: Callable[[], Awaitable[None]]) -> None:
        self._cursor = cursor
        self._send_begin = send_begin

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._cursor, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def after_begin(*args: Any, **kwargs: Any) -> Any:
            await self._send_begin()
            # Looked up again: the cursor readies the connection for itself on each lookup.
            return await getattr(self._cursor, name)(*args, **kwargs)

        return after_begin

    def __repr__(self) -> str:
        return repr(self._cursor)


class PostgresConnector:
    """Runs statements on one checked-out connection (sprockets-postgres' connector).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        slot: Slot,
        deadline: Deadline,
        tools: SessionTools,
        *,
        on_error: OnError | None = None,
        on_duration: OnDuration | None = None,
    ) -> None:
        self._slot = slot
        self._deadline = deadline
        self._tools = tools
        self._on_error = on_error
        self._on_duration = on_duration
        # Inside transaction(): the failure that aborted the transaction (cleared when a
        # later statement leaves it usable again, e.g. ROLLBACK TO SAVEPOINT), and the tag
        # of a statement of the block that ended the transaction itself.
        self._in_transaction = False
        self._failure: BaseException | None = None
        self._ended_by: str | None = None
        # A statement of the transaction ran out of time or was stopped: it may still
        # complete on the server, so the transaction must not commit (never cleared).
        self._doomed: BaseException | None = None
        # The transaction's BEGIN, until it has been sent: it goes with the block's first
        # statement, in the same round trip. Once sent that way, whether it ran is
        # unconfirmed until the message's answer says so (a message the server rejects
        # whole, for a syntax error, runs none of it).
        self._begin: str | None = None
        self._begin_unconfirmed = False
        # A transaction block ended with its connection still busy or in a transaction
        # (a statement that outlived its timeout, a cancelled caller): nothing more may run
        # on it until the connector's block ends and the release cleans it up.
        self._unclean = False
        self._done = False  # the block that checked this connection out has ended
        self._cursor: Any = None

    @property
    def cursor(self) -> Any:
        """The ``aiopg.Cursor`` on this connector's connection, rows as dicts, as
        sprockets-postgres exposed it (its operations bounded by what is left of the
        connector's deadline).

        An escape hatch: what runs on it bypasses the pool (no server-side cancel at the
        deadline, since aiopg closes the connection on its own timeout; no hooks, metrics
        or transaction checks). Prefer :meth:`~pgpool_core.PostgresConnector.execute`.

        .. versionadded:: 0.2
        """
        self._check_usable("", callproc=True)
        if self._cursor is None:
            remaining = max(self._deadline.remaining(self._tools.clock()), 0.001)
            self._cursor = self._slot.conn.dict_cursor(remaining)
        if self._begin is not None:
            return _BeginFirst(self._cursor, self._send_pending_begin)
        return self._cursor

    async def _send_pending_begin(self) -> None:
        if self._begin is not None:
            await self._send_begin(self._begin, self._deadline)

    def end(self) -> None:
        """The checkout is over: any later use of this connector is refused, and its
        cursor is closed (as sprockets-postgres closed it at the end of the block)."""
        self._done = True
        if self._cursor is not None:
            self._cursor.close()

    async def execute(
        self,
        sql: str,
        parameters: Any = None,
        metric_name: str = "",
        *,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run ``sql`` with ``parameters`` on this connector's connection (in its
        transaction, when in one), bounded by ``timeout`` and the connector's deadline;
        ``metric_name`` names it to the ``on_error`` / ``on_duration`` hooks. As
        :meth:`PoolManager.execute <pgpool_core.PoolManager.execute>`, without routing."""
        return await self._call(sql, parameters, metric_name, timeout, callproc=False)

    def stream(
        self,
        sql: str,
        parameters: Any = None,
        metric_name: str = "",
        *,
        batch: int = DEFAULT_BATCH,
    ) -> RowStream:
        """The rows of ``sql`` through a server-side cursor, ``batch`` per round trip
        (``async for row in connector.stream(...)``); in this connector's transaction,
        or in one of its own (committed once every row is read, rolled back if left
        early). Bounded by the connector's deadline. See :class:`RowStream`.

        .. versionadded:: 0.3
        """
        return RowStream(
            None, self, sql, parameters, batch=batch, metric_name=metric_name, renew=None
        )

    @property
    def in_transaction(self) -> bool:
        """Whether a :meth:`transaction` block of this connector is open."""
        return self._in_transaction

    def _renew_deadline(self, seconds: float) -> None:
        """A new deadline ``seconds`` from now (a stream the pool opened bounds each of its
        statements, not the whole stream)."""
        self._deadline = Deadline.after(self._tools.clock(), seconds)

    async def callproc(
        self,
        name: str,
        parameters: Any = None,
        metric_name: str = "",
        *,
        timeout: float | None = None,
    ) -> QueryResult:
        """Call the stored function ``name`` (``SELECT * FROM name(parameters)``); like
        :meth:`execute`."""
        return await self._call(name, parameters, metric_name, timeout, callproc=True)

    async def _call(
        self, sql: str, params: Any, metric_name: str, timeout: float | None, *, callproc: bool
    ) -> QueryResult:
        tools = self._tools
        self._check_usable(sql, callproc=callproc)
        started = tools.clock()
        deadline = self._deadline.sooner(started, check_timeout(timeout))
        failure: BaseException | None = None
        tracer = tools.recorder.tracer
        span = None if tracer is None else tracer.start(_traced(sql, callproc), metric_name)
        if span is not None:
            sql = tracer.text(sql, span, params)  # type: ignore[union-attr]
        try:
            if self._begin is not None:
                # The turn first: between reading the pending BEGIN and sending, no yield.
                await tools.runner.turn()
            begin = self._begin
            if begin is not None and not callproc and _one_statement(sql):
                result = await self._run_first(begin, sql, params, deadline)
            else:
                if begin is not None:
                    await self._send_begin(begin, deadline)
                result = await tools.runner.run(
                    self._slot, sql, params, deadline, callproc=callproc
                )
        except (psycopg2.Error, PoolError) as exc:
            failure = exc
            if self._in_transaction:
                self._failure = self._failure or exc
                if isinstance(exc, (QueryTimeoutError, PoolClosedError)):
                    self._doomed = self._doomed or exc
                self._note_ended_inside()
            apply_on_error(self._on_error, metric_name, exc)
            return QueryResult(0, [])  # swallowed by the hook
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if span is not None:
                span.end(failure)
            if self._on_duration is not None or tools.recorder.observers:
                seconds = tools.clock() - started
                report_duration(tools.recorder, self._on_duration, metric_name, seconds, failure)
        if self._in_transaction:
            self._after_statement(sql, callproc=callproc)
        return result

    def _check_usable(self, sql: str, *, callproc: bool) -> None:
        """Refuse, before sending, what would make the transaction's outcome a guess."""
        if self._done:
            raise TransactionUsageError(
                "this connector's block has ended and its connection went back to the pool;"
                " nothing was sent"
            )
        if self._unclean:
            raise TransactionUsageError(
                "an earlier transaction of this connector left its connection busy or in a"
                " transaction (it is cleaned up when the connector's block ends); nothing"
                " was sent"
            )
        if not self._in_transaction:
            return
        if self._doomed is not None:
            error = TransactionRolledBackError(
                "the transaction is being rolled back: one of its statements ran out of time"
                f" ({type(self._doomed).__name__}); nothing was sent",
                self._doomed,
            )
            raise error from self._doomed
        if self._ended_by is not None:
            raise TransactionUsageError(
                f"the block already ended the transaction ({self._ended_by}); nothing was sent"
            )
        if not callproc and _TRANSACTION_CONTROL.match(sql):
            raise TransactionUsageError(
                "transaction control inside transaction(): leave the block to commit, raise"
                " to roll back, or use SAVEPOINT / ROLLBACK TO SAVEPOINT; nothing was sent"
            )

    async def _send_begin(self, begin: str, deadline: Deadline) -> None:
        """Send the transaction's pending ``begin`` on its own."""
        slot = self._slot
        sent = slot.sent
        self._begin = None
        try:
            await self._tools.runner.run(slot, begin, None, deadline)
        except BaseException:
            if slot.sent == sent:  # nothing reached the server: still pending
                self._begin = begin
            raise

    async def _run_first(
        self, begin: str, sql: str, params: Any, deadline: Deadline
    ) -> QueryResult:
        """The transaction's first statement (one statement: no ``;`` but a trailing one),
        with its ``begin`` in the same round trip."""
        tools, slot = self._tools, self._slot
        sent = slot.sent
        self._begin, self._begin_unconfirmed = None, True
        try:
            result = await tools.runner.run(slot, sql, params, deadline, begin=begin)
        except BaseException as exc:
            conn = slot.conn
            if slot.sent == sent:  # nothing reached the server: still pending
                self._begin, self._begin_unconfirmed = begin, False
                raise
            if not isinstance(exc, psycopg2.Error) or conn.closed or conn.is_busy():
                raise  # left unconfirmed: the transaction's end looks at the server's state
            if conn.transaction_status() is not TxStatus.IDLE:
                self._begin_unconfirmed = False  # BEGIN ran; the statement failed
                raise
        else:
            self._begin_unconfirmed = False
            return result
        # The server rejected the message before running any of it (a syntax error): BEGIN
        # did not run either. One by one, as without the shortcut: the statement fails
        # again, inside the transaction, and leaves it aborted like any failed statement.
        self._begin_unconfirmed = False
        self._begin = begin
        await self._send_begin(begin, deadline)
        return await tools.runner.run(slot, sql, params, deadline)

    def _note_ended_inside(self) -> None:
        """After a failed statement: an idle connection means the statement's text ended
        the transaction itself (a COMMIT or ROLLBACK after a ``;``) before failing."""
        conn = self._slot.conn
        if (
            self._begin is None
            and not self._begin_unconfirmed
            and not (conn.closed or conn.is_busy())
            and conn.transaction_status() is TxStatus.IDLE
        ):
            self._ended_by = self._ended_by or "its own COMMIT or ROLLBACK, then an error"

    def _after_statement(self, sql: str, *, callproc: bool) -> None:
        conn = self._slot.conn
        status = conn.transaction_status()
        if status is TxStatus.INTRANS:
            self._failure = None  # usable again (e.g. after ROLLBACK TO SAVEPOINT)
        elif status is TxStatus.IDLE:
            tag = conn.status_message()
            if callproc or _one_statement(sql):
                self._ended_by = tag
            else:
                # Only the last statement's tag comes back: "...; COMMIT; ROLLBACK" says
                # ROLLBACK after a commit, "...; ROLLBACK; SELECT 2; COMMIT" says COMMIT
                # about an empty transaction. What the text committed is unknown.
                self._ended_by = f"a text of several statements, the last one {tag}"

    def transaction(
        self,
        *,
        resolve_commit: bool | None = None,
        read_only: bool = False,
        settings: Mapping[str, object] | None = None,
    ) -> TransactionBlock:
        """``BEGIN`` on this connection; ``COMMIT`` when the block ends without an error,
        ``ROLLBACK`` when it raises. What leaving the block reports is what the server did:

        - returns: the server committed the transaction;
        - the block's own exception, :class:`QueryTimeoutError` (the deadline passed before
          COMMIT could be sent), :class:`TransactionRolledBackError` (a statement failed
          and the block went on, the connection was lost before COMMIT, ...) or a driver
          error from COMMIT itself (a deferred constraint, a serialization failure): rolled
          back, nothing of it committed;
        - :class:`CommitUnknownError`: COMMIT was sent and its answer was lost. With
          ``resolve_commit`` (default: the ``resolve_commits`` setting) the pool asks the
          server on another connection (``txid_status``) and reports committed or rolled
          back instead, unless the server cannot answer within ``cancel_timeout``.

        Once COMMIT is sent, neither the deadline nor a cancellation of the caller cuts it:
        the pool waits for its answer (until the deadline plus ``cancel_timeout``) and then
        reports it, or re-raises the cancellation (logging the outcome at DEBUG).

        ``read_only=True`` begins with ``BEGIN READ ONLY`` (the server refuses writes in it)
        and resolves no commit (it commits nothing). ``settings`` (``{"statement_timeout":
        "2s", "app.tenant_id": "42"}``) hold for this transaction only
        (``set_config(name, value, true)``, values bound as parameters), sent in the same
        round trip as ``BEGIN``: the safe way to carry a tenant or row-level-security
        context, PgBouncer's transaction pooling included.

        With ``on_error`` hooks, these errors go to the hook as ``postgres_transaction``;
        the exception it returns is raised, but None cannot swallow an outcome.
        """
        return TransactionBlock(self, resolve_commit, read_only, local_settings(settings))

    async def _open_transaction(
        self,
        resolve_commit: bool | None,
        read_only: bool = False,
        settings: tuple[tuple[str, str], ...] = (),
    ) -> XidMark | None:
        """The start of a transaction block: BEGIN pending (sent with the first statement),
        or sent now: to read the transaction id (resolving commits), or because a cursor
        handed out earlier may run the block's first statement; returns that id."""
        tools = self._tools
        if self._in_transaction or self._done or self._unclean:
            raise TransactionUsageError(
                "transaction() is already open on this connector (use SAVEPOINT), its block"
                " has ended, or an earlier transaction left its connection busy; nothing was"
                " sent"
            )
        # A read-only transaction commits nothing (and a standby assigns no ids): no
        # outcome to resolve.
        resolve = not read_only and (
            tools.resolve_commits if resolve_commit is None else resolve_commit
        )
        begin = "BEGIN READ ONLY" if read_only else "BEGIN"
        xid: XidMark | None = None
        if resolve:
            row = (await tools.runner.run(self._slot, BEGIN_WITH_XID, None, self._deadline)).row
            xid = None if row is None else XidMark(int(row["xid"]), row["started"])
        elif self._cursor is not None:
            await tools.runner.run(self._slot, begin, None, self._deadline)
        else:
            self._begin = begin
        self._in_transaction, self._failure, self._ended_by = True, None, None
        self._doomed = None
        self._slot.read_only_tx = read_only
        if settings:  # the block's first statement: with BEGIN, in one round trip
            sql = "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in settings)
            await self._call(sql, [v for pair in settings for v in pair], "", None, callproc=False)
        return xid

    async def _close_transaction(self, exc: BaseException | None, xid: XidMark | None) -> None:
        """The end of a transaction block that raised ``exc`` (roll back) or None (commit);
        returns only if what it reports is that the server committed (or ran nothing and
        nothing failed)."""
        tools, slot = self._tools, self._slot
        conn = slot.conn
        self._in_transaction = False
        slot.read_only_tx = False
        nothing_ran = self._begin is not None or (
            # The message that carried BEGIN was rejected whole (its answer came after the
            # caller stopped waiting): the server is idle and nothing of the block ran.
            self._begin_unconfirmed
            and self._ended_by is None
            and not conn.is_busy()
            and conn.transaction_status() is TxStatus.IDLE
        )
        self._begin, self._begin_unconfirmed = None, False
        try:
            if exc is not None:
                ended_by = self._ended_by
                if ended_by is not None and not isinstance(exc, asyncio.CancelledError):
                    raise CommitUnknownError(
                        f"a statement of the block ended the transaction itself ({ended_by})"
                        f" before the block raised {type(exc).__name__}: what it committed"
                        " stays committed, and the pool cannot tell what that was"
                    ) from exc
                # A cancelled caller is not kept waiting: releasing the slot rolls back.
                if not (
                    nothing_ran
                    or isinstance(exc, asyncio.CancelledError)
                    or conn.is_busy()
                    or conn.closed
                ):
                    with contextlib.suppress(Exception):  # else the release cleans up
                        await tools.committer.rollback(slot)
                return
            if nothing_ran:
                self._refuse_empty_commit()
                return
            await self._commit(xid)
        finally:
            if not conn.closed and (
                conn.is_busy() or conn.transaction_status() is not TxStatus.IDLE
            ):
                self._unclean = True

    def _refuse_empty_commit(self) -> None:
        """Leaving a block of which nothing ran: as a commit would be refused (a statement
        ran out of time, the deadline passed), else nothing to do."""
        refusal = refuse_commit(
            TxStatus.INTRANS,
            deadline_passed=self._deadline.at <= self._tools.clock(),
            total=self._deadline.total,
            failure=self._doomed or self._failure,
            ended_by=None,
            doomed=self._doomed is not None,
        )
        if refusal is not None:
            apply_on_error(self._on_error, "postgres_transaction", refusal.error)
            raise refusal.error  # the hook returned None: an outcome is never swallowed

    async def _commit(self, xid: XidMark | None) -> None:
        try:
            await self._tools.committer.commit(
                self._slot,
                self._deadline,
                xid=xid,
                failure=self._doomed or self._failure,
                ended_by=self._ended_by,
                doomed=self._doomed is not None,
            )
        except (psycopg2.Error, PoolError) as error:
            apply_on_error(self._on_error, "postgres_transaction", error)
            raise  # the hook returned None: an outcome is never swallowed


class TransactionBlock:
    """``async with connector.transaction()``: see :meth:`PostgresConnector.transaction`.

    A plain class rather than ``@asynccontextmanager``: a transaction is entered on every
    write, and a generator-based context manager costs several microseconds per layer."""

    __slots__ = ("_connector", "_read_only", "_resolve", "_settings", "_xid")

    def __init__(
        self,
        connector: PostgresConnector,
        resolve_commit: bool | None,
        read_only: bool = False,
        settings: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._connector = connector
        self._resolve = resolve_commit
        self._read_only = read_only
        self._settings = settings
        self._xid: XidMark | None = None

    async def __aenter__(self) -> PostgresConnector:
        self._xid = await self._connector._open_transaction(
            self._resolve, self._read_only, self._settings
        )
        return self._connector

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        await self._connector._close_transaction(exc, self._xid)


class ConnectorBlock:
    """``async with pool.connector()`` / ``pool.transaction()``: a connection checked out
    for the block and a :class:`PostgresConnector` on it (in a transaction with
    ``transaction=True``); the connector ends and the connection is released when the
    block ends, as bad if the block's error broke it.

    ``checkout_failed`` (the adapters' sprockets-postgres semantics) gets a failure to check
    a connection out: it raises, or returns None, which the block then gets instead of a
    connector."""

    __slots__ = (
        "_checkout_failed",
        "_connector",
        "_make",
        "_read_only",
        "_release",
        "_resolve",
        "_settings",
        "_slot",
        "_take_for",
        "_timeout",
        "_transaction",
        "_tx",
    )

    def __init__(
        self,
        take_for: Callable[[float | None], Awaitable[tuple[Slot, Deadline]]],
        make: Callable[[Slot, Deadline], PostgresConnector],
        release: Callable[[Slot, bool], None],
        timeout: object,
        *,
        transaction: bool = False,
        resolve_commit: bool | None = None,
        read_only: bool = False,
        settings: Mapping[str, object] | None = None,
        checkout_failed: Callable[[PoolError], None] | None = None,
    ) -> None:
        self._take_for = take_for
        self._make = make
        self._release = release
        self._timeout = timeout
        self._transaction = transaction
        self._resolve = resolve_commit
        self._read_only = read_only
        self._settings = settings
        self._checkout_failed = checkout_failed
        self._slot: Slot | None = None
        self._connector: PostgresConnector | None = None
        self._tx: TransactionBlock | None = None

    async def __aenter__(self) -> PostgresConnector:
        if self._slot is not None:
            raise TransactionUsageError(
                "this connector block was already entered: each `async with` needs its own"
                " pool.connector() / pool.transaction(); nothing was checked out"
            )
        if self._settings is not None:
            local_settings(self._settings)  # bad settings: refused before checking out
        try:
            slot, deadline = await self._take_for(check_timeout(self._timeout))
        except PoolError as exc:
            if self._checkout_failed is None:
                raise
            self._checkout_failed(exc)
            return None  # type: ignore[return-value]  # as sprockets-postgres yields None
        self._slot = slot
        connector = self._connector = self._make(slot, deadline)
        if self._transaction:
            self._tx = connector.transaction(
                resolve_commit=self._resolve, read_only=self._read_only, settings=self._settings
            )
            try:
                await self._tx.__aenter__()
            except BaseException as exc:
                connector.end()
                self._release(slot, broke(slot, exc))
                raise
        return connector

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        slot, connector = self._slot, self._connector
        if slot is None or connector is None:
            return  # the checkout failed and the hook swallowed it: nothing is held
        failure = exc
        try:
            if self._tx is not None:
                await self._tx.__aexit__(None, exc, None)
        except BaseException as error:
            failure = error
            raise
        finally:
            connector.end()
            self._release(slot, failure is not None and broke(slot, failure))
