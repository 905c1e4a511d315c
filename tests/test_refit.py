"""The weekly loop's promotion: the production model's configuration retrained on the same split (a
like-for-like gate), the winner refit on every hour and registered, the alias history and rollback.

The slow tests run a tiny notebook that honours the evaluation contract (``split: none`` for a refit):
a median-like regressor whose predictions depend on the hours it learnt, so that a refit model
re-scored on the test hours would not score what its configuration scores on unseen hours. The fast
tests build versions in a store directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from powerpipe.cli import main as cli
from powerpipe.core import tags
from powerpipe.forecast import data

from .conftest import FakeProject, make_notebook
from .dashboard_fixtures import copy_store, empty_store, pipeline_store  # noqa: F401 - fixtures

MODEL = "RefitModel"
TEST_START = "2016-06-08"
# `quantile` sets the prediction (a quantile of the training hours per target): 0.5 beats 0.9.
REFIT_PARAMETERS = "data_path: str | None = None\nevaluation: dict | None = None\nquantile: float = 0.5"
REFIT_CELLS = (
    "import mlflow\nfrom sklearn.dummy import DummyRegressor\nfrom powerpipe.core import tags\n"
    "from powerpipe.forecast import data, modeling, evaluation as ev\nfrom powerpipe.tracking import store as tracking",
    "df = data.load(data_path)\nspec = ev.resolve(evaluation)\nX_train, X_test, y_train, y_test = ev.holdout(df, spec)\n"
    "run = tracking.notebook_run()\nmlflow.set_tag(tags.EVALUATION, spec.to_json())",
    "model = DummyRegressor(strategy='quantile', quantile=quantile).fit(X_train[data.FEATURES], y_train)\n"
    "metrics = modeling.evaluate(y_test, model.predict(X_test[data.FEATURES])) if spec.has_test else {}\n"
    "tracking.record_metrics(metrics)\ntracking.log_model(model, X_train[data.FEATURES], flavor='sklearn')",
)


class RefitProject(FakeProject):
    """FakeProject with a notebook that can be refit (it takes ``evaluation``), scored on a time split."""

    def __init__(self, root: Path, experiment: str):
        super().__init__(root, experiment)
        make_notebook(root / "median.ipynb", REFIT_PARAMETERS, *REFIT_CELLS)

    def refit_config(self, quantiles: list[float], refit: bool | None = True, test_start: str = TEST_START,
                     name: str = "refit.yaml") -> Path:
        promote = {"metric": "rmse", "model_name": MODEL}
        if refit is not None:
            promote["refit"] = refit
        config = {"experiment": self.experiment, "root": ".",
                  "evaluation": {"split": "time", "test_start": test_start, "folds": 0},
                  "stages": {"train": [{"notebook": "median.ipynb", "grid": {"quantile": quantiles}}],
                             "promote": promote}}
        path = self.root / name
        path.write_text(yaml.safe_dump(config))
        return path

    def version(self, version: str):
        return self.client().get_model_version(MODEL, version)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return RefitProject(tmp_path, "refit")


def _last_hour(path: Path) -> str:
    return data.load_processed(path).index.max().isoformat()


@pytest.mark.slow
def test_refit_registers_the_winner_fitted_on_every_hour_then_the_gate_retrains_the_holder(project):
    from powerpipe.tracking.alias_history import history

    code, first = project.run(project.refit_config([0.9]))
    assert code == 0, first
    promoted = first["promoted"]
    evaluated = next(p for p in first["grid_points"] if p["stage"] == "train")
    refit = next(p for p in first["grid_points"] if p["stage"] == "promote")
    assert refit["status"] == "ok" and refit["output_notebook"].startswith("promote/")
    # summary.json names both runs: the one whose scores chose it, the refit whose model is registered
    assert promoted["evaluated_run_id"] == evaluated["mlflow_run_id"]
    assert promoted["refit_run_id"] == promoted["run_id"] == refit["mlflow_run_id"]
    v1 = project.version(promoted["version"])
    assert v1.run_id == refit["mlflow_run_id"]
    assert v1.tags[tags.TRAINED_UNTIL] == _last_hour(project.data_path)  # every hour learnt
    assert v1.tags[tags.EVALUATED_RUN] == evaluated["mlflow_run_id"]
    assert json.loads(v1.tags[tags.SCORES])["rmse"] == pytest.approx(evaluated["metrics"]["rmse"])
    refit_run = project.client().get_run(refit["mlflow_run_id"])
    assert refit_run.data.tags[tags.REFIT_OF] == evaluated["mlflow_run_id"]
    assert refit_run.data.tags[tags.STAGE] == "promote" and "rmse" not in refit_run.data.metrics

    # A week later (the test window moved by a day here), a better challenger: the holder's configuration
    # (quantile 0.9) is retrained on this run's split and compared on the same hours; the registered
    # (refit) model itself is never re-scored on hours it learnt.
    code, second = project.run(project.refit_config([0.5], test_start="2016-06-09"))
    assert code == 0, second
    champion = next(p for p in second["grid_points"] if p["stage"] == "train" and p["parameters"]["quantile"] == 0.9)
    challenger = next(p for p in second["grid_points"] if p["stage"] == "train" and p["parameters"]["quantile"] == 0.5)
    champion_run = project.client().get_run(champion["mlflow_run_id"])
    assert champion["status"] == "ok" and champion["parameters"] == {"quantile": 0.9}
    assert champion_run.data.tags[tags.CHAMPION_OF] == f"{MODEL}/{promoted['version']}"
    assert champion_run.data.tags[tags.EVALUATION] == project.client().get_run(
        challenger["mlflow_run_id"]).data.tags[tags.EVALUATION]  # the identical split: the same test hours
    assert second["promoted"]["evaluated_run_id"] == challenger["mlflow_run_id"]
    v2 = project.version(second["promoted"]["version"])
    assert float(v2.tags[tags.PREVIOUS_METRIC_VALUE]) == pytest.approx(champion["metrics"]["rmse"])
    moves = history(project.client(), MODEL, "production")
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [("promotion", "", "1"), ("promotion", "1", "2")]
    assert moves[1].previous_value == pytest.approx(champion["metrics"]["rmse"])

    # The same grid again: the winner's grid point stands for the holder (no extra point), nothing moves.
    code, third = project.run(project.refit_config([0.5, 0.9], test_start="2016-06-09"))
    assert code == 0 and third["promoted"] is None
    assert [p["stage"] for p in third["grid_points"]] == ["train", "train"]


@pytest.mark.slow
def test_refit_off_registers_the_evaluated_runs_model_as_before(project):
    code, summary = project.run(project.refit_config([0.5], refit=False))
    assert code == 0
    point = summary["grid_points"][0]
    assert [p["stage"] for p in summary["grid_points"]] == ["train"]  # no refit step
    assert summary["promoted"]["run_id"] == summary["promoted"]["evaluated_run_id"] == point["mlflow_run_id"]
    assert summary["promoted"]["refit_run_id"] is None
    version = project.version(summary["promoted"]["version"])
    assert version.run_id == point["mlflow_run_id"]
    assert version.tags[tags.EVALUATED_RUN] == point["mlflow_run_id"]
    # the last hour of its training window: the hour before the test period
    assert version.tags[tags.TRAINED_UNTIL] == "2016-06-07T23:00:00+00:00"


# -- fast: refit switch, alias history and rollback on a store built directly ------------------------
def test_refit_switch_defaults_on_where_the_notebooks_take_evaluation(project):
    from powerpipe.core.exceptions import ConfigError
    from powerpipe.run.refit import refit_enabled
    from powerpipe.spec.config import load_config, validate_parameters
    from powerpipe.core import paths

    assert refit_enabled(load_config(project.refit_config([0.5], refit=None)))
    assert not refit_enabled(load_config(project.refit_config([0.5], refit=False)))
    assert not refit_enabled(load_config(project.config({"level": [0.0]})))  # the fake notebook cannot be refit
    forced = project.config({"level": [0.0]})
    raw = yaml.safe_load(forced.read_text())
    raw["stages"]["promote"]["refit"] = True
    forced.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="cannot be refit"):
        validate_parameters(load_config(forced))
    assert load_config(paths.DEFAULT_CONFIG).promote.refit is True
    assert load_config(paths.SMOKE_CONFIG).promote.refit is True
    assert load_config(paths.RUNNER_DIR / "tutorial.yaml").promote.refit is False  # the tutorial's own model


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):  # noqa: F811 - the fixture
    """A store with three runs (rmse 3, 2, 1) whose 'model' artifact is a plain file, and a pipeline file."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = tmp_path / "out"
    uri = copy_store(empty_store, outputs / "mlflow.db")  # MLflow's tables made once per module
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("history")
    runs = []
    for rmse in (3.0, 2.0, 1.0):
        run = client.create_run(experiment, tags={tags.NOTEBOOK: "x.ipynb", tags.PARAMETERS: json.dumps({"r": rmse})})
        model_file = tmp_path / "MLmodel"
        model_file.write_text("flavors: {}\n")
        client.log_artifact(run.info.run_id, str(model_file), artifact_path=tags.MODEL_ARTIFACT)
        client.log_metric(run.info.run_id, "rmse", rmse)
        client.set_terminated(run.info.run_id)
        runs.append((run.info.run_id, rmse))
    make_notebook(tmp_path / "x.ipynb", "data_path: str | None = None")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"experiment": "history", "root": ".", "stages": {
        "train": [{"notebook": "x.ipynb"}], "promote": {"metric": "rmse", "model_name": MODEL}}}))
    return {"client": client, "uri": uri, "outputs": outputs, "runs": runs, "config": config}


