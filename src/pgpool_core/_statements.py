"""Running one statement: the call's deadline, the checks made before anything is sent,
and the runner that reports what happened on the server."""

from __future__ import annotations

import asyncio
import math
import re
from asyncio import current_task
from collections.abc import Callable, Mapping
from typing import Any

import psycopg2
import psycopg2.extensions

from ._bag import Slot
from ._classify import sqlstate
from ._connector import TxStatus
from ._logs import fields, logger
from ._metrics import Counters
from ._result import QueryResult
from ._returns import Canceller, consume
from ._timers import DeadlineTimer
from .errors import (
    PoolClosedError,
    PoolError,
    QueryParameterError,
    QueryResultError,
    QueryTimeoutError,
    SettingsError,
)

__all__ = [
    "READ_ONLY_SQL_TRANSACTION",
    "Deadline",
    "SessionStateWarnings",
    "StatementRunner",
    "Stopped",
    "check_timeout",
    "interrupt",
]

LOGGER = logger("statements")

#: SQLSTATE of a write on a read-only server: after a failover the pool talks to a standby.
READ_ONLY_SQL_TRANSACTION = "25006"
#: Statements that need session state, which PgBouncer's transaction pooling does not keep.
_SESSION_STATE = (
    ("session SET", re.compile(r"^\s*SET\s+(?!LOCAL\b|TRANSACTION\b)", re.IGNORECASE)),
    ("LISTEN", re.compile(r"^\s*(UN)?LISTEN\b", re.IGNORECASE)),
    ("session advisory lock", re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I)),
    ("PREPARE", re.compile(r"^\s*PREPARE\b", re.IGNORECASE)),
    ("WITH HOLD cursor", re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE)),
)
_IN_TRANSACTION = (TxStatus.INTRANS, TxStatus.INERROR)


