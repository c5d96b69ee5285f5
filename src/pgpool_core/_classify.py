"""What kind of failure an exception is, from its type and SQLSTATE (no framework knowledge).

Adapters map kinds to HTTP; the core can use the same kinds for retry decisions.
"""

from __future__ import annotations

import enum

import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
import psycopg2.extensions

from .errors import (
    CommitUnknownError,
    ConnectionException,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryTimeoutError,
    TooManyRequestsError,
    TransactionRolledBackError,
)

__all__ = ["ErrorKind", "classify", "connection_died", "sqlstate"]


class ErrorKind(enum.Enum):
    """Failure kinds, each with whether retrying later may help.

    .. versionadded:: 0.1
    """

    #: A working connection could not be had or was lost mid-statement (SQLSTATE class 08).
    CONNECTION_FAILURE = "connection_failure"
    #: The database refuses connections or is shutting down (57P01-57P03, connect refused).
    UNAVAILABLE = "unavailable"
    #: Every connection is busy: acquire timed out or max_waiting shed the request.
    POOL_EXHAUSTED = "pool_exhausted"
    #: The statement ran out of time (client deadline or server statement_timeout, 57014).
    QUERY_TIMEOUT = "query_timeout"
    UNIQUE_VIOLATION = "unique_violation"  # 23505
    FOREIGN_KEY_VIOLATION = "foreign_key_violation"  # 23503
    #: Serialization failure (40001) or deadlock (40P01): the transaction may succeed if rerun.
    TRANSACTION_CONFLICT = "transaction_conflict"
    #: COMMIT was sent and its answer lost: the transaction may have committed. Never
    #: retry blindly (``CommitUnknownError``).
    COMMIT_UNKNOWN = "commit_unknown"
    #: Another psycopg2.OperationalError (server-side trouble, not the query's fault).
    OPERATIONAL = "operational"
    #: Any other database error (bad SQL, data errors, constraint violations...).
    DATABASE = "database"
    #: Not a database error at all.
    OTHER = "other"

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later unchanged."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorKind.CONNECTION_FAILURE,
        ErrorKind.UNAVAILABLE,
        ErrorKind.POOL_EXHAUSTED,
        ErrorKind.TRANSACTION_CONFLICT,
    }
)

_BY_SQLSTATE = {
    "23505": ErrorKind.UNIQUE_VIOLATION,
    "23503": ErrorKind.FOREIGN_KEY_VIOLATION,
    "40001": ErrorKind.TRANSACTION_CONFLICT,
    "40P01": ErrorKind.TRANSACTION_CONFLICT,
    "57014": ErrorKind.QUERY_TIMEOUT,
    "57P01": ErrorKind.UNAVAILABLE,
    "57P02": ErrorKind.UNAVAILABLE,
    "57P03": ErrorKind.UNAVAILABLE,
}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error (also through a pgpool error's cause), else None.

    .. versionadded:: 0.1
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg2.Error):
            code = seen.pgcode
            if code:
                return str(code)
            # Errors built without a server response still have a class-level SQLSTATE.
            return _CLASS_CODES.get(type(seen))
        seen = seen.__cause__
    return None


def _class_codes() -> dict[type[BaseException], str]:
    """psycopg2.errors class -> SQLSTATE, from the public errorcodes table."""
    table: dict[type[BaseException], str] = {}
    for name in dir(psycopg2.errorcodes):
        code = getattr(psycopg2.errorcodes, name)
        if name.isupper() and isinstance(code, str) and len(code) == 5:
            try:
                table[psycopg2.errors.lookup(code)] = code
            except KeyError:  # a class code (e.g. "08000" is, "08" is not) without its own type
                continue
    return table


_CLASS_CODES = _class_codes()


#: SQLSTATEs after which a statement may run again on another connection: the server ended
#: the session (administrator or crash shutdown), or is read-only after a failover.
_SESSION_ENDED = frozenset({"57P01", "57P02", "25006"})


def connection_died(exc: BaseException) -> bool:
    """Whether a driver error says the connection (or its server's role) is gone, not the
    statement wrong: a lost connection (class 08, no SQLSTATE), a terminated backend, a
    read-only server after a failover."""
    if not isinstance(exc, psycopg2.Error):
        return False
    return classify(exc) is ErrorKind.CONNECTION_FAILURE or sqlstate(exc) in _SESSION_ENDED


def classify(exc: BaseException) -> ErrorKind:
    """Classify an exception raised by pgpool or by a query through it.

    A :class:`TransactionRolledBackError` is classified as the failure that doomed the
    transaction (a transaction rolled back by a unique violation is a unique violation).

    >>> classify(PoolTimeoutError("busy"))
    <ErrorKind.POOL_EXHAUSTED: 'pool_exhausted'>

    .. versionadded:: 0.1
    """
    if isinstance(exc, TransactionRolledBackError):
        first = exc.first_error
        return ErrorKind.DATABASE if first is None else classify(first)
    if isinstance(exc, CommitUnknownError):
        return ErrorKind.COMMIT_UNKNOWN
    if isinstance(exc, QueryTimeoutError):
        return ErrorKind.QUERY_TIMEOUT
    if isinstance(exc, (PoolTimeoutError, TooManyRequestsError)):
        return ErrorKind.POOL_EXHAUSTED
    if isinstance(exc, PoolUnavailableError):
        return ErrorKind.UNAVAILABLE
    if isinstance(exc, ConnectionException):
        return ErrorKind.CONNECTION_FAILURE
    if not isinstance(exc, psycopg2.Error):
        return ErrorKind.OTHER
    code = sqlstate(exc)
    if code in _BY_SQLSTATE:
        return _BY_SQLSTATE[code]
    if code is not None and code.startswith("08"):
        return ErrorKind.CONNECTION_FAILURE
    if isinstance(exc, psycopg2.OperationalError):
        # No SQLSTATE: libpq lost the connection ("server closed the connection").
        return ErrorKind.CONNECTION_FAILURE if code is None else ErrorKind.OPERATIONAL
    if isinstance(exc, psycopg2.InterfaceError):
        return ErrorKind.CONNECTION_FAILURE
    return ErrorKind.DATABASE
