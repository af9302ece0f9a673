"""The documentation site: its sources, its examples, the strict build, and the site in a browser.

The ``docs`` tests build the site with ``mkdocs build --strict`` as ``make docs`` does (into a
temporary folder), serve it on 127.0.0.1 and read every page in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, which ``make setup`` installs, driven by selenium): no
console errors, the tutorials' figures render, every internal link and anchor resolves, and the
search finds ``logit_lens``. ``-m "not docs"`` deselects them; the checks of the sources and the
reference pages' examples run either way.
"""

from __future__ import annotations

import doctest
import functools
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import lenslib
import lenslib.plotting

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1300,1000",
]


def _mkdocs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", *args], cwd=cwd,
                          env=env, capture_output=True, text=True)


# ---------------------------------------------------------------- the sources


def _nav_entries() -> list[str]:
    return re.findall(r"^\s*- (?:[^:\n]+: )?(\S+\.(?:md|ipynb))\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)


def test_every_notebook_is_a_tutorial_page():
    assert len(NOTEBOOKS) >= 6  # a floor, not a tolerance: notebooks 01-06
    nav = _nav_entries()
    for notebook in NOTEBOOKS:
        page = DOCS / "tutorials" / notebook.name
        assert page.is_symlink() and page.resolve() == notebook.resolve(), f"docs/tutorials/{notebook.name}"
        assert f"tutorials/{notebook.name}" in nav, f"{notebook.name} is not in mkdocs.yml's nav"
    assert sorted(p.name for p in (DOCS / "tutorials").iterdir()) == [n.name for n in NOTEBOOKS]


def test_every_page_is_in_the_nav():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb")}
    assert pages == set(_nav_entries())


def _reference_entries() -> dict[str, str]:
    """``::: name`` -> the text of the reference page it is on."""
    entries = {}
    for page in (DOCS / "reference").glob("*.md"):
        text = page.read_text()
        for name in re.findall(r"^::: (\S+)$", text, re.M):
            entries[name] = text
    return entries


PUBLIC = [f"lenslib.{n}" for n in lenslib.__all__] + [f"lenslib.plotting.{n}" for n in lenslib.plotting.__all__]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_reference_entry_with_an_example(name):
    entries = _reference_entries()
    assert name in entries, f"no `::: {name}` in docs/reference/*.md"
    obj = lenslib
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, Exception):
        return  # the errors page shows one example for all of them
    short = name.rsplit(".", 1)[-1]
    page_examples = "\n".join(re.findall(r"```pycon\n(.*?)```", entries[name], re.S))
    assert ">>>" in (obj.__doc__ or "") or re.search(rf"\b{short}\b", page_examples), (
        f"{name}: neither its docstring nor its reference page has an example")


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_in_the_pages_run(page):
    """Every ``>>>`` example on the site's own pages (the reference pages' worked examples)."""
    test = doctest.DocTestParser().get_doctest(page.read_text(), {}, page.name, str(page), 0)
    if not test.examples:
        return
    import plotly.io

    renderer, environ = plotly.io.renderers.default, dict(os.environ)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    try:
        runner.run(test)
    finally:  # configure_static_images sets both
        plotly.io.renderers.default = renderer
        os.environ.clear()
        os.environ.update(environ)
    assert runner.failures == 0, f"{page}: {runner.failures} failing example(s)"


def test_no_page_fetches_from_outside():
    """Nothing on the site comes from a CDN or a font service: it works offline."""
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^\s*font: false", config, re.M)
    for page in DOCS.rglob("*.md"):
        assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"https?://", page.read_text())


# ---------------------------------------------------------------- the strict build


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = _mkdocs("--site-dir", str(out))
    assert done.returncode == 0, done.stderr[-6000:]
    return out


def _broken_build(tmp_path: Path, page: str) -> subprocess.CompletedProcess:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(page)
    shutil.copy(DOCS / "griffe_lenslib.py", tmp_path / "docs")  # mkdocs.yml names it relative to itself
    (tmp_path / "mkdocs.yml").write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {tmp_path / 'docs'}\nnav:\n  - index.md\n")
    return _mkdocs("-f", str(tmp_path / "mkdocs.yml"), "--site-dir", str(tmp_path / "site"))


