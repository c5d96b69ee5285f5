"""A writer's readers: one pool per ``read_url``, built, started, sampled and stopped with
the writer, and reported in its status. Routing decisions are :mod:`._routing`'s."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from ._config import PoolSettings
from ._connector import Connector
from ._metrics import PoolStatus
from ._redact import pool_name, url_option
from ._routing import Reader, Readers, Replica
from .errors import PoolUnavailableError

__all__ = ["ReaderSet"]


class ReaderPool(Reader, Protocol):
    """A reader's pool, as the set drives it."""

    async def start(self) -> None: ...
    async def stop(self, timeout: float = ...) -> None: ...
    async def status(self) -> PoolStatus: ...


P = TypeVar("P", bound=ReaderPool)

#: ``make(settings, connector, name)``: a reader's pool.
MakePool = Callable[[PoolSettings, "Connector | None", str], P]


#: Seconds between samples of the readers when no ``max_replica_lag`` asks for sooner: a
#: promoted reader stops getting reads, a recovered one gets them again, within this.
SAMPLE_INTERVAL = 2.0


class ReaderSet(Generic[P]):
    """The readers of the writer named ``writer()``, one pool each, and their routing."""

    __slots__ = ("_bound", "_interval", "_sampler", "_sleep", "pools", "routing", "writer")

    def __init__(
        self,
        routing: Readers[P],
        *,
        writer: Callable[[], str],
        interval: float,
        bound: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.routing = routing
        self.pools: tuple[P, ...] = tuple(replica.pool for replica in routing.replicas)
        self.writer = writer
        self._interval = interval
        self._bound = bound
        self._sleep = sleep
        self._sampler: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        settings: PoolSettings,
        connectors: Sequence[Connector],
        make: MakePool[P],
        *,
        writer: Callable[[], str],
        named: bool,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        writer_lsn: Callable[[float], Awaitable[int | None]],
    ) -> ReaderSet[P]:
        """One pool per URL of ``read_url`` (or per connector), sized as the writer; named
        after its server, or after the writer when the caller ``named`` it. Sampled every
        :data:`SAMPLE_INTERVAL`, or half of ``max_replica_lag`` when that is sooner, each
        time after the writer's WAL position (``writer_lsn(bound)``)."""
        urls = settings.read_url or ("",) * len(connectors)
        names = {writer()}
        replicas: list[Replica[P]] = []
        for index, url in enumerate(urls):
            name = pool_name(url) if url and not named else ""
            if not name or name in names:
                name = f"{writer()} reader {index + 1}"
            names.add(name)
            pool = make(
                dataclasses.replace(settings, url=url, read_url=()),
                connectors[index] if connectors else None,
                name,
            )
            wants = bool(url) and url_option(url, "target_session_attrs") == "standby"
            replicas.append(Replica(pool, wants_standby=wants))
        interval = SAMPLE_INTERVAL
        if settings.max_replica_lag > 0:
            interval = max(min(interval, settings.max_replica_lag / 2), 0.05)
        bound = min(settings.connect_timeout, max(2 * interval, 1.0))
        routing = Readers(
            replicas,
            max_lag=settings.max_replica_lag,
            fallback=settings.read_fallback,
            clock=clock,
            writer_lsn=writer_lsn,
        )
        return cls(routing, writer=writer, interval=interval, bound=bound, sleep=sleep)

    async def start(self) -> None:
        """Start every reader (lazily: a reader that is down never fails the writer's
        start) and the background sampling, whose first sample runs at once."""
        for pool in self.pools:
            await pool.start()
        self._sampler = asyncio.get_running_loop().create_task(
            self.routing.sample_forever(self._interval, self._bound, self._sleep),
            name=f"pgpool-sample-{self.writer()}",
        )

    async def sample(self) -> None:
        """One sample of every reader now."""
        await self.routing.sample(self._bound)

    async def stop(self, timeout: float) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await asyncio.gather(*(pool.stop(timeout) for pool in self.pools))

    def choose(self) -> P | None:
        """The reader for a read; None: the writer takes it (``read_fallback``).

        :raises PoolUnavailableError: no reader fit, and ``read_fallback`` off.
        """
        routing = self.routing
        reader = routing.pick()
        if reader is None and not routing.fallback:
            raise PoolUnavailableError(
                f"pool {self.writer()}: no reader fit for reads ({routing.why_none()});"
                " read_fallback is off"
            )
        return reader

    async def statuses(self) -> tuple[PoolStatus, ...]:
        """Each reader's status, with its lag and why it gets no reads."""
        routing = self.routing
        statuses = await asyncio.gather(*(pool.status() for pool in self.pools))
        return tuple(
            dataclasses.replace(status, lag=replica.lag, excluded=routing.excluded(replica))
            for status, replica in zip(statuses, routing.replicas, strict=True)
        )
