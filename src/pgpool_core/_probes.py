"""Health probes for orchestrators (Kubernetes' liveness, readiness and startup), cheap and
truthful: none takes a connection from the pool or sends a statement.

- **liveness**: the process and its event loop answer (loop lag below a bound); never
  the database, so that a database outage cannot turn into a restart storm;
- **readiness**: the pool serves (open, or reconnecting for less than a bound), is not
  shedding requests (``max_waiting``), the writer is writable when asked, and it is not
  draining for a shutdown; each member (writer, readers) in the body;
- **startup**: the pool has opened ``min_size`` connections.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._state import PoolState

if TYPE_CHECKING:
    from ._manager import PoolManager

__all__ = ["Heartbeat", "Probe", "liveness", "readiness", "startup"]

#: Loop lag above which the process counts as not alive (seconds).
MAX_LOOP_LAG = 1.0
#: How long a pool may reconnect and still count as ready (seconds): a blip is no reason
#: to take the pod out of its service, an outage is.
RECOVERY_GRACE = 5.0


@dataclass(frozen=True)
class Probe:
    """A probe's answer: ``ok`` (HTTP 200, else 503) and a JSON-able body saying why.

    .. versionadded:: 0.3
    """

    ok: bool
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int:
        """The HTTP status a probe handler answers: 200 when ``ok``, else 503."""
        return 200 if self.ok else 503


async def loop_lag() -> float:
    """Seconds a callback scheduled now waits before it runs: the loop's backlog.

    .. versionadded:: 0.3
    """
    loop = asyncio.get_running_loop()
    ran: asyncio.Future[float] = loop.create_future()
    started = time.perf_counter()
    loop.call_soon(ran.set_result, 0.0)
    await ran
    return time.perf_counter() - started


class Heartbeat:
    """Measures the event loop's lag continuously: a task that sleeps ``interval`` and
    records how late it woke, keeping the last ``window`` seconds. A loop that stalled
    between two probes shows here, where one measurement at probe time sees nothing.

    .. versionadded:: 0.3
    """

    def __init__(self, interval: float = 0.25, window: float = 5.0) -> None:
        self.interval = interval
        self._late: collections.deque[float] = collections.deque(
            maxlen=max(int(window / interval), 1)
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start beating on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._beat(), name="pgpool-heartbeat"
            )

    def stop(self) -> None:
        """Stop beating (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def worst(self) -> float:
        """The largest lag seen in the window (seconds)."""
        return max(self._late, default=0.0)

    async def _beat(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self._late.append(max(time.perf_counter() - started - self.interval, 0.0))


async def liveness(max_lag: float = MAX_LOOP_LAG, heartbeat: Heartbeat | None = None) -> Probe:
    """The loop's lag now, and with a running ``heartbeat`` the worst of its window.

    .. versionadded:: 0.3
    """
    lag = await loop_lag()
    if heartbeat is not None:
        lag = max(lag, heartbeat.worst)
    ok = lag < max_lag
    return Probe(ok, {"status": "ok" if ok else "loop stalled", "loop_lag": lag})


def _member(pool: PoolManager, grace: float) -> dict[str, Any]:
    """One pool's readiness: whether it can serve now, and why not. Open connections
    serve even while more cannot be opened (say, the server is at max_connections)."""
    stats = pool.stats()
    state = pool.state
    connected = stats["pool_size"] > 0
    why = None
    if state is PoolState.RECONNECTING and not connected:
        down = pool.down_for()
        if down is None or down > grace:
            why = f"reconnecting for {down or 0:.1f} s ({pool.last_error or 'no connection yet'})"
    elif state is PoolState.OPEN and not connected and not pool.is_available and pool.last_error:
        why = f"no connection: {pool.last_error}"
    elif state is not PoolState.OPEN and state is not PoolState.RECONNECTING:
        why = f"pool {state.value}"
    max_waiting = pool.settings.max_waiting
    if why is None and max_waiting and stats["requests_waiting"] >= max_waiting:
        why = f"saturated: {stats['requests_waiting']} requests waiting (max_waiting {max_waiting})"
    return {
        "name": pool.name,
        "role": pool.role,
        "state": state.value,
        "ready": why is None,
        "why": why,
        "pool_size": stats["pool_size"],
        "in_use": pool.in_use,
        "waiting": stats["requests_waiting"],
    }


def readiness(
    pool: PoolManager | None,
    *,
    draining: bool = False,
    require_writable: bool = False,
    grace: float = RECOVERY_GRACE,
) -> Probe:
    """Whether to send this process traffic. Sync, no I/O: the pool's own state, and the
    writer's read-only flag as its connections last reported it (``in_hot_standby``).

    .. versionadded:: 0.3
    """
    if pool is None:
        return Probe(False, {"status": "no pool", "members": []})
    writer = _member(pool, grace)
    if require_writable:
        # As the connections last reported it; None: no connection open, or a server that
        # reports neither (PostgreSQL before 14): unknown, which is not read-only.
        read_only = pool.server_read_only()
        writer["writable"] = None if read_only is None else not read_only
        if read_only and writer["ready"]:
            writer["ready"], writer["why"] = False, "the server is read-only"
    members = [writer, *(_member(reader, grace) for reader in pool.readers)]
    ok = writer["ready"] and not draining
    status = "draining" if draining else ("ok" if ok else "unavailable")
    return Probe(ok, {"status": status, "members": members})


def startup(pool: PoolManager | None) -> Probe:
    """Whether the pool has opened ``min_size`` connections (warm).

    .. versionadded:: 0.3
    """
    if pool is None:
        return Probe(False, {"status": "no pool"})
    size, wanted = pool.stats()["pool_size"], pool.settings.min_size
    ok = pool.state is PoolState.OPEN and size >= wanted
    return Probe(ok, {"status": "ok" if ok else "warming", "pool_size": size, "min_size": wanted})
