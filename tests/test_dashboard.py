"""The dashboard without a browser: date windows, the model cache, runs rows, artifacts, layout and callbacks.

Callbacks are exercised as the browser calls them: POST /_dash-update-component through Flask's test
client. The fast tests run on a store that ``dashboard_fixtures`` builds in seconds without running a
notebook (or on empty / unreachable stores for the error states); the ``slow`` ones check the same
things on the store of the real smoke pipeline.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from powerpipe.dashboard import artifacts, production_model, runs, shown_data, store, windows
from powerpipe.core import paths, tags
from powerpipe.core.exceptions import ArtifactNotServed, NoProductionModel, StoreUnreachableError

from .conftest import free_port
from .dashboard_fixtures import RENAMED_HTML, REPORT_TITLE, copy_store, global_tracking_uri
from .dashboard_fixtures import empty_store, pipeline_store  # noqa: F401 - fixtures

ROOT = paths.PROJECT_ROOT
DATA_START = pd.Timestamp("2013-01-01 00:00", tz="UTC")
DATA_END = pd.Timestamp("2016-12-31 23:00", tz="UTC")


# -- helpers -----------------------------------------------------------------------------------------
def dash_request(client, outputs: list[tuple[str, str]], inputs: list[tuple[str, str, object]],
                 state: list[tuple[str, str, object]] = ()) -> dict:
    """Call a callback as the Dash renderer does; returns {component id: {property: value}}."""
    specs = [{"id": i, "property": p} for i, p in outputs]
    body = {
        "output": f"{outputs[0][0]}.{outputs[0][1]}" if len(outputs) == 1
        else "..{}..".format("...".join(f"{i}.{p}" for i, p in outputs)),
        "outputs": specs[0] if len(specs) == 1 else specs,
        "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
        "changedPropIds": [f"{i}.{p}" for i, p, _ in inputs],
        "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
    }
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return response.get_json()["response"]


def render(client, pathname: str):
    return dash_request(client, [("page", "children")], [("url", "pathname", pathname)])["page"]["children"]


def predictions(client, start, end, version="1"):
    answer = dash_request(client, [("prediction-figure", "figure"), ("range-message", "children")],
                          [("date-range", "start_date", start), ("date-range", "end_date", end),
                           ("model-version", "data", version)])
    return answer["prediction-figure"]["figure"], answer.get("range-message", {}).get("children")


def walk(tree):
    """Every serialized component in a Dash tree."""
    if isinstance(tree, list):
        for item in tree:
            yield from walk(item)
    elif isinstance(tree, dict) and "props" in tree:
        yield tree
        for value in tree["props"].values():
            yield from walk(value)


def ids(tree) -> set[str]:
    return {c["props"]["id"] for c in walk(tree) if isinstance(c["props"].get("id"), str)}


def component(tree, component_id: str) -> dict:
    return next(c for c in walk(tree) if c["props"].get("id") == component_id)


def text(tree) -> str:
    """All visible text of a tree, joined."""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, list):
        return " ".join(text(t) for t in tree)
    if isinstance(tree, dict) and "props" in tree:
        return text(tree["props"].get("children"))
    return "" if tree is None else str(tree)


def values(array) -> list[float]:
    """A figure's y values: a JSON list, or plotly's base64 typed array ({"dtype", "bdata"})."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


@pytest.fixture(scope="module")
def app(pipeline_store):
    from powerpipe.dashboard.app import create_app

    return create_app(pipeline_store["tracking_uri"])


@pytest.fixture
def store_copy(pipeline_store, tmp_path) -> str:
    """A copy of the pipeline store's database (artifacts stay where they are), free to change."""
    return copy_store(pipeline_store["tracking_uri"], tmp_path / "mlflow.db")


def summary_of(run) -> dict:
    return json.loads((run["run_dir"] / tags.SUMMARY_ARTIFACT).read_text())


