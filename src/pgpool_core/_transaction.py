"""What a transaction's end reports, so that it is what the server did.

:class:`Committer` ends transactions: it sends COMMIT only when :func:`refuse_commit` (a
decision without I/O) allows it, waits for the answer through deadlines and cancellations
(a COMMIT is never abandoned half way), and reports what the server said; when that answer
is lost, :func:`resolve_xid` asks the server on another connection (``txid_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ._bag import Slot
from ._classify import sqlstate
from ._connector import DriverConnection, TxStatus
from ._logs import logger
from ._returns import consume
from ._statements import Deadline, StatementRunner
from ._timers import due
from .errors import CommitUnknownError, QueryTimeoutError, TransactionRolledBackError

__all__ = [
    "BEGIN_WITH_XID",
    "Committer",
    "Refusal",
    "XidMark",
    "refuse_commit",
    "resolve_xid",
]

LOGGER = logger("transaction")

#: BEGIN, the transaction's id and the server's start time, in one round trip (the result is
#: the SELECT's). Assigning the id up front is the cost of being able to ask
#: ``txid_status`` about it later; the start time tells whether a later answer comes from
#: the same server life: after a crash, an id whose records never reached the disk may be
#: handed to another transaction, whose outcome txid_status would then report.
BEGIN_WITH_XID = "BEGIN; SELECT txid_current() AS xid, pg_postmaster_start_time()::text AS started"

_XID_STATUS = "SELECT txid_status(%s) AS status, pg_postmaster_start_time()::text AS started"


class XidMark:
    """A transaction's id and the start time of the server that assigned it."""

    __slots__ = ("started", "xid")

    def __init__(self, xid: int, started: object) -> None:
        self.xid = xid
        self.started = started

    def __repr__(self) -> str:
        return str(self.xid)


class Refusal:
    """COMMIT must not be sent: raise ``error``; ``rollback`` says whether the open
    transaction must be rolled back first (else the connection's release ends it)."""

    __slots__ = ("error", "rollback")

    def __init__(self, error: Exception, *, rollback: bool) -> None:
        self.error = error
        self.rollback = rollback


def refuse_commit(
    status: TxStatus,
    *,
    deadline_passed: bool,
    total: float,
    failure: BaseException | None,
    ended_by: str | None,
    doomed: bool = False,
) -> Refusal | None:
    """Whether COMMIT may be sent on a connection in ``status``; None means send it.

    ``failure`` is the error that aborted the transaction, ``ended_by`` the command tag of a
    statement of the block that ended the transaction itself (``COMMIT``, ``ROLLBACK``),
    ``doomed`` whether a statement ran out of time (it may have completed since: the
    transaction must not commit what its caller was told failed).
    """
    if status is TxStatus.IDLE:
        if ended_by == "COMMIT":
            return None  # the block committed it itself; nothing is left to send
        if ended_by == "ROLLBACK":
            return Refusal(
                TransactionRolledBackError(
                    "the transaction was ended inside the block by ROLLBACK; nothing of it"
                    " was committed",
                    failure,
                ),
                rollback=False,
            )
        return Refusal(
            CommitUnknownError(
                f"a statement of the block ended the transaction (last command {ended_by});"
                " the pool cannot tell whether it committed"
            ),
            rollback=False,
        )
    if status is TxStatus.UNKNOWN:
        return Refusal(
            _rolled_back("the connection was lost before COMMIT", failure), rollback=False
        )
    if status is TxStatus.ACTIVE:
        # A statement still runs (its timeout was caught and ignored): the release cancels
        # it and rolls back.
        return Refusal(
            _rolled_back("a statement was still running at COMMIT", failure), rollback=False
        )
    if status is TxStatus.INERROR:
        return Refusal(_rolled_back("a statement failed inside it", failure), rollback=True)
    if doomed:
        return Refusal(_rolled_back("a statement ran out of time", failure), rollback=True)
    if deadline_passed:
        return Refusal(
            QueryTimeoutError(
                f"the transaction's {total:.3f} s timeout passed before COMMIT was sent;"
                " it was rolled back and nothing of it was committed"
            ),
            rollback=True,
        )
    return None


