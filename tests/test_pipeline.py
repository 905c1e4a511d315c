"""The whole smoke pipeline, run once for real: notebooks, MLflow runs, promotion, report, summary.json."""

from __future__ import annotations

import json
import os
import re

import mlflow
import nbformat
import numpy as np
import pytest

from powerpipe.forecast import data, features
from powerpipe.core import paths, tags
from powerpipe.spec.config import load_config
from powerpipe.spec.steps import build_steps

pytestmark = pytest.mark.slow

SMOKE_TRAINING_POINTS = len(load_config(paths.SMOKE_CONFIG).training_points())


@pytest.fixture(scope="module")
def summary(smoke_run):
    return json.loads((smoke_run["run_dir"] / "summary.json").read_text())


@pytest.fixture(scope="module")
def client(smoke_run):
    return mlflow.MlflowClient(smoke_run["tracking_uri"])


def test_exit_code_and_summary_shape(smoke_run, summary):
    assert smoke_run["exit_code"] == 0
    assert summary["status"] == "ok"
    assert set(summary) == {"pipeline_run_id", "mlflow_parent_run_id", "status", "started", "finished", "data",
                            "as_of", "data_period", "monitoring", "alerts", "grid_points", "promoted", "report",
                            "error"}
    assert summary["error"] is None
    # The first run of a fresh store: no production model to monitor yet, nothing cut, the data's hours.
    assert summary["as_of"] is None and summary["alerts"] == []
    assert summary["monitoring"]["status"] == "no_model" and {"persistence", "climatology"} <= set(summary["monitoring"])
    assert summary["data_period"] == {"start": "2013-01-01T00:00:00+00:00", "end": "2016-12-31T23:00:00+00:00"}
    assert summary["pipeline_run_id"] == smoke_run["run_dir"].name
    assert summary["data"]["source"] == "synthetic"
    assert summary["data"]["sha256"] == data.file_sha256(smoke_run["run_dir"] / summary["data"]["path"])
    stages = [p["stage"] for p in summary["grid_points"]]
    # the winner refit on every hour (stages.promote.refit) is a promote-stage notebook of its own
    assert stages == ["process"] + ["train"] * SMOKE_TRAINING_POINTS + ["compare", "promote", "report"]
    for point in summary["grid_points"]:
        assert set(point) >= {"stage", "notebook", "parameters", "status", "metrics", "mlflow_run_id",
                              "output_notebook", "seconds"}
        assert point["status"] == "ok"
        assert (smoke_run["run_dir"] / point["output_notebook"]).is_file()  # relative to the summary


def test_executed_notebooks_have_outputs_in_a_browsable_layout(smoke_run, summary):
    run_dir = smoke_run["run_dir"]
    # One executed notebook per step, each under its stage (training ones under their notebook's name).
    steps = build_steps(load_config(paths.SMOKE_CONFIG))
    expected = {f"{step.folder}/{step.label}.ipynb" for step in steps}
    assert {"process/make_processed_data.ipynb", "train/model_rf/model_rf__n_estimators_2__max_depth_4.ipynb",
            "compare/compare_runs.ipynb", "report/weekly_report.ipynb"} <= expected
    refits = [p["output_notebook"] for p in summary["grid_points"] if p["stage"] == "promote"]  # the winner's refit
    assert len(refits) == 1 and refits[0].startswith("promote/") and refits[0].endswith("__refit.ipynb")
    expected |= set(refits)
    assert {p["output_notebook"] for p in summary["grid_points"]} == expected
    for relative in expected:
        nb = nbformat.read(run_dir / relative, as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), relative
        if not relative.startswith("report/"):
            assert (run_dir / relative).with_suffix(".html").is_file()


def test_child_runs_metrics_params_and_notebook_artifacts(smoke_run, summary, client):
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tags.SYNTHETIC_DATA] == "true"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    monitoring = [r for r in children if r.data.tags[tags.KIND] == tags.KIND_MONITORING]  # before training
    assert [r.info.run_id for r in monitoring] == [summary["monitoring"]["mlflow_run_id"]]
    children = [r for r in children if r.data.tags[tags.KIND] == tags.KIND_NOTEBOOK]
    assert len(children) == len(summary["grid_points"])
    training = [r for r in children if r.data.tags[tags.STAGE] == "train"]
    assert len(training) == SMOKE_TRAINING_POINTS
    for run in children:
        assert run.info.status == "FINISHED"
        assert re.fullmatch(r"[0-9a-f]{64}", run.data.tags[tags.NOTEBOOK_SHA256])
        assert run.data.tags[tags.DATA_SHA256] == parent.data.tags[tags.PROCESSED_DATA_SHA256]
        assert "mlflow.source.git.commit" in run.data.tags
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "notebook")}
        stem = run.info.run_name
        assert f"notebook/{stem}.ipynb" in artifacts
        if run.data.tags[tags.STAGE] != "report":
            assert f"notebook/{stem}.html" in artifacts
    for run in training:
        for key in ("rmse", "mae", "r2", "solar_rmse", "solar_mae", "solar_r2", "wind_rmse", "wind_mae", "wind_r2"):
            assert key in run.data.metrics, (run.info.run_name, key)
        assert "actual_vs_predicted.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
        point = next(p for p in summary["grid_points"] if p["mlflow_run_id"] == run.info.run_id)
        assert point["metrics"]["rmse"] == pytest.approx(run.data.metrics["rmse"])
        for key, value in point["parameters"].items():
            assert run.data.params[key] == str(value)
    keras = next(r for r in training if r.data.tags[tags.NOTEBOOK] == "model_keras.ipynb")
    assert len(client.get_metric_history(keras.info.run_id, "loss")) == 2  # autolog, one per epoch


