"""Serving: `mlflow models serve` answers a request of a timestamp and four weather values, on loopback, with
exactly what the model computed in training (features inside the model); and what a training run records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from powerpipe.forecast import data, evaluation, features, modeling, serving
from powerpipe.core import tags

from .conftest import register_production, scoring_server

# The tutorial's request, in the JSON format current MLflow expects, with the hour it is for (UTC, no offset:
# MLflow's datetime type is timezone-naive), as the README shows it.
REQUEST = {"dataframe_split": {"columns": ["utc_timestamp", "windspeed", "temperature", "rad_horizontal",
                                           "rad_diffuse"],
                               "data": [["2016-06-01T12:00:00", 2, 20, 100, 100]]}}


def rows(predictions: list) -> np.ndarray:
    return np.array([list(row.values()) if isinstance(row, dict) else row for row in predictions], dtype=float)


@pytest.mark.slow
def test_scoring_server_answers_tutorial_request(smoke_run, tmp_path):
    with scoring_server(smoke_run["tracking_uri"], "models:/BestModel@production", tmp_path) as post:
        predictions = post(REQUEST)
    assert len(predictions) == 1
    row = predictions[0]
    # the point forecasts and the quantiles of the pipeline's levels (runner/smoke.yaml: the default p10-p90)
    assert list(row) == ["solar_GW", "wind_GW", "solar_GW_p10", "solar_GW_p50", "solar_GW_p90", "wind_GW_p10",
                         "wind_GW_p50", "wind_GW_p90"]
    assert all(isinstance(v, float) and v >= 0 for v in row.values())


@pytest.mark.slow
def test_feature_set_model_is_served_as_trained(store, frame, tmp_path):
    """A weather_calendar model, registered as production, answers timestamps + weather over HTTP exactly
    as it predicted in training: its features are computed inside the served model."""
    import mlflow

    uri, experiment_id = store
    X_train, X_test, y_train, _ = evaluation.holdout(frame, {"test_start": "2016-03-01"})
    model = modeling.make_model(modeling.gradient_boosting(max_iter=30), "weather_calendar").fit(X_train, y_train)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        serving.log_model(model, X_train, flavor="sklearn")
    model_id = register_production(uri, run.info.run_id)

    # A day of the test period: leads and lags come from the same request, as in the test split.
    day = X_test[(X_test.index >= "2016-03-10") & (X_test.index < "2016-03-11")]
    request = {"dataframe_split": {
        "columns": features.RAW_COLUMNS,
        "data": [[t.strftime("%Y-%m-%dT%H:%M:%S"), *values]
                 for t, values in zip(day["utc_timestamp"], day[data.FEATURES].to_numpy().tolist())]}}
    with scoring_server(uri, "models:/BestModel@production", tmp_path) as post:
        served = rows(post(request))
        one_hour = rows(post(REQUEST))
    np.testing.assert_allclose(served, model.predict(day), rtol=1e-9, atol=1e-9)
    # the served model's features change with the hour: noon and midnight differ for the same weather
    assert served.shape == (24, 2) and not np.allclose(served[0], served[12])
    assert one_hour.shape == (1, 2)

    # The model's signature and input example say what a request holds.
    loaded = mlflow.pyfunc.load_model("models:/BestModel@production")
    assert loaded.metadata.get_input_schema().input_names() == features.RAW_COLUMNS
    example = json.loads((Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "m")))
                          / "input_example.json").read_text())
    assert example["columns"] == features.RAW_COLUMNS


@pytest.mark.slow
def test_keras_model_computes_its_features_inside(store, frame):
    """The Keras wrapper applies the same FeatureBuilder before the net: loaded as pyfunc, it takes the raw schema."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import mlflow

    _, experiment_id = store
    X_train, X_test, y_train, _ = evaluation.holdout(frame, {"test_start": "2016-03-01"})
    inputs = features.build(X_train, "weather_calendar").to_numpy("float32")
    keras.utils.set_random_seed(0)
    normalise = keras.layers.Normalization()
    normalise.adapt(inputs)
    net = keras.Sequential([keras.Input(shape=(inputs.shape[1],)), normalise, keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(2)])
    net.compile(loss="mse", optimizer="adam")
    net.fit(inputs, y_train.to_numpy("float32"), epochs=1, batch_size=512, verbose=0)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        serving.log_model(net, X_train, flavor="keras", feature_set="weather_calendar")
    loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert loaded.metadata.get_input_schema().input_names() == features.RAW_COLUMNS
    expected = net.predict(features.build(X_test, "weather_calendar").to_numpy("float32"), verbose=0)
    np.testing.assert_allclose(loaded.predict(serving.model_input(X_test)).to_numpy(), expected, rtol=1e-5, atol=1e-5)


