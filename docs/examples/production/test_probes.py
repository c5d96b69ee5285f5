import asyncio
import json

import pytest
from app import make_app
from tornado import httpclient, httpserver, testing


async def get(port: int, path: str) -> tuple[int, dict]:
    client = httpclient.AsyncHTTPClient()
    response = await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)
    return response.code, json.loads(response.body)


@pytest.mark.asyncio
async def test_probes_and_draining(postgres_db_url: str) -> None:
    app = make_app(postgres_db_url)
    sock, port = testing.bind_unused_port()
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    assert await get(port, "/readyz") == (503, {"status": "no pool", "members": []})
    await app.postgres_start()

    for _ in range(100):  # startup: 503 "warming" until min_size connections are open
        code, startup = await get(port, "/startupz")
        if code == 200:
            break
        assert startup["status"] == "warming"
        await asyncio.sleep(0.02)
    assert startup == {"status": "ok", "pool_size": 2, "min_size": 2}

    code, live = await get(port, "/livez")  # never asks the database
    assert (code, live["status"]) == (200, "ok")
    assert live["loop_lag"] < 1.0  # seconds: the event loop answers in time

    code, ready = await get(port, "/readyz")
    assert (code, ready["status"]) == (200, "ok")
    [writer] = ready["members"]
    assert (writer["role"], writer["ready"], writer["why"]) == ("writer", True, None)

    # Shutting down: readiness answers 503 "draining" at once, requests are still served.
    stopping = asyncio.create_task(app.postgres_stop())
    await asyncio.sleep(0)  # postgres_stop() starts: draining, then the grace period
    code, ready = await get(port, "/readyz")
    assert (code, ready["status"]) == (503, "draining")
    assert await get(port, "/report?seconds=0") == (200, {"n": 1})
    await stopping  # after postgres_shutdown_grace (1 s), the pool stops
    assert app.postgres_pool is None
    server.stop()