# -- date windows ------------------------------------------------------------------------------------
def test_window_inside_the_data_is_inclusive_of_the_end_day():
    window = windows.choose_window("2016-06-01", "2016-06-30", DATA_START, DATA_END)
    assert window.ok and window.note is None
    assert window.start == pd.Timestamp("2016-06-01", tz="UTC")
    assert window.end == pd.Timestamp("2016-07-01", tz="UTC")


def test_single_day_window_is_24_hours():
    window = windows.choose_window("2016-06-01", "2016-06-01", DATA_START, DATA_END)
    assert window.end - window.start == pd.Timedelta(days=1)


@pytest.mark.parametrize("start, end, expected", [
    (None, "2016-06-30", "Pick a start and an end date"),
    ("2016-06-01", None, "Pick a start and an end date"),
    ("", "", "Pick a start and an end date"),
    ("2016-06-30", "2016-06-01", "is after the end date"),
    ("2019-01-01", "2019-02-01", "outside the data, which covers 2013-01-01 to 2016-12-31"),
    ("2010-01-01", "2012-12-31", "outside the data"),
    ("June", "July", "not dates"),
])
def test_window_problems_are_named(start, end, expected):
    window = windows.choose_window(start, end, DATA_START, DATA_END)
    assert not window.ok
    assert expected in window.problem


def test_window_partly_outside_is_cut_to_the_data_and_says_so():
    window = windows.choose_window("2016-12-15", "2017-01-31", DATA_START, DATA_END)
    assert window.ok
    assert window.end == pd.Timestamp("2017-01-01", tz="UTC")
    assert "Cut to the data" in window.note


def test_default_window_is_the_last_31_days():
    assert windows.default_window(DATA_START, DATA_END) == ("2016-12-01", "2016-12-31")
    short_end = pd.Timestamp("2013-01-10 05:00", tz="UTC")
    assert windows.default_window(DATA_START, short_end) == ("2013-01-01", "2013-01-10")


def test_window_frames_slice_hourly_and_switch_to_daily_means():
    index = pd.date_range("2016-01-01", "2016-12-31 23:00", freq="h", tz="UTC")
    frame = pd.DataFrame({"solar_GW": range(len(index)), "wind_GW": 1.0}, index=index, dtype="float64")
    predicted = frame * 2
    month = windows.choose_window("2016-03-01", "2016-03-31", index[0], index[-1])
    recorded, pred, resolution = windows.window_frames(frame, predicted, month)
    assert resolution == "hourly" and len(recorded) == len(pred) == 31 * 24  # UTC: no clock change
    assert recorded.index.tz is None and recorded.index[0] == pd.Timestamp("2016-03-01")
    assert (pred["solar_GW"] == recorded["solar_GW"] * 2).all()
    year = windows.choose_window("2016-01-01", "2016-12-31", index[0], index[-1])
    recorded, pred, resolution = windows.window_frames(frame, predicted, year)
    assert resolution == "daily means" and len(recorded) == 366
    assert recorded["solar_GW"].iloc[0] == pytest.approx(sum(range(24)) / 24)


def test_window_figure_is_recorded_vs_predicted_figure():
    from dash._utils import to_json

    from powerpipe.forecast.figures import recorded_vs_predicted_figure

    index = pd.date_range("2016-06-01", periods=48, freq="h")
    recorded = pd.DataFrame({"solar_GW": np.arange(48.0), "wind_GW": np.arange(48.0) / 2}, index=index)
    predicted = recorded * 1.1
    # a model with intervals: its p10-p90 band under each panel's lines
    predicted = predicted.assign(solar_GW_p10=recorded["solar_GW"] * 0.9, solar_GW_p90=recorded["solar_GW"] * 1.3,
                                 wind_GW_p10=recorded["wind_GW"] * 0.8, wind_GW_p90=recorded["wind_GW"] * 1.4)
    fast = json.loads(to_json(windows.WindowFigure()(recorded, predicted, "two days")))
    reference = json.loads(to_json(recorded_vs_predicted_figure(recorded, predicted, title="two days")))
    assert fast["layout"] == reference["layout"]
    assert len(fast["data"]) == len(reference["data"]) == 8
    for ours, theirs in zip(fast["data"], reference["data"]):
        assert {k: v for k, v in ours.items() if k not in "xy"} == {k: v for k, v in theirs.items() if k not in "xy"}
        assert list(pd.to_datetime(ours["x"])) == list(pd.to_datetime(theirs["x"]))
        assert values(ours["y"]) == pytest.approx(values(theirs["y"]))
    assert [trace["name"] for trace in fast["data"][:2]] == ["p10-p90 band (upper)", "p10-p90 band"]
    # a model without intervals: the band's traces stay empty
    plain = json.loads(to_json(windows.WindowFigure()(recorded, recorded * 1.1, "two days")))
    assert [len(trace["x"]) for trace in plain["data"]] == [0, 0, 48, 48] * 2


