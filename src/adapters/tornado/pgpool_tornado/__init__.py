"""Tornado adapter for pgpool (``pgpool[tornado]``)."""

from __future__ import annotations

__all__: list[str] = []
