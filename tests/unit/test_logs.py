"""The pool's log records: one hierarchy under "pgpool", the same structured fields on
every event record, no secret, nothing at INFO on the hot path."""

from __future__ import annotations

import logging

import psycopg2
import pytest

from pgpool_core import PoolManager
from pgpool_core.testing import FakeConnector

from fake_support import URL, until


async def test_event_records_carry_pool_role_event_and_sqlstate(
    fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgpool")
    fake.fail_next = 1
    fake.failure = psycopg2.OperationalError("connection refused")
    async with PoolManager(URL, connector=fake, min_size=1) as pool:
        await until(lambda: any(getattr(r, "event", "") == "reconnected" for r in caplog.records))
        pool.resize(max_size=3)
    events = {r.event: r for r in caplog.records if hasattr(r, "event")}  # type: ignore[attr-defined]
    assert {"reconnecting", "reconnected", "resized"} <= set(events)
    for record in events.values():
        assert record.name.startswith("pgpool.")
        assert record.pool == "db:5432/main"  # type: ignore[attr-defined]
        assert record.role == "writer"  # type: ignore[attr-defined]
        assert hasattr(record, "sqlstate")
    assert "s3cret" not in caplog.text


async def test_nothing_at_info_on_the_hot_path(
    fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgpool")
    async with PoolManager(URL, connector=fake, min_size=1) as pool:
        caplog.clear()
        for _ in range(20):
            await pool.execute("SELECT 1")
            async with pool.transaction() as tx:
                await tx.execute("UPDATE t SET n = 1")
        assert caplog.records == []


def test_every_record_above_debug_carries_the_event_fields() -> None:
    """Read from the source: each log call at INFO or above (and each ``.log(level, ...)``)
    passes ``extra=`` (the ``fields()`` of its event), so JSON formatters and alerts can
    rely on ``pool``, ``role``, ``event`` and ``sqlstate`` on every such record."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    missing = []
    for path in src.rglob("*.py"):
        if "testing" in path.parts:  # the test tools log for their user, not as events
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("info", "warning", "error", "exception", "critical", "log")
                and "logger" in ast.unparse(node.func.value).lower()
                and not any(keyword.arg == "extra" for keyword in node.keywords)
            ):
                missing.append(f"{path.relative_to(src)}:{node.lineno}")
    assert missing == []