# -- the model cache ---------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fake_loader(loaded: list):
    def load(client, uri, name, alias, version):
        loaded.append(version)
        return production_model.ServingModel(
            name, alias, version, "run", "run name", "nb.ipynb", "notebook/run name.html", {}, {}, "", "", "", "", "",
            "", "", shown_data.ShownData(Path("x.csv"), "test", False, None), pd.DataFrame(), pd.DataFrame())
    return load


def new_version(client, uri: str, like):
    """Another version of the model ``like`` is a version of (as the pipeline's promotion registers one)."""
    with global_tracking_uri(uri):  # MLflow's registry resolves models:/<model id> through the global URI
        return client.create_model_version(like.name, source=like.source, run_id=like.run_id, model_id=like.model_id)


def test_cache_loads_once_and_reloads_only_after_the_alias_moves(store_copy):
    import mlflow

    client = mlflow.MlflowClient(store_copy)
    first = client.get_model_version_by_alias("BestModel", "production")
    second = new_version(client, store_copy, first)
    clock, loaded = FakeClock(), []
    cache = production_model.ProductionModelCache(store_copy, poll_seconds=180, clock=clock, loader=fake_loader(loaded))

    assert cache.get().version == str(first.version)
    assert cache.get().version == str(first.version)
    client.set_registered_model_alias("BestModel", "production", second.version)
    clock.now += 179  # within the poll interval the registry is not asked
    assert cache.get().version == str(first.version)
    clock.now += 2
    assert cache.get().version == str(second.version)
    clock.now += 500  # alias unchanged: asked, not reloaded
    assert cache.get().version == str(second.version)
    assert loaded == [str(first.version), str(second.version)]


def test_real_loader_leaves_mlflows_global_tracking_uri_alone(store_copy, pipeline_store):
    import mlflow

    elsewhere = f"sqlite:///{Path(store_copy[len('sqlite:///'):]).parent / 'elsewhere.db'}"
    with global_tracking_uri(elsewhere):
        model = production_model.ProductionModelCache(store_copy).get()
        assert mlflow.get_tracking_uri() == elsewhere
    assert model.version == summary_of(pipeline_store)["promoted"]["version"]
    assert len(model.predictions) == len(model.frame)


def test_cache_keeps_serving_when_a_new_version_fails_to_load(store_copy):
    import mlflow

    client = mlflow.MlflowClient(store_copy)
    first = client.get_model_version_by_alias("BestModel", "production")
    clock, loaded = FakeClock(), []
    working = fake_loader(loaded)

    def loader(client, uri, name, alias, version):
        if version != str(first.version):
            raise OSError("model files missing")
        return working(client, uri, name, alias, version)

    cache = production_model.ProductionModelCache(store_copy, poll_seconds=10, clock=clock, loader=loader)
    assert cache.get().version == str(first.version)
    second = new_version(client, store_copy, first)
    client.set_registered_model_alias("BestModel", "production", second.version)
    clock.now += 11
    assert cache.get().version == str(first.version)
    assert f"version {second.version} could not be loaded: model files missing" == cache.last_check_error