@pytest.mark.docs
@pytest.mark.parametrize("page, complaint", [
    ("# x\n\nSee [the guide](guides/missing.md).\n", "missing.md"),
    ("# x\n\nSee [`logit_lens`][lenslib.no_such_function].\n", "lenslib.no_such_function"),
    ("# x\n\n::: lenslib.no_such_function\n", "no_such_function"),
])
def test_strict_build_fails_on_a_broken_link_or_reference(tmp_path, page, complaint):
    done = _broken_build(tmp_path, page)
    assert done.returncode != 0 and complaint in done.stderr, done.stderr[-3000:]


# ---------------------------------------------------------------- the site in a browser


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("needs Debian's chromium and chromium-driver (`make setup` installs both: "
                    "apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not look for downloads
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(120)  # hang guards (this and the waits below): pages load in seconds
    yield driver
    driver.quit()


def _pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))


def _open(browser, url: str) -> list[dict]:
    """Load a page; return the console's errors (uncaught exceptions and failed loads included)."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop what an earlier page left
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


@pytest.mark.docs
def test_every_page_loads_without_console_errors(site, server, browser):
    pages = _pages(site)
    assert len(pages) >= 25 and "reference/lens.html" in pages  # a floor: 29 pages when written
    errors = {page: _open(browser, server + page) for page in pages}
    assert not {page: e for page, e in errors.items() if e}


@pytest.mark.docs
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_figures_render(site, server, browser, notebook):
    stored = sum("image/png" in output.get("data", {})
                 for cell in json.loads(notebook.read_text())["cells"] for output in cell.get("outputs", []))
    assert stored > 0
    _open(browser, f"{server}tutorials/{notebook.stem}.html")
    images = browser.execute_script("""
        return Array.from(document.querySelectorAll('.jupyter-wrapper img')).map(img => {
            img.scrollIntoView();
            const box = img.getBoundingClientRect();
            return {src: img.src.slice(0, 30), complete: img.complete, natural: img.naturalWidth,
                    width: box.width, height: box.height};
        });""")
    pngs = [i for i in images if i["src"].startswith("data:image/png")]
    assert len(pngs) == stored, f"{len(pngs)} figures shown, {stored} stored in {notebook.name}"
    for image in pngs:
        # drawn and laid out: 100 px is a floor between a broken-image icon (tens of px) and a figure
        assert image["complete"] and image["natural"] > 0 and image["width"] > 100 and image["height"] > 100, image


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


@pytest.mark.docs
def test_internal_links_resolve(site, server, browser):
    ids: dict[str, set[str]] = {}
    checked = 0
    for page in _pages(site):
        _open(browser, server + page)
        hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        for href in hrefs:
            if not href.startswith(server):
                continue
            url = urllib.parse.urlsplit(href)
            target = urllib.parse.unquote(url.path.removeprefix("/")) or "index.html"
            path = site / target
            if path.is_dir():
                path = path / "index.html"
            assert path.is_file(), f"{page} links to {href}, which is not on the site"
            if url.fragment and path.suffix == ".html":
                if target not in ids:
                    parser = _Ids()
                    parser.feed(path.read_text())
                    ids[target] = parser.ids
                assert urllib.parse.unquote(url.fragment) in ids[target], f"{page} links to {href}: no such anchor"
            checked += 1
    assert checked > 200  # a floor: the built site has ~1,700 internal hrefs (counted in its HTML)


@pytest.mark.docs
def test_search_finds_logit_lens(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert not _open(browser, server + "index.html")
    browser.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__input").click()
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.send_keys("logit_lens")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item a"))
    links = [urllib.parse.urlsplit(a.get_attribute("href"))
             for a in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")]
    found = [f"{link.path}#{link.fragment}" for link in links]  # the query is ?h=logit_lens
    assert "/reference/lens.html#lenslib.logit_lens" in found, found
