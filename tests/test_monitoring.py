"""The weekly loop, watched: test windows that move with the data, ``--as-of``, the production model scored on
the hours it never learnt against persistence and climatology, alerts and ``--fail-on-alert``, the report's
live section and the dashboard's evergreen panel.

Fast tests work on tiny frames, and on stores built in seconds (a scikit-learn model logged and registered
directly); the one slow test runs a tiny project twice, a week's worth of hours apart.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from powerpipe.core import paths, tags
from powerpipe.core.exceptions import ConfigError, DataError
from powerpipe.forecast import baselines, data, evaluation, watching, windows

from .conftest import FakeProject, make_notebook
from .dashboard_fixtures import copy_store, empty_store, global_tracking_uri, pipeline_store, unsynced_sqlite  # noqa: F401

MODEL = "WatchedModel"


# -- windows that move with the data ----------------------------------------------------------------------
def test_a_week_of_new_data_moves_the_test_start_and_the_end_of_training_by_a_week():
    spec = evaluation.Evaluation.from_dict({"split": "time", "test_period": "2w", "folds": 2, "fold_length": "week"})
    assert spec.is_relative and spec.test_start is None
    week1 = data.synthetic_frame("2016-01-01", "2016-03-06 23:00")
    week2 = data.synthetic_frame("2016-01-01", "2016-03-13 23:00")  # a week more
    X_train1, X_test1, _, _ = evaluation.holdout(week1, spec)
    X_train2, X_test2, _, _ = evaluation.holdout(week2, spec)
    assert X_test1.index.min() == pd.Timestamp("2016-02-22", tz="UTC")  # 14 days before 2016-03-07
    assert X_test2.index.min() - X_test1.index.min() == pd.Timedelta(weeks=1)
    assert X_train2.index.max() - X_train1.index.max() == pd.Timedelta(weeks=1)
    assert len(X_test1) == len(X_test2) == 14 * 24
    # Resolved once, the contract names both (what the runner passes, tags and keys the cache on) and
    # reads back the same; the backtest's folds fall inside the test period.
    resolved = spec.against(week1)
    assert resolved.as_dict() == {"split": "time", "test_start": "2016-02-22", "test_period": "2w", "folds": 2,
                                  "fold_length": "week"}
    assert evaluation.Evaluation.from_dict(resolved.as_dict()) == resolved
    assert evaluation.from_tag(resolved.to_json()) == resolved
    assert resolved.against(week2) is resolved  # resolved means fixed: the gate re-scores on the same hours
    folds = evaluation.backtest_folds(week1, spec)
    assert [f.start for f in folds] == [pd.Timestamp("2016-02-22", tz="UTC"), pd.Timestamp("2016-02-29", tz="UTC")]
    assert "last 2 weeks (from 2016-02-22)" in resolved.describe()


def test_the_resolved_window_is_in_every_training_cache_key(tmp_path):
    import dataclasses

    from powerpipe.spec.config import load_config
    from powerpipe.spec.steps import Runtime, build_steps

    notebook = make_notebook(tmp_path / "nb.ipynb", "data_path: str | None = None\nevaluation: dict | None = None")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"stages": {"train": [{"notebook": str(notebook)}]},
                                                     "evaluation": {"test_period": "2w", "folds": 0}}))
    config = load_config(tmp_path / "p.yaml")
    [step] = build_steps(config)
    spec = evaluation.Evaluation.from_dict(config.evaluation)
    keys = []
    for end in ("2016-03-06 23:00", "2016-03-13 23:00", "2016-03-13 23:00"):
        resolved = spec.against(data.synthetic_frame("2016-01-01", end)).as_dict()
        keys.append(step.cache_parameters(dataclasses.replace(Runtime.planned(config), evaluation=resolved)))
    assert keys[0]["evaluation"]["test_start"] == "2016-02-22" and keys[1]["evaluation"]["test_start"] == "2016-02-29"
    assert keys[0] != keys[1] and keys[1] == keys[2]  # reused only when the resolved window is the same


def test_a_fixed_window_is_what_it_always_was():
    assert evaluation.Evaluation.from_dict({"test_start": "2016-01-01"}).as_dict() == {
        "split": "time", "test_start": "2016-01-01", "folds": 4, "fold_length": "quarter"}
    frame = data.synthetic_frame("2015-12-01", "2016-01-31 23:00")
    fixed = evaluation.Evaluation.from_dict({"test_start": "2016-01-01"})
    assert fixed.against(frame) is fixed


@pytest.mark.parametrize("period", ["52w", "12w", "90d", "72h", " 4W "])
def test_periods(period):
    assert windows.parse_period(period).total_seconds() > 0


@pytest.mark.parametrize("period", ["52", "a year", "0w", "-3d", "1y", 52])
def test_bad_periods_are_refused(period):
    with pytest.raises(ConfigError, match="test_period"):
        evaluation.Evaluation.from_dict({"test_period": period})


def test_the_pipeline_file_takes_a_test_period_or_a_test_start_not_both(tmp_path):
    from powerpipe.spec.config import load_config

    notebook = make_notebook(tmp_path / "nb.ipynb", "data_path: str | None = None\nevaluation: dict | None = None")
    config = {"stages": {"train": [{"notebook": str(notebook)}]},
              "evaluation": {"split": "time", "test_period": "52w", "test_start": "2016-01-01"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="not both"):
        load_config(tmp_path / "p.yaml")
    config["evaluation"] = {"split": "time", "test_period": "52w"}
    config["monitor"] = {"max_rmse_vs_holdout": 1.3, "min_skill": 0.2}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    loaded = load_config(tmp_path / "p.yaml")
    assert loaded.evaluation == {"split": "time", "test_period": "52w", "folds": 4, "fold_length": "quarter"}
    assert loaded.monitor.as_dict() == {"max_rmse_vs_holdout": 1.3, "min_skill": 0.2}
    for bad, match in (({"min_skil": 0.2}, "did you mean 'min_skill'"), ({"min_skill": "high"}, "number"),
                       ({"max_rmse_vs_holdout": 0}, "above 0"), ({"min_skill": 1.5}, "below 1")):
        config["monitor"] = bad
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=match):
            load_config(tmp_path / "p.yaml")


def test_the_default_pipelines_move_with_the_data_and_the_tutorial_does_not():
    from powerpipe.spec.config import load_config

    for name in ("pipeline.yaml", "smoke.yaml"):
        config = load_config(paths.RUNNER_DIR / name)
        assert config.evaluation["test_period"] == "52w" and "test_start" not in config.evaluation
        assert config.monitor is not None
    assert load_config(paths.RUNNER_DIR / "tutorial.yaml").evaluation["split"] == "random"


# -- --as-of ----------------------------------------------------------------------------------------------------
def test_as_of_cuts_a_file_into_the_run_folder(tmp_path):
    from powerpipe.run.watch import as_of_text, cut_source

    source_path = data.write_processed(data.synthetic_frame("2016-06-01", "2016-06-10 23:00"), tmp_path / "in.csv")
    source = data.DataSource(source_path, data.file_sha256(source_path), "file")
    cut = cut_source(source, "2016-06-06", tmp_path / "run")
    assert cut.path == (tmp_path / "run" / "data" / "in_before_2016-06-06.csv").resolve()
    assert cut.source == "file" and cut.sha256 == data.file_sha256(cut.path)
    frame = data.load_processed(cut.path)
    assert frame.index.max() == pd.Timestamp("2016-06-05 23:00", tz="UTC") and len(frame) == 5 * 24
    assert cut_source(source, None, tmp_path / "run") is source
    assert as_of_text("2016-06-06T06:00:00+02:00") == "2016-06-06 04:00"
    with pytest.raises(DataError, match="no hour before --as-of 2016-05-01"):
        cut_source(source, "2016-05-01", tmp_path / "run")


@pytest.mark.parametrize("value", ["yesterday", "2016-13-01"])
def test_a_bad_as_of_is_a_usage_error(value, capsys):
    from powerpipe.cli import main as cli

    assert cli.main(["run", "--as-of", value, "--dry-run"]) == cli.ExitCode.USAGE
    assert "--as-of is not a date" in capsys.readouterr().err


def test_exit_code_3_only_for_a_run_that_went_well_with_an_alert():
    from powerpipe.cli.main import ExitCode, exit_code

    assert exit_code({"status": "ok", "alerts": ["x"]}, fail_on_alert=True) == ExitCode.ALERT == 3
    assert exit_code({"status": "ok", "alerts": ["x"]}, fail_on_alert=False) == ExitCode.OK
    assert exit_code({"status": "ok", "alerts": []}, fail_on_alert=True) == ExitCode.OK
    assert exit_code({"status": "failed", "alerts": ["x"]}, fail_on_alert=True) == ExitCode.FAILED


# -- baselines, by hand ---------------------------------------------------------------------------------------
def tiny_frame(days: int = 3) -> pd.DataFrame:
    """``days`` days of hours: solar a daily shape that grows day by day, wind a known sequence."""
    index = pd.date_range("2016-06-01", periods=24 * days, freq="h", tz="UTC", name=data.TIME_COLUMN)
    hour, day = index.hour.to_numpy(), (np.arange(len(index)) // 24)
    solar = np.clip(np.sin((hour - 5) / 14 * np.pi), 0, None) * (10 + 2 * day)
    wind = 5 + (np.arange(len(index)) % 7)
    weather = data.synthetic_frame("2016-06-01", index[-1].strftime("%Y-%m-%d %H:%M"))[data.FEATURES]
    return pd.DataFrame({"solar_GW": solar, "wind_GW": wind.astype(float), **weather.to_dict("series")},
                        index=index)[data.COLUMNS]


def test_monitoring_scores_match_hand_computed_baselines():
    frame = tiny_frame(3)
    until = pd.Timestamp("2016-06-02 23:00", tz="UTC")
    predicted = pd.DataFrame({"solar_GW": 5.0, "wind_GW": 8.0}, index=frame.index)
    scored = baselines.live_scores(frame, predicted, until)
    new = frame[frame.index > until]
    actual = new[data.TARGETS].to_numpy()
    # Persistence: the same hour of 2 June. Climatology: the mean of 1 and 2 June at each hour (both June).
    day1, day2 = frame.iloc[:24][data.TARGETS].to_numpy(), frame.iloc[24:48][data.TARGETS].to_numpy()
    by_hand = {"model": np.tile([5.0, 8.0], (24, 1)), "persistence": day2, "climatology": (day1 + day2) / 2}
    assert scored.hours == 24 and scored.dropped == 0
    for name, forecast in by_hand.items():
        error = forecast - actual
        got = scored.overall[name]
        assert got["rmse"] == pytest.approx(math.sqrt((error ** 2).mean()))
        assert got["mae"] == pytest.approx(np.abs(error).mean())
        assert got["bias"] == pytest.approx(error.mean())
        assert got["wind_rmse"] == pytest.approx(math.sqrt((error[:, 1] ** 2).mean()))
        r2 = [1 - (error[:, i] ** 2).sum() / ((actual[:, i] - actual[:, i].mean()) ** 2).sum() for i in (0, 1)]
        assert got["solar_r2"] == pytest.approx(r2[0]) and got["r2"] == pytest.approx(np.mean(r2))
    for name in baselines.BASELINES:
        expected = 1 - scored.overall["model"]["rmse"] / scored.overall[name]["rmse"]
        assert scored.overall[name]["skill"] == pytest.approx(expected)
    assert scored.best_baseline == min(baselines.BASELINES, key=lambda n: scored.overall[n]["rmse"])
    assert list(scored.weekly["week"]) == [pd.Timestamp("2016-05-30", tz="UTC")]  # Monday of 3 June's week
    assert scored.weekly["model_rmse"].iloc[0] == pytest.approx(scored.overall["model"]["rmse"])


def test_weeks_and_hours_without_a_day_before():
    frame = tiny_frame(14).drop(pd.date_range("2016-06-09 00:00", periods=3, freq="h", tz="UTC"))
    until = pd.Timestamp("2016-06-03 23:00", tz="UTC")
    scored = baselines.live_scores(frame, baselines.climatology(frame[frame.index <= until], frame.index), until)
    assert scored.dropped == 3  # 10 June 00:00-02:00: no recorded hour a day earlier
    assert scored.hours == len(frame[frame.index > until]) - 3
    assert [f"{w:%Y-%m-%d}" for w in scored.weekly["week"]] == ["2016-05-30", "2016-06-06", "2016-06-13"]
    assert scored.weekly["hours"].sum() == scored.hours
    assert np.allclose(scored.weekly["climatology_skill"], 0.0)  # the model *is* the climatology
    empty = baselines.live_scores(frame, frame[data.TARGETS], frame.index.max())
    assert empty.hours == 0 and empty.overall == {}


def test_a_model_with_intervals_is_scored_on_their_coverage_of_the_new_hours():
    """p10-p90 coverage on the new hours, overall and per week, by hand: solar over daylight, wind every hour."""
    from powerpipe.forecast import scores

    frame = tiny_frame(10)
    until = pd.Timestamp("2016-06-02 23:00", tz="UTC")
    rng = np.random.default_rng(0)
    predicted = frame[data.TARGETS] + rng.normal(0, 1, (len(frame), 2))
    for target in data.TARGETS:  # a band 2 GW wide around the recorded value, shifted out of it every 4th hour
        shift = np.where(np.arange(len(frame)) % 4 == 0, 5.0, 0.0)
        predicted[f"{target}_p10"] = frame[target] - 1 + shift
        predicted[f"{target}_p90"] = frame[target] + 1 + shift
    scored = baselines.live_scores(frame, predicted, until)
    new = frame[frame.index > until]
    position = np.arange(len(frame))[frame.index > until]
    daylight = scores.scored_hours("solar_GW", new.index)
    assert scored.overall["model"]["wind_coverage_80"] == pytest.approx(np.mean(position % 4 != 0))
    assert scored.overall["model"]["solar_coverage_80"] == pytest.approx(np.mean(position[daylight] % 4 != 0))
    assert 0 < daylight.sum() < len(new)  # nights are left out of solar's coverage
    first_week = new.index < pd.Timestamp("2016-06-06", tz="UTC")
    assert scored.weekly["model_wind_coverage_80"].iloc[0] == pytest.approx(np.mean(position[first_week] % 4 != 0))
    assert "persistence_wind_coverage_80" not in scored.weekly  # the baselines answer no interval
    points_only = baselines.live_scores(frame, predicted[data.TARGETS], until)
    assert "wind_coverage_80" not in points_only.overall["model"]


# -- monitoring in a store --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_model(tmp_path_factory, empty_store) -> dict:
    """A store with one constant model (9 GW for both targets) logged by a run, registered nowhere yet:
    each test copies the store and registers the versions it needs (logging a model takes seconds)."""
    import mlflow
    from sklearn.compose import ColumnTransformer
    from sklearn.dummy import DummyRegressor
    from sklearn.pipeline import Pipeline

    from powerpipe.forecast.features import raw_input

    folder = tmp_path_factory.mktemp("logged_model")
    uri = copy_store(empty_store, folder / "mlflow.db")
    frame = tiny_frame(10)
    X = raw_input(frame)
    model = Pipeline([("weather", ColumnTransformer([("keep", "passthrough", data.FEATURES)])),
                      ("model", DummyRegressor(strategy="constant", constant=[9.0, 9.0]))]).fit(X, frame[data.TARGETS])
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("watch")
    with unsynced_sqlite(), global_tracking_uri(uri), mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.sklearn.log_model(model, name=tags.MODEL_ARTIFACT, input_example=X.head(2),
                                 serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
        mlflow.log_metrics({"rmse": 1.0, "r2": 0.9, "solar_r2": 0.9, "wind_r2": 0.9})
    model_id = sorted(client.get_run(run.info.run_id).outputs.model_outputs, key=lambda o: o.step)[-1].model_id
    return {"uri": uri, "run_id": run.info.run_id, "model_id": model_id, "experiment_id": experiment_id}


@pytest.fixture
def store(tmp_path, empty_store, logged_model, monkeypatch) -> SimpleNamespace:
    """A copy of the logged model's store (artifacts shared, read only), with a way to register versions."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = copy_store(logged_model["uri"], tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(uri)

    def register(version_tags: dict | None = None, run_tags: dict | None = None) -> str:
        """The logged model as a new version of ``MODEL``, made @production."""
        with unsynced_sqlite():
            if not client.search_registered_models(f"name = '{MODEL}'"):
                client.create_registered_model(MODEL)
            for key, value in (run_tags or {}).items():
                client.set_tag(logged_model["run_id"], key, value)
            with global_tracking_uri(uri):
                version = str(client.create_model_version(MODEL, source=f"models:/{logged_model['model_id']}",
                                                          run_id=logged_model["run_id"],
                                                          model_id=logged_model["model_id"]).version)
            client.set_registered_model_alias(MODEL, "production", version)
            for key, value in (version_tags or {}).items():
                client.set_model_version_tag(MODEL, version, key, value)
        return version

    return SimpleNamespace(uri=uri, client=client, register=register, experiment_id=logged_model["experiment_id"])


