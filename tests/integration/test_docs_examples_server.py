"""Every Python example of the documentation runs, as a user would run it.

The pages hold no Python of their own: each example is a file under ``docs/examples/``
that a page includes (``literalinclude``), so what a reader sees is what runs here.

- ``test_*.py``: the directory's tests run in one pytest process of their own, copied to a
  fresh directory (with the directory's ``pytest.ini`` when it has one, else the minimal
  one the testing guide shows), the pgpool plugin providing their PostgreSQL; warnings
  are errors; every test must pass, none may be skipped.
- any other ``.py``: a script, run with ``POSTGRES_URL`` naming a fresh database; it must
  exit 0 within 120 s with nothing on stderr. A module a test imports (``app.py``,
  ``*_app.py``) is run through that test instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
PYTEST_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

pytestmark = pytest.mark.skipif(
    os.environ.get("PGPOOL_TEST_LOOP") == "uvloop",
    reason="the examples run in processes of their own, on their own event loop",
)


def _is_module(path: Path) -> bool:
    return path.name == "app.py" or path.name.endswith("_app.py")


def _test_dirs() -> list[Path]:
    return sorted({path.parent for path in EXAMPLES.rglob("test_*.py")})


def _scripts() -> list[Path]:
    return sorted(
        path
        for path in EXAMPLES.rglob("*.py")
        if not path.name.startswith("test_") and not _is_module(path)
    )


def _name(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def _env() -> dict[str, str]:
    """The environment of an example: this one's, without what pytest and coverage set."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "COVERAGE_")) and key != "POSTGRES_URL"
    }


@pytest.mark.parametrize("directory", _test_dirs(), ids=_name)
def test_example_tests_pass(directory: Path, tmp_path: Path) -> None:
    work = tmp_path / directory.name
    shutil.copytree(directory, work, ignore=shutil.ignore_patterns("__pycache__"))
    ini = work / "pytest.ini"
    if not ini.exists():
        ini.write_text(PYTEST_INI)
    ini.write_text(ini.read_text() + "filterwarnings = error\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(work)],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    tests = len(re.findall(r"^\s*(?:async )?def test_", _sources(directory), flags=re.M))
    assert re.search(rf"\b{tests} passed\b", output), output
    assert "skipped" not in output, output


def _sources(directory: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(directory.glob("test_*.py")))


def _run_script(script: Path, postgres_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -W error script`` with ``POSTGRES_URL``; it must exit 0 within 120 s."""
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=cwd,
        env={**_env(), "POSTGRES_URL": postgres_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.parametrize("script", _scripts(), ids=_name)
def test_example_script_runs(script: Path, postgres_db_url: str, tmp_path: Path) -> None:
    done = _run_script(script, postgres_db_url, tmp_path)
    assert done.stderr == "", done.stderr


def test_the_readme_example_runs(postgres_db_url: str, tmp_path: Path) -> None:
    """The README's one example, run as the script it is, prints what its comment says."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- readme-example", 1)[1].split("<!-- /readme-example -->", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", block, flags=re.DOTALL)
    (tmp_path / "example.py").write_text(code)
    done = _run_script(tmp_path / "example.py", postgres_db_url, tmp_path)
    assert done.stdout == "{'name': 'apple'}\n"
