"""sprockets-postgres 1.8.1's public names, imported from ``pgpool_sprockets``, with their
upstream signatures.

The table below was read from ``sprockets_postgres.py`` of the 1.8.1 sdist (it cannot be
imported here: it needs aiodns and distutils); names and signatures are fixed, so a change
on our side that breaks ``import pgpool_sprockets as sprockets_postgres`` fails here.
"""

from __future__ import annotations

import inspect
import logging
import typing
from typing import Any

import pytest

import pgpool_sprockets

P, K = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"
EMPTY = inspect.Parameter.empty

#: Module-level values upstream defines, with its values.
UPSTREAM_VALUES: dict[str, Any] = {
    "DEFAULT_POSTGRES_CONNECTION_TIMEOUT": 10,
    "DEFAULT_POSTGRES_CONNECTION_TTL": 300,
    "DEFAULT_POSTGRES_HSTORE": "FALSE",
    "DEFAULT_POSTGRES_JSON": "FALSE",
    "DEFAULT_POSTGRES_MAX_POOL_SIZE": "10",
    "DEFAULT_POSTGRES_MIN_POOL_SIZE": "1",
    "DEFAULT_POSTGRES_QUERY_TIMEOUT": 120,
    "DEFAULT_POSTGRES_UUID": "TRUE",
}

#: (class, method) -> upstream parameters after ``self``: (name, kind, default), with
#: ``EMPTY`` for none. Private parameters (``_attempt``) are left out.
UPSTREAM_METHODS: dict[tuple[str, str], list[tuple[str, str, Any]]] = {
    ("QueryResult", "__init__"): [
        ("row_count", P, EMPTY),
        ("row", P, EMPTY),
        ("rows", P, EMPTY),
    ],
    ("PostgresConnector", "callproc"): [
        ("name", P, EMPTY),
        ("parameters", P, None),
        ("metric_name", P, ""),
        ("timeout", K, None),
    ],
    ("PostgresConnector", "execute"): [
        ("sql", P, EMPTY),
        ("parameters", P, None),
        ("metric_name", P, ""),
        ("timeout", K, None),
    ],
    ("PostgresConnector", "transaction"): [],
    ("ApplicationMixin", "postgres_connector"): [
        ("on_error", P, None),
        ("on_duration", P, None),
        ("timeout", P, None),
    ],
    ("ApplicationMixin", "postgres_status"): [],
    ("RequestHandlerMixin", "postgres_callproc"): [
        ("name", P, EMPTY),
        ("parameters", P, None),
        ("metric_name", P, ""),
        ("timeout", K, None),
    ],
    ("RequestHandlerMixin", "postgres_execute"): [
        ("sql", P, EMPTY),
        ("parameters", P, None),
        ("metric_name", P, ""),
        ("timeout", K, None),
    ],
    ("RequestHandlerMixin", "postgres_transaction"): [("timeout", P, None)],
    ("RequestHandlerMixin", "on_postgres_error"): [
        ("metric_name", P, EMPTY),
        ("exc", P, EMPTY),
    ],
    ("RequestHandlerMixin", "on_postgres_timing"): [
        ("metric_name", P, EMPTY),
        ("duration", P, EMPTY),
    ],
}

#: Upstream's coroutine functions (called with await) and async context managers.
UPSTREAM_ASYNC = {
    ("PostgresConnector", "callproc"),
    ("PostgresConnector", "execute"),
    ("ApplicationMixin", "postgres_status"),
    ("RequestHandlerMixin", "postgres_callproc"),
    ("RequestHandlerMixin", "postgres_execute"),
}
UPSTREAM_PROPERTIES = {
    ("QueryResult", "row"),
    ("QueryResult", "row_count"),
    ("QueryResult", "rows"),
    ("ApplicationMixin", "postgres_is_connected"),
    ("PostgresConnector", "cursor"),  # an instance attribute upstream
}


@pytest.mark.parametrize(("name", "value"), sorted(UPSTREAM_VALUES.items()))
def test_module_constants(name: str, value: Any) -> None:
    got = getattr(pgpool_sprockets, name)
    assert (type(got), got) == (type(value), value)
    assert name in pgpool_sprockets.__all__