def test_cache_keeps_serving_when_the_store_goes_away(store_copy):
    clock, loaded = FakeClock(), []
    cache = production_model.ProductionModelCache(store_copy, poll_seconds=60, clock=clock, loader=fake_loader(loaded))
    version = cache.get().version
    Path(store_copy[len("sqlite:///"):]).unlink()
    clock.now += 61
    assert cache.get().version == version
    assert cache.last_check_error and "no tracking store" in cache.last_check_error
    assert loaded == [version]


def test_cache_without_a_store_or_model_says_so(tmp_path, empty_store):
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(NoProductionModel, match="no tracking store"):
        production_model.ProductionModelCache(f"sqlite:///{missing}").get()
    assert not missing.exists() and not missing.parent.exists()  # never creates an empty store
    with pytest.raises(NoProductionModel, match="no model models:/BestModel@production"):
        production_model.ProductionModelCache(empty_store).get()
    with pytest.raises(StoreUnreachableError, match="not reachable"):
        production_model.ProductionModelCache(f"http://127.0.0.1:{free_port()}").get()


def test_loaded_model_carries_its_card_and_predictions_on_its_training_data(app, pipeline_store):
    check_loaded_model(app, pipeline_store)


def check_loaded_model(app, run) -> None:
    model = app.model_cache.get()
    promoted = summary_of(run)["promoted"]
    assert model.version == promoted["version"] and model.run_id == promoted["run_id"]
    assert model.promoted_at and model.promoted_metric == "rmse"
    assert float(model.promoted_value) == pytest.approx(promoted["value"])
    assert model.metrics["rmse"] == pytest.approx(promoted["value"])
    assert model.params  # the grid point's parameters
    assert model.shown_data.path == run["run_dir"] / "data" / paths.PROCESSED_DATA_NAME
    assert model.shown_data.synthetic and model.shown_data.matches_training
    points = ["solar_GW", "wind_GW"]  # then the quantiles, when the model was logged with intervals
    assert list(model.predictions.columns[:2]) == points
    assert set(model.predictions.columns[2:]) <= {f"{target}_p{level}" for target in points for level in (10, 50, 90)}
    assert model.predictions.index.equals(model.frame.index)
    assert model.predictions.notna().all().all()


# -- pipeline runs and artifacts ---------------------------------------------------------------------
def test_runs_rows_match_the_summary(pipeline_store):
    check_runs_rows(pipeline_store)


def check_runs_rows(run) -> None:
    summary = summary_of(run)
    rows = runs.pipeline_runs(store.open_client(run["tracking_uri"]))
    assert len(rows) == 1
    row = rows[0]
    assert row.pipeline_run_id == summary["pipeline_run_id"] and row.run_id == summary["mlflow_parent_run_id"]
    points = summary["grid_points"]
    assert row.notebooks_ok == sum(p["status"] == "ok" for p in points)
    assert row.notebooks_failed == sum(p["status"] == "failed" for p in points)
    trained = [p["metrics"]["rmse"] for p in points if p["stage"] == "train" and p["status"] == "ok"]
    assert row.best_value == pytest.approx(min(trained))
    assert row.promoted_version == summary["promoted"]["version"] and row.is_production
    assert row.synthetic and row.report_run_id == row.run_id
    assert {link.run_id for link in row.notebooks} == {p["mlflow_run_id"] for p in points if p["mlflow_run_id"]}


def test_runs_rows_of_an_empty_store(empty_store):
    assert runs.pipeline_runs(store.open_client(empty_store)) == []


def test_artifact_route_serves_notebooks_and_report(app, pipeline_store):
    check_artifacts_served(app, pipeline_store)


def check_artifacts_served(app, run) -> None:
    client = app.server.test_client()
    row = runs.pipeline_runs(store.open_client(run["tracking_uri"]))[0]
    report = client.get(f"/artifacts/{row.run_id}/report/weekly_report.html")
    assert report.status_code == 200 and report.content_type.startswith("text/html")
    assert report.get_data() == (run["run_dir"] / "report" / "weekly_report.html").read_bytes()
    assert "sandbox" in report.headers["Content-Security-Policy"]
    for link in row.notebooks:
        response = client.get(f"/artifacts/{link.run_id}/{link.html_path}")
        assert response.status_code == 200, link
        assert b"<html" in response.get_data()[:2000].lower()