def watch(store, frame, thresholds=None):
    from powerpipe.tracking.monitoring import monitor

    with unsynced_sqlite():
        parent = store.client.create_run(store.experiment_id, tags={tags.KIND: tags.KIND_PIPELINE}).info.run_id
        return monitor(store.client, MODEL, "production", frame, experiment_id=store.experiment_id,
                       parent_run_id=parent, pipeline_run_id="p1", thresholds=thresholds, context={"as_of": None})


def test_no_production_model_yet_is_said_not_raised(store):
    monitoring, alerts = watch(store, tiny_frame(3))
    assert monitoring["status"] == "no_model" and "no production model" in monitoring["message"]
    assert alerts == [] and monitoring["persistence"] is None and "climatology" in monitoring
    run = store.client.get_run(monitoring["mlflow_run_id"])
    assert run.data.tags[tags.KIND] == tags.KIND_MONITORING and run.info.status == "FINISHED"


def test_the_production_model_is_scored_on_the_hours_after_trained_until(store):
    from powerpipe.spec.monitor import MonitorSpec

    frame = tiny_frame(10)
    until = "2016-06-03T23:00:00+00:00"
    version = store.register(version_tags={tags.TRAINED_UNTIL: until})
    monitoring, alerts = watch(store, frame, MonitorSpec(max_rmse_vs_holdout=1.3, min_skill=0.2))
    new = frame[frame.index > pd.Timestamp(until)]
    expected = baselines.live_scores(frame, pd.DataFrame(9.0, index=frame.index, columns=data.TARGETS),
                                     pd.Timestamp(until))
    assert monitoring["status"] == "ok" and monitoring["hours"] == len(new) == 7 * 24
    assert monitoring["model"]["version"] == version
    assert monitoring["trained_until"] == until and "trained_until tag" in monitoring["trained_until_from"]
    assert monitoring["period"] == {"start": "2016-06-04T00:00:00+00:00", "end": "2016-06-10T23:00:00+00:00"}
    assert monitoring["live"]["rmse"] == pytest.approx(expected.overall["model"]["rmse"])
    for name in ("persistence", "climatology"):
        assert monitoring[name]["rmse"] == pytest.approx(expected.overall[name]["rmse"])
        assert monitoring[name]["skill"] == pytest.approx(expected.overall[name]["skill"])
    assert monitoring["holdout"]["rmse"] == 1.0
    assert monitoring["rmse_vs_holdout"] == pytest.approx(monitoring["live"]["rmse"] / 1.0)
    assert [w["week"] for w in monitoring["weeks"]] == ["2016-05-30", "2016-06-06"]
    assert [w["hours"] for w in monitoring["weeks"]] == [48, 120]  # Sat 4 and Sun 5 June, then 6-10 June
    # Both limits broken: two sentences with the numbers.
    assert len(alerts) == 2
    assert f"{monitoring['rmse_vs_holdout']:.2f} times the holdout RMSE 1 GW" in alerts[0] and "limit: 1.3" in alerts[0]
    assert f"against {monitoring['best_baseline']} (the better baseline) is {monitoring['skill_vs_best']:.3f}" in alerts[1]
    # The monitoring run: overall metrics, weekly ones stepped by week, the tables.
    client = store.client
    run = client.get_run(monitoring["mlflow_run_id"])
    assert run.data.tags[tags.MONITORED_MODEL] == f"{MODEL}/{version}" and run.data.tags[tags.ALERTS] == "2"
    assert run.data.metrics["model_rmse"] == pytest.approx(monitoring["live"]["rmse"])
    history = client.get_metric_history(run.info.run_id, "week_model_rmse")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([w["rmse"] for w in monitoring["weeks"]])
    assert {a.path for a in client.list_artifacts(run.info.run_id, tags.MONITORING_ARTIFACT_DIR)} == {
        tags.MONITORING_ARTIFACT, tags.MONITORING_HISTORY_ARTIFACT}