class Deadline:
    """When a call must end (``at``, on the pool's clock) and the seconds it was given
    (``total``, quoted in timeout errors). One per call; statements take the sooner of it and
    their own timeout."""

    __slots__ = ("at", "total")

    def __init__(self, at: float, total: float) -> None:
        self.at = at
        self.total = total

    @classmethod
    def after(cls, now: float, seconds: float) -> Deadline:
        return cls(now + seconds, seconds)

    def remaining(self, now: float) -> float:
        return self.at - now

    def sooner(self, now: float, timeout: float | None) -> Deadline:
        """This deadline, or ``timeout`` seconds from ``now`` if that comes first."""
        if timeout is None or now + timeout >= self.at:
            return self
        return Deadline(now + timeout, timeout)

    def __repr__(self) -> str:
        return f"Deadline(at={self.at!r}, total={self.total!r})"


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """A caller's ``timeout=`` as seconds (None: the pool's defaults).

    :raises SettingsError: naming ``name``, for anything but a finite number > 0 (booleans
        and numeric strings included: ``timeout=True`` is not one second).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            f"{name}: expected seconds as a number, got {type(value).__name__} {value!r}"
        )
    if not (value > 0 and math.isfinite(value)):  # also NaN
        raise SettingsError(f"{name}: must be > 0 seconds and finite, got {value!r}")
    return float(value)


class SessionStateWarnings:
    """Behind PgBouncer in transaction pooling mode: warns once per kind of statement that
    relies on session state the next transaction may not have."""

    def __init__(self, pool_name: Callable[[], str]) -> None:
        self._pool_name = pool_name
        self._warned: set[str] = set()

    def check(self, sql: str) -> None:
        for kind, pattern in _SESSION_STATE:
            if kind not in self._warned and pattern.search(sql):
                self._warned.add(kind)
                LOGGER.warning(
                    "pool %s: %s behind PgBouncer in transaction pooling mode: the next"
                    " transaction may run on another server connection, without this state",
                    self._pool_name(),
                    kind,
                    extra=fields(self._pool_name(), "session_state_behind_pgbouncer"),
                )


class StatementRunner:
    """Runs one statement on a checked-out slot until its deadline; what it returns or
    raises is what happened on the server (see :meth:`run`). Owns the one deadline timer
    of running statements (COMMITs included)."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        counters: Counters,
        canceller: Canceller,
        on_success: Callable[[], None],
        on_lost: Callable[[BaseException], None],
        on_read_only: Callable[[Slot], None],
        session_state: SessionStateWarnings | None,
    ) -> None:
        self.timers = DeadlineTimer(loop, clock, _expire)
        # current_task(loop): without the loop, Python 3.11 looks the running loop up,
        # which costs a getpid() system call (fork detection) on every statement.
        self._loop = loop
        self._clock = clock
        self._counters = counters
        self._canceller = canceller
        self._on_success = on_success
        self._on_lost = on_lost
        self._on_read_only = on_read_only
        self._session_state = session_state
        # The task whose last statement was answered before it waited (a fast server).
        self._answered_at_once: asyncio.Task[Any] | None = None

    async def turn(self) -> None:
        """Let the other tasks run first if this caller's last statement never suspended it.

        Without this yield a caller that always gets its answer at once (a fast server)
        would run statement after statement while the others' answers wait (one task doing
        twice the work of the rest, and their p99 up). :meth:`run` takes its turn before
        sending (so a cancellation that lands here means nothing was sent); a caller that
        must read its own state and send with no yield in between takes it first.
        """
        if self._answered_at_once is not None and self._answered_at_once is current_task(
            self._loop
        ):
            self._answered_at_once = None
            await asyncio.sleep(0)

    async def run(
        self,
        slot: Slot,
        sql: str,
        params: Any,
        deadline: Deadline,
        *,
        callproc: bool = False,
        begin: str | None = None,
    ) -> QueryResult:
        """Run one statement on ``slot`` until ``deadline``; with ``begin``, the ``BEGIN``
        that opens its transaction goes in the same message (one round trip for both; the
        result is the statement's).

        Nothing is sent once the deadline has passed. On expiry inside a transaction the
        caller hears at once (the transaction can no longer commit; releasing the slot
        cancels the statement and rolls back). Outside one, the server's answer to the
        cancel decides: cancelled raises :class:`QueryTimeoutError`, a statement that
        completed first returns its result, an error is raised as is.
        """
        conn = slot.conn
        if self._answered_at_once is not None:
            await self.turn()
        if "\x00" in sql:
            raise QueryParameterError(
                "statement text contains a NUL character (libpq would cut the statement"
                " there); nothing was sent"
            )
        if deadline.at <= self._clock():
            self._counters.query_timeouts += 1
            raise QueryTimeoutError(
                f"the {deadline.total:.3f} s timeout passed before the statement was sent;"
                " nothing was sent"
            )
        if self._session_state is not None:
            self._session_state.check(sql)
        in_transaction = begin is not None or conn.transaction_status() in _IN_TRANSACTION
        try:
            future = conn.send(
                sql if begin is None else f"{begin}; {sql}", params, callproc=callproc
            )
            slot.sent += 1
            slot.outcome = None  # an earlier statement's end, caught when it was abandoned
        except (IndexError, KeyError, TypeError, ValueError, psycopg2.ProgrammingError) as exc:
            raise QueryParameterError(
                f"statement parameters rejected, nothing was sent: {_bad_parameter(params, exc)}"
            ) from exc
        # Awaited directly: a caller's cancellation cancels only this future, and the
        # deadline timer fails it with _Expired; neither stops the statement, which is
        # cancelled on the server (by _confirm_cancel or when the slot is released).
        slot.running = future
        if future.done():
            self._answered_at_once = current_task(self._loop)
        timers = self.timers
        timers.add(slot, deadline.at)
        try:
            await future
        except (_Expired, Stopped) as stopped:
            if isinstance(stopped, _Expired):
                self._counters.query_timeouts += 1
            if in_transaction:
                raise _interrupted(stopped, deadline, "; the transaction is rolled back") from None
            return await self._confirm_cancel(slot, stopped, deadline)
        except psycopg2.extensions.QueryCanceledError as error:
            self._counters.query_timeouts += 1
            message = str(error.pgerror or error).strip()
            raise QueryTimeoutError(f"statement cancelled by the server: {message}") from error
        except psycopg2.Error as error:
            if conn.closed:
                self._on_lost(error)
            elif (
                sqlstate(error) == READ_ONLY_SQL_TRANSACTION
                and not slot.read_only_tx
                and conn.server_read_only() is not False
            ):  # a read-only server, not a READ ONLY transaction on a writable one
                self._on_read_only(slot)
            raise
        finally:
            timers.discard(slot)
            slot.running = None
        self._on_success()
        return _result(slot)

    async def _confirm_cancel(
        self, slot: Slot, stopped: Exception, deadline: Deadline
    ) -> QueryResult:
        """After an autocommit statement ran out of time (or the pool stopped): cancel it
        on the server and report how it really ended, bounded by cancel_timeout."""
        outcome, slot.outcome = slot.outcome, None
        over, in_flight = (
            (False, None) if outcome is None else await self._canceller.cancel(slot.conn, outcome)
        )
        if over:  # the connection may serve again, once a cancel still on its way has landed
            slot.cancel_in_flight = in_flight
        if not over or outcome is None:
            slot.conn.close()
            raise _interrupted(
                stopped,
                deadline,
                f"; the server did not confirm the cancel within"
                f" {self._canceller.bound:.3f} s and the connection was closed:"
                " the statement may or may not have completed",
            )
        error = outcome.exception()
        if error is None:
            # The release waits for a cancel request still in flight before any reuse.
            LOGGER.debug("statement completed before its cancel arrived")
            self._on_success()
            return _result(slot)
        if isinstance(error, psycopg2.extensions.QueryCanceledError):
            raise _interrupted(stopped, deadline, "; it was cancelled on the server") from None
        if slot.conn.closed:
            raise _interrupted(
                stopped,
                deadline,
                "; the connection closed before the server confirmed the cancel:"
                " the statement may or may not have completed",
            ) from error
        raise error