@pytest.mark.parametrize("path", [
    "/artifacts/{run}/notebook/../../../../../../etc/passwd",
    "/artifacts/{run}/notebook/..%2F..%2Fmeta.yaml",
    "/artifacts/{run}/%2e%2e/%2e%2e/meta.yaml",
    "/artifacts/{run}//etc/passwd",
    "/artifacts/{run}/notebook/%2Fetc%2Fpasswd.html",
    "/artifacts/{run}/model/MLmodel",  # a real artifact, but not one the dashboard serves
    "/artifacts/{run}/notebook/not_there.html",
    "/artifacts/../../../etc/passwd/summary.json",
    "/artifacts/0123456789abcdef0123456789abcdef/summary.json",  # no such run
    "/artifacts/{run}",
])
def test_artifact_route_refuses_traversal_and_unknown_artifacts(app, pipeline_store, path):
    promoted_run = summary_of(pipeline_store)["promoted"]["run_id"]
    response = app.server.test_client().get(path.format(run=promoted_run))
    assert response.status_code == 404
    assert b"root:" not in response.get_data()


def test_fetch_artifact_refuses_paths_before_asking_the_store(tmp_path):
    class NoStore:
        def __getattr__(self, name):
            raise AssertionError(f"the store was asked ({name})")

    run = "0123456789abcdef0123456789abcdef"
    for run_id, path in [(run, "../summary.json"), (run, "notebook/../../x.html"), (run, "/etc/passwd"),
                         (run, "notebook/a/b.html"), ("../" + run, "summary.json"), (run.upper(), "summary.json")]:
        with pytest.raises(ArtifactNotServed):
            artifacts.fetch_artifact(NoStore(), run_id, path, tmp_path)


def run_with(run_name: str, stage: str = "train", **run_tags: str):
    """A run as the MLflow client returns it, as far as notebook_html_artifact reads it."""
    return SimpleNamespace(info=SimpleNamespace(run_name=run_name),
                           data=SimpleNamespace(tags={tags.STAGE: stage, **run_tags}))


def test_notebook_link_is_the_runners_tag_else_the_old_run_name_rule():
    tagged = run_with("model_rf__n_estimators_4", **{tags.NOTEBOOK_HTML_ARTIFACT: "notebook/elsewhere.html"})
    assert artifacts.notebook_html_artifact(tagged) == "notebook/elsewhere.html"
    # Runs from before the tag: named after the run, and the report stage's code-free report.
    assert artifacts.notebook_html_artifact(run_with("model_rf__n_estimators_4")) == \
        "notebook/model_rf__n_estimators_4.html"
    assert artifacts.notebook_html_artifact(run_with("weekly_report", stage="report")) == tags.REPORT_ARTIFACT


def test_runs_rows_link_each_notebook_where_its_run_says(pipeline_store):
    row = runs.pipeline_runs(store.open_client(pipeline_store["tracking_uri"]))[0]
    links = {link.label: link.html_path for link in row.notebooks}
    assert links["model_rf__max_depth_4"] == RENAMED_HTML  # tagged, and not named after its run
    assert links["model_rf__max_depth_2"] == "notebook/model_rf__max_depth_2.html"  # an untagged, older run
    assert links["weekly_report"] == tags.REPORT_ARTIFACT


class FailingStore:
    """A client whose every query fails with an MLflow error of the given code."""

    def __init__(self, error_code: str):
        self.error_code = error_code

    def __getattr__(self, name):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import ErrorCode

        def fail(*args, **kwargs):
            raise MlflowException(f"{name} failed\nwith a long story", error_code=ErrorCode.Value(self.error_code))
        return fail