def _promote(store, index: int, previous: float | None, force: bool = False):
    from powerpipe.spec.config import PromoteSpec
    from powerpipe.tracking.promotion import Candidate, Champion, promote

    run_id, rmse = store["runs"][index]
    champion = Champion("champion-run", previous) if previous is not None else None
    return promote(store["client"], [Candidate(run_id, "ok", {"rmse": rmse})], PromoteSpec(model_name=MODEL),
                   f"pipeline-{index}", Path("unused.csv"), force=force, champion=champion)


def _rollback(store, *extra: str) -> int:
    return cli.main(["rollback", "--config", str(store["config"]), "--outputs", str(store["outputs"]),
                     "--tracking-uri", store["uri"], *extra])


def test_every_move_is_recorded_and_rollback_goes_back_to_the_previous_holder(store, capsys):
    from powerpipe.tracking.alias_history import history, history_rows

    client = store["client"]
    assert _promote(store, 0, None).version == "1"
    assert _promote(store, 1, previous=3.0).version == "2"  # beats the holder's configuration on the same hours
    assert _promote(store, 0, previous=1.5) is None  # worse than the holder: kept, nothing recorded
    assert _rollback(store) == cli.EXIT_OK
    assert "version 2 -> version 1" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == "1"
    moves = history(client, MODEL, "production")
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("promotion", "", "1"), ("promotion", "1", "2"), ("rollback", "2", "1")]
    assert moves[1].value == 2.0 and moves[1].previous_value == 3.0 and moves[1].pipeline_run_id == "pipeline-1"
    assert moves[2].by.startswith("rollback by ") and moves[2].value == 3.0 and moves[2].previous_value == 2.0
    # the run rolled away from is not promoted straight back by the next pipeline run (its cached result)
    assert client.get_run(store["runs"][1][0]).data.tags[tags.GATE_LOST_TO] == f"{MODEL}/1"
    assert _promote(store, 1, previous=3.0) is None
    rows = history_rows(moves)
    assert rows[0]["move"] == "rollback" and rows[0]["version"] == "2 → 1"  # newest first
    # a forced promotion, then a rollback to a version named
    assert _promote(store, 2, previous=0.5, force=True).version == "3"
    assert history(client, MODEL, "production")[-1].action == "forced promotion"
    assert _rollback(store, "--to", "2") == cli.EXIT_OK
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == "2"
    assert len(history(client, MODEL, "production")) == 5


