"""Packaging rules that users depend on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tornado", "sprockets"):
                raise ImportError(f"pgpool_core must not import {name}")
            return None

    # sprockets.http installs a namespace-package .pth stub loaded at startup; only
    # modules that importing pgpool_core adds count.
    baseline = set(sys.modules)
    sys.meta_path.insert(0, Block())
    import pgpool_core, pgpool_core.testing
    import pkgutil
    for mod in pkgutil.walk_packages(pgpool_core.__path__, "pgpool_core."):
        __import__(mod.name)
    added = set(sys.modules) - baseline
    leaked = sorted(m for m in added if m.split(".")[0] in ("tornado", "sprockets"))
    assert not leaked, leaked
    print("clean")
    """
)


def test_core_never_imports_tornado_or_sprockets() -> None:
    """Every pgpool_core module imports with tornado and sprockets blocked."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_adapters_are_importable() -> None:
    """The adapter packages import under their own names (not as ``adapters.*``)."""
    import pgpool_sprockets
    import pgpool_tornado

    assert pgpool_tornado.__name__ == "pgpool_tornado"
    assert pgpool_sprockets.__name__ == "pgpool_sprockets"


DOUBLES_ONLY = textwrap.dedent(
    """
    import sys

    from pgpool_core.testing import FakeConnector

    heavy = (
        "pytest",
        "testcontainers",
        "docker",
        "pgpool_core.testing._server",
        "pgpool_core.testing._discovery",
        "pgpool_core.testing._pgbouncer",
        "pgpool_core.testing._proxy",
        "pgpool_core.testing._plugin",
    )
    loaded = sorted(name for name in heavy if name in sys.modules)
    assert not loaded, f"importing FakeConnector loaded {loaded}"
    assert FakeConnector.__module__ == "pgpool_core.testing._fakes"

    import pgpool_core.testing as testing

    assert "PostgresServer" in dir(testing)
    assert "pgpool_core.testing._server" not in sys.modules
    server = testing.PostgresServer
    assert server.__module__ == "pgpool_core.testing._server", server.__module__
    assert "pgpool_core.testing._server" in sys.modules
    assert "pytest" not in sys.modules, "the server tools must not import pytest"
    from pgpool_core.testing import TcpProxy, start_first_available
    assert callable(start_first_available) and TcpProxy.__name__ == "TcpProxy"
    print("lazy")
    """
)


def test_fakes_import_without_pytest_or_server_tools() -> None:
    """``FakeConnector`` loads no pytest, Docker or server tooling; those load on first use."""
    result = subprocess.run(
        [sys.executable, "-c", DOUBLES_ONLY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy"


def test_testing_exports_every_public_name_and_no_pytest_hooks() -> None:
    """``__all__`` has no pytest hooks; each of its names resolves and is listed by ``dir()``."""
    from pgpool_core import testing

    hooks = [name for name in testing.__all__ if name.startswith("pytest_")]
    assert not hooks, hooks
    assert set(testing.__all__) <= set(dir(testing))
    assert not [name for name in dir(testing) if name.startswith("pytest_")]
    for name in testing.__all__:
        assert getattr(testing, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(testing, "no_such_name")  # noqa: B009


def test_pytest_plugin_is_the_plugin_module() -> None:
    """The ``pytest11`` entry point names ``_plugin``, which pytest has loaded for this run."""
    from importlib.metadata import entry_points

    import pgpool_core.testing._plugin as plugin

    (entry,) = [ep for ep in entry_points(group="pytest11") if ep.name == "pgpool"]
    assert entry.value == "pgpool_core.testing._plugin"
    assert entry.load() is plugin
    assert callable(plugin.pytest_configure)


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by basename (no packages): two test_x.py files in
    different directories break collection of the whole suite."""
    root = Path(__file__).resolve().parents[1]
    names = [path.name for path in root.rglob("test_*.py")]
    assert sorted(names) == sorted(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