def test_holdout_coverage_of_a_version_promoted_before_it_was_kept_comes_from_its_run(store):
    from powerpipe.tracking.monitoring import holdout_scores

    run_id = store.client.get_model_version(MODEL, store.register()).run_id
    with unsynced_sqlite():
        store.client.log_metric(run_id, "wind_coverage_80", 0.81)
        store.client.log_metric(run_id, "solar_coverage_80", 0.78)
        version = store.register(version_tags={tags.SCORES: json.dumps({"rmse": 2.0}),  # no coverage in it
                                               tags.EVALUATED_RUN: run_id})
    scores = holdout_scores(store.client, store.client.get_model_version(MODEL, version))
    assert scores["rmse"] == 2.0  # the version's own scores first
    assert scores["wind_coverage_80"] == 0.81 and scores["solar_coverage_80"] == 0.78


def test_a_version_without_trained_until_falls_back_to_its_training_window(store):
    split = json.dumps({"split": "time", "test_start": "2016-06-08", "folds": 0})
    store.register(run_tags={tags.EVALUATION: split})
    monitoring, alerts = watch(store, tiny_frame(10))
    assert monitoring["status"] == "ok" and alerts == []  # no thresholds: no alert
    assert monitoring["trained_until"] == "2016-06-07T23:00:00+00:00"
    assert "end of its training window" in monitoring["trained_until_from"]
    assert monitoring["hours"] == 3 * 24


