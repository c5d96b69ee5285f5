"""Packaging rules that users depend on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
