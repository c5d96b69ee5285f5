"""Read routing: which reader serves a read (up, caught up, still a standby; the least busy,
ties at random), and the sampling that keeps that knowledge fresh.

No SQL is parsed: a read is what the caller marks ``read_only=True``. Replay lag and the
server's role are sampled every interval on each reader (one small query), never per read.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ._redact import first_line
from ._result import QueryResult
from ._state import PoolState
from .errors import PoolTimeoutError

__all__ = ["LAG_SQL", "WRITER_LSN_SQL", "Reader", "Readers", "Replica", "WriterHistory"]

#: On a reader: whether it is a standby, the WAL position it has replayed, and how far its
#: replay is behind what it received: 0 when it replayed all it received, else the age of
#: the last transaction it replayed (infinite before it replayed any); unknown (NULL) when
#: it has received nothing since it started (its primary down). This measure over-states
#: lag after the primary was idle, and cannot see a standby cut off from a live primary:
#: the writer's own position (:data:`WRITER_LSN_SQL`) covers that.
LAG_SQL = (
    "SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replayed, CASE"
    " WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL THEN NULL"
    " WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0"
    " WHEN pg_last_xact_replay_timestamp() IS NULL THEN 'Infinity'::float8"
    " ELSE GREATEST(EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0)"
    " END AS lag"
)

#: On the writer: its current WAL position.
WRITER_LSN_SQL = "SELECT pg_current_wal_lsn()::text AS lsn"

#: Writer positions kept at most (one per sample that saw the writer move).
HISTORY = 10_000


def parse_lsn(text: object) -> int | None:
    """``'16/B374D848'`` as a number, None for anything else."""
    if not isinstance(text, str) or "/" not in text:
        return None
    high, _, low = text.partition("/")
    try:
        return (int(high, 16) << 32) + int(low, 16)
    except ValueError:
        return None


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
    async def probe(self, sql: str, timeout: float) -> Any:
        """Run one statement of the pool's own (the lag sample)."""


R = TypeVar("R", bound=Reader)


@dataclass(slots=True)
class Replica(Generic[R]):
    """A reader and what its latest sample found."""

    pool: R
    #: Its URL asks for a standby (``target_session_attrs=standby``): a primary is unfit.
    wants_standby: bool = False
    standby: bool | None = None
    lag: float | None = None
    #: The WAL position it had replayed at the latest sample.
    replayed: int | None = None
    sampled_at: float = float("-inf")
    problem: str | None = "not checked yet"


class WriterHistory:
    """When the writer was seen at which WAL position: a reader that has replayed up to
    ``p`` is at least ``now - t`` behind, ``t`` the first time the writer was seen past
    ``p``. Kept through a writer outage (a standby that replayed all the writer was last
    seen to have is not behind); restarted when the position goes back (another server)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: collections.deque[tuple[float, int]] = collections.deque(maxlen=HISTORY)

    def saw(self, at: float, lsn: int) -> None:
        seen = self._seen
        if seen and lsn < seen[-1][1]:
            seen.clear()
        if not seen or lsn > seen[-1][1]:
            seen.append((at, lsn))

    def behind(self, replayed: int, now: float) -> float | None:
        """Seconds a reader at ``replayed`` is at least behind; None with no history."""
        if not self._seen:
            return None
        for at, lsn in self._seen:
            if lsn > replayed:
                return max(now - at, 0.0)
        return 0.0

    def forget_up_to(self, lsn: int) -> None:
        """Positions every reader has passed are no longer needed (the latest stays)."""
        seen = self._seen
        while len(seen) > 1 and seen[0][1] <= lsn:
            seen.popleft()


class Readers(Generic[R]):
    """The readers of a pool, for :meth:`pick` (a read's pool) and :meth:`excluded` (why a
    reader gets no reads), and their sampling.

    ``writer_lsn()`` reads the writer's WAL position (None when it cannot). Between samples
    a reader's lag is known only to be at most its sampled lag plus the time since: that
    bound is what ``max_lag`` is held against, so a reader too busy to be sampled is not
    trusted for longer than its margin."""

    __slots__ = (
        "_clock",
        "_history",
        "_rand",
        "_writer_lsn",
        "fallback",
        "max_lag",
        "replicas",
    )

    def __init__(
        self,
        replicas: Sequence[Replica[R]],
        *,
        max_lag: float,
        fallback: bool,
        clock: Callable[[], float],
        writer_lsn: Callable[[float], Awaitable[int | None]] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.replicas = tuple(replicas)
        self.max_lag = max_lag
        self.fallback = fallback
        self._clock = clock
        self._writer_lsn = writer_lsn
        self._history = WriterHistory()
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
        if self.max_lag <= 0 or lag is None:
            return None
        at_most = lag + max(self._clock() - replica.sampled_at, 0.0)
        if at_most > self.max_lag:
            return f"replay lag {at_most:.3g} s > max_replica_lag {self.max_lag:g} s"
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
        """Sample the writer's position, then every reader, concurrently."""
        if self._writer_lsn is not None:
            at = self._clock()
            lsn = await self._writer_lsn(timeout)
            if lsn is not None:
                self._history.saw(at, lsn)
        await asyncio.gather(*(self._sample_one(replica, timeout) for replica in self.replicas))
        known = [r.replayed for r in self.replicas if r.replayed is not None]
        if known and len(known) == len(self.replicas):
            self._history.forget_up_to(min(known))

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
            result: QueryResult = await pool.probe(LAG_SQL, timeout)
        except PoolTimeoutError:
            return  # every connection busy serving reads: see stale_after
        except Exception as exc:  # the reader's own error, already redacted by its pool
            replica.problem = f"check failed: {first_line(exc)}"
            return
        now = self._clock()
        row = result.row or {}
        replica.standby = bool(row.get("standby"))
        replica.replayed = parse_lsn(row.get("replayed"))
        own = row.get("lag")
        measures = [float(own)] if own is not None else []
        if replica.standby and replica.replayed is not None:
            behind = self._history.behind(replica.replayed, now)
            if behind is not None:
                measures.append(behind)
        replica.lag = max(measures) if measures else None
        replica.sampled_at = now
        replica.problem = None
        if replica.wants_standby and not replica.standby:
            pool.recycle()  # its connections reach a primary: find the standby again