def test_no_new_hours_and_an_unknown_training_end_are_said(store):
    store.register(version_tags={tags.TRAINED_UNTIL: "2016-06-03T23:00:00+00:00"})
    monitoring, _ = watch(store, tiny_frame(3))
    assert monitoring["status"] == "no_new_hours" and "no new hours" in monitoring["message"]
    store.register(run_tags={tags.EVALUATION: json.dumps({"split": "random"})})
    monitoring, _ = watch(store, tiny_frame(3))
    assert monitoring["status"] == "unknown_training_end" and "random split" in monitoring["message"]


# -- what the report and the dashboard show --------------------------------------------------------------------
def watched_example() -> dict:
    frame = tiny_frame(10)
    until = pd.Timestamp("2016-06-03 23:00", tz="UTC")
    scored = baselines.live_scores(frame, pd.DataFrame(9.0, index=frame.index, columns=data.TARGETS), until)
    monitoring = {"status": "ok", "model": {"name": MODEL, "version": "3"}, "hours": scored.hours,
                  "period": {"start": scored.start.isoformat(), "end": scored.end.isoformat()},
                  "trained_until": until.isoformat(), "trained_until_from": "the tag", "holdout": {"rmse": 1.0, "r2": 0.9},
                  "live": scored.overall["model"], "persistence": scored.overall["persistence"],
                  "climatology": scored.overall["climatology"], "rmse_vs_holdout": 5.0,
                  "weeks": [{"week": f"{r['week']:%Y-%m-%d}", "hours": r["hours"],
                             **{k: r[f"model_{k}"] for k in ("rmse", "mae", "bias", "r2")},
                             **{f"{n}_{k}": r[f"{n}_{k}"] for n in ("persistence", "climatology") for k in ("rmse", "skill")}}
                            for r in scored.weekly.to_dict("records")]}
    return {"as_of": "2016-06-11", "data_period": {"start": "2016-06-01T00:00:00+00:00",
                                                  "end": "2016-06-10T23:00:00+00:00"},
            "monitoring": monitoring, "alerts": ["live RMSE is high <b>"]}