def test_a_failing_store_is_told_apart_from_a_missing_run_or_model(tmp_path):
    run = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ArtifactNotServed, match="no run"):
        artifacts.fetch_artifact(FailingStore("RESOURCE_DOES_NOT_EXIST"), run, "summary.json", tmp_path)
    with pytest.raises(StoreUnreachableError, match="get_run failed$"):
        artifacts.fetch_artifact(FailingStore("TEMPORARILY_UNAVAILABLE"), run, "summary.json", tmp_path)
    cache = production_model.ProductionModelCache("sqlite:///unused.db")
    with pytest.raises(NoProductionModel, match="no model models:/BestModel@production"):
        cache._alias_version(FailingStore("RESOURCE_DOES_NOT_EXIST"))
    with pytest.raises(StoreUnreachableError, match="could not be read: get_model_version_by_alias failed$"):
        cache._alias_version(FailingStore("INTERNAL_ERROR"))


MODULE_PATH = "powerpipe.dashboard."  # a module path (gunicorn's), not a tag


def test_dashboard_code_names_tags_and_artifacts_from_powerpipe_tags():
    """No tag or artifact name spelled out: ``powerpipe.tags`` declares them all."""
    files = sorted((ROOT / "powerpipe" / "dashboard").glob("*.py")) + [Path(__file__), Path(__file__).parent / "dashboard_fixtures.py"]
    namespace = tags.KIND.partition(".")[0] + "."  # of every tag of ours
    spelled = []
    for path in files:
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            text = token.string.lstrip("rbfRBF").strip("\"'")
            if token.type == tokenize.STRING and text.startswith(namespace) and not text.startswith(MODULE_PATH):
                spelled.append(f"{path.name}:{token.start[0]}: {token.string}")
    assert not spelled
    assert not (ROOT / "powerpipe" / "dashboard_data.py").exists()


# -- layout and callbacks ----------------------------------------------------------------------------
def test_layout_has_sidebar_and_page(app):
    from dash import dcc

    layout = app.layout
    links = [c for c in layout._traverse() if isinstance(c, dcc.Link)]
    assert {link.href for link in links} == {"/", "/runs"}
    assert {"url", "page", "nav-production", "nav-runs"} <= {getattr(c, "id", None) for c in layout._traverse()}


def test_production_page_has_card_seasonal_figure_and_picker(app):
    check_production_page(app)


def check_production_page(app) -> None:
    page = render(app.server.test_client(), "/")
    assert {"model-card", "model-version", "seasonal-figure", "date-range", "prediction-figure"} <= ids(page)
    picker = component(page, "date-range")["props"]
    model = app.model_cache.get()
    assert picker["min_date_allowed"] == f"{model.data_start:%Y-%m-%d}"
    assert picker["max_date_allowed"] == f"{model.data_end:%Y-%m-%d}"
    assert (picker["start_date"], picker["end_date"]) == windows.default_window(model.data_start, model.data_end)
    seasonal = component(page, "seasonal-figure")["props"]["figure"]
    assert [t["name"] for t in seasonal["data"]] == ["2013", "2014", "2015", "2016"]
    assert seasonal["layout"]["xaxis"]["rangeslider"]["visible"] is True


def test_model_card_shows_version_run_parameters_metrics_and_promotion(app, pipeline_store):
    check_model_card(app, pipeline_store)


def check_model_card(app, run) -> None:
    client = app.server.test_client()
    answer = dash_request(client, [("model-card", "children"), ("model-version", "data")],
                          [("model-poll", "n_intervals", 0)], [("model-version", "data", None)])
    card, version = answer["model-card"]["children"], answer["model-version"]["data"]
    # A refresh that finds the same version leaves the version store (and so the figure) alone.
    again = dash_request(client, [("model-card", "children"), ("model-version", "data")],
                         [("model-poll", "n_intervals", 1)], [("model-version", "data", version)])
    assert "model-version" not in again and "model-card" in again
    promoted = summary_of(run)["promoted"]
    model = app.model_cache.get()
    assert version == promoted["version"]
    shown = text(card)
    assert f"BestModel version {promoted['version']}" in shown
    assert promoted["run_id"] in shown and model.run_name in shown
    assert model.promoted_at.replace("T", " ").replace("+00:00", " UTC") in shown
    assert summary_of(run)["pipeline_run_id"] in shown
    assert "SYNTHETIC DATA" in shown
    assert str(model.shown_data.path) in shown
    for key, value in model.params.items():
        assert key in text(component(card, "model-params")) and value in text(component(card, "model-params"))
    assert f"{promoted['value']:.4g}" in text(component(card, "model-metrics"))
    # The executed training notebook: the path the runner tagged (or, for older runs, named after the run).
    notebook = next(c["props"]["href"] for c in walk(card) if c.get("type") == "A")
    # (a model refit on every hour links the notebook of its evaluated run, whose scores chose it)
    assert notebook == artifacts.artifact_url(promoted.get("evaluated_run_id") or promoted["run_id"], model.notebook_html)
    response = client.get(notebook)
    assert response.status_code == 200 and b"<html" in response.get_data()[:2000].lower()