def test_type_aliases_and_logger() -> None:
    assert pgpool_sprockets.OptionalCallable == typing.Optional[typing.Callable]  # noqa: UP045
    for alias in ("OptionalCallable", "QueryParameters", "Timeout"):
        assert alias in pgpool_sprockets.__all__
    assert pgpool_sprockets.LOGGER is logging.getLogger("sprockets-postgres")
    assert pgpool_sprockets.RequestHandlerMixin.postgres_logger is pgpool_sprockets.LOGGER


@pytest.mark.parametrize(
    "name",
    [
        "ApplicationMixin",
        "ConnectionException",
        "PostgresConnector",
        "QueryResult",
        "RequestHandlerMixin",
        "StatusRequestHandler",
    ],
)
def test_classes_are_exported(name: str) -> None:
    assert inspect.isclass(getattr(pgpool_sprockets, name))
    assert name in pgpool_sprockets.__all__
    assert issubclass(pgpool_sprockets.ConnectionException, Exception)


def _params(function: Any) -> list[tuple[str, str, Any]]:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # self
    return [(p.name, p.kind.name, p.default) for p in parameters if not p.name.startswith("_")]


@pytest.mark.parametrize(("owner", "method"), sorted(UPSTREAM_METHODS))
def test_method_signatures_match_upstream(owner: str, method: str) -> None:
    """Every call upstream accepted works: its parameters come first, with the same names,
    order and kinds, and its defaults (compared by value); a parameter upstream required
    may have a default here. Anything added is keyword-only with a default."""
    function = inspect.getattr_static(getattr(pgpool_sprockets, owner), method)
    function = getattr(function, "__wrapped__", function)  # asynccontextmanager
    ours, upstream = _params(function), UPSTREAM_METHODS[owner, method]
    assert [(n, k) for n, k, _ in ours[: len(upstream)]] == [(n, k) for n, k, _ in upstream]
    for (name, _kind, default), (_, _, theirs) in zip(ours, upstream, strict=False):
        assert theirs is EMPTY or default == theirs, name
    for name, kind, default in ours[len(upstream) :]:
        assert (kind, default is EMPTY) == (K, False), name
    if (owner, method) in UPSTREAM_ASYNC:
        assert inspect.iscoroutinefunction(function)


@pytest.mark.parametrize(("owner", "name"), sorted(UPSTREAM_PROPERTIES))
def test_properties(owner: str, name: str) -> None:
    assert isinstance(inspect.getattr_static(getattr(pgpool_sprockets, owner), name), property)


def test_status_handler_get_takes_any_arguments() -> None:
    get = pgpool_sprockets.StatusRequestHandler.get
    kinds = [p.kind.name for p in inspect.signature(get).parameters.values()][1:]
    assert kinds == ["VAR_POSITIONAL", "VAR_KEYWORD"]
    assert inspect.iscoroutinefunction(get)


def test_query_result_as_upstream_builds_it() -> None:
    """Fakes in users' tests build results positionally, as upstream's signature does."""
    one = pgpool_sprockets.QueryResult(1, {"id": 1}, None)
    assert (one.row_count, one.row, one.rows, len(one), list(one)) == (
        1,
        {"id": 1},
        [{"id": 1}],
        1,
        [{"id": 1}],
    )
    many = pgpool_sprockets.QueryResult(2, None, [{"id": 1}, {"id": 2}])
    assert (many.row, many.rows, len(many)) == (None, [{"id": 1}, {"id": 2}], 2)
    updated = pgpool_sprockets.QueryResult(3, None, None)  # an UPDATE of 3 rows
    assert (updated.row_count, updated.row, updated.rows, bool(updated)) == (3, None, [], True)
    assert repr(updated) == "<QueryResult row_count=3>"
    # pgpool 0.1's own form keeps working.
    legacy = pgpool_sprockets.QueryResult(1, [{"id": 7}])
    assert (legacy.row, legacy.rows) == ({"id": 7}, [{"id": 7}])
