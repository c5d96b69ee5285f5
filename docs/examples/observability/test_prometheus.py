import psycopg2.errors
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pgpool_core import PoolManager, prometheus


@pytest.mark.asyncio
async def test_prometheus_exposition(postgres_db_url: str) -> None:
    registry = CollectorRegistry()  # or leave it out: prometheus_client's global REGISTRY
    async with PoolManager(postgres_db_url, min_size=1, max_size=4) as pool:
        prometheus.instrument(pool, registry)
        await pool.execute("SELECT 1")
        with pytest.raises(psycopg2.errors.UndefinedTable):
            await pool.execute("SELECT * FROM no_such_table")
        text = generate_latest(registry).decode()  # what GET /metrics answers
    labels = f'pool="{pool.name}",role="writer",server="{pool.server_address}"'
    assert f"pgpool_connections_max{{{labels}}} 4.0" in text
    ok = f'pgpool_operation_duration_seconds_count{{error_type="",{labels},status_code=""}} 1.0'
    failed = (
        'pgpool_operation_duration_seconds_count{error_type="UndefinedTable",'
        f'{labels},status_code="42P01"}} 1.0'
    )
    assert ok in text
    assert failed in text
