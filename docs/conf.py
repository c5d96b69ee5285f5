"""Sphinx configuration for pgpool's documentation (``nox -s docs``).

The build needs no network: the inventories of the projects we link to (Python, Tornado,
psycopg2, aiopg) ship in ``_inventories/`` (``_inventories/build.py`` writes them), so
``-n`` resolves every cross-reference offline; online, intersphinx reads the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import pgpool_core  # noqa: E402

project = "pgpool"
author = "the pgpool developers"
copyright = "2026, the pgpool developers"
release = pgpool_core.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "pgpool_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_check", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# Markdown pages: fenced directives (```{note}), ::: blocks, anchors on every heading
# down to ###, so guides can link to each other's sections.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"pgpool {release}"
html_theme_options = {
    "source_repository": "https://github.com/pgpool-dev/pgpool/",
    "source_branch": "main",
    "source_directory": "docs/",
}

# The API reference: members in source order, signatures with their type hints shown in
# the description (shorter signatures), never the values of private names.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}

# Offline inventories first; the URL is where each link points.
intersphinx_mapping = {
    name: (url, (str(HERE / "_inventories" / f"{name}.inv"),))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "tornado": "https://www.tornadoweb.org/en/stable/",
        "psycopg2": "https://www.psycopg.org/docs/",
        "aiopg": "https://aiopg.readthedocs.io/en/stable/",
    }.items()
}

nitpicky = True
