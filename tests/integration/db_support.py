"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


async def wait_for_condition(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Re-check a server-side condition until it holds; returns the seconds it took.

    The server offers no notification for pg_stat_activity changes, so this re-queries
    (in a thread: ``check`` may block), yielding to the loop between checks, bounded by
    ``timeout``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await asyncio.to_thread(check):
        if loop.time() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return loop.time() - started


def database_of(url: str) -> str:
    """The database name of a libpq URL."""
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def run_readme_example(marker: str, filename: str, tmp_path: Path) -> None:
    """Run the README's ``<!-- marker -->`` python block as a user would: as
    ``filename`` (its first line must name it), in its own pytest run (warnings as
    errors); one test must pass."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->")[0]
    body = re.findall(r"```python\n(.*?)```", block, flags=re.DOTALL)[0]
    first, code = body.split("\n", 1)
    assert first == f"# {filename}"
    (tmp_path / filename).write_text(code)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