def test_prediction_callback_draws_the_window(app):
    check_prediction_callback(app)


def check_prediction_callback(app) -> None:
    client = app.server.test_client()
    figure, message = predictions(client, "2016-06-01", "2016-07-01")
    assert message is None
    band = [t for t in figure["data"] if t["name"].startswith("p10-p90 band")]
    assert len(band) == 4 and all(len(t["x"]) in (0, 31 * 24) for t in band)  # filled by a model with intervals
    figure = {**figure, "data": [t for t in figure["data"] if t not in band]}
    assert [t["name"] for t in figure["data"]] == ["recorded", "predicted", "recorded", "predicted"]
    assert all(len(t["x"]) == 31 * 24 for t in figure["data"])
    assert figure["data"][0]["x"][0].startswith("2016-06-01T00:00")
    assert figure["data"][0]["x"][-1].startswith("2016-07-01T23:00")
    assert "01 Jun 2016 to 01 Jul 2016" in figure["layout"]["title"]["text"]
    model = app.model_cache.get()
    expected = model.predictions.loc["2016-06-01":"2016-07-01"]
    recorded = model.frame.loc["2016-06-01":"2016-07-01"]
    assert values(figure["data"][0]["y"]) == pytest.approx(list(recorded["solar_GW"]))
    assert values(figure["data"][1]["y"]) == pytest.approx(list(expected["solar_GW"]))
    assert values(figure["data"][3]["y"]) == pytest.approx(list(expected["wind_GW"]))
    other, _ = predictions(client, "2015-01-01", "2015-01-31")
    assert other["data"][2]["x"][0].startswith("2015-01-01") and other["data"][2]["x"] != figure["data"][0]["x"]


@pytest.mark.parametrize("start, end, expected", [
    ("2016-07-01", "2016-06-01", "is after the end date"),
    (None, None, "Pick a start and an end date"),
    ("2020-01-01", "2020-01-31", "outside the data"),
])
def test_prediction_callback_states(app, start, end, expected):
    figure, message = predictions(app.server.test_client(), start, end)
    assert figure["data"] == []
    assert expected in figure["layout"]["annotations"][0]["text"]
    assert expected in text(message)


def test_prediction_callback_long_and_clipped_ranges(app):
    client = app.server.test_client()
    figure, message = predictions(client, "2014-01-01", "2015-12-31")
    recorded = next(t for t in figure["data"] if t["name"] == "recorded")
    assert "daily means" in figure["layout"]["title"]["text"] and len(recorded["x"]) == 730
    assert all(not t["x"] for t in figure["data"] if "band" in t["name"])  # no band over daily means
    assert message is None
    figure, message = predictions(client, "2016-12-20", "2017-02-01")
    assert len(next(t for t in figure["data"] if t["name"] == "recorded")["x"]) == 12 * 24
    assert "Cut to the data" in text(message)


def test_runs_page_lists_the_pipeline_run_with_links(app, pipeline_store):
    check_runs_page(app, pipeline_store)


