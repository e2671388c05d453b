"""Time an inspection report's pages in headless Chromium (Debian chromium + chromium-driver).

Usage: python scripts/inspect_report_timing.py REPORT_FOLDER

For index.html and every page-NNN.html: seconds from navigation until Bokeh has drawn
what is in view (``Bokeh.documents`` idle), the console errors and warnings, and for the
first page the seconds to draw all of its panels (scrolled through to the end).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

IDLE = ("return window.Bokeh === undefined || "
        "(Bokeh.documents.length > 0 && Bokeh.documents.every(d => d.is_idle))")
ALL_DRAWN = ("return Array.from(document.querySelectorAll('div.plot[data-plot]'))"
             ".every(el => el.dataset.drawn)")


def wait(driver, script: str, start: float) -> float:
    while not driver.execute_script(script):
        time.sleep(0.02)
    return time.perf_counter() - start


def main(folder: Path) -> None:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        times = []
        for path in [folder / "index.html", *sorted(folder.glob("page-*.html"))]:
            start = time.perf_counter()
            driver.get(path.as_uri())
            seconds = wait(driver, IDLE, start)
            problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
            times.append(seconds)
            print(f"{path.name:16s} {seconds:5.2f} s  console errors/warnings: {len(problems)}")
        print(f"pages: max {max(times[1:]):.2f} s, median {sorted(times[1:])[len(times[1:]) // 2]:.2f} s")
        start = time.perf_counter()
        driver.get((folder / "page-001.html").as_uri())
        wait(driver, IDLE, start)
        height = driver.execute_script("return document.body.scrollHeight")
        for y in range(0, height, 800):
            driver.execute_script(f"window.scrollTo(0, {y})")
            time.sleep(0.05)
        seconds = wait(driver, ALL_DRAWN, start)
        seconds = wait(driver, IDLE, start)
        print(f"page-001: all panels drawn (scrolled through) in {seconds:.2f} s")
    finally:
        driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
