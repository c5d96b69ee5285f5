"""Query results: plain dicts built once from tuple rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["QueryResult"]


class QueryResult:
    """The outcome of one statement.

    ``row_count`` is the number of rows returned, or affected for a statement without a
    result set; ``rows`` a list of dicts (``[]`` when none); ``row`` the only row, or
    ``None`` unless exactly one row came back. Iterating yields the rows; ``len()`` is
    ``row_count``.
    """

    __slots__ = ("_row_count", "_rows")

    def __init__(self, row_count: int, rows: list[dict[str, Any]]) -> None:
        self._row_count = row_count
        self._rows = rows

    @classmethod
    def from_cursor(
        cls, names: Sequence[str] | None, tuples: Sequence[Sequence[Any]], row_count: int
    ) -> QueryResult:
        if names is None:
            return cls(max(row_count, 0), [])
        keys = tuple(names)
        return cls(len(tuples), [dict(zip(keys, row, strict=True)) for row in tuples])

    @property
    def row_count(self) -> int:
        return self._row_count

    @property
    def row(self) -> dict[str, Any] | None:
        return self._rows[0] if len(self._rows) == 1 else None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows)

    def __len__(self) -> int:
        return self._row_count

    def __repr__(self) -> str:
        return f"<QueryResult row_count={self._row_count}>"
