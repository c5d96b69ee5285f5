"""pgpool: a framework-free asyncio connection pool for PostgreSQL, built on aiopg."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
