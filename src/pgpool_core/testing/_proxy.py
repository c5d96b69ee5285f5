"""A TCP proxy for fault tests: pass traffic, black-hole it, refuse connections, or reset them.

It runs its own event loop on a daemon thread, so it keeps working (or keeps swallowing
bytes) whatever the test's loop is doing, and is driven by plain method calls from sync
or async tests::

    with TcpProxy("127.0.0.1", server_port) as proxy:
        url = proxy.rewrite(server_url)
        proxy.blackhole()   # nothing gets through, nothing is answered, no RST
        proxy.heal()        # traffic flows again; black-holed streams are cut
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
import urllib.parse
import weakref
from collections.abc import Coroutine
from typing import Any

__all__ = ["ProxyMode", "TcpProxy"]

_CHUNK = 65536
_CONTROL_TIMEOUT = 10.0


class ProxyMode(enum.Enum):
    """What a :class:`TcpProxy` does with traffic.

    .. versionadded:: 0.1
    """

    PASS = "pass"
    #: Accept connections but forward nothing either way and never answer: a network
    #: partition as the client sees it (timeouts, never errors).
    BLACKHOLE = "blackhole"
    #: Stop listening: new connects get ECONNREFUSED; open streams are left alone.
    REFUSE = "refuse"
    #: Reset every open stream and every new one (TCP RST).
    RESET = "reset"


class _Link:
    """One client connection and its upstream."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.holed = False
        #: Set once the link is cut: an upstream connected afterwards is cut at once.
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self, *, rst: bool) -> None:
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` under a switchable mode.

    .. versionadded:: 0.1
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.mode = ProxyMode.PASS
        self.accepted = 0
        self._links: set[_Link] = set()
        # Every stream the proxy opened (client or upstream) and every task it runs, so
        # that close() cuts and ends them all, links dropped earlier included.
        self._writers: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._started = False

    def __repr__(self) -> str:
        target = f"{self.target[0]}:{self.target[1]}"
        return f"<TcpProxy {self.host}:{self.port} -> {target} {self.mode.value}>"

    # -- control (any thread) --------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Start listening (its own thread and event loop); returns the proxy. Idempotent."""
        if not self._started:
            self._thread.start()
            self._started = True
            self._call(self._listen())
        return self

    def close(self) -> None:
        """Stop listening, cut every stream, stop the thread. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def rewrite(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urllib.parse.urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{self.host}:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def blackhole(self) -> None:
        """Swallow all traffic of open and new streams; answer nothing, reset nothing."""
        self._call(self._set(ProxyMode.BLACKHOLE))

    def refuse(self) -> None:
        """Close the listening socket: new connects are refused."""
        self._call(self._set(ProxyMode.REFUSE))

    def reset(self) -> None:
        """Reset (RST) every open stream, and every new one until the mode changes."""
        self._call(self._set(ProxyMode.RESET))

    def heal(self) -> None:
        """Back to passing traffic. Streams black-holed meanwhile lost data: they are cut."""
        self._call(self._set(ProxyMode.PASS))

    @property
    def open_links(self) -> int:
        """How many client connections the proxy holds open."""
        return len(self._links)

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT)

    # -- the proxy's own loop ----------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Stop accepting, then let the connections already accepted get their transports,
        # and only then close: a transport made for a server closed meanwhile fails half
        # built (asyncio's loop asserts the server is open) and its socket is never closed.
        loop = asyncio.get_running_loop()
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
        # Not wait_closed(): since 3.12 it also waits for the open streams to end.
        server.close()

    async def _shutdown(self) -> None:
        self._closing = True  # connections still arriving are cut by _accept
        await self._stop_listening()
        for link in list(self._links):
            link.abort(rst=False)
        self._links.clear()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()  # a connect upstream in progress closes its socket
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.transport.abort()  # half-ended links: one direction may still be open
        await asyncio.sleep(0)  # the transports close their sockets one loop turn later

    async def _set(self, mode: ProxyMode) -> None:
        previous, self.mode = self.mode, mode
        if mode is ProxyMode.BLACKHOLE:
            for link in self._links:
                link.holed = True
        elif mode is ProxyMode.RESET:
            for link in list(self._links):
                link.abort(rst=True)
            self._links.clear()
        elif mode is ProxyMode.REFUSE:
            await self._stop_listening()
        if mode is not ProxyMode.REFUSE and self._server is None:
            await self._listen()
        if previous is ProxyMode.BLACKHOLE and mode is not ProxyMode.BLACKHOLE:
            for link in [link for link in self._links if link.holed]:
                link.abort(rst=True)
                self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]
        self._tasks.add(task)
        try:
            await self._serve(reader, writer, task)
        finally:
            self._tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        self.accepted += 1
        self._writers.add(writer)
        link = _Link(writer)
        if self._closing:
            link.abort(rst=False)
            return
        if self.mode is ProxyMode.RESET:
            link.abort(rst=True)
            return
        self._links.add(link)
        if self.mode is ProxyMode.BLACKHOLE:
            link.holed = True
            link.tasks.append(task)
            await self._swallow(reader)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            link.abort(rst=True)
            self._links.discard(link)
            return
        self._writers.add(up_writer)
        link.upstream = up_writer
        if link.closed:  # reset (or cut) while connecting upstream
            link.abort(rst=True)
            return
        link.tasks = [
            self._spawn(self._pipe(reader, up_writer, link)),
            self._spawn(self._pipe(up_reader, writer, link)),
        ]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(_CHUNK):
                pass

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await source.read(_CHUNK):
                if link.holed:
                    continue  # swallowed: neither forwarded nor answered
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.holed:
                with contextlib.suppress(OSError, RuntimeError):
                    sink.close()
                self._links.discard(link)