def test_report_texts_table_and_figure():
    watched = watched_example()
    text = watching.summary_markdown(watched)
    assert "WatchedModel version 3" in text and "168 hours it never learnt" in text
    assert "persistence (the same hour a day earlier)" in text and "climatology" in text
    assert "holdout (what it was promoted with): RMSE 1 GW" in text
    assert "p10–p90" not in text  # a model without intervals
    with_intervals = watched_example()
    with_intervals["monitoring"]["live"] |= {"solar_coverage_80": 0.74, "wind_coverage_80": 0.81}
    with_intervals["monitoring"]["holdout"] |= {"solar_coverage_80": 0.79, "wind_coverage_80": 0.8}
    for week in with_intervals["monitoring"]["weeks"]:
        week |= {"solar_coverage_80": 0.7, "wind_coverage_80": 0.9}
    assert ("covered **74 %** of the solar daylight hours and **81 %** of the wind hours; on the holdout "
            "solar 79 %, wind 80 %") in watching.summary_markdown(with_intervals)
    assert list(watching.weeks_table(with_intervals)["wind p10–p90 coverage"]) == [0.9, 0.9]
    assert watching.as_of_sentence(watched).startswith("**As of 2016-06-11**")
    assert "&lt;b&gt;" in watching.alerts_html(watched["alerts"]) and watching.alerts_html([]) == ""
    table = watching.weeks_table(watched)
    assert list(table.index) == ["2016-05-30", "2016-06-06"] and "skill vs climatology" in table
    figure = watching.live_error_figure(watched)
    assert [trace.name for trace in figure.data] == ["version 3", "persistence", "climatology"]
    assert "Nothing scored live" in watching.summary_markdown({"monitoring": {"status": "no_model", "message": "x"}})


