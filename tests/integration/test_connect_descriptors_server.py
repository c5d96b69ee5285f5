"""A connect that fails leaves the loop's registrations of other connections alone.

libpq closes the socket of a failed connect inside aiopg's I/O callback; aiopg closes the
connection later, when its connect task resumes, removing the reader of the descriptor
*number* it remembered. Between the two, another connection may have been given that
number and registered it: its connect then waits for a wake-up that never comes, until
its whole connect timeout (seen under a flapping network: one pool stalled 10 s in
about one run of eight). The pool forgets a number as soon as libpq lets go of it.
"""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any

import aiopg.connection
import psycopg2
import pytest

from pgpool_core._connector import AiopgConnector


async def test_a_failed_connect_leaves_a_reused_descriptor_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    # A "server" that accepts and resets at once: libpq's connect fails mid-handshake.
    server = await asyncio.start_server(
        lambda _reader, writer: writer.transport.abort(), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    grabbed: list[tuple[socket.socket, socket.socket]] = []
    woken = asyncio.Event()
    real_select = select.select

    def select_after_a_race(rlist: list[int], *args: Any) -> Any:
        # aiopg checks the descriptor with select() right after libpq closed it. Another
        # thread (a cancel request, a DNS lookup) may have been given the freed number in
        # between; a connection of this loop then registers that socket, before the
        # failed connect's task resumes.
        if not grabbed:
            mine, peer = socket.socketpair()
            if mine.fileno() != rlist[0]:
                mine.close()
                peer.close()
            else:
                grabbed.append((mine, peer))
                loop.call_soon(loop.add_reader, mine.fileno(), woken.set)
        return real_select(rlist, *args)

    monkeypatch.setattr(aiopg.connection.select, "select", select_after_a_race)
    connector = AiopgConnector(f"postgresql://nobody@127.0.0.1:{port}/db?sslmode=disable")
    try:
        with pytest.raises(psycopg2.OperationalError):
            await connector.connect(5.0)
        if not grabbed:
            pytest.skip("the kernel handed out another descriptor number")
        mine, peer = grabbed[0]
        # The other connection is still woken when its socket has something to read.
        peer.send(b"x")
        await asyncio.wait_for(woken.wait(), 2.0)
        loop.remove_reader(mine.fileno())
        mine.close()
        peer.close()
    finally:
        server.close()
        await server.wait_closed()
