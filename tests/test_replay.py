"""The replay (``powerpipe replay``): weeks as of each Monday, resumable, cached, and a report comparing
retraining policies; and the report rendering that a long-lived process repeats (issue 19).

The slow tests run a tiny notebook honouring the evaluation contract (a time split whose test window is
the data's last week, ``split: none`` for the refit) on two months of synthetic data, three weeks
replayed: once interrupted after its first week and started again, then once more (served from its state).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import nbformat
import pytest
import yaml

from powerpipe.core import paths, tags
from powerpipe.core.exceptions import ReplayError
from powerpipe.forecast import data

from .conftest import make_notebook

MODEL = "ReplayModel"
START, WEEKS = "2016-01-11", 3
PARAMETERS = "data_path: str | None = None\nevaluation: dict | None = None\nquantile: float = 0.5\nfigures: bool = True"
CELLS = (
    "import mlflow\nfrom sklearn.dummy import DummyRegressor\nfrom powerpipe.core import tags\n"
    "from powerpipe.forecast import data, modeling, evaluation as ev\nfrom powerpipe.tracking import store as tracking",
    "df = data.load(data_path)\nspec = ev.resolve(evaluation).against(df)\n"
    "X_train, X_test, y_train, y_test = ev.holdout(df, spec)\n"
    "run = tracking.notebook_run()\nmlflow.set_tag(tags.EVALUATION, spec.to_json())",
    "model = DummyRegressor(strategy='quantile', quantile=quantile).fit(X_train[data.FEATURES], y_train)\n"
    "metrics = modeling.evaluate(y_test, model.predict(X_test[data.FEATURES])) if spec.has_test else {}\n"
    "tracking.record_metrics(metrics)\ntracking.log_model(model, X_train[data.FEATURES], flavor='sklearn')",
    "if figures:  # as the model notebooks: a replay's weeks without reports draw none\n"
    "    import matplotlib.pyplot as plt\n    mlflow.log_figure(plt.figure(), 'figure.png')",
)


# -- fast: arguments, the policies' arithmetic, rendering twice -------------------------------------------------
def test_mondays_and_bad_starts():
    from powerpipe.run.replay import folder_name, mondays

    assert mondays("2016-01-04", 3) == ["2016-01-04", "2016-01-11", "2016-01-18"]
    assert len(mondays("2016-01-04", 52)) == 52 and mondays("2016-01-04", 52)[-1] == "2016-12-26"
    assert folder_name("2016-01-04", 52) == "replay-2016-01-04-52w"
    for start, weeks in (("2016-01-05", 3), ("2016-01-04 06:00", 3), ("2016-01-04", 0), ("next monday", 1)):
        with pytest.raises(ReplayError):
            mondays(start, weeks)


def test_policy_table_weights_weeks_by_hours_and_skips_unscored_weeks():
    from powerpipe.run.replay import policy_table

    def row(week, production, first, persistence, climatology, hours=168):
        return {"week": week, "production": {"rmse": production, "hours": hours}, "first_model": {"rmse": first},
                "persistence": {"rmse": persistence}, "climatology": {"rmse": climatology}}

    rows = [{"week": "2016-01-04", "production": None, "first_model": None, "persistence": None, "climatology": None},
            row("2016-01-11", 1.0, 1.0, 2.0, 4.0), row("2016-01-18", 2.0, 3.0, 2.0, 4.0, hours=84)]
    table = policy_table(rows)
    assert table["weeks"] == 2
    assert table["rmse"]["production"] == pytest.approx(math.sqrt((1 * 168 + 4 * 84) / 252))
    assert table["rmse"]["first_model"] == pytest.approx(math.sqrt((1 * 168 + 9 * 84) / 252))
    assert table["skill"]["production_vs_persistence"] == pytest.approx(1 - table["rmse"]["production"] / 2.0)
    assert table["weekly_skill"][0]["production_skill"] == pytest.approx(0.5)
    assert policy_table(rows[:1]) == {"weeks": 0, "rmse": {}, "skill": {}, "weekly_skill": []}


def test_weeks_without_reports_draw_no_figures_but_stay_the_same_grid_points():
    """``figures=False`` goes to the model notebooks and into the cache key, never into the configuration (the
    production model's grid point is recognised in every week); notebooks without the parameter get nothing."""
    from powerpipe.spec.config import load_config
    from powerpipe.spec.steps import Runtime, build_steps, without_figures

    config = load_config(paths.SMOKE_CONFIG)
    runtime = Runtime.planned(config)
    for step in build_steps(config):
        quiet = without_figures(step)
        if step.stage == "train":
            assert quiet.parameters(runtime) == {**step.parameters(runtime), "figures": False}
            assert quiet.cache_parameters(runtime) != step.cache_parameters(runtime)
            assert quiet.shown == step.shown and quiet.label == step.label
        else:  # process, compare, report: no figures parameter
            assert quiet == step


def test_retention_runs_every_keep_runs_weeks_and_after_the_last():
    from powerpipe.run.replay import collection_due

    due = [week for week in range(1, 12) if collection_due(week, 4, last=week == 11)]
    assert due == [4, 8, 11]
    assert not any(collection_due(week, None, last=True) for week in range(1, 12))
    assert all(collection_due(week, 1, last=False) for week in range(1, 12))


def test_a_folder_holding_a_replay_of_other_arguments_is_refused(tmp_path, monkeypatch):
    from powerpipe.run.options import RunOptions
    from powerpipe.run.replay import STATE_FILE, folder_name, run_replay

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_notebook(tmp_path / "median.ipynb", PARAMETERS, *CELLS)
    folder = tmp_path / "out" / folder_name(START, WEEKS)
    folder.mkdir(parents=True)
    other = {"replay": folder.name, "arguments": {"start": START, "weeks": WEEKS, "config": "other.yaml"}, "weeks": {}}
    (folder / STATE_FILE).write_text(json.dumps(other))
    options = RunOptions(config=_config(tmp_path), data="synthetic", outputs=tmp_path / "out", jobs=1)
    with pytest.raises(ReplayError, match="other arguments"):
        run_replay(options, START, WEEKS)
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]  # nothing ran


