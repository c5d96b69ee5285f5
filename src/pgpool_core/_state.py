"""Pool lifecycle states and the one function that decides transitions (no I/O)."""

from __future__ import annotations

import enum

__all__ = ["PoolState", "transition"]


class PoolState(enum.Enum):
    """``NEW -> OPEN <-> RECONNECTING -> CLOSING -> CLOSED``; a pool never reopens.

    RECONNECTING: a connect failed; one background task retries with backoff while
    requests fail fast with :class:`~pgpool_core.PoolUnavailableError`.

    .. versionadded:: 0.1
    """

    NEW = "new"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"

    #: OPEN or RECONNECTING: the pool takes requests (and fails them fast while down). A
    #: plain attribute of each member: read on every request, and an enum property costs
    #: several times an attribute read.
    serving: bool


for _member in PoolState:
    _member.serving = _member in (PoolState.OPEN, PoolState.RECONNECTING)


_ALLOWED: dict[PoolState, frozenset[PoolState]] = {
    PoolState.NEW: frozenset({PoolState.OPEN, PoolState.CLOSED}),
    PoolState.OPEN: frozenset({PoolState.RECONNECTING, PoolState.CLOSING}),
    PoolState.RECONNECTING: frozenset({PoolState.OPEN, PoolState.CLOSING}),
    PoolState.CLOSING: frozenset({PoolState.CLOSED}),
    PoolState.CLOSED: frozenset(),
}


def transition(current: PoolState, wanted: PoolState) -> PoolState:
    """Return ``wanted`` if the lifecycle allows it from ``current``; a pool never reopens.

    :raises RuntimeError: for a transition the lifecycle forbids.
    """
    if wanted not in _ALLOWED[current]:
        raise RuntimeError(f"pool cannot go from {current.value} to {wanted.value}")
    return wanted