def test_report_drops_what_the_kernel_wrote_to_stderr(tmp_path):
    import nbformat

    from powerpipe.execution.engine import render_html

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="failed call to cuInit: UNKNOWN ERROR (303)"),
                    nbformat.v4.new_output("stream", name="stdout", text="kept for the reader")]
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "r.ipynb")
    kept = render_html(tmp_path / "r.ipynb", tmp_path / "all.html").read_text()
    dropped = render_html(tmp_path / "r.ipynb", tmp_path / "report.html", drop_stderr=True).read_text()
    assert "cuInit" in kept and "cuInit" not in dropped and "kept for the reader" in dropped


def test_dashboard_card_shows_alerts_first_and_the_evergreen_panel(pipeline_store, tmp_path, monkeypatch):
    import mlflow

    from powerpipe.dashboard.app import create_app
    from powerpipe.spec.monitor import MonitorSpec
    from powerpipe.tracking.monitoring import monitor

    from .test_dashboard import dash_request, ids, text

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = copy_store(pipeline_store["tracking_uri"], tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(uri)
    app = create_app(uri)
    answer = dash_request(app.server.test_client(), [("model-card", "children"), ("model-version", "data")],
                          [("model-poll", "n_intervals", 0)], [("model-version", "data", None)])
    card = answer["model-card"]["children"]
    assert "evergreen" in ids(card) and "Not scored live yet" in text(card) and "monitoring-alerts" not in ids(card)

    version = client.get_model_version_by_alias("BestModel", "production")
    client.set_model_version_tag("BestModel", version.version, tags.TRAINED_UNTIL, "2016-12-10T23:00:00+00:00")
    frame = data.load_processed(pipeline_store["run_dir"] / "data" / paths.PROCESSED_DATA_NAME)
    parent = client.create_run(client.get_experiment_by_name("predicting_wind_solar_dashboard").experiment_id).info
    with unsynced_sqlite():
        monitoring, alerts = monitor(client, "BestModel", "production", frame, experiment_id=parent.experiment_id,
                                     parent_run_id=parent.run_id, pipeline_run_id="p2",
                                     thresholds=MonitorSpec(max_rmse_vs_holdout=0.01), context={"as_of": "2017-01-01"})
    assert monitoring["status"] == "ok" and len(alerts) == 1
    from powerpipe.dashboard import evergreen

    evergreen._cache.clear()  # the panel looks monitoring up at most once a minute per version
    app = create_app(uri)
    answer = dash_request(app.server.test_client(), [("model-card", "children"), ("model-version", "data")],
                          [("model-poll", "n_intervals", 0)], [("model-version", "data", None)])
    card = answer["model-card"]["children"]
    assert card[0]["props"]["id"] == "monitoring-alerts" and alerts[0] in text(card[0])
    assert {"evergreen", "evergreen-summary", "evergreen-figure", "evergreen-weeks"} <= ids(card)
    shown = text(card)
    assert f"on the **{monitoring['hours']:,} hours it never learnt**" in shown and "(as of 2017-01-01)" in shown


# -- the loop, for real -----------------------------------------------------------------------------------------
WATCH_PARAMETERS = "data_path: str | None = None\nevaluation: dict | None = None\nquantile: float = 0.5"
WATCH_CELLS = (
    "import mlflow\nfrom sklearn.dummy import DummyRegressor\nfrom powerpipe.core import tags\n"
    "from powerpipe.forecast import data, modeling, evaluation as ev\nfrom powerpipe.tracking import store as tracking",
    "df = data.load(data_path)\nspec = ev.resolve(evaluation).against(df)\n"
    "X_train, X_test, y_train, y_test = ev.holdout(df, spec)\nrun = tracking.notebook_run()\n"
    "mlflow.set_tag(tags.EVALUATION, spec.to_json())\n"
    "mlflow.set_tag('seen_until', str(df.index.max()))",
    "model = DummyRegressor(strategy='quantile', quantile=quantile).fit(X_train[data.FEATURES], y_train)\n"
    "metrics = modeling.evaluate(y_test, model.predict(X_test[data.FEATURES])) if spec.has_test else {}\n"
    "tracking.record_metrics(metrics)\ntracking.log_model(model, X_train[data.FEATURES], flavor='sklearn')",
)


@pytest.mark.slow
def test_two_weekly_runs_as_of_cut_every_stage_and_the_second_watches_the_first_model(tmp_path):
    """Run 1 as of 6 June (a 3-day relative test window), run 2 as of 8 June with --fail-on-alert: run 2
    scores run 1's model on the two days between, trips the skill alert, exits 3 and says so first in its report."""
    project = FakeProject(tmp_path, "watch_loop")
    make_notebook(tmp_path / "quantile.ipynb", WATCH_PARAMETERS, *WATCH_CELLS)
    config = {"experiment": "watch_loop", "root": ".",
              "evaluation": {"split": "time", "test_period": "3d", "folds": 0},
              "monitor": {"min_skill": 0.2},
              "stages": {"process": {"notebook": str(paths.NOTEBOOKS_DIR / "make_processed_data.ipynb"),
                                     "parameters": {"start_date": "2016-06-01", "eda_plots": False}},
                         "train": [{"notebook": "quantile.ipynb", "grid": {"quantile": [0.5]}}],
                         "promote": {"metric": "rmse", "model_name": MODEL}}}
    path = tmp_path / "watch.yaml"  # the first run without a report (it would have nothing to monitor)
    path.write_text(yaml.safe_dump(config))
    config["stages"]["report"] = {"notebook": str(paths.REPORT_TEMPLATES_DIR / "weekly_report.ipynb")}
    with_report = tmp_path / "watch_and_report.yaml"
    with_report.write_text(yaml.safe_dump(config))
    client = project.client

    def notebook_runs(summary: dict) -> list:
        runs = client().search_runs([client().get_experiment_by_name("watch_loop").experiment_id],
                                    tags.equals(tags.PIPELINE_RUN_ID, summary["pipeline_run_id"]), max_results=100)
        return [r for r in runs if r.data.tags.get(tags.KIND) == tags.KIND_NOTEBOOK]

    def read_before(summary: dict, as_of: str) -> set[str]:
        """The stages whose notebook ran in this pipeline run; each read data ending before ``as_of``."""
        for run in notebook_runs(summary):
            read = data.load_processed(run.data.tags[tags.DATA_PATH])
            assert read.index.max() < pd.Timestamp(as_of, tz="UTC"), run.data.tags[tags.STAGE]
        return {run.data.tags[tags.STAGE] for run in notebook_runs(summary)}

    code, first = project.run(path, "--as-of", "2016-06-06")
    assert code == 0, first
    run_dir = project.outputs / first["pipeline_run_id"]
    assert first["as_of"] == "2016-06-06"
    assert first["data_period"] == {"start": "2016-06-01T00:00:00+00:00", "end": "2016-06-05T23:00:00+00:00"}
    assert first["monitoring"]["status"] == "no_model" and first["alerts"] == []
    assert (run_dir / "data" / "small_before_2016-06-06.csv").is_file()  # the input, cut, in the run folder
    assert first["data"]["path"] == "data/small_before_2016-06-06.csv"
    runs = client().search_runs([client().get_experiment_by_name("watch_loop").experiment_id],
                                tags.equals(tags.PIPELINE_RUN_ID, first["pipeline_run_id"]), max_results=100)
    parent = next(r for r in runs if r.data.tags.get(tags.KIND) == tags.KIND_PIPELINE)
    assert parent.data.tags[tags.AS_OF] == "2016-06-06" and parent.data.tags[tags.DATA_END].startswith("2016-06-05T23")
    assert read_before(first, "2016-06-06") == {"process", "train", "promote"}  # promote: the refit
    train = next(r for r in notebook_runs(first) if r.data.tags[tags.STAGE] == "train")
    assert json.loads(train.data.tags[tags.EVALUATION])["test_start"] == "2016-06-03"  # 3 days before 6 June
    assert train.data.tags["seen_until"].startswith("2016-06-05 23:00")

    code, second = project.run(with_report, "--as-of", "2016-06-08", "--fail-on-alert")
    assert code == 3, second
    assert second["status"] == "ok" and second["as_of"] == "2016-06-08"
    monitoring = second["monitoring"]
    assert monitoring["status"] == "ok", monitoring
    assert monitoring["model"]["version"] == first["promoted"]["version"]
    assert monitoring["period"]["end"] == "2016-06-07T23:00:00+00:00"
    # Run 1's model was refit on every hour it saw (the other half of the weekly loop): it never learnt
    # the two days between the runs, and is scored on exactly those.
    assert monitoring["trained_until"] == "2016-06-05T23:00:00+00:00"
    assert monitoring["hours"] == 48 and monitoring["period"]["start"] == "2016-06-06T00:00:00+00:00"
    assert {"persistence", "climatology"} <= set(monitoring) and monitoring["persistence"]["skill"] is not None
    assert second["alerts"] and "below the minimum 0.2" in second["alerts"][0]
    assert "report" in read_before(second, "2016-06-08")
    train = [r for r in notebook_runs(second) if r.data.tags.get(tags.STAGE) == "train"]
    assert {json.loads(r.data.tags[tags.EVALUATION])["test_start"] for r in train} == {"2016-06-05"}  # moved 2 days
    report = (project.outputs / second["pipeline_run_id"] / second["report"]).read_text()
    body = report[report.index("<body"):]
    assert body.index("MONITORING ALERT") < body.index("Weekly solar and wind report") < body.index(
        "The production model, live")
    assert "As of 2016-06-08" in body and 'data-mime-type="application/vnd.jupyter.stderr"' not in body
