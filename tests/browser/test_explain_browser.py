"""explain --html in a real browser: Debian's Chromium, headless, driven by Selenium.

For the MNIST network and the CIFAR-10 Table 3 network (random parameters, a real test image
from ``$JAXNET_DATA``), the page is written by the command and opened from ``file://``:

- it loads with no SEVERE entry in the browser's console log, its first step drawn within 2 s;
- every forward and backward step is reached by the arrow keys, by the buttons and by clicking
  the layer in the diagram;
- each step shows the numbers of the command's printed table for that layer (forward: shape,
  min, max; backward: max |dL/dy|, max |dL/dx| and the differences from autodiff);
- a channel enlarges on click and closes on Escape; hovering a pixel reads its value;
- screenshots of a forward and a backward step go to ``$JAXNET_SCREENSHOTS``, else
  ``tests/browser/screenshots/`` (gitignored).

Skipped without Chromium, chromedriver or selenium (``pip install -e ".[browser]"``), except
when ``CI`` is set: there they fail.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest
from data_files import real_data_root
from run_folders import write_run

from experiments import explain

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(
    os.environ.get("JAXNET_SCREENSHOTS") or Path(__file__).parent / "screenshots"
).resolve()


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed (pip install -e ".[browser]")'
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            return f"{path} is missing (apt-get install {package})"
    return None


@pytest.fixture(scope="module")
def driver():
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI is set: the browser tests must run in CI")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--window-size=1400,1000", "--disable-gpu"):
        options.add_argument(arg)
    if os.name == "posix" and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


def parse_table(text: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The printed table's rows by layer: forward ``[shape, min, max]``; backward
    ``[max|dL/dy|, max|dL/dx|, abs diff, rel diff]``."""
    lines = text.splitlines()
    start = lines.index("forward") + 2
    forward = {}
    for line in lines[start:]:
        if line.strip().startswith("softmax:"):
            break
        cells = line.split()
        forward[cells[0]] = cells[-3:]
    start = next(i for i, line in enumerate(lines) if line.startswith("backward from")) + 2
    backward = {}
    for line in lines[start:]:
        if line.strip().startswith("diff:"):
            break
        cells = line.split()
        backward[cells[0]] = [cells[2], *cells[-3:]]
    return forward, backward


@pytest.fixture(scope="module", params=["mnist", "cifar10_modified"])
def page(request, tmp_path_factory):
    """The command's page for test image 0 and its printed table (parsed)."""
    data = real_data_root()
    folder = write_run(tmp_path_factory.mktemp(request.param) / "run", request.param)
    path = folder / "page.html"
    argv = [str(folder), "--index", "0", "--data-dir", str(data), "--html", str(path)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert explain.main(argv) == 0
    forward, backward = parse_table(printed.getvalue())
    return request.param, path, forward, backward


def open_page(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.dataset.step") == "forward:input"
    )


def step(driver) -> str:
    return driver.execute_script("return document.body.dataset.step")


def text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def expected_steps(forward: dict, backward: dict) -> list[str]:
    """The page's steps, named from the printed table's rows."""
    layers = [name for name in forward if name != "input"]
    names = ["input", *layers, "loss"]
    assert list(backward) == ["loss", *reversed(layers)]
    return [f"forward:{n}" for n in names] + [f"backward:{n}" for n in reversed(names)]


def check_numbers(driver, forward: dict, backward: dict) -> None:
    """The numbers the current step shows equal the printed table's for its layer."""
    direction, name = step(driver).split(":")
    if direction == "forward" and name in forward:
        shown = [text(driver, i) for i in ("fwd-shape", "fwd-min", "fwd-max")]
        assert shown == forward[name], name
    if direction == "backward" and name in backward:
        shown = [text(driver, i) for i in ("dy-max", "dx-max", "diff-abs", "diff-rel")]
        assert shown == backward[name], name


def severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_every_step_by_key_and_click_shows_the_printed_numbers(driver, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _, path, forward, backward = page
    open_page(driver, path)
    assert severe(driver) == []
    ready = int(driver.execute_script("return document.body.dataset.readyMs"))
    assert ready < 2000, f"the first step was drawn {ready} ms after navigation began"
    steps = expected_steps(forward, backward)
    body = driver.find_element(By.TAG_NAME, "body")

    # the arrow keys: every step forward and back again, each showing the table's numbers
    assert step(driver) == steps[0]
    check_numbers(driver, forward, backward)
    for want in steps[1:]:
        body.send_keys(Keys.ARROW_RIGHT)
        assert step(driver) == want
        check_numbers(driver, forward, backward)
    body.send_keys(Keys.ARROW_RIGHT)  # past the end: stays
    assert step(driver) == steps[-1]
    for want in reversed(steps[:-1]):
        body.send_keys(Keys.ARROW_LEFT)
        assert step(driver) == want

    # the buttons
    nxt, prev = driver.find_element(By.ID, "next"), driver.find_element(By.ID, "prev")
    assert not prev.is_enabled()
    for want in steps[1:]:
        nxt.click()
        assert step(driver) == want
    assert not nxt.is_enabled()
    for want in reversed(steps[:-1]):
        prev.click()
        assert step(driver) == want

    # the diagram: each box, while walking forward, then while walking backward
    nodes = driver.find_elements(By.CSS_SELECTOR, "#diagram .node")
    names = [s.split(":")[1] for s in steps[: len(steps) // 2]]
    assert [n.find_element(By.TAG_NAME, "b").text for n in nodes] == names
    for node, name in zip(nodes, names, strict=True):
        node.click()
        assert step(driver) == f"forward:{name}"
        check_numbers(driver, forward, backward)
    body.send_keys(Keys.END)
    for node, name in zip(reversed(nodes), reversed(names), strict=True):
        node.click()
        assert step(driver) == f"backward:{name}"
        check_numbers(driver, forward, backward)
    assert severe(driver) == []


def test_enlarge_hover_and_screenshots(driver, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    arch, path, forward, _ = page
    open_page(driver, path)
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert step(driver) == "forward:conv1"
    tiles = driver.find_elements(By.CSS_SELECTOR, "#step .tile canvas")
    assert len(tiles) == 16  # every channel of conv1
    ActionChains(driver).move_to_element(tiles[3]).perform()
    assert "channel 3 · (row" in text(driver, "hover")
    value = float(text(driver, "hover").rsplit("= ", 1)[1])
    lo, hi = float(forward["conv1"][1]), float(forward["conv1"][2])
    assert lo - 1e-3 <= value <= hi + 1e-3
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{arch}-forward-conv1.png"))
    tiles[3].click()
    zoom = driver.find_element(By.ID, "zoom")
    assert "open" in zoom.get_attribute("class")
    assert "channel 3" in text(driver, "zoomtitle")
    body.send_keys(Keys.ESCAPE)
    assert "open" not in zoom.get_attribute("class")

    # backward: conv1, its rule in MathML beside its gradients
    body.send_keys(Keys.END)
    driver.find_element(By.CSS_SELECTOR, '#diagram .node[data-node="1"]').click()
    assert step(driver) == "backward:conv1"
    assert driver.find_elements(By.CSS_SELECTOR, "#step aside math")
    headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#step .panel h2")]
    assert headings == ["conv1 receives ∂L/∂y", "conv1 passes on ∂L/∂x", "∂L/∂W", "∂L/∂b"]
    assert driver.save_screenshot(str(SCREENSHOTS / f"{arch}-backward-conv1.png"))
    assert severe(driver) == []
