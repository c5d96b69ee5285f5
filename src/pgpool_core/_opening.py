"""Opening connections: one connect attempt stamped into a :class:`Slot`, its failure
described without secrets, and the single-flight reconnect loop with backoff.

The pool decides when to open and what a success or failure changes (its state, its
waiters); these units only open, time, count and describe.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._bag import Slot
from ._config import PoolSettings
from ._connector import Connector, UrlSource
from ._metrics import Health, Recorder
from ._redact import describe_error, passwords_in
from ._retry import RetryPolicy

__all__ = ["Opener", "reconnect"]


class Opener:
    """Opens one connection within ``connect_timeout`` and stamps it: created now, expiring
    after ``max_lifetime`` jittered down (so connections opened together do not all expire
    together). Counts the attempt and records the outcome in :class:`Health`."""

    __slots__ = (
        "_clock",
        "_connector",
        "_health",
        "_jitter",
        "_max_lifetime",
        "_recorder",
        "_secrets",
        "timeout",
    )

    def __init__(
        self,
        connector: Connector,
        settings: PoolSettings,
        *,
        clock: Callable[[], float],
        jitter: Callable[[], float],
        recorder: Recorder,
        health: Health,
        password: UrlSource | None,
    ) -> None:
        self._connector = connector
        self.timeout = settings.connect_timeout
        self._clock = clock
        self._max_lifetime = settings.max_lifetime
        self._jitter = jitter
        self._recorder = recorder
        self._health = health
        self._secrets = passwords_in(settings.url)
        if isinstance(password, str):
            self._secrets.add(password)

    @property
    def last_url(self) -> str | None:
        """The URL the connector last used (a callable URL's latest value), if it says."""
        last: str | None = getattr(self._connector, "last_url", None)
        return last

    async def open(self, generation: int) -> Slot:
        """A new connection as a slot of ``generation``. A failure is counted, recorded
        (described) in health, and raised as the connector raised it."""
        started = self._clock()
        try:
            conn = await self._connector.connect(self.timeout)
        except Exception as exc:
            self._recorder.counters.connections_errors += 1
            self._health.failed(self.describe(exc))
            raise
        now = self._clock()
        self._recorder.connection_created(now - started)
        self._health.succeeded()
        return Slot(
            conn, now, now + self._max_lifetime * self._jitter(), now, generation=generation
        )

    def describe(self, exc: BaseException) -> str:
        """``exc`` as one line for logs and status, with every known password removed."""
        text = describe_error(exc, self._secrets)
        redact = getattr(self._connector, "redact", None)
        return str(redact(text)) if redact is not None else text


async def reconnect(
    retry: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[], float],
    down: Callable[[], bool],
    reserve: Callable[[], bool],
    attempt: Callable[[], Awaitable[bool]],
) -> None:
    """Single-flight reconnect: while ``down()``, wait the policy's next delay, then
    ``attempt()`` a connect when ``reserve()`` grants one, until one succeeds. Never gives
    up by itself, so the pool never latches down; it ends when ``down()`` turns false
    (recovered by another connect, or stopping)."""
    tries = 0
    while down():
        await sleep(retry.next_delay(tries, rand))
        tries += 1
        if not down():
            return
        if not reserve():
            continue  # every slot is a live connection: nothing to open
        if await attempt():
            return
