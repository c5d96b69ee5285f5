"""Read routing: which reader serves a read (up, caught up, still a standby; the least busy,
ties at random), and the sampling that keeps that knowledge fresh.

No SQL is parsed: a read is what the caller marks ``read_only=True``. Replay lag and the
server's role are sampled every interval on each reader (one small query), never per read.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ._redact import first_line
from ._result import QueryResult
from ._state import PoolState
from .errors import PoolTimeoutError

__all__ = ["LAG_SQL", "Reader", "Readers", "Replica"]

#: Whether the server is a standby, and how far its replay is behind: 0 when it has
#: replayed everything it received (also while its primary is down), else the age of the
#: last transaction it replayed (infinite before it replayed any). The age over-states lag
#: after the primary was idle, never under-states it: PostgreSQL's own measure.
LAG_SQL = (
    "SELECT pg_is_in_recovery() AS standby, CASE"
    " WHEN NOT pg_is_in_recovery() THEN NULL"
    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
    " WHEN pg_last_xact_replay_timestamp() IS NULL THEN 'Infinity'::float8"
    " ELSE GREATEST(EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0)"
    " END AS lag"
)


class Reader(Protocol):
    """What routing needs of a reader's pool."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> PoolState: ...
    @property
    def in_use(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...

    def recycle(self) -> None: ...
    async def execute(self, sql: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Run one statement (the lag sample)."""


R = TypeVar("R", bound=Reader)


@dataclass(slots=True)
class Replica(Generic[R]):
    """A reader and what its latest sample found."""

    pool: R
    #: Its URL asks for a standby (``target_session_attrs=standby``): a primary is unfit.
    wants_standby: bool = False
    standby: bool | None = None
    lag: float | None = None
    problem: str | None = "not checked yet"


class Readers(Generic[R]):
    """The readers of a pool, for :meth:`pick` (a read's pool) and :meth:`excluded` (why a
    reader gets no reads)."""

    __slots__ = ("_rand", "fallback", "max_lag", "replicas")

    def __init__(
        self,
        replicas: Sequence[Replica[R]],
        *,
        max_lag: float,
        fallback: bool,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.replicas = tuple(replicas)
        self.max_lag = max_lag
        self.fallback = fallback
        self._rand = rand

    def excluded(self, replica: Replica[R]) -> str | None:
        """Why ``replica`` gets no reads now, or None when it is fit."""
        pool = replica.pool
        state = pool.state
        if state is not PoolState.OPEN:
            error = pool.last_error
            return str(state.value) + (f" ({error})" if error and state.serving else "")
        if replica.problem is not None:  # not yet, or no longer, known to serve
            return replica.problem
        if replica.wants_standby and replica.standby is False:
            return "not a standby any more (promoted?): reconnecting to find one"
        lag = replica.lag
        if self.max_lag > 0 and lag is not None and lag > self.max_lag:
            return f"replay lag {lag:.3g} s > max_replica_lag {self.max_lag:g} s"
        return None

    def pick(self) -> R | None:
        """The fit reader with the fewest connections in use (ties at random), or None."""
        best: list[R] = []
        fewest = -1
        for replica in self.replicas:
            if self.excluded(replica) is not None:
                continue
            in_use = replica.pool.in_use
            if fewest < 0 or in_use < fewest:
                best, fewest = [replica.pool], in_use
            elif in_use == fewest:
                best.append(replica.pool)
        if not best:
            return None
        return best[0] if len(best) == 1 else best[int(self._rand() * len(best))]

    def why_none(self) -> str:
        """Why no reader is fit, one reason per reader."""
        return "; ".join(
            f"{replica.pool.name}: {self.excluded(replica) or 'fit'}" for replica in self.replicas
        )

    async def sample(self, timeout: float) -> None:
        """Sample every reader once, concurrently."""
        await asyncio.gather(*(self._sample_one(replica, timeout) for replica in self.replicas))

    async def sample_forever(
        self, interval: float, timeout: float, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        while True:
            await self.sample(timeout)
            await sleep(interval)

    async def _sample_one(self, replica: Replica[R], timeout: float) -> None:
        pool = replica.pool
        if pool.state is not PoolState.OPEN:
            replica.problem = "not checked: " + pool.state.value
            return
        try:
            result: QueryResult = await pool.execute(LAG_SQL, timeout=timeout)
        except PoolTimeoutError:
            return  # every connection busy serving reads: the last sample stands
        except Exception as exc:  # the reader's own error, already redacted by its pool
            replica.problem = f"check failed: {first_line(exc)}"
            return
        row = result.row or {}
        replica.standby = bool(row.get("standby"))
        lag = row.get("lag")
        replica.lag = None if lag is None else float(lag)
        replica.problem = None
        if replica.wants_standby and not replica.standby:
            pool.recycle()  # its connections reach a primary: find the standby again
