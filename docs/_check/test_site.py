"""The built documentation as a reader sees it: headless Chromium opens the HTML that
``nox -s docs`` built (``PGPOOL_DOCS_SITE``) and checks the pages a user needs first.

Run by ``nox -s docs`` after the build, never by ``nox -s tests`` (it needs the site).
Chromium and its driver are the system's (Debian: ``chromium``, ``chromium-driver``);
``PGPOOL_DOCS_SCREENSHOT`` names where the index's screenshot goes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from pgpool_core import PoolSettings

SITE = Path(os.environ.get("PGPOOL_DOCS_SITE", "docs/_build/html")).resolve()


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"none of {names} is installed (Debian: apt-get install chromium chromium-driver)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    assert (SITE / "index.html").is_file(), f"no built site at {SITE}: run nox -s docs"
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser", "google-chrome")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--allow-file-access-from-files",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser: WebDriver, page: str) -> None:
    browser.get((SITE / page).as_uri())
    WebDriverWait(browser, 20).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete"
    )


def _headings(browser: WebDriver, level: str) -> list[str]:
    return [element.text.strip() for element in browser.find_elements(By.TAG_NAME, level)]


def _errors(browser: WebDriver) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_index_renders_with_its_navigation(browser: WebDriver) -> None:
    _open(browser, "index.html")
    assert browser.title.startswith("pgpool")
    assert _headings(browser, "h1")[0] == "pgpool"
    links = {
        a.get_attribute("href").rsplit("/", 1)[-1]
        for a in browser.find_elements(By.CSS_SELECTOR, ".sidebar-tree a.reference")
    }
    for page in (
        "getting-started.html",
        "migrating.html",
        "timeouts.html",
        "settings.html",
        "testing.html",
        "index.html",
    ):
        assert page in links, (page, links)
    assert _errors(browser) == []
    browser.save_screenshot(os.environ.get("PGPOOL_DOCS_SCREENSHOT", str(SITE / "_index.png")))


def test_the_api_page_of_pool_manager(browser: WebDriver) -> None:
    _open(browser, "reference/api/core.html")
    assert _headings(browser, "h1")[0].startswith("pgpool_core")
    for name in (
        "PoolManager",
        "PoolManager.execute",
        "PoolManager.transaction",
        "PoolManager.stream",
        "PoolManager.listen",
        "PoolManager.status",
    ):
        entry = browser.find_element(By.ID, f"pgpool_core.{name}")
        assert entry.is_displayed(), name
    signature = browser.find_element(By.ID, "pgpool_core.PoolManager.execute").text
    assert "execute(" in signature


def test_the_settings_reference_lists_every_setting(browser: WebDriver) -> None:
    _open(browser, "reference/settings.html")
    assert _headings(browser, "h1")[0] == "Settings reference"
    cells = {cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table td")}
    for field in dataclasses.fields(PoolSettings):
        assert field.name in cells, field.name
    assert {f"`{f.name}`".strip("`") for f in dataclasses.fields(PoolSettings)} <= set(
        _headings(browser, "h2")
    )


def test_the_migration_guide_renders(browser: WebDriver) -> None:
    _open(browser, "migrating.html")
    assert "sprockets-postgres" in _headings(browser, "h1")[0]
    assert len(_headings(browser, "h2")) >= 5
    assert browser.find_elements(By.CSS_SELECTOR, "div.highlight-diff")


def test_search_finds_the_pool(browser: WebDriver) -> None:
    _open(browser, "search.html")
    browser.get((SITE / "search.html").as_uri() + "?q=PoolManager")
    results = WebDriverWait(browser, 30).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "ul.search li a")
    )
    targets = [a.get_attribute("href") for a in results]
    assert any("reference/api/core.html#pgpool_core.PoolManager" in href for href in targets), (
        targets
    )


def test_images_load(browser: WebDriver) -> None:
    _open(browser, "guides/performance.html")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert images
    for image in images:
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 0, (
            image.get_attribute("src")
        )


def test_every_public_name_has_an_entry_in_the_api_reference() -> None:
    """Each name of each public module's ``__all__`` has its own anchor in the API pages."""
    import importlib
    import re

    html = "".join(path.read_text() for path in (SITE / "reference" / "api").glob("*.html"))
    anchors = set(re.findall(r'id="([\w.-]+)"', html))
    modules = (
        "pgpool_core",
        "pgpool_core.probes",
        "pgpool_core.otel",
        "pgpool_core.prometheus",
        "pgpool_core.testing",
        "pgpool_tornado",
        "pgpool_sprockets",
    )
    missing = [
        f"{name}.{member}"
        for name in modules
        for member in importlib.import_module(name).__all__
        if f"{name}.{member}" not in anchors
    ]
    assert missing == []
    fixtures = {
        "postgres_server",
        "postgres_url",
        "postgres_db_url",
        "postgres_proxy",
        "pgbouncer",
        "postgres_replication",
    }
    assert {f"fixture-{name}" for name in fixtures} <= anchors