def _rolled_back(reason: str, failure: BaseException | None) -> TransactionRolledBackError:
    if failure is None:
        first = ""
    else:
        code = sqlstate(failure)
        first = f"; first failure: {type(failure).__name__}" + (
            f" (SQLSTATE {code})" if code else ""
        )
    error = TransactionRolledBackError(
        f"transaction rolled back, nothing of it was committed: {reason}{first}", failure
    )
    error.__cause__ = failure
    return error


async def resolve_xid(
    connect: Callable[[float], Awaitable[DriverConnection]],
    mark: XidMark,
    until: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[str | None, str]:
    """``(verdict, why)``: verdict ``committed`` or ``aborted`` for the transaction of
    ``mark``, asked on a fresh connection, or None when it cannot be known by ``until``.

    Retries while the server is unreachable or the transaction is still in progress (its
    backend may be finishing the COMMIT whose answer was lost); there is no notification to
    wait on, so it re-asks with a short, growing pause. An answer from a server that
    restarted since (or another server) can only say ``aborted``: a committed id there may
    have been reused.
    """
    pause, why = 0.01, "no answer"
    while True:
        remaining = until - clock()
        if remaining <= 0:
            return None, why
        row = await _ask_xid_status(connect, mark.xid, remaining)
        if row is not None:
            status, same_server = row["status"], row["started"] == mark.started
            why = f"txid_status({mark.xid}) says {status}"
            if status == "aborted" or (status == "committed" and same_server):
                return status, why
            if not same_server:
                return None, f"{why}, but the server restarted since: its id may be reused"
        await sleep(min(pause, max(until - clock(), 0)))
        pause = min(pause * 2, 0.2)


async def _ask_xid_status(
    connect: Callable[[float], Awaitable[DriverConnection]], xid: int, timeout: float
) -> dict[str, Any] | None:
    conn: DriverConnection | None = None
    try:
        conn = await connect(timeout)
        await asyncio.wait_for(conn.send(_XID_STATUS, [xid]), timeout)
        return conn.result().row
    except Exception as exc:  # unreachable, starting up, timed out: ask again
        LOGGER.debug("txid_status(%d) not answered yet: %s", xid, type(exc).__name__)
        return None
    finally:
        if conn is not None:
            conn.close()


class Committer:
    """Ends transactions with COMMIT, reporting only what the server did (see
    :meth:`~pgpool_core.PostgresConnector.transaction` for what each outcome means)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        runner: StatementRunner,
        cancel_timeout: float,
        connect: Callable[[float], Awaitable[DriverConnection]],
        on_success: Callable[[], None],
        on_lost: Callable[[BaseException], None],
        pool_name: Callable[[], str],
    ) -> None:
        self._clock = clock
        self._runner = runner
        self._cancel_timeout = cancel_timeout
        self._connect = connect
        self._on_success = on_success
        self._on_lost = on_lost
        self._pool_name = pool_name

    async def rollback(self, slot: Slot) -> None:
        """``ROLLBACK`` on ``slot``, bounded by cancel_timeout."""
        deadline = Deadline.after(self._clock(), self._cancel_timeout)
        await self._runner.run(slot, "ROLLBACK", None, deadline)

    async def commit(
        self,
        slot: Slot,
        deadline: Deadline,
        *,
        xid: XidMark | None,
        failure: BaseException | None,
        ended_by: str | None,
        doomed: bool = False,
    ) -> None:
        """COMMIT the transaction open on ``slot``; returns only if the server committed."""
        conn = slot.conn
        status = conn.transaction_status()
        refusal = refuse_commit(
            status,
            deadline_passed=deadline.at <= self._clock(),
            total=deadline.total,
            failure=failure,
            ended_by=ended_by,
            doomed=doomed,
        )
        if refusal is not None:
            if refusal.rollback:
                with contextlib.suppress(Exception):  # else the release rolls back or discards
                    await self.rollback(slot)
            raise refusal.error
        if status is TxStatus.IDLE:
            return  # the block committed it itself
        try:
            answer = conn.send("COMMIT", None, keep=True)
        except Exception as exc:  # never sent: without COMMIT nothing commits
            raise TransactionRolledBackError(
                f"transaction rolled back, nothing of it was committed: COMMIT could not be"
                f" sent ({type(exc).__name__})",
                exc,
            ) from exc
        answer.add_done_callback(consume)
        until = deadline.at + self._cancel_timeout
        cancelled = await self._await_commit(slot, answer, until)
        try:
            self._answered(conn, answer, failure, until)
        except CommitUnknownError as unknown:
            unknown.xid = None if xid is None else xid.xid
            if xid is None or cancelled is not None:
                self._log_cancelled(cancelled, xid, "unknown")
                raise
            try:
                await self._resolve(xid, unknown)  # returns if it committed
            except asyncio.CancelledError as late:
                self._log_cancelled(late, xid, "unknown")
        except BaseException:
            self._log_cancelled(cancelled, xid, "rolled back")
            raise
        self._log_cancelled(cancelled, xid, "committed")

    async def _await_commit(
        self, slot: Slot, answer: asyncio.Future[None], until: float
    ) -> asyncio.CancelledError | None:
        """Wait for COMMIT's ``answer`` (a :class:`~pgpool_core._connector.KeptFuture`) until
        ``until``, where the runner's deadline timer cuts the connection. A cancelled caller
        is woken only once the answer is in; its cancellation is returned, to be re-raised
        once the outcome is known."""
        slot.running, slot.committing = answer, True
        timers = self._runner.timers
        timers.add(slot, until)
        try:
            await answer
        except asyncio.CancelledError as cancelled:
            return cancelled
        except Exception:
            pass  # the answer's own error, read by _answered
        finally:
            timers.discard(slot)
            slot.running, slot.committing = None, False
        return None

    def _answered(
        self,
        conn: DriverConnection,
        answer: asyncio.Future[None],
        failure: BaseException | None,
        until: float,
    ) -> None:
        """Raise unless the server's answer to COMMIT says it committed."""
        # Closed at the bound: the deadline timer cut it (as the timer tells due from not).
        if not answer.done() or (
            conn.closed and answer.exception() is not None and due(until, self._clock())
        ):
            conn.close()
            raise CommitUnknownError(
                f"COMMIT was sent but no answer came within {self._cancel_timeout:.3f} s"
                " after the deadline; the connection was closed: the transaction may or may not"
                " have committed"
            )
        error = answer.exception()
        if error is None:
            self._on_success()
            tag = conn.status_message()
            if tag != "COMMIT":
                raise TransactionRolledBackError(
                    f"transaction rolled back: the server answered COMMIT with {tag}", failure
                )
            return
        if conn.closed:
            self._on_lost(error)
            raise CommitUnknownError(
                f"the connection was lost while COMMIT ran ({type(error).__name__}):"
                " the transaction may or may not have committed"
            ) from error
        raise error  # the server refused to commit (e.g. a deferred constraint): rolled back

    async def _resolve(self, mark: XidMark, unknown: CommitUnknownError) -> None:
        """Ask the server how the transaction of ``mark`` ended; return if it committed."""
        until = self._clock() + self._cancel_timeout
        verdict, why = await resolve_xid(self._connect, mark, until, self._clock)
        LOGGER.debug("pool %s: lost COMMIT resolved: %s", self._pool_name(), why)
        if verdict == "committed":
            return
        if verdict == "aborted":
            raise TransactionRolledBackError(
                f"transaction rolled back: the connection was lost during COMMIT and {why}",
                unknown,
            ) from unknown
        raise CommitUnknownError(
            f"{unknown}; not resolved within {self._cancel_timeout:.3f} s ({why})", mark.xid
        ) from unknown

    def _log_cancelled(
        self, cancelled: asyncio.CancelledError | None, xid: XidMark | None, outcome: str
    ) -> None:
        """After a caller was cancelled while its COMMIT ran: log the outcome, re-raise."""
        if cancelled is None:
            return
        LOGGER.debug(
            "pool %s: caller cancelled while COMMIT ran (xid %s); the transaction %s",
            self._pool_name(),
            "unknown" if xid is None else xid,
            outcome,
        )
        # What the server did, for whoever catches the cancellation (an HTTP adapter
        # whose client hung up): "committed", "rolled back" or "unknown".
        cancelled.pgpool_outcome = outcome  # type: ignore[attr-defined]
        raise cancelled
