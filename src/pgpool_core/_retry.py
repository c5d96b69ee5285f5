"""The reconnect backoff policy: immutable, with a pure ``next_delay`` and injectable jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy"]

# 2.0 ** 64 seconds is already far past any cap; larger exponents would overflow a float.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class RetryPolicy:
    """Capped, jittered exponential backoff between reconnect attempts.

    Attempt ``n`` (from 0) waits ``min(initial * multiplier**n, maximum)`` shortened by up
    to ``jitter`` (a fraction), so the cap is never exceeded: with the defaults the first
    success after the server is back comes within ``maximum`` plus one connect.

    .. versionadded:: 0.1
    """

    initial: float = 0.05
    multiplier: float = 2.0
    maximum: float = 0.5
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"RetryPolicy: need 0 < initial <= maximum, got {self.initial}, {self.maximum}"
            )
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy: multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"RetryPolicy: jitter must be in [0, 1), got {self.jitter}")

    def next_delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt ``attempt + 1``; ``rand()`` returns [0, 1)."""
        base = min(self.initial * self.multiplier ** min(attempt, _MAX_EXPONENT), self.maximum)
        return base * (1 - self.jitter * rand())