def test_rollback_refuses_an_unknown_version_and_a_held_lock(store, capsys):
    from powerpipe.run.runlock import RunLock
    from powerpipe.tracking.alias_history import history

    _promote(store, 0, None)
    assert _rollback(store) == cli.EXIT_USAGE  # no earlier holder
    assert "no earlier holder" in capsys.readouterr().err
    _promote(store, 1, previous=3.0)
    assert _rollback(store, "--to", "7") == cli.EXIT_USAGE
    assert "has no version '7'; its versions: 2, 1" in capsys.readouterr().err
    lock = RunLock(store["outputs"])
    lock.acquire("20260101-000000-000-beef")  # a pipeline run of this (live) process holds the outputs folder
    try:
        assert _rollback(store, "--to", "1") == cli.EXIT_LOCKED
        assert "20260101-000000-000-beef" in capsys.readouterr().err
    finally:
        lock.release("20260101-000000-000-beef")
    assert str(store["client"].get_model_version_by_alias(MODEL, "production").version) == "2"
    assert len(history(store["client"], MODEL, "production")) == 2
    assert not (store["outputs"] / ".powerpipe.lock").exists()


def test_the_holders_retraining_draws_figures_only_when_the_run_draws_them(store, tmp_path):
    """A run without figures (a replay's week without a report) retrains the holder's configuration
    without figures too, and says so on its run; a run with figures leaves the notebook's default."""
    from types import SimpleNamespace

    from powerpipe.run.refit import plan_champion
    from powerpipe.spec.config import load_config
    from powerpipe.spec.steps import build_steps

    # the store's runs record x.ipynb at r = 3, 2, 1; the pipeline's grid does not hold r = 3
    make_notebook(tmp_path / "x.ipynb", "data_path: str | None = None\nr: float = 0.0\nfigures: bool = True")
    _promote(store, 0, None)
    config = load_config(store["config"])
    steps = build_steps(config)

    def plan(figures: bool):
        pipeline = SimpleNamespace(config=config, recorder=SimpleNamespace(client=store["client"]),
                                   of_stage=lambda stage: [s for s in steps if s.stage == stage],
                                   options=SimpleNamespace(figures=figures))
        return plan_champion(pipeline)

    without, drawn = plan(False), plan(True)
    assert without.step.shown == drawn.step.shown == {"r": 3.0}
    assert without.step.extra_parameters.get("figures") is False
    assert json.loads(without.step.extra_tags[tags.EXTRA_PARAMETERS])["figures"] is False
    assert without.step.extra_tags[tags.CHAMPION_OF] == f"{MODEL}/1"
    assert "figures" not in drawn.step.extra_parameters and tags.EXTRA_PARAMETERS not in drawn.step.extra_tags


