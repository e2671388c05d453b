"""The report in a real headless browser (Debian chromium + chromium-driver, driven by selenium).

Skipped when chromium, chromedriver or selenium are absent (``.ci/run`` installs them).
Checks: pages load without console errors, a panel's plot is drawn (its screenshot shows
the data and template colours), and the summary's filters change the visible rows.
"""

import io
import shutil
import time

import numpy as np
import pytest

from omnispectra.report import inspect_catalogue
from omnispectra.report.html import COLOURS

pytest.importorskip("bokeh")
webdriver = pytest.importorskip("selenium.webdriver")

#: A loaded machine (CI shares 2 cores) gets this long, well above the 1 s a page takes here.
LOAD_LIMIT_S = 6.0
_IDLE = ("return window.Bokeh === undefined || "
         "(Bokeh.documents.length > 0 && Bokeh.documents.every(d => d.is_idle))")


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless browser test needs chromium and chromedriver (apt-get install chromium "
                    "chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def report(catalogue, fitter, tmp_path_factory):
    return inspect_catalogue(catalogue, tmp_path_factory.mktemp("browser") / "rep", templates=fitter,
                             per_page=6)


def _open(browser, path) -> float:
    """Load a page and wait until Bokeh has drawn what is in view; the seconds it took."""
    start = time.perf_counter()
    browser.get(path.as_uri())
    while not browser.execute_script(_IDLE):
        if time.perf_counter() - start > 30:
            pytest.fail(f"{path.name} did not finish drawing in 30 s")
        time.sleep(0.02)
    return time.perf_counter() - start


def _console_errors(browser) -> list:
    return [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def _colour_pixels(png: bytes, colour: str) -> int:
    from matplotlib.image import imread

    rgb = (imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(int)
    target = np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=-1) < 40).sum())


def test_pages_load_without_errors_and_draw_a_panel(browser, report, tmp_path):
    for path in (report, report.parent / "page-001.html", report.parent / "page-002.html"):
        seconds = _open(browser, path)
        assert _console_errors(browser) == [], path.name
        assert seconds < LOAD_LIMIT_S, f"{path.name} took {seconds:.1f} s"
    _open(browser, report.parent / "page-001.html")
    plot = browser.find_element("id", "plot-0")
    assert plot.size["height"] >= 200
    shot = plot.screenshot_as_png
    (tmp_path / "panel.png").write_bytes(shot)
    assert _colour_pixels(shot, COLOURS["data"]) > 300  # the spectrum is drawn
    assert _colour_pixels(shot, COLOURS["model"]) > 100  # and the template over it


def test_filters_change_the_visible_rows(browser, report):
    from selenium.webdriver.support.ui import Select

    _open(browser, report)

    def visible() -> int:
        return browser.execute_script("return Array.from(document.getElementById('cat').tBodies[0].rows)"
                                      ".filter(r => !r.hidden).length")

    shown = browser.find_element("id", "shown")
    assert visible() == 12 and shown.text == "12"
    Select(browser.find_element("id", "f-class")).select_by_value("GALAXY")
    assert visible() == 4 and shown.text == "4"
    Select(browser.find_element("id", "f-flag")).select_by_value("clean")
    assert visible() == 3
    Select(browser.find_element("id", "f-class")).select_by_value("")
    Select(browser.find_element("id", "f-flag")).select_by_visible_text("LOW_SN")
    assert visible() == 3
    Select(browser.find_element("id", "f-flag")).select_by_value("")
    conf = browser.find_element("id", "f-conf")
    conf.clear()
    conf.send_keys("0.945")  # galaxies 3, 6, 9 (0.95-0.97); stars are at 0.87-0.90, galaxy 0 at 0.94
    assert visible() == 3
    # sorting by confidence puts the most confident row first
    conf.clear()
    conf.send_keys("0")
    browser.find_element("xpath", "//table[@id='cat']//th[text()='confidence']").click()
    browser.find_element("xpath", "//table[@id='cat']//th[text()='confidence']").click()
    first = browser.execute_script("return document.getElementById('cat').tBodies[0].rows[0].dataset.conf")
    assert float(first) == pytest.approx(0.97, abs=1e-6)
