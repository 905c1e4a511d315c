"""End to end in headless Chromium: the dashboard started as the README says, on the smoke pipeline's store.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (``.ci/run`` installs the
first two; requirements-dev.txt the third); skipped with the reason when any is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from powerpipe.core import paths

from .conftest import free_port, wait_until_answering

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


@contextlib.contextmanager
def serve_dashboard(tracking_uri: str, folder):
    """``python dashboard/app.py`` on a free loopback port for ``tracking_uri``, ready once its home page answers."""
    port = free_port()
    log_path = folder / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, str(paths.PROJECT_ROOT / "dashboard" / "app.py"), "--tracking-uri",
             tracking_uri, "--port", str(port)],
            cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url + "/", server, log_path, "dashboard")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def dashboard_url(smoke_run, tmp_path):
    """The dashboard as the README starts it, on the smoke pipeline's store."""
    with serve_dashboard(smoke_run["tracking_uri"], tmp_path) as url:
        yield url


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


def test_a_watched_model_shows_its_alert_first_then_its_live_error_and_the_alias_history(smoke_run, tmp_path, browser):
    """The weekly loop as a reader of the dashboard sees it: the production model scored on three weeks it
    never learnt (monitoring, as the next weekly run does it), an alert in red above the card, the evergreen
    panel with its weekly figure and table, and the history of @production."""
    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from powerpipe.core import tags
    from powerpipe.forecast import data
    from powerpipe.spec.monitor import MonitorSpec
    from powerpipe.tracking.monitoring import monitor

    from .dashboard_fixtures import copy_store

    uri = copy_store(smoke_run["tracking_uri"], tmp_path / "store" / "mlflow.db")
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("BestModel", "production")
    client.set_model_version_tag("BestModel", version.version, tags.TRAINED_UNTIL, "2016-12-10T23:00:00+00:00")
    frame = data.load_processed(smoke_run["run_dir"] / "data" / paths.PROCESSED_DATA_NAME)
    parent = client.create_run(client.get_experiment_by_name("predicting_wind_solar_smoke").experiment_id).info
    monitoring, alerts = monitor(client, "BestModel", "production", frame, experiment_id=parent.experiment_id,
                                 parent_run_id=parent.run_id, pipeline_run_id="next-week",
                                 thresholds=MonitorSpec(max_rmse_vs_holdout=0.01), context={"as_of": "2017-01-01"})
    assert monitoring["status"] == "ok" and len(alerts) == 1 and len(monitoring["weeks"]) == 4

    wait = WebDriverWait(browser, 60)
    with serve_dashboard(uri, tmp_path) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_elements(By.ID, "evergreen-figure"))
        page = browser.find_element(By.TAG_NAME, "body").text
        alert = browser.find_element(By.ID, "monitoring-alerts")
        assert "MONITORING ALERT" in alert.text and alerts[0][:40] in alert.text
        # the alert stands above the card's evergreen panel
        assert alert.location["y"] < browser.find_element(By.ID, "evergreen").location["y"]
        evergreen = browser.find_element(By.ID, "evergreen").text
        assert f"BestModel version {version.version}" in evergreen and "hours it never learnt" in evergreen
        assert "p10–p90 interval" in evergreen  # the smoke model answers quantiles: their live coverage
        rows = browser.find_elements(By.CSS_SELECTOR, "#evergreen-weeks tbody tr")
        assert [row.text.split()[0] for row in rows] == [week["week"] for week in monitoring["weeks"]]
        traces = browser.execute_script(
            "const plot = document.querySelector('#evergreen-figure .js-plotly-plot');"
            "return plot ? plot.data.map(t => t.name) : [];")
        assert traces[:3] == [f"version {version.version}", "persistence", "climatology"]
        history = browser.find_element(By.ID, "alias-history").text
        assert "History of @production" in history and "promotion" in history.lower()
        assert "Traceback" not in page
        browser.save_screenshot(str(tmp_path / "watched_model.png"))