def test_dashboard_card_shows_the_alias_history(pipeline_store, tmp_path):
    """On a store built without running a notebook (dashboard_fixtures): two recorded moves, newest first."""
    import mlflow

    from powerpipe.dashboard.app import create_app
    from powerpipe.tracking import alias_history

    from .test_dashboard import component, dash_request, text

    uri = copy_store(pipeline_store["tracking_uri"], tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(uri)
    version = pipeline_store["summary"]["promoted"]["version"]
    for action, left, value, previous in (("promotion", "", 1.5, None), ("rollback", "7", 1.5, 2.25)):
        alias_history.record(client, "BestModel", alias_history.AliasMove(
            alias="production", action=action, from_version=left, to_version=version,
            at="2024-01-0%dT00:00:00+00:00" % (1 if action == "promotion" else 2), pipeline_run_id="p1",
            metric="rmse", value=value, previous_value=previous, trained_until="2016-12-31T23:00:00+00:00"))
    app = create_app(uri)
    card = dash_request(app.server.test_client(), [("model-card", "children"), ("model-version", "data")],
                        [("model-poll", "n_intervals", 0)], [("model-version", "data", None)])["model-card"]["children"]
    table = component(card, "alias-history-table")
    rows = [text(row) for row in table["props"]["children"][1]["props"]["children"]]
    assert len(rows) == 2
    assert "rollback" in rows[0] and f"7 → {version}" in rows[0] and "2.25" in rows[0]  # newest first
    assert "promotion" in rows[1] and f"– → {version}" in rows[1] and "2016-12-31 23:00" in rows[1]