def test_the_report_renders_again_from_other_threads_and_working_folders(tmp_path, monkeypatch):
    """A long-lived process renders reports many times (a replay, a pytest session): nbconvert's template
    lookup must not depend on the CWD (a decoy template there, or a CWD deleted meanwhile) or the thread."""
    from powerpipe.execution.tasks import _render_report

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('rendered')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="rendered\n")]
    nb.cells.append(cell)
    notebook = tmp_path / "report.ipynb"
    nbformat.write(nb, notebook)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "offline_report.html.j2").write_text("DECOY {{ 1 }}")  # a file of the same name in the CWD
    gone = tmp_path / "gone"
    rendered, failures = [], []

    def render(name: str) -> None:
        try:
            html = _render_report(notebook, tmp_path / f"{name}.html") or tmp_path / f"{name}.html"
            rendered.append(Path(html).read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            failures.append(f"{name}: {type(exc).__name__}: {exc}")

    monkeypatch.chdir(tmp_path)
    render("main-1")
    for name, cwd in (("thread-decoy", decoy), ("thread-gone", gone), ("main-2", None)):
        if cwd is gone:
            gone.mkdir()
            monkeypatch.chdir(gone)
            shutil.rmtree(gone)  # the CWD is deleted under the process
        elif cwd is not None:
            monkeypatch.chdir(cwd)
        if name.startswith("thread"):
            worker = threading.Thread(target=render, args=(name,))
            worker.start()
            worker.join()
        else:
            monkeypatch.chdir(tmp_path)
            render(name)
    assert not failures, failures
    assert len(rendered) == 4
    for html in rendered:
        assert "rendered" in html and "DECOY" not in html
        assert "require.min.js" not in html  # the offline template, not the lab one


# -- slow: a three-week replay, interrupted, resumed, served from its state ------------------------------------
class Interrupted(Exception):
    pass


def _config(root: Path) -> Path:
    config = {"experiment": "replay", "root": ".",
              "evaluation": {"split": "time", "test_period": "1w", "folds": 0},
              "monitor": {"max_rmse_vs_holdout": 1.5},
              "stages": {"train": [{"notebook": "median.ipynb", "grid": {"quantile": [0.3, 0.6]}}],
                         "promote": {"metric": "rmse", "model_name": MODEL, "refit": True},
                         "report": {"notebook": str(paths.REPORT_TEMPLATES_DIR / "weekly_report.ipynb")}}}
    path = root / "replay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Three weeks: the first, then a stop (raised after it was recorded); started again through the command
    line (weeks 2 and 3); then once more (nothing runs)."""
    from powerpipe.cli import main as cli
    from powerpipe.run.options import RunOptions
    from powerpipe.run.replay import folder_name, load_state, run_replay

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("replay")
    make_notebook(root / "median.ipynb", PARAMETERS, *CELLS)
    data_path = data.write_processed(data.synthetic_frame("2015-12-01", "2016-01-31 23:00"), root / "small.csv")
    config, outputs = _config(root), root / "out"
    folder = outputs / folder_name(START, WEEKS)
    seen = []

    def stop_after_first(row: dict) -> None:
        seen.append(row["week"])
        raise Interrupted(row["week"])

    try:
        options = RunOptions(config=config, data=str(data_path), outputs=outputs, jobs=1, progress=False)
        with pytest.raises(Interrupted):
            run_replay(options, START, WEEKS, on_week=stop_after_first)
        after_first = load_state(folder)
        argv = ["replay", "--config", str(config), "--data", str(data_path), "--outputs", str(outputs),
                "--start", START, "--weeks", str(WEEKS), "--jobs", "1", "--report-every", "3", "--quiet"]
        resumed = cli.main(argv)
        state = load_state(folder)
        again = cli.main(argv)
        yield {"folder": folder, "after_first": after_first, "seen": seen, "resumed": resumed, "again": again,
               "state": state, "final": load_state(folder), "uri": paths.default_tracking_uri(folder)}
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def _week_runs(client, replay: str):
    experiment = client.get_experiment_by_name("replay")
    runs = client.search_runs([experiment.experiment_id],
                              f"{tags.equals(tags.KIND, tags.KIND_PIPELINE)} and {tags.equals(tags.REPLAY, replay)}")
    return {run.data.tags[tags.REPLAY_WEEK]: run for run in runs}


@pytest.mark.slow
def test_replay_runs_each_week_as_of_its_monday_and_resumes_after_a_stop(replayed):
    folder, state = replayed["folder"], replayed["state"]
    assert replayed["seen"] == [START] and list(replayed["after_first"]["weeks"]) == [START]
    assert replayed["resumed"] == 0
    assert sorted(state["weeks"]) == ["2016-01-11", "2016-01-18", "2016-01-25"]
    client = _client(replayed["uri"])
    runs = _week_runs(client, folder.name)
    assert sorted(runs) == sorted(state["weeks"])  # the resumed replay ran weeks 2 and 3 only: one run per week
    for day, row in state["weeks"].items():
        summary = json.loads((folder / row["pipeline_run_id"] / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["as_of"] == day
        assert summary["data_period"]["end"] < day
        assert runs[day].info.status == "FINISHED" and runs[day].info.run_id == row["mlflow_parent_run_id"]
        assert (summary["report"] is not None) == (day == "2016-01-25")  # --report-every 3: the third week only
        trained = [folder / row["pipeline_run_id"] / p["output_notebook"] for p in summary["grid_points"]
                   if p["stage"] == "train" and p["status"] == "ok"]
        assert trained and all(path.is_file() for path in trained)  # each executed notebook kept, and as HTML
        assert all(path.with_suffix(".html").is_file() == (day == "2016-01-25") for path in trained)  # only then
        for point in summary["grid_points"]:  # the page each run links to (dashboard) was logged: HTML or .ipynb
            if point["stage"] == "train" and point["status"] == "ok":
                linked = client.get_run(point["mlflow_run_id"]).data.tags[tags.NOTEBOOK_HTML_ARTIFACT]
                logged = [a.path for a in client.list_artifacts(point["mlflow_run_id"], tags.NOTEBOOK_ARTIFACT_DIR)]
                assert linked in logged and linked.endswith(".html" if day == "2016-01-25" else ".ipynb")
                drawn = [a.path for a in client.list_artifacts(point["mlflow_run_id"]) if a.path.endswith(".png")]
                assert drawn == (["figure.png"] if day == "2016-01-25" else [])  # figures in report weeks only
                run_tags = client.get_run(point["mlflow_run_id"]).data.tags  # and the run says why
                assert run_tags.get(tags.EXTRA_PARAMETERS) == (None if day == "2016-01-25" else '{"figures": false}')
                assert point["metrics"].get("rmse", 0) > 0  # the metrics either way
    experiment = client.get_experiment_by_name("replay")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")  # soak: nothing left
    weeks = sorted(state["weeks"].values(), key=lambda r: r["index"])
    assert weeks[0]["monitoring_status"] == "no_model" and weeks[0]["promoted"]["version"] == "1"
    assert state["first_model"]["version"] == "1"
    for row in weeks[1:]:  # from the second week on, the production model is watched on the week before
        assert row["monitoring_status"] == "ok" and row["production"]["rmse"] > 0
        assert row["production"]["hours"] == 168
        assert row["first_model"]["rmse"] > 0 and row["persistence"]["rmse"] > 0


@pytest.mark.slow
def test_the_replay_report_is_held_by_its_run_and_a_finished_replay_is_served_from_its_state(replayed):
    state, final = replayed["state"], replayed["final"]
    report = state["report"]
    assert report["status"] == "ok" and Path(report["html"]).is_file()
    html = Path(report["html"]).read_text(encoding="utf-8")
    assert "Replay of the weekly loop" in html and "Promotions and rollbacks" in html
    assert "require.min.js" not in html  # offline, as the weekly report
    client = _client(replayed["uri"])
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[tags.KIND] == tags.KIND_REPLAY
    assert tags.REPLAY_REPORT_HTML_NAME in [a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "report")]
    assert "cumulative_production_rmse" in run.data.metrics
    assert replayed["again"] == 0  # served from the state: same report, no new run
    assert final["report"]["cached"] and final["report"]["mlflow_run_id"] == report["mlflow_run_id"]
    assert len(_week_runs(client, replayed["folder"].name)) == WEEKS


@pytest.mark.slow
def test_the_reports_numbers_are_the_weeks_mlflow_runs(replayed):
    from powerpipe.execution.engine import read_scraps
    from powerpipe.run.replay import policy_table
    from powerpipe.tracking.alias_history import history

    state = replayed["state"]
    scraps = read_scraps(Path(state["report"]["notebook"]))
    shown = {row["week"]: row for row in scraps["replay_weeks"]}
    client = _client(replayed["uri"])
    experiment = client.get_experiment_by_name("replay").experiment_id
    recomputed = []
    for day, run in sorted(_week_runs(client, replayed["folder"].name).items()):
        children = client.search_runs([experiment], f"{tags.equals(tags.MLFLOW_PARENT_RUN_ID, run.info.run_id)}")
        monitoring = next(c for c in children if c.data.tags.get(tags.KIND) == tags.KIND_MONITORING)
        challengers = [c.data.metrics["rmse"] for c in children if c.data.tags.get(tags.STAGE) == "train"
                       and tags.CHAMPION_OF not in c.data.tags and "rmse" in c.data.metrics]
        assert shown[day]["challenger"] == pytest.approx(min(challengers))
        last = {}
        for key in ("model_rmse", "persistence_rmse", "climatology_rmse"):
            steps = client.get_metric_history(monitoring.info.run_id, f"week_{key}")
            last[key] = max(steps, key=lambda m: m.step).value if steps else None
        if last["model_rmse"] is None:
            assert shown[day]["production"] is None
            continue
        assert shown[day]["production"] == pytest.approx(last["model_rmse"])
        assert shown[day]["persistence"] == pytest.approx(last["persistence_rmse"])
        assert shown[day]["climatology"] == pytest.approx(last["climatology_rmse"])
        recomputed.append({"week": day, "production": {"rmse": last["model_rmse"], "hours": 168},
                           "first_model": {"rmse": shown[day]["first_model"]},
                           "persistence": {"rmse": last["persistence_rmse"]},
                           "climatology": {"rmse": last["climatology_rmse"]}})
    policies = scraps["replay_policies"]
    expected = policy_table(recomputed)
    assert policies["weeks"] == expected["weeks"] == WEEKS - 1
    for name, value in expected["rmse"].items():
        assert policies["rmse"][name] == pytest.approx(value)
    moves = history(client, MODEL, "production")
    assert [m["promoted"] for m in sorted(shown.values(), key=lambda r: r["week"])][0] == moves[0].to_version == "1"