def test_training_run_records_lineage_evaluation_and_backtest(store, frame, tmp_path):
    import mlflow

    uri, experiment_id = store
    path = data.write_processed(frame, tmp_path / "germany.csv")
    spec = evaluation.Evaluation.from_dict({"test_start": "2016-01-01", "folds": 2})
    X_train, X_test, y_train, y_test = evaluation.holdout(data.load(path), spec)
    table = evaluation.backtest(frame, spec, evaluation.refit(modeling.make_model(
        modeling.gradient_boosting(max_iter=5), "tutorial")))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        serving.log_training_setup(spec.as_dict(), "weather_calendar", path, X_train, X_test, y_train, y_test)
        summary = serving.log_backtest(table)
    client = mlflow.MlflowClient(uri)
    recorded = client.get_run(run.info.run_id)
    assert evaluation.from_tag(recorded.data.tags[tags.EVALUATION]) == spec
    assert recorded.data.tags[tags.FEATURE_SET] == "weather_calendar"
    assert recorded.data.params["feature_set"] == "weather_calendar"

    sha256 = data.file_sha256(path)
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
                  for i in recorded.inputs.dataset_inputs}
    assert set(by_context) == {"training", "testing"}
    for context, rows_expected in (("training", len(X_train)), ("testing", len(X_test))):
        dataset_input = by_context[context]
        assert dataset_input.dataset.digest == sha256[:32]  # the whole file's hash, not MLflow's first rows
        assert dataset_input.dataset.name.startswith("germany.csv (" + context)
        assert str(path.resolve()) in dataset_input.dataset.source
        input_tags = {t.key: t.value for t in dataset_input.tags}
        assert input_tags["sha256"] == sha256 and input_tags["rows"] == str(rows_expected)

    assert set(summary) >= {"backtest_r2", "backtest_rmse"}
    assert summary["backtest_r2"] == pytest.approx(table["r2"].mean())
    history = client.get_metric_history(run.info.run_id, serving.FOLD_METRICS["r2"])
    assert sorted((m.step, round(m.value, 9)) for m in history) == \
        [(int(f), round(v, 9)) for f, v in zip(table["fold"], table["r2"])]
    logged = serving.load_table(client, run.info.run_id, serving.BACKTEST_ARTIFACT)
    assert list(logged["fold"]) == list(table["fold"]) == [1]  # the data ends with the first quarter of 2016


def test_dataset_logged_again_when_a_parallel_run_created_it(monkeypatch):
    """Grid points running at once create the same dataset; the loser of that race logs it again."""
    import mlflow
    from mlflow.exceptions import MlflowException

    calls = []

    def log_input(dataset, context=None, tags=None):
        calls.append(context)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ...")

    monkeypatch.setattr(mlflow, "log_input", log_input)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    dataset = type("Dataset", (), {"name": "germany.csv (training, before 2016-01-01)"})()
    serving._log_input(dataset, "training", {})
    assert calls == ["training", "training"]

    def broken(dataset, context=None, tags=None):
        raise MlflowException("the store is read-only")

    monkeypatch.setattr(mlflow, "log_input", broken)
    with pytest.raises(MlflowException, match="read-only"):
        serving._log_input(dataset, "training", {})
