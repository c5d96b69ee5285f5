"""Read-your-writes: a scope whose reads go to readers until it first writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import PoolManager
    from ._result import QueryResult
    from ._session import ConnectorBlock

__all__ = ["Session"]


class Session:
    """``pool.session()``: a read-your-writes scope (a request, a job).

    Calls marked ``read_only=True`` go where the pool sends reads (a reader) until the
    session makes any other call; from then on they run on the writer, so that they see
    what the session wrote (replicas apply it later). Anything not marked read-only counts
    as a write: the pool never parses SQL to guess.

    .. versionadded:: 0.3
    """

    __slots__ = ("_pool", "wrote")

    def __init__(self, pool: PoolManager) -> None:
        self._pool = pool
        #: Whether the session has sent anything not marked read-only.
        self.wrote = False

    def __repr__(self) -> str:
        return f"<Session wrote={self.wrote}>"

    def _on_writer(self, read_only: bool) -> bool:
        """Whether this call goes to the writer even when read-only (noting a write)."""
        if not read_only:
            self.wrote = True
        return self.wrote

    async def execute(
        self, sql: str, params: Any = None, *, read_only: bool = False, **options: Any
    ) -> Any:
        """:meth:`PoolManager.execute`, routed by the session."""
        return await self._pool.execute(
            sql, params, read_only=read_only, writer=self._on_writer(read_only), **options
        )

    async def callproc(
        self, name: str, params: Any = None, *, read_only: bool = False, **options: Any
    ) -> QueryResult:
        """:meth:`PoolManager.callproc`, routed by the session."""
        return await self._pool.callproc(
            name, params, read_only=read_only, writer=self._on_writer(read_only), **options
        )

    def transaction(
        self, timeout: float | None = None, *, read_only: bool = False, **options: Any
    ) -> ConnectorBlock:
        """:meth:`PoolManager.transaction`, routed by the session."""
        return self._pool.transaction(
            timeout, read_only=read_only, writer=self._on_writer(read_only), **options
        )

    def connector(self, *args: Any, read_only: bool = False, **options: Any) -> ConnectorBlock:
        """:meth:`PoolManager.connector`, routed by the session."""
        return self._pool.connector(
            *args, read_only=read_only, writer=self._on_writer(read_only), **options
        )
