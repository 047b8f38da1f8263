"""The built book, opened in a real browser: headless Chromium driven by Selenium.

Every page of ``docs/_build/html`` is served from 127.0.0.1 and loaded: no SEVERE console entry,
nothing loaded from outside the site, every internal link (and its anchor) and image resolves,
math typeset by MathJax (no raw ``$$`` or ``\\(`` left in the text), and search finds
"convolution". Screenshots of the home page and of one chapter go to
``tests/docs/screenshots/`` (gitignored).

Skipped when the site is not built or Chromium is missing, except with ``JAXNET_DOCS_BUILT=1``
(set by ``.ci/run`` right after it builds the site), where either is a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "docs" / "_build" / "html"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
REQUIRED = os.environ.get("JAXNET_DOCS_BUILT") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _unavailable() -> str | None:
    if not (SITE / "index.html").is_file():
        return f"the site is not built ({SITE}): python -m sphinx -b html docs docs/_build/html"
    if not (CHROMIUM and CHROMEDRIVER):
        return "Chromium and chromedriver not found (Debian: apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed (pip install -e ".[docs]")'
    return None


_reason = _unavailable()
if _reason and REQUIRED:
    raise RuntimeError(f"JAXNET_DOCS_BUILT=1 but {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

PAGES = sorted(
    p.relative_to(SITE).as_posix()
    for p in SITE.rglob("*.html")
    if not p.relative_to(SITE).parts[0].startswith("_")
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def base_url():
    handler = functools.partial(_Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _load(driver, url: str) -> None:
    """Open ``url`` and wait until MathJax (where the page loads it) has typeset everything."""
    driver.get(url)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const wait = () => (window.MathJax && MathJax.startup && MathJax.startup.promise)"
        "  ? MathJax.startup.promise.then(() => done(true), () => done(false))"
        "  : (document.querySelector('script[src*=mathjax]') ? setTimeout(wait, 50) : done(true));"
        "wait();"
    )


def _local(url: str, base: str) -> bool:
    return url.startswith(base)


@functools.cache
def _ids(path: Path) -> frozenset[str]:
    import re

    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def _resolve(url: str, base: str) -> tuple[Path, str]:
    parts = urllib.parse.urlsplit(url)
    rel = urllib.parse.unquote(parts.path)[len(urllib.parse.urlsplit(base).path) :]
    path = SITE / rel
    if path.is_dir():
        path = path / "index.html"
    return path, urllib.parse.unquote(parts.fragment)


def test_pages_were_found():
    assert "index.html" in PAGES and "search.html" in PAGES
    assert any(p.startswith("chapters/") for p in PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page(browser, base_url, page):
    _load(browser, base_url + page)
    problems = []

    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    problems += [f"console: {m}" for m in severe]

    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    problems += [f"loaded from outside the site: {u}" for u in loaded if not _local(u, base_url)]

    refs = browser.execute_script(
        "return [...document.querySelectorAll('a[href]')].map(a => a.href)"
        ".concat([...document.querySelectorAll('img')].map(i => i.src))"
        ".concat([...document.querySelectorAll('script[src]')].map(s => s.src))"
        ".concat([...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.href))"
    )
    for url in refs:
        if not _local(url, base_url):
            continue
        path, fragment = _resolve(url, base_url)
        if not path.is_file():
            problems.append(f"broken link: {url}")
        elif fragment and path.suffix == ".html" and fragment not in _ids(path):
            problems.append(f"broken anchor: {url}")
    broken_images = browser.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.src)"
    )
    problems += [f"image not drawn: {u}" for u in broken_images]

    text = browser.execute_script("return document.body.innerText")
    for raw in ("$$", "\\(", "\\[", "\\frac"):
        if raw in text:
            problems.append(f"raw math left in the rendered text: {raw!r}")
    math = browser.execute_script("return document.querySelectorAll('.math').length")
    typeset = browser.execute_script("return document.querySelectorAll('mjx-container').length")
    errors = browser.execute_script("return document.querySelectorAll('mjx-merror').length")
    if math and typeset < math:
        problems.append(f"{math} math elements but {typeset} typeset by MathJax")
    if errors:
        problems.append(f"{errors} MathJax errors")

    if page in ("index.html", "chapters/04-convolution.html"):
        SCREENSHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / page.replace("/", "-").replace(".html", ".png")))
    assert not problems, "\n".join(problems)


def test_search_finds_convolution(browser, base_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _load(browser, base_url + "search.html?q=convolution")
    results = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li")
    )
    titles = " ".join(r.text for r in results).lower()
    assert "convolution" in titles