def _result(slot: Slot) -> QueryResult:
    """The completed statement's rows; a conversion failure says the statement ran."""
    try:
        return slot.conn.result()
    except Exception as exc:
        raise QueryResultError(
            f"the statement completed on the server (outside a transaction: committed), but"
            f" its result could not be read: {type(exc).__name__}: {exc}"
        ) from exc


class Stopped(Exception):
    """Set on a statement's future when stop() runs out of time (never escapes the pool)."""


class _Expired(Exception):
    """Set on a statement's future by the deadline timer (never escapes the pool)."""


def interrupt(slot: Slot, reason: Exception) -> bool:
    """Stop the caller waiting for ``slot``'s statement (which keeps running); from now on
    ``slot.outcome`` catches how it really ends. A COMMIT is only told to stop waiting at
    its own bound. False when nothing was awaited."""
    running = slot.running
    if running is None or running.done():
        return False
    if slot.committing:
        # A COMMIT's future is the driver's own and keeps its answer: at its bound the
        # connection is cut (the answer becomes an error, reported as unknown); stop()
        # leaves it to that bound or to its own.
        if isinstance(reason, _Expired):
            slot.conn.close()
        return True
    slot.outcome = slot.conn.wait_until_idle()
    slot.outcome.add_done_callback(consume)
    running.set_exception(reason)
    return True


def _expire(slot: Slot, _payload: object) -> None:
    interrupt(slot, _Expired())


def _interrupted(stopped: Exception, deadline: Deadline, what: str) -> PoolError:
    """The error for a statement the caller stopped waiting for; ``what`` says its fate."""
    if isinstance(stopped, Stopped):
        return PoolClosedError(f"the pool stopped before the statement finished{what}")
    return QueryTimeoutError(f"statement exceeded its {deadline.total:.3f} s timeout{what}")


def _bad_parameter(params: Any, exc: BaseException) -> str:
    """Which parameter the driver could not bind, by index or key, and its type."""
    items: list[tuple[object, Any]] = []
    if isinstance(params, Mapping):
        items = list(params.items())
    elif isinstance(params, (list, tuple)):
        items = list(enumerate(params))
    for key, value in items:
        where = f"key {key!r}" if isinstance(params, Mapping) else f"index {key}"
        if isinstance(value, str) and "\x00" in value:
            return f"parameter at {where} contains a NUL character"
        try:
            psycopg2.extensions.adapt(value)
        except Exception:
            return f"parameter at {where} has type {type(value).__name__}, which cannot be adapted"
    given = "no" if params is None else str(len(params)) if hasattr(params, "__len__") else "1"
    return f"{type(exc).__name__}: {exc} ({given} parameter(s) given)"
