"""The deadline of one call, and the checks a call's arguments pass before anything is sent."""

from __future__ import annotations

import math
from typing import Any

from .errors import SettingsError

__all__ = ["Deadline", "check_timeout"]


class Deadline:
    """When a call must end (``at``, on the pool's clock) and the seconds it was given
    (``total``, quoted in timeout errors). One per call; statements take the sooner of it and
    their own timeout."""

    __slots__ = ("at", "total")

    def __init__(self, at: float, total: float) -> None:
        self.at = at
        self.total = total

    @classmethod
    def after(cls, now: float, seconds: float) -> Deadline:
        return cls(now + seconds, seconds)

    def remaining(self, now: float) -> float:
        return self.at - now

    def sooner(self, now: float, timeout: float | None) -> Deadline:
        """This deadline, or ``timeout`` seconds from ``now`` if that comes first."""
        if timeout is None or now + timeout >= self.at:
            return self
        return Deadline(now + timeout, timeout)

    def __repr__(self) -> str:
        return f"Deadline(at={self.at!r}, total={self.total!r})"


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """A caller's ``timeout=`` as seconds (None: the pool's defaults).

    :raises SettingsError: naming ``name``, for anything but a finite number > 0 (booleans
        and numeric strings included: ``timeout=True`` is not one second).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            f"{name}: expected seconds as a number, got {type(value).__name__} {value!r}"
        )
    if not (value > 0 and math.isfinite(value)):  # also NaN
        raise SettingsError(f"{name}: must be > 0 seconds and finite, got {value!r}")
    return float(value)
