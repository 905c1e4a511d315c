"""End to end in headless Chromium: the dashboard started as the README says, on the smoke pipeline's store.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (``.ci/run`` installs the
first two; requirements-dev.txt the third); skipped with the reason when any is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from powerpipe.core import paths

from .conftest import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Checked before any fixture runs, so a machine without a browser does not run the smoke pipeline for nothing.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="headless browser test needs Debian's chromium and chromium-driver "
                              "(apt-get install -y chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (requirements-dev.txt)")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1800"]


@pytest.fixture
def dashboard_url(smoke_run, tmp_path):
    """``python dashboard/app.py`` on a free loopback port, ready once its home page answers."""
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, str(paths.PROJECT_ROOT / "dashboard" / "app.py"), "--tracking-uri",
             smoke_run["tracking_uri"], "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("dashboard did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.binary_location = CHROMIUM
    # An explicit driver and browser: selenium-manager never looks for (or downloads) either.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.save_screenshot(str(tmp_path / "last_page.png"))  # kept in pytest's tmp folder for a failure
        driver.quit()


def type_date(element, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(value)
    element.send_keys(Keys.ENTER)


def test_model_card_and_prediction_figure_follow_the_date_range(smoke_run, dashboard_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    summary = json.loads((smoke_run["run_dir"] / "summary.json").read_text())
    version = summary["promoted"]["version"]
    wait = WebDriverWait(browser, 60)
    browser.get(dashboard_url + "/")

    wait.until(lambda d: d.find_elements(By.ID, "model-card-title"))
    assert browser.find_element(By.ID, "model-card-title").text == f"BestModel version {version}"
    card = browser.find_element(By.ID, "model-card").text
    assert summary["promoted"]["run_id"] in card and summary["pipeline_run_id"] in card
    assert "SYNTHETIC DATA" in card
    # The evergreen panel: the smoke run's monitoring found no production model before it, so nothing live yet.
    wait.until(lambda d: d.find_elements(By.ID, "evergreen"))
    assert "Live since promotion" in browser.find_element(By.ID, "evergreen").text

    def figure_title(driver) -> str:
        titles = driver.find_elements(By.CSS_SELECTOR, "#prediction-figure .gtitle")
        return titles[0].text if titles else ""

    def first_x(driver) -> str:
        return driver.execute_script(
            "const plot = document.querySelector('#prediction-figure .js-plotly-plot');"
            "return plot && plot.data && plot.data.length ? String(plot.data[0].x[0]) : '';")

    wait.until(lambda d: "01 Dec 2016 to 31 Dec 2016" in figure_title(d))
    assert first_x(browser).startswith("2016-12-01")

    type_date(browser.find_element(By.ID, "date-range-start"), "2016-06-01")
    type_date(browser.find_element(By.ID, "date-range-end"), "2016-06-30")
    wait.until(lambda d: "01 Jun 2016 to 30 Jun 2016" in figure_title(d))
    assert "hourly" in figure_title(browser)
    assert first_x(browser).startswith("2016-06-01")
    points = browser.execute_script(
        "return document.querySelector('#prediction-figure .js-plotly-plot').data.map(t => t.x.length);")
    assert points == [30 * 24] * 8  # per panel: the p10-p90 band's two edges, recorded, predicted
    # The band is drawn: a filled area on each panel, its lower edge never above its upper one, never below 0.
    band = browser.execute_script(
        "const plot = document.querySelector('#prediction-figure .js-plotly-plot');"
        "const edges = plot.data.filter(t => t.name.startsWith('p10-p90 band'));"
        "return {fills: edges.map(t => t.fill || ''), low: Array.from(edges[1].y), high: Array.from(edges[0].y),"
        " shapes: plot.querySelectorAll('.fills path').length};")
    assert band["fills"] == ["", "tonexty"] * 2 and band["shapes"] >= 2
    assert all(0 <= low <= high for low, high in zip(band["low"], band["high"]))
    assert any(high > low for low, high in zip(band["low"], band["high"]))

    # An inverted range: a message, never a traceback.
    type_date(browser.find_element(By.ID, "date-range-start"), "2016-07-15")
    wait.until(lambda d: "after the end date" in d.find_element(By.ID, "range-message").text)
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def test_runs_page_links_open_report_and_notebooks(smoke_run, dashboard_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    summary = json.loads((smoke_run["run_dir"] / "summary.json").read_text())
    wait = WebDriverWait(browser, 60)
    browser.get(dashboard_url + "/")
    wait.until(lambda d: d.find_elements(By.ID, "nav-runs"))
    browser.find_element(By.ID, "nav-runs").click()
    wait.until(lambda d: d.find_elements(By.ID, "runs-table"))
    table = browser.find_element(By.ID, "runs-table")
    assert summary["pipeline_run_id"] in table.text
    report = table.find_element(By.LINK_TEXT, "weekly report").get_attribute("href")
    browser.get(report)
    wait.until(lambda d: "Weekly solar and wind report" in d.find_element(By.TAG_NAME, "body").text)
    browser.back()
    wait.until(lambda d: d.find_elements(By.ID, "runs-table"))
    browser.find_element(By.CSS_SELECTOR, "#runs-table summary").click()  # open the notebooks list
    links = browser.find_elements(By.CSS_SELECTOR, "#runs-table details a")
    assert len(links) == sum(1 for p in summary["grid_points"] if p["mlflow_run_id"])
    train = next(link for link in links if link.text.startswith("model_"))
    browser.get(train.get_attribute("href"))
    # The executed training notebook: its code and the metrics it recorded are in the page.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook"))
    assert "record_metrics" in browser.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
