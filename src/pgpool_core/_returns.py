"""Bringing a returned connection back to idle: cancel what still runs on the server, roll
back what is still open. Each step reports its outcome; the pool alone decides what to do
with the connection afterwards (reuse or close)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ._bag import Slot
from ._connector import DriverConnection, TxStatus

__all__ = ["Canceller", "consume", "needs_restore", "restore", "restore_slot"]

_OPEN = (TxStatus.INTRANS, TxStatus.INERROR)


class Canceller:
    """Server-side cancel requests, bounded by ``bound`` seconds each.

    A cancel request blocks (a connect plus a round trip) with no timeout of its own, so it
    runs on a daemon thread (``AiopgConnection`` sends it through ctypes, which releases
    the GIL for the blocking call): one stuck behind a black-holed network neither blocks
    the loop nor keeps the interpreter from exiting. At most ``max_threads`` run at once;
    past that :meth:`cancel` gives up at once and the caller closes the connection.
    """

    def resize(self, max_threads: int) -> None:
        """A new limit on cancel requests at once (the pool was resized)."""
        self._max_threads = max_threads

    def __init__(self, bound: float, max_threads: int, name: str) -> None:
        self.bound = bound
        self._max_threads = max_threads
        self._name = name
        self._threads = 0

    async def cancel(
        self, conn: DriverConnection, ended: asyncio.Future[Any]
    ) -> tuple[bool, asyncio.Future[None] | None]:
        """Ask the server to cancel ``conn``'s running statement; wait at most :attr:`bound`
        for it to end. Returns ``(over, in_flight)``: whether the statement has ended
        (``ended`` is done, or the connection is idle), and the cancel request if it is
        still on its way: until it is done the connection must not serve anyone, as it
        could land on their statement (see :func:`restore`)."""
        if ended.done() or not conn.is_busy():
            return True, None
        if self._threads >= self._max_threads:
            return False, None
        sent = self._send(conn)
        sent.add_done_callback(consume)
        with contextlib.suppress(Exception):
            await asyncio.wait((ended,), timeout=self.bound)
        return ended.done() or not conn.is_busy(), None if sent.done() else sent

    async def landed(self, sent: asyncio.Future[None]) -> bool:
        """Wait (at most :attr:`bound`) for a cancel request still on its way."""
        with contextlib.suppress(Exception):
            await asyncio.wait((sent,), timeout=self.bound)
        return sent.done()

    def _send(self, conn: DriverConnection) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        try:
            send = conn.prepare_cancel()
        except Exception as exc:  # closed under us: nothing left to cancel
            future.set_exception(exc)
            return future
        self._threads += 1

        def done(error: BaseException | None) -> None:
            self._threads -= 1
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                send()
            except BaseException as exc:  # handed to the loop
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(done, error)

        threading.Thread(target=run, name=f"pgpool-cancel-{self._name}", daemon=True).start()
        return future


def needs_restore(slot: Slot, status: TxStatus, *, roll_back: bool) -> bool:
    """Whether a returned connection must be restored (in a task) before its release: a
    statement still runs, a cancel request is on its way, or a transaction is open and is
    to be rolled back (``roll_back``; else such a connection is closed). ``status``: the
    connection's transaction status, read once by the caller."""
    return (
        slot.conn.is_busy() or slot.cancel_in_flight is not None or (roll_back and status in _OPEN)
    )


async def restore_slot(
    slot: Slot, *, canceller: Canceller, rollback: Callable[[Slot], Awaitable[object]] | None
) -> bool:
    """:func:`restore` for a returned slot, taking the statement end and the cancel request
    it still carries."""
    ended, slot.outcome = slot.outcome, None
    in_flight, slot.cancel_in_flight = slot.cancel_in_flight, None
    return await restore(
        slot.conn,
        ended,
        in_flight,
        canceller=canceller,
        rollback=None if rollback is None else lambda: rollback(slot),
    )


async def restore(
    conn: DriverConnection,
    ended: asyncio.Future[Any] | None,
    in_flight: asyncio.Future[None] | None,
    *,
    canceller: Canceller,
    rollback: Callable[[], Awaitable[object]] | None,
) -> bool:
    """Bring ``conn`` back to idle: cancel its running statement (whose end is ``ended``,
    if already caught), wait for a cancel request still ``in_flight``, roll back an open
    transaction (``rollback`` None: don't). True when it ended idle, healthy, and no cancel
    request can still land on it; a step that fails or cannot be confirmed gives False."""
    if conn.is_busy():
        if ended is None or ended.done():  # none caught, or a stale one: catch it now
            ended = conn.wait_until_idle()
        ended.add_done_callback(consume)  # its error was the caller's, not ours
        over, sent = await canceller.cancel(conn, ended)
        if not over:
            return False
        in_flight = in_flight or sent
    if in_flight is not None and not await canceller.landed(in_flight):
        return False
    if conn.transaction_status() in _OPEN:
        if rollback is None:
            return False
        try:
            await rollback()
        except Exception:
            return False
    return not conn.closed and conn.transaction_status() is TxStatus.IDLE


def consume(future: asyncio.Future[Any]) -> None:
    """A done-callback that retrieves a future's error nobody else will await (asyncio
    would log it as never retrieved)."""
    if not future.cancelled():
        future.exception()
