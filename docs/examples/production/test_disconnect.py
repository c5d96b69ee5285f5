import asyncio

import pytest
from app import make_app
from tornado import httpserver, testing

from pgpool_core.testing import PostgresServer


@pytest.mark.asyncio
async def test_work_ends_with_its_client(
    postgres_db_url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    app = make_app(postgres_db_url)
    await app.postgres_start(wait=True)
    sock, port = testing.bind_unused_port()
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])

    def sleeping() -> list[dict]:
        activity = postgres_server.activity(database)  # pg_stat_activity
        return [a for a in activity if "pg_sleep" in a["query"] and a["state"] == "active"]

    # A client asks for the 5-second report, and hangs up once it runs on the server.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /report HTTP/1.1\r\nHost: localhost\r\n\r\n")
    for _ in range(100):
        if sleeping():
            break
        await asyncio.sleep(0.01)
    assert sleeping()
    writer.close()
    await writer.wait_closed()

    for _ in range(100):
        if not sleeping() and app.postgres_pool.in_use == 0:
            break
        await asyncio.sleep(0.01)
    assert not sleeping()  # cancelled on the server, well before its 5 s
    assert app.postgres_pool.in_use == 0  # and its connection is back in the pool
    assert any(r.getMessage().startswith("499 GET /report") for r in caplog.records)
    server.stop()
    await app.postgres_stop()
