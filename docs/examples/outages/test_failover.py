"""A multi-host URL: each connect tries the hosts in order."""

import urllib.parse

import pytest

from pgpool_core import PoolManager


@pytest.mark.asyncio
async def test_multi_host_url_tries_the_next_host(postgres_db_url: str, postgres_proxy) -> None:
    postgres_proxy.refuse()  # a host that is down: its connections are refused
    parts = urllib.parse.urlsplit(postgres_db_url)
    down = f"{postgres_proxy.host}:{postgres_proxy.port}"
    up = f"{parts.hostname}:{parts.port}"
    url = f"postgresql://{parts.username}@{down},{up}{parts.path}?target_session_attrs=read-write"

    async with PoolManager(url, connect_timeout=2) as pool:
        row = (await pool.execute("SELECT inet_server_port() AS port")).row
    assert row == {"port": parts.port}  # the second host serves
