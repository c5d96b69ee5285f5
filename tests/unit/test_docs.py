"""The documentation agrees with the code: the generated references are current, every
example is shown and runs (tests/integration/test_docs_examples_server.py runs them), and
every setting or environment variable a page names exists."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pgpool_core
import pgpool_sprockets
import pgpool_tornado
from pgpool_core._config import _KEYS
from pgpool_core.testing import _plugin

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"


def _extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgpool_docs", DOCS / "_ext" / "pgpool_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pgpool_docs", module)
    spec.loader.exec_module(module)
    return module


def _pages() -> dict[Path, str]:
    paths = [*DOCS.rglob("*.md"), *DOCS.rglob("*.rst"), ROOT / "README.md"]
    return {path: path.read_text() for path in paths if "_build" not in path.parts}


def test_generated_references_match_the_code() -> None:
    stale = list(_extension().stale())
    assert stale == [], f"out of date: {stale}; run `python docs/_ext/pgpool_docs.py`"


def test_every_setting_has_a_description() -> None:
    import dataclasses

    described = _extension().setting_descriptions()
    for field in dataclasses.fields(pgpool_core.PoolSettings):
        assert described.get(field.name), f"PoolSettings.{field.name} has no :param: text"
    assert set(_KEYS) == {field.name for field in dataclasses.fields(pgpool_core.PoolSettings)}


def test_settings_reference_lists_every_key_and_variable() -> None:
    text = (DOCS / "reference" / "settings.md").read_text()
    for field, (keys, env) in _KEYS.items():
        assert f"## `{field}`" in text
        for name in (*keys, *env):
            assert f"`{name}`" in text, name


def _known_names() -> set[str]:
    """Every ``postgres_*`` / ``POSTGRES_*`` name that exists: settings keys and variables,
    the adapters' settings, methods and attributes, constants, the plugin's fixtures."""
    from pgpool_tornado._mixins import ADAPTER_SETTINGS

    names = {name for keys, env in _KEYS.values() for name in (*keys, *env)}
    names |= set(ADAPTER_SETTINGS)
    for module in (pgpool_tornado, pgpool_sprockets):
        names |= set(dir(module))
        for cls in (module.ApplicationMixin, module.RequestHandlerMixin):
            names |= set(dir(cls))
            names |= set(getattr(cls, "__annotations__", {}))
    names |= {name for name in dir(_plugin) if name.startswith("postgres_")}
    # The official postgres Docker image's variables (a page may show how to run one).
    names |= {"POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_HOST_AUTH_METHOD"}
    adapters = ROOT / "src" / "adapters"
    for source in adapters.rglob("*.py"):  # instance attributes (self.postgres_pool = ...)
        names |= set(re.findall(r"self\.(postgres_\w+)\s*[:=]", source.read_text()))
    return names


def test_every_setting_a_page_names_exists() -> None:
    known = _known_names()
    unknown = {}
    for path, text in _pages().items():
        for name in re.findall(r"\b(?:postgres|POSTGRES)_[A-Za-z_]*[A-Za-z]\b", text):
            if name not in known:
                unknown.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    assert unknown == {}


def test_the_known_names_are_not_everything() -> None:
    """The check above can fail: a made-up name is not known."""
    known = _known_names()
    assert "postgres_max_pool_size" in known
    assert "POSTGRES_MAX_POOLSIZE" not in known
    assert "postgres_shutdown_grace" in known
    assert "postgres_query_timout" not in known


def test_every_example_is_shown_and_pages_hold_no_python_of_their_own() -> None:
    """Each example file is included by some page, each include names a file that
    exists, and no page has Python that does not come from an example (so nothing unrun)."""
    included = set()
    for path, text in _pages().items():
        if path.name == "README.md":
            continue
        for target in re.findall(r"literalinclude(?::: |\}\s*)(\S+)", text):
            file = (path.parent / target).resolve()
            assert file.is_file(), f"{path.relative_to(ROOT)} includes a missing {target}"
            included.add(file)
        inline = re.findall(
            r"^(?:```|:::)\s*(?:\{code-block\}\s*)?(?:python|py|pycon)\s*$", text, re.M
        )
        inline += re.findall(r"^\.\. code-block:: (?:python|py|pycon)\s*$", text, re.M)
        assert not inline, f"{path.relative_to(ROOT)}: Python inline; include an example"
    examples = {path.resolve() for path in EXAMPLES.rglob("*.py")}
    assert examples, "no examples"
    assert examples - included == set(), "examples no page includes"


def test_the_version_has_one_source() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:\.dev\d+|(?:a|b|rc)\d+)?", pgpool_core.__version__)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "pgpool_core.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)  # no second, literal version
    assert importlib.metadata.version("pgpool") == pgpool_core.__version__


def test_the_readme_links_to_the_settings_reference_instead_of_copying_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "reference/settings" in readme
    assert "POSTGRES_MIN_POOL_SIZE" not in readme
