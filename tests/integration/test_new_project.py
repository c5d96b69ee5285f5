"""A newcomer follows the documentation alone, in a fresh virtualenv with nothing but
pgpool and the extra the page names, the system PostgreSQL hidden by
``PGPOOL_TEST_SOURCE=embedded`` and no Docker:

- the testing guide's new project (``docs/examples/testing/new_project``) passes with only
  ``pgpool[testing]``;
- the getting-started page's sprockets.http app and its tests
  (``docs/examples/getting_started``) pass with only ``pgpool[sprockets,testing]``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


EXAMPLES = ROOT / "docs" / "examples"

pytestmark = pytest.mark.skipif(
    os.environ.get("PGPOOL_TEST_LOOP") == "uvloop",
    reason="the new projects run in virtualenvs of their own, on their own event loop",
)


def example_files(directory: Path) -> dict[str, str]:
    """The files a page shows for a project: its Python files and its ``pytest.ini``."""
    return {
        path.name: path.read_text()
        for path in sorted(directory.iterdir())
        if path.suffix == ".py" or path.name == "pytest.ini"
    }


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)}:\n{output}"
    return output


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the unprivileged user that runs PostgreSQL (when the tests run as root)
    can traverse: pytest's own tmp_path is private to root."""
    path = Path(tempfile.mkdtemp(prefix="pgpool-new-project-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fresh_project(
    base: Path, files: dict[str, str], extra: str
) -> tuple[str, Path, dict[str, str]]:
    """A virtualenv with only ``pgpool[extra]`` and a project directory holding ``files``;
    returns its python, the project and the environment to run it in."""
    project = base / "project"
    project.mkdir()
    for name, content in files.items():
        (project / name).write_text(content)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PGPOOL_", "PYTEST_", "COVERAGE_", "VIRTUAL_ENV", "PYTHON"))
        and key not in ("CI", "DOCKER_HOST", "POSTGRES_URL")
    }
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], base, env, 120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{ROOT}[{extra}]"], base, env, 600)
    env["PGPOOL_TEST_SOURCE"] = "embedded"  # the system binaries stay hidden
    env["DOCKER_HOST"] = f"unix://{base}/no-docker.sock"
    return python, project, env


def count_tests(files: dict[str, str]) -> int:
    return sum(
        len(re.findall(r"^\s*(?:async )?def test_", text, flags=re.M))
        for name, text in files.items()
        if name.startswith("test_")
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX virtualenv layout")
def test_the_testing_guides_new_project_passes_with_only_the_testing_extra(
    open_dir: Path,
) -> None:
    files = example_files(EXAMPLES / "testing" / "new_project")
    assert set(files) == {"pytest.ini", "test_database.py"}
    python, project, env = fresh_project(open_dir, files, "testing")
    # Only what the testing extra brought: no tornado, no testcontainers, no dev tools.
    listed = run([python, "-m", "pip", "list", "--format=freeze"], open_dir, env, 60).lower()
    for absent in ("tornado", "testcontainers", "docker", "hypothesis"):
        assert f"\n{absent}==" not in f"\n{listed}", absent
    output = run([python, "-m", "pytest", "-p", "no:cacheprovider"], project, env, 300)
    assert "postgres: embedded" in output
    assert f"{count_tests(files)} passed" in output
    assert "warning" not in output.lower(), output


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX virtualenv layout")
def test_the_getting_started_app_and_its_tests_pass_with_only_the_sprockets_extra(
    open_dir: Path,
) -> None:
    files = example_files(EXAMPLES / "getting_started")
    assert {"pytest.ini", "app.py", "test_app.py"} <= set(files)
    python, project, env = fresh_project(open_dir, files, "sprockets,testing")
    output = run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error"], project, env, 300
    )
    assert "postgres: embedded" in output
    assert f"{count_tests(files)} passed" in output
    assert "skipped" not in output, output
