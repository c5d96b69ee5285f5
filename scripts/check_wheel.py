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
    problems.extend(_metadata_problems(wheels[0], names))
    for problem in problems:
        print("wheel:", problem)
    if not problems:
        print(f"wheel ok: {wheels[0].name}, {len(names)} files")
    return 1 if problems else 0


#: What publishing needs in METADATA: the license as declared and its file, the versions
#: supported, and the README as the long description.
REQUIRED_METADATA = (
    "License-Expression: BSD-3-Clause",
    "License-File: LICENSE",
    "Classifier: Programming Language :: Python :: 3.10",
    "Classifier: Programming Language :: Python :: 3.13",
    "Description-Content-Type: text/markdown",
)


def _metadata_problems(wheel: Path, names: list[str]) -> list[str]:
    metadata = [n for n in names if n.endswith(".dist-info/METADATA")]
    if len(metadata) != 1:
        return [f"{len(metadata)} METADATA files"]
    text = zipfile.ZipFile(wheel).read(metadata[0]).decode()
    problems = [f"METADATA lacks {line!r}" for line in REQUIRED_METADATA if line not in text]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("the LICENSE file is not in the wheel")
    elif (
        "BSD 3-Clause License"
        not in zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE")))
        .decode()
    ):
        problems.append("LICENSE is not the BSD 3-Clause text")
    if "## The two commands" not in text or "## Documentation" not in text:
        problems.append("the README is not the long description")
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
