import json

import pytest
from replicas_app import make_app
from tornado import httpclient, httpserver, testing


@pytest.mark.asyncio
async def test_a_request_reads_its_own_writes(postgres_replication) -> None:
    rep = postgres_replication
    rep.primary.query("CREATE TABLE notes (body text)")
    rep.wait_caught_up()
    rep.pause_replay()  # from now on the standby sees none of the new notes
    app = make_app(rep.primary.url, rep.standby.url)
    await app.postgres_start(wait=True)
    await app.postgres_pool.sample_readers()
    sock, port = testing.bind_unused_port()
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    client = httpclient.AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}"
    try:
        posted = await client.fetch(f"{url}/notes", method="POST", body="hello")
        assert json.loads(posted.body) == {"notes": 1, "on_standby": False}
        read = await client.fetch(f"{url}/notes")  # another request: the standby answers
        assert json.loads(read.body) == {"notes": 0, "on_standby": True}
        status = json.loads((await client.fetch(f"{url}/status")).body)
        [reader] = status["postgres"]["readers"]
        assert (reader["role"], reader["state"]) == ("reader", "open")
    finally:
        rep.resume_replay()
        server.stop()
        await app.postgres_stop()
