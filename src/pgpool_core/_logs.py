"""The pool's log records: one logger hierarchy (``pgpool.pool``, ``pgpool.statements``,
``pgpool.listener``, ``pgpool.settings``, ``pgpool.tornado``...; configure ``pgpool`` for
all) and the same structured fields on every event record, for JSON log formatters:
``pool`` (its name), ``role`` (writer/reader, or empty), ``event`` (a stable
snake_case name) and ``sqlstate`` (or None). Messages carry no secret: names, redacted
errors and SQLSTATEs only. Nothing is logged at INFO or above on the hot path.
"""

from __future__ import annotations

import logging

__all__ = ["fields", "logger"]


def logger(part: str) -> logging.Logger:
    """The logger ``pgpool.<part>``."""
    return logging.getLogger(f"pgpool.{part}")


def fields(
    pool: str, event: str, *, role: str = "", sqlstate: str | None = None
) -> dict[str, object]:
    """The ``extra=`` of an event record."""
    return {"pool": pool, "role": role, "event": event, "sqlstate": sqlstate}
