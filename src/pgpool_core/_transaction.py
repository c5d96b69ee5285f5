"""What a transaction's end reports, so that it is what the server did.

Three pieces, none of which knows the pool: :func:`refuse_commit` decides, without I/O, when
COMMIT must not be sent and what to raise instead; :func:`await_answer` waits for a sent
COMMIT's answer through deadlines and cancellations (a COMMIT is never abandoned half way);
:func:`resolve_xid` asks the server, on another connection, whether a transaction whose
COMMIT answer was lost committed (``txid_status``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._classify import sqlstate
from ._connector import DriverConnection, TxStatus
from .errors import QueryTimeoutError, TransactionRolledBackError

__all__ = [
    "BEGIN_WITH_XID",
    "Refusal",
    "await_answer",
    "refuse_commit",
    "resolve_xid",
]

LOGGER = logging.getLogger("pgpool.transaction")

#: BEGIN and the transaction's id in one round trip (the result is the SELECT's). Assigning
#: the id up front is the cost of being able to ask ``txid_status`` about it later.
BEGIN_WITH_XID = "BEGIN; SELECT txid_current() AS xid"

_XID_STATUS = "SELECT txid_status(%s) AS status"


class Refusal:
    """COMMIT must not be sent: raise ``error``; ``rollback`` says whether the open
    transaction must be rolled back first (else the connection's release ends it)."""

    __slots__ = ("error", "rollback")

    def __init__(self, error: BaseException, *, rollback: bool) -> None:
        self.error = error
        self.rollback = rollback


def refuse_commit(
    status: TxStatus,
    *,
    deadline_passed: bool,
    total: float,
    failure: BaseException | None,
    ended_by: str | None,
) -> Refusal | None:
    """Whether COMMIT may be sent on a connection in ``status``; None means send it.

    ``failure`` is the error that aborted the transaction, ``ended_by`` the command tag of a
    statement of the block that ended the transaction itself (``COMMIT``, ``ROLLBACK``).
    """
    if status is TxStatus.IDLE:
        if ended_by == "COMMIT":
            return None  # the block committed it itself; nothing is left to send
        return Refusal(
            TransactionRolledBackError(
                f"the transaction was ended inside the block by {ended_by or 'its own statement'}"
                "; nothing of it was committed",
                failure,
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


async def await_answer(
    answer: asyncio.Future[Any], until: float, clock: Callable[[], float]
) -> asyncio.CancelledError | None:
    """Wait for a sent COMMIT's ``answer`` until ``until``, whatever happens to the caller.

    A cancellation of the waiting task does not stop the wait: the COMMIT's outcome is
    decided by the server, not by the caller giving up. The cancellation is returned for the
    caller to re-raise once the outcome is known; ``answer`` is left as it is (done or not).
    """
    cancelled: asyncio.CancelledError | None = None
    while not answer.done():
        remaining = until - clock()
        if remaining <= 0:
            break
        try:
            await asyncio.wait((answer,), timeout=remaining)
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    return cancelled


async def resolve_xid(
    connect: Callable[[float], Awaitable[DriverConnection]],
    xid: int,
    until: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str | None:
    """``committed`` or ``aborted`` for transaction ``xid``, asked on a fresh connection;
    None when the server could not say by ``until`` (unreachable, or still in progress).

    Retries while the server is unreachable or the transaction is still in progress (its
    backend may be finishing the COMMIT whose answer was lost); there is no notification to
    wait on, so it re-asks with a short, growing pause.
    """
    pause = 0.01
    while True:
        remaining = until - clock()
        if remaining <= 0:
            return None
        status = await _ask_xid_status(connect, xid, remaining)
        if status in ("committed", "aborted"):
            return status
        await sleep(min(pause, max(until - clock(), 0)))
        pause = min(pause * 2, 0.2)


async def _ask_xid_status(
    connect: Callable[[float], Awaitable[DriverConnection]], xid: int, timeout: float
) -> str | None:
    conn: DriverConnection | None = None
    try:
        conn = await connect(timeout)
        await asyncio.wait_for(conn.send(_XID_STATUS, [xid]), timeout)
        row = conn.result().row
        return None if row is None else row["status"]
    except Exception as exc:  # unreachable, starting up, timed out: ask again
        LOGGER.debug("txid_status(%d) not answered yet: %s", xid, type(exc).__name__)
        return None
    finally:
        if conn is not None:
            conn.close()
