"""Error classification: pgpool errors and driver errors to kinds, by type and SQLSTATE."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest

from pgpool_core import (
    ConnectionException,
    ErrorKind,
    PoolClosedError,
    PoolTimeoutError,
    PoolUnavailableError,
    QueryTimeoutError,
    TooManyRequestsError,
    classify,
    sqlstate,
)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PoolTimeoutError("busy"), ErrorKind.POOL_EXHAUSTED),
        (TooManyRequestsError("shed"), ErrorKind.POOL_EXHAUSTED),
        (PoolUnavailableError("down"), ErrorKind.UNAVAILABLE),
        (PoolClosedError("closed"), ErrorKind.CONNECTION_FAILURE),
        (ConnectionException("no connection"), ErrorKind.CONNECTION_FAILURE),
        (QueryTimeoutError("slow"), ErrorKind.QUERY_TIMEOUT),
        (psycopg2.errors.QueryCanceled("canceling statement"), ErrorKind.QUERY_TIMEOUT),
        (psycopg2.errors.UniqueViolation("dup"), ErrorKind.UNIQUE_VIOLATION),
        (psycopg2.errors.ForeignKeyViolation("fk"), ErrorKind.FOREIGN_KEY_VIOLATION),
        (psycopg2.errors.SerializationFailure("ser"), ErrorKind.TRANSACTION_CONFLICT),
        (psycopg2.errors.DeadlockDetected("dl"), ErrorKind.TRANSACTION_CONFLICT),
        (psycopg2.OperationalError("server closed the connection"), ErrorKind.CONNECTION_FAILURE),
        (psycopg2.InterfaceError("connection already closed"), ErrorKind.CONNECTION_FAILURE),
        (psycopg2.errors.DiskFull("disk full"), ErrorKind.OPERATIONAL),
        (psycopg2.errors.DivisionByZero("1/0"), ErrorKind.DATABASE),
        (psycopg2.errors.SyntaxError("bad sql"), ErrorKind.DATABASE),
        (ValueError("not a database error"), ErrorKind.OTHER),
    ],
)
def test_kinds(exc: BaseException, kind: ErrorKind) -> None:
    """Each error maps to its kind; pool exhaustion is never a connection failure."""
    assert classify(exc) is kind


def test_retryable_kinds() -> None:
    """Only transient kinds are retryable."""
    retryable = {kind for kind in ErrorKind if kind.retryable}
    assert retryable == {
        ErrorKind.CONNECTION_FAILURE,
        ErrorKind.UNAVAILABLE,
        ErrorKind.POOL_EXHAUSTED,
        ErrorKind.TRANSACTION_CONFLICT,
    }


def test_sqlstate_through_a_cause() -> None:
    """A pgpool error wrapping a driver error exposes the driver's SQLSTATE."""
    outer = QueryTimeoutError("statement cancelled")
    outer.__cause__ = psycopg2.errors.QueryCanceled("canceling statement due to statement timeout")
    assert sqlstate(outer) == "57014"
    assert sqlstate(psycopg2.errors.DiskFull("full")) == "53100"
    assert sqlstate(ValueError("x")) is None
    assert sqlstate(psycopg2.OperationalError("lost")) is None
