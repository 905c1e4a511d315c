"""The logged model with its intervals: point and quantile columns for the same raw request, never crossing
and never below zero, and every timestamp form a user sends, through pyfunc and through `mlflow models
serve`; anything else refused with a message naming the column and the accepted forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from powerpipe.forecast import data, evaluation, intervals, modeling, quantile_model, serving

from .conftest import register_production, scoring_server

COLUMNS = ["solar_GW", "wind_GW", "solar_GW_p10", "solar_GW_p50", "solar_GW_p90", "wind_GW_p10", "wind_GW_p50",
           "wind_GW_p90"]
# The accepted forms of one UTC hour, as text.
TEXT_FORMS = {"iso": "%Y-%m-%dT%H:%M:%S", "iso_z": "%Y-%m-%dT%H:%M:%SZ", "space_offset": "%Y-%m-%d %H:%M:%S+00:00"}


@pytest.fixture
def logged(store, frame, tmp_path):
    """A weather_calendar linear model with its calibration, logged and registered as BestModel@production."""
    import mlflow

    uri, experiment_id = store
    spec = {"test_start": "2016-03-01"}
    X_train, X_test, y_train, _ = evaluation.holdout(frame, spec)
    from sklearn.linear_model import LinearRegression

    model = modeling.make_model(LinearRegression(), "weather_calendar").fit(X_train, y_train)
    calibration = intervals.calibrate(evaluation.refit(model), X_train, y_train, spec, fitted=model.predict)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        serving.log_model(model, X_train, flavor="sklearn", calibration=calibration)
    register_production(uri, run.info.run_id)
    day = X_test[(X_test.index >= "2016-03-10") & (X_test.index < "2016-03-11")]
    return {"uri": uri, "model": model, "calibration": calibration, "day": day, "path": tmp_path}


def request_forms(day: pd.DataFrame, tmp_path) -> dict[str, pd.DataFrame]:
    """The same hours as each accepted form of utc_timestamp."""
    naive = serving.model_input(day).reset_index(drop=True)
    forms = {"naive": naive}
    for name, pattern in TEXT_FORMS.items():
        forms[name] = naive.assign(utc_timestamp=naive["utc_timestamp"].dt.strftime(pattern))
    forms["aware_berlin"] = naive.assign(
        utc_timestamp=naive["utc_timestamp"].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin"))
    # what pandas.read_csv(..., parse_dates=["utc_timestamp"]) gives on a processed file such as germany.csv
    path = data.write_processed(day.assign(solar_GW=0.0, wind_GW=0.0), tmp_path / "day.csv")
    read = pd.read_csv(path, parse_dates=["utc_timestamp"])
    assert isinstance(read["utc_timestamp"].dtype, pd.DatetimeTZDtype)
    forms["read_csv"] = read[naive.columns]
    return forms


def test_pyfunc_answers_every_timestamp_form_with_ordered_non_negative_quantiles(logged):
    import mlflow
    from mlflow.exceptions import MlflowException

    loaded = mlflow.pyfunc.load_model("models:/BestModel@production")
    forms = request_forms(logged["day"], logged["path"])
    expected = loaded.predict(forms["naive"])
    assert list(expected.columns) == COLUMNS
    np.testing.assert_allclose(expected[["solar_GW", "wind_GW"]],
                               np.clip(logged["model"].predict(logged["day"]), 0, None), rtol=1e-9, atol=1e-9)
    for name, request in forms.items():
        pd.testing.assert_frame_equal(loaded.predict(request), expected, obj=name)
    assert (expected >= 0).all().all()
    for target in data.TARGETS:
        quantiles = expected[[f"{target}_p10", f"{target}_p50", f"{target}_p90"]].to_numpy()
        assert (np.diff(quantiles, axis=1) >= 0).all()
    # the band is a band: wider than nothing by day
    assert (expected["wind_GW_p90"] - expected["wind_GW_p10"]).min() > 0
    # other levels on request
    more = loaded.predict(forms["iso"], params={"quantiles": [0.05, 0.5, 0.95]})
    assert list(more.columns) == ["solar_GW", "wind_GW", "solar_GW_p05", "solar_GW_p50", "solar_GW_p95",
                                  "wind_GW_p05", "wind_GW_p50", "wind_GW_p95"]
    assert (more["wind_GW_p95"] >= expected["wind_GW_p90"]).all()

    for bad in ("yesterday", 12345, None, "2016-13-45T00:00:00"):
        request = forms["naive"].assign(utc_timestamp=bad)
        with pytest.raises(MlflowException) as refused:
            loaded.predict(request)
        message = str(refused.value)
        assert "utc_timestamp" in message and "ISO 8601" in message and "time-zone-aware datetimes" in message


def test_request_times_accepts_the_documented_forms_only():
    times = quantile_model.request_times(pd.Series(["2016-06-01T12:00:00", "2016-06-01T14:00:00+02:00",
                                                    "2016-06-01 12:00:00Z"]))
    assert list(times) == [pd.Timestamp("2016-06-01 12:00", tz="UTC")] * 3
    with pytest.raises(ValueError, match="column utc_timestamp: numbers are not times"):
        quantile_model.request_times(pd.Series([1.5e9]))


@pytest.mark.slow
def test_rest_answers_every_text_form_and_refuses_anything_else(logged):
    import mlflow

    loaded = mlflow.pyfunc.load_model("models:/BestModel@production")
    forms = request_forms(logged["day"], logged["path"])
    expected = loaded.predict(forms["naive"])
    with scoring_server(logged["uri"], "models:/BestModel@production", logged["path"]) as post:
        for name in TEXT_FORMS:
            request = {"dataframe_split": forms[name].to_dict(orient="split", index=False)}
            answer = pd.DataFrame(post(request))
            assert list(answer.columns) == COLUMNS, name
            np.testing.assert_allclose(answer.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
        # one hour, as the README's request, with other levels
        one = {"dataframe_split": {"columns": ["utc_timestamp", *data.FEATURES],
                                   "data": [["2016-06-01T12:00:00Z", 2, 20, 100, 100]]},
               "params": {"quantiles": [0.05, 0.5, 0.95]}}
        answer = post(one)[0]
        assert list(answer) == ["solar_GW", "wind_GW", "solar_GW_p05", "solar_GW_p50", "solar_GW_p95",
                                "wind_GW_p05", "wind_GW_p50", "wind_GW_p95"]
        assert answer["solar_GW_p05"] <= answer["solar_GW_p50"] <= answer["solar_GW_p95"]
        for bad in ("yesterday", 12345):
            status, body = post({"dataframe_split": {"columns": one["dataframe_split"]["columns"],
                                                     "data": [[bad, 2, 20, 100, 100]]}}, refused=True)
            assert status == 400, body
            assert "utc_timestamp" in body and "ISO 8601" in body


@pytest.mark.slow
def test_monitoring_scores_the_production_models_interval_coverage_on_new_hours(logged, frame):
    """The weekly loop watches the intervals too: coverage of p10-p90 on the hours after trained_until, as
    the served model answers them, overall and per week."""
    import mlflow

    from powerpipe.core import tags
    from powerpipe.forecast import scores
    from powerpipe.tracking.monitoring import monitor

    client = mlflow.MlflowClient(logged["uri"])
    until = pd.Timestamp("2016-02-29 23:00", tz="UTC")  # the fixture's model learnt every hour before March
    client.set_model_version_tag("BestModel", "1", tags.TRAINED_UNTIL, until.isoformat())
    experiment_id = client.get_experiment_by_name("serving_test").experiment_id
    parent = client.create_run(experiment_id).info.run_id
    watched = frame[frame.index < "2016-03-15"]
    monitoring, _ = monitor(client, "BestModel", "production", watched, experiment_id=experiment_id,
                            parent_run_id=parent, pipeline_run_id="p1")
    assert monitoring["status"] == "ok", monitoring["message"]
    new = watched[watched.index > until]
    answer = quantile_model.forecast_frame(mlflow.pyfunc.load_model("models:/BestModel/1"), watched)
    expected = scores.coverage_of(new, answer.loc[new.index])  # the new hours, their weather leads and lags known
    assert monitoring["live"]["solar_coverage_80"] == pytest.approx(expected["solar_coverage_80"])
    assert monitoring["live"]["wind_coverage_80"] == pytest.approx(expected["wind_coverage_80"])
    assert 0.3 < expected["wind_coverage_80"] <= 1.0
    assert all("wind_coverage_80" in week for week in monitoring["weeks"])
    logged_metrics = client.get_run(monitoring["mlflow_run_id"]).data.metrics
    assert logged_metrics["model_wind_coverage_80"] == pytest.approx(expected["wind_coverage_80"])


@pytest.mark.slow
def test_loading_a_model_leaves_this_processs_own_code_in_place(logged, tmp_path, monkeypatch):
    """MLflow puts a model's copy of its ``code_paths`` first on sys.path and drops the package's modules:
    without care every later powerpipe import (and every Dask worker spawned later) came from the model's
    temporary folder, and the report's template was not found there. That folder is gone once the model is
    loaded (a weekly gate left a copy of the model behind each time)."""
    import sys
    import tempfile

    import mlflow

    from powerpipe.core import paths
    from powerpipe.forecast import serving
    from powerpipe.tracking.promotion import load_version

    path_before = list(sys.path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model = load_version(mlflow.MlflowClient(logged["uri"]), "BestModel", "1")
    assert sys.path == path_before
    assert not list((tmp_path / "tmp").iterdir())
    assert sys.modules["powerpipe.core.paths"] is paths and sys.modules["powerpipe.forecast.serving"] is serving
    from powerpipe.core import paths as imported_again

    assert imported_again.REPORT_TEMPLATES_DIR == paths.REPORT_TEMPLATES_DIR
    assert (imported_again.REPORT_TEMPLATES_DIR / "offline_report.html.j2").is_file()
    assert len(quantile_model.forecast_frame(model, logged["day"])) == len(logged["day"])  # and it still serves
