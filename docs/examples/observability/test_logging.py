import asyncio
import io
import json
import logging

import pytest

from pgpool_core import PoolManager, PoolState, PoolUnavailableError
from pgpool_core.testing import TcpProxy


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with pgpool's structured fields when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("pool", "role", "event", "sqlstate"):  # the `extra` of pgpool's events
            if hasattr(record, name):
                line[name] = getattr(record, name)
        return json.dumps(line)


@pytest.fixture
def log_lines():
    """pgpool's records from INFO up, as JSON lines (configure "pgpool" for all of them)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pgpool")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.mark.asyncio
async def test_a_leak_report(postgres_db_url: str, log_lines) -> None:
    async with PoolManager(postgres_db_url, leak_detection_threshold=0.1) as pool:
        async with pool.transaction() as tx:
            await tx.execute("SELECT 1")
            await asyncio.sleep(0.3)  # holds its connection longer than the threshold
        assert pool.stats()["leaks_detected"] == 1
    [leak] = [line for line in log_lines() if line.get("event") == "leak_detected"]
    assert leak["level"] == "WARNING"
    assert leak["logger"] == "pgpool.leaks"
    assert leak["pool"] == pool.name
    # "pool 127.0.0.1:5432/app: connection held longer than 0.100 s
    # (leak_detection_threshold) by /src/test_logging.py:44 in test_a_leak_report"
    assert "connection held longer than 0.100 s" in leak["message"]
    assert leak["message"].endswith("in test_a_leak_report")  # the holder's file:line


@pytest.mark.asyncio
async def test_a_reconnect(postgres_db_url: str, postgres_proxy: TcpProxy, log_lines) -> None:
    async with PoolManager(postgres_proxy.rewrite(postgres_db_url)) as pool:
        await pool.execute("SELECT 1")
        postgres_proxy.reset()  # the network cuts every connection, and refuses new ones
        with pytest.raises(PoolUnavailableError):
            await pool.execute("SELECT 1")
        postgres_proxy.heal()
        for _ in range(200):
            if pool.state is PoolState.OPEN:
                break
            await asyncio.sleep(0.01)
        await pool.execute("SELECT 1")
    events = {line["event"]: line for line in log_lines() if "event" in line}
    assert events["reconnecting"]["level"] == "WARNING"
    assert events["reconnecting"]["role"] == "writer"
    assert events["reconnected"]["message"].startswith(f"pool {pool.name}: reconnected after")
