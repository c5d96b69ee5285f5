"""Check a built wheel: each package exactly once, each with py.typed, no stray top-levels.

Also that the ``pytest11`` entry point ``pgpool`` names the plugin module.
"""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path

PACKAGES = ("pgpool_core", "pgpool_tornado", "pgpool_sprockets")
#: The module the ``pytest11`` entry point ``pgpool`` must name: the plugin, not the package.
PYTEST_PLUGIN = "pgpool_core.testing._plugin"


def main(directory: str) -> int:
    wheels = sorted(Path(directory).glob("pgpool-*.whl"))
    if len(wheels) != 1:
        print(f"expected one pgpool wheel in {directory}, found {wheels}")
        return 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    problems = []
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    if tops != set(PACKAGES):
        problems.append(f"top-level entries {sorted(tops)} != {sorted(PACKAGES)}")
    for package in PACKAGES:
        inits = [n for n in names if n.endswith("/__init__.py") and n.split("/")[-2] == package]
        if len(inits) != 1:
            problems.append(f"{package}: {len(inits)} copies ({inits})")
        if f"{package}/py.typed" not in names:
            problems.append(f"{package}: no py.typed")
    entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    if entry_points:
        parser.read_string(zipfile.ZipFile(wheels[0]).read(entry_points[0]).decode())
    plugin = parser.get("pytest11", "pgpool", fallback=None)
    if plugin != PYTEST_PLUGIN:
        problems.append(f"the pytest11 entry point pgpool is {plugin!r}, not {PYTEST_PLUGIN!r}")
    for problem in problems:
        print("wheel:", problem)
    if not problems:
        print(f"wheel ok: {wheels[0].name}, {len(names)} files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
