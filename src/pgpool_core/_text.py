"""What the pool reads of SQL text: only whether it is one statement. It parses no more."""

from __future__ import annotations

__all__ = ["one_statement"]


def one_statement(sql: str) -> bool:
    """Whether ``sql`` is one statement: no ``;`` but trailing ones. Conservative: a ``;``
    inside a literal or a comment counts too (pass such values as parameters)."""
    return ";" not in sql.rstrip().rstrip(";")
