"""Developer tasks. ``nox -s tests`` is the whole test suite (unit + integration)."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests"]
# A Python that is not installed is skipped, not an error; .ci/run checks the ones it needs.
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: The Pythons that run the integration tests too (the others run the unit tests): the
#: whole suite twice keeps CI within its 30 minutes.
FULL_SUITE = ("3.11", "3.13")
SOURCES = ["."]


def install_dev(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


def run_pytest(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    """The one pytest runner every test session shares: coverage on, warnings are errors.
    The coverage floor (pyproject) holds for the whole suite; a part of it (the unit tests
    alone never start a server) only reports."""
    env = {**(env or {}), "COVERAGE_FILE": os.path.join(session.create_tmp(), ".coverage")}
    session.run("coverage", "erase", env=env)
    session.run("coverage", "run", "-m", "pytest", *args, *session.posargs, env=env)
    session.run("coverage", "combine", "--quiet", env=env)
    whole = args == ("tests",) and not session.posargs
    session.run("coverage", "report", *(() if whole else ("--fail-under=0",)), env=env)


def _whole_suite_here(python: object) -> bool:
    """Whether this Python runs the whole suite: 3.11 and 3.13 do; on a machine that has
    neither, every Python does (the integration tests never go unrun)."""
    if python in FULL_SUITE:
        return True
    return not any(shutil.which(f"python{version}") for version in FULL_SUITE)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite: unit and integration tests (which start their own PostgreSQL) on
    3.11 and 3.13, the unit tests on the other Pythons (all of it on them when neither
    3.11 nor 3.13 is installed)."""
    install_dev(session)
    run_pytest(session, "tests" if _whole_suite_here(session.python) else "tests/unit")


@nox.session(python="3.11")
def tests_uvloop(session: nox.Session) -> None:
    """The whole suite again with every event loop a uvloop loop (CI runs it on one Python)."""
    install_dev(session)
    run_pytest(session, "tests", env={"PGPOOL_TEST_LOOP": "uvloop"})


@nox.session(python=PYTHONS)
def unit(session: nox.Session) -> None:
    """Unit tests only: no database, no network, seconds."""
    install_dev(session)
    run_pytest(session, "tests/unit")


@nox.session(python=PYTHONS)
def integration(session: nox.Session) -> None:
    """Integration tests only."""
    install_dev(session)
    run_pytest(session, "tests/integration")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    install_dev(session)
    session.run("mypy")


@nox.session(python="3.11")
def package(session: nox.Session) -> None:
    """Build the wheel and check it holds each package exactly once, with py.typed."""
    session.install("build>=1.2")
    tmp = session.create_tmp()
    session.run("python", "-m", "build", "--wheel", "--outdir", tmp)
    session.run("python", "scripts/check_wheel.py", tmp)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation into docs/_build/html (warnings are errors, every
    cross-reference must resolve, no network), then open the built site in headless
    Chromium and check the pages a reader needs first (docs/_check)."""
    session.install("-e", ".[docs]")
    site = os.path.join("docs", "_build", "html")
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html", "docs", site)
    session.run(
        "pytest",
        "docs/_check",
        "-p",
        "no:cacheprovider",
        env={
            "PGPOOL_DOCS_SITE": site,
            "PGPOOL_DOCS_SCREENSHOT": os.path.join(session.create_tmp(), "index.png"),
        },
    )


@nox.session  # on the Python nox runs on: any supported one will do
def demo(session: nox.Session) -> None:
    """The demo service on http://127.0.0.1:8000 (a throwaway PostgreSQL unless
    POSTGRES_URL is set). Ctrl-C stops it and removes the throwaway server."""
    session.install("-e", ".[sprockets,testing,embedded,prometheus,uvloop]")
    # Ctrl-C reaches the service too; give its clean shutdown time before nox escalates.
    session.run("python", "demo/service.py", interrupt_timeout=15, terminate_timeout=5)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The public benchmark: pgpool, aiopg, psycopg_pool, asyncpg (+/- reset),
    sprockets-postgres and pgbench, W1-W3 and the HTTP leg, on asyncio and uvloop, on a
    throwaway PostgreSQL. ``nox -s bench`` is the quick mode (< 2 min);
    ``nox -s bench -- --full --out benchmarks/results`` the full one (< 10 min)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/bench.py", *(session.posargs or ["--quick"]))
