"""sprockets.http adapter for pgpool (``pgpool[sprockets]``)."""

from __future__ import annotations

__all__: list[str] = []
