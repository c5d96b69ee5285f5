"""A new project adopts the pytest plugin by following the README alone: a fresh virtualenv
with nothing but ``pgpool[testing]``, the README's two files, the system PostgreSQL hidden
by ``PGPOOL_TEST_SOURCE=embedded`` and no Docker: the tests pass on the embedded server."""

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


def readme_files() -> dict[str, str]:
    """The files of the README's new-project block: each fenced block starts with a
    ``# <file name>`` comment line."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- new-project", 1)[1].split("<!-- /new-project -->", 1)[0]
    files = {}
    for body in re.findall(r"```\w*\n(.*?)```", block, flags=re.DOTALL):
        first, rest = body.split("\n", 1)
        assert first.startswith("# "), first
        files[first[2:].strip()] = rest
    return files


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


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX virtualenv layout")
def test_readme_new_project_passes_with_only_the_testing_extra(open_dir: Path) -> None:
    tmp_path = open_dir
    files = readme_files()
    assert set(files) == {"pytest.ini", "test_database.py"}
    project = tmp_path / "project"
    project.mkdir()
    for name, content in files.items():
        (project / name).write_text(content)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PGPOOL_", "PYTEST_", "COVERAGE_", "VIRTUAL_ENV", "PYTHON"))
        and key not in ("CI", "DOCKER_HOST")
    }
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{ROOT}[testing]"], tmp_path, env, 600)
    # Only what the testing extra brought: no tornado, no testcontainers, no dev tools.
    listed = run([python, "-m", "pip", "list", "--format=freeze"], tmp_path, env, 60).lower()
    for absent in ("tornado", "testcontainers", "docker", "hypothesis"):
        assert f"\n{absent}==" not in f"\n{listed}", absent
    env["PGPOOL_TEST_SOURCE"] = "embedded"  # the system binaries stay hidden
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-docker.sock"
    output = run([python, "-m", "pytest", "-p", "no:cacheprovider"], project, env, 300)
    assert "postgres: embedded" in output
    assert "2 passed" in output
    assert "warning" not in output.lower(), output