def test_best_run_by_rmse_has_the_production_alias(smoke_run, summary, client):
    training = [p for p in summary["grid_points"] if p["stage"] == "train"]
    best = min(training, key=lambda p: p["metrics"]["rmse"])
    refit = next(p for p in summary["grid_points"] if p["stage"] == "promote")
    version = client.get_model_version_by_alias("BestModel", "production")
    # registered: the best grid point's configuration refit on every hour, chosen on the grid point's scores
    assert version.run_id == refit["mlflow_run_id"] and refit["parameters"] == best["parameters"]
    assert summary["promoted"] == {"name": "BestModel", "version": str(version.version),
                                   "run_id": refit["mlflow_run_id"], "metric": "rmse",
                                   "value": pytest.approx(best["metrics"]["rmse"]),
                                   "evaluated_run_id": best["mlflow_run_id"], "refit_run_id": refit["mlflow_run_id"],
                                   "action": "promotion"}
    assert version.tags[tags.PIPELINE_RUN_ID] == summary["pipeline_run_id"]
    assert version.tags[tags.EVALUATED_RUN] == best["mlflow_run_id"]
    processed = data.load_processed(smoke_run["run_dir"] / "data" / "germany.csv")
    assert version.tags[tags.TRAINED_UNTIL] == processed.index.max().isoformat()
    assert client.get_run(refit["mlflow_run_id"]).data.tags[tags.REFIT_OF] == best["mlflow_run_id"]
    mlflow.set_tracking_uri(smoke_run["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/BestModel@production")
    frame = data.load_processed(smoke_run["run_dir"] / "data" / "germany.csv").head(3)
    answer = model.predict(features.raw_input(frame))  # the raw schema: timestamp + weather
    assert answer.shape == (3, 8) and list(answer.columns[:2]) == ["solar_GW", "wind_GW"]  # + p10, p50, p90 of each


def test_report_is_standalone_html_without_code(smoke_run, summary, client):
    assert summary["report"] == "report/weekly_report.html"
    html = (smoke_run["run_dir"] / summary["report"]).read_text()
    version = summary["promoted"]["version"]
    assert f"BestModel version {version}" in html
    assert "refit on every hour" in html and summary["promoted"]["evaluated_run_id"] in html
    assert "History of" in html and "alias-history" in html  # the alias history table: one promotion
    assert "SYNTHETIC DATA" in html
    assert "jp-CodeCell" in html and "jp-InputArea-editor" not in html.split("</style>")[-1]
    assert "import mlflow" not in html and "figures.show" not in html
    assert html.count("plotly-graph-div") >= 2 and "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]+src=\"https?://", html)  # nothing fetched from a CDN
    parent_artifacts = {a.path for a in client.list_artifacts(summary["mlflow_parent_run_id"], "report")}
    assert "report/weekly_report.html" in parent_artifacts
    # plotly.js (about 5 MB) is inlined once, in the HTML; the executed report notebook does not repeat it.
    assert "* plotly.js v" in html
    executed = smoke_run["run_dir"] / "report" / "weekly_report.ipynb"
    assert "plotly.js v" not in executed.read_text() and executed.stat().st_size < 1_000_000
    assert oct(executed.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # atomic writes keep the usual mode


def test_report_draws_the_band_and_scores_the_intervals(smoke_run, summary):
    """The rendered report: the forecast's p10-p90 band under the lines, the table of coverage, CRPS skill and
    nRMSE beside R², and the reliability diagram (of the evaluated run, for a refit model)."""
    html = (smoke_run["run_dir"] / summary["report"]).read_text()
    figures = [json.loads(m) for m in re.findall(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html, re.S)]
    traces = [trace for data in figures for trace in data]
    band = [t for t in traces if t.get("name") == "p10-p90 band"]
    assert len(band) == 2 and all(t["fill"] == "tonexty" and len(_values(t["y"])) == 14 * 24 for t in band)
    upper = [t for t in traces if t.get("name") == "p10-p90 band (upper)"]
    low, high = (np.asarray(_values(t["y"]), dtype=float) for t in (band[0], upper[0]))
    assert (high >= low).all() and (low >= 0).all() and (high > low).any()
    assert "The shaded band is the forecast's 80 % interval" in html
    for heading in ("How sure the forecasts are", "coverage of the 80 % interval", "CRPS skill vs climatology",
                    "nRMSE (% of capacity)", "Published figures for Germany", "Reliability of the quantiles"):
        assert heading in html, heading
    reliability = next(t for t in traces if str(t.get("name", "")).startswith("Solar"))
    assert len(_values(reliability["y"])) == 19  # 5 % … 95 %


def _values(encoded) -> list:
    """A plotly trace's values: a list, or the typed array plotly encodes (``{"dtype", "bdata"}``)."""
    if isinstance(encoded, dict):
        import base64

        return np.frombuffer(base64.b64decode(encoded["bdata"]), dtype=encoded["dtype"]).tolist()
    return list(encoded)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_compare_notebook_shows_leaderboard(smoke_run, client, summary):
    nb = nbformat.read(smoke_run["run_dir"] / "compare" / "compare_runs.ipynb", as_version=4)
    text = json.dumps([c.get("outputs") for c in nb.cells if c.cell_type == "code"])
    assert "model_rf.ipynb" in text and "model_keras.ipynb" in text
    compare = next(p for p in summary["grid_points"] if p["stage"] == "compare")
    artifacts = {a.path for a in client.list_artifacts(compare["mlflow_run_id"])}
    assert {"leaderboard.csv", "keras_loss_curves.png"} <= artifacts