def check_runs_page(app, run) -> None:
    page = render(app.server.test_client(), "/runs")
    summary = summary_of(run)
    table = component(page, "runs-table")
    shown = text(table)
    assert summary["pipeline_run_id"] in shown
    assert f"v{summary['promoted']['version']} (production)" in shown
    ok = sum(p["status"] == "ok" for p in summary["grid_points"])
    failed = sum(p["status"] == "failed" for p in summary["grid_points"])
    assert f"{ok} / {failed}" in shown
    hrefs = [c["props"]["href"] for c in walk(table) if c.get("type") == "A"]
    assert f"/artifacts/{summary['mlflow_parent_run_id']}/report/weekly_report.html" in hrefs
    client = app.server.test_client()
    for href in hrefs:
        assert client.get(href).status_code == 200, href


def test_unknown_page(app):
    page = render(app.server.test_client(), "/nope")
    assert "Page not found" in text(page) and "/nope" in text(page)


def test_pages_without_a_production_model_say_which_command_to_run(empty_store):
    from powerpipe.dashboard.app import create_app

    client = create_app(empty_store).server.test_client()
    page = text(render(client, "/"))
    assert "No production model yet" in page
    assert f"python runner/run_all.py --tracking-uri {empty_store}" in page
    assert "Traceback" not in page
    runs_page = text(render(client, "/runs"))
    assert "No pipeline runs yet" in runs_page and "python runner/run_all.py" in runs_page
    figure, message = predictions(client, "2016-06-01", "2016-06-30")
    assert figure["data"] == [] and "No production model yet" in text(message)


def test_default_store_hint_needs_no_flag():
    assert store.run_command_hint(paths.default_tracking_uri()) == "python runner/run_all.py"


def test_pages_with_an_unreachable_store():
    from powerpipe.dashboard.app import create_app

    uri = f"http://user:s3cret@127.0.0.1:{free_port()}"
    client = create_app(uri).server.test_client()
    for pathname in ("/", "/runs"):
        page = text(render(client, pathname))
        assert "Tracking store unreachable" in page and "s3cret" not in page and "Traceback" not in page
    row_link = client.get("/artifacts/0123456789abcdef0123456789abcdef/summary.json")
    assert row_link.status_code == 503


# -- command line and WSGI ---------------------------------------------------------------------------
def test_cli_binds_to_loopback_by_default():
    from powerpipe.dashboard.app import parse_args

    args = parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8050)
    args = parse_args(["--host", "0.0.0.0", "--port", "9001", "--tracking-uri", "sqlite:///x.db"])
    assert (args.host, args.port, args.tracking_uri) == ("0.0.0.0", 9001, "sqlite:///x.db")


@pytest.mark.slow
def test_gunicorn_imports_the_server_from_the_repository_root(pipeline_store):
    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed in this environment")
    result = subprocess.run([str(gunicorn), "--check-config", "powerpipe.dashboard.app:server"], cwd=ROOT,
                            env={"PATH": str(Path(sys.executable).parent), "MLFLOW_TRACKING_URI": pipeline_store["tracking_uri"]},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the same on the real smoke pipeline's store -----------------------------------------------------
@pytest.fixture(scope="module")
def smoke_app(smoke_run):
    from powerpipe.dashboard.app import create_app

    return create_app(smoke_run["tracking_uri"])


@pytest.mark.slow
def test_dashboard_on_the_smoke_pipelines_store(smoke_app, smoke_run):
    """The fast tests' checks on what the runner really records: the model, runs rows, links, pages."""
    assert smoke_run["exit_code"] == 0
    check_loaded_model(smoke_app, smoke_run)
    check_runs_rows(smoke_run)
    check_artifacts_served(smoke_app, smoke_run)
    check_production_page(smoke_app)
    check_model_card(smoke_app, smoke_run)
    check_prediction_callback(smoke_app)
    check_runs_page(smoke_app, smoke_run)
    report = smoke_app.server.test_client().get(
        f"/artifacts/{summary_of(smoke_run)['mlflow_parent_run_id']}/{tags.REPORT_ARTIFACT}")
    assert REPORT_TITLE in report.get_data(as_text=True)
