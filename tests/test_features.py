"""Features from the weather and the time only: no leak of the generation, time-matched leads and lags, served as trained."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from powerpipe.forecast import data, evaluation, features, modeling
from powerpipe.forecast.features import RAW_COLUMNS, FeatureBuilder


@pytest.fixture(scope="module")
def week() -> pd.DataFrame:
    """A synthetic autumn week with the clock-change hour repeated and a three-hour gap, as the real file has."""
    frame = data.synthetic_frame("2015-10-22", "2015-10-29 23:00")
    repeated = frame.loc[["2015-10-25 01:00:00+00:00"]].copy()
    repeated["windspeed"] += 1.0  # the second reading differs, as the weather data's do
    frame = pd.concat([frame, repeated]).sort_index(kind="stable")
    gap = (frame.index >= pd.Timestamp("2015-10-27 10:00", tz="UTC")) & \
          (frame.index < pd.Timestamp("2015-10-27 13:00", tz="UTC"))
    return frame[~gap]


@pytest.mark.parametrize("feature_set", features.FEATURE_SETS)
def test_changing_the_targets_leaves_every_feature_unchanged(week, feature_set):
    raw = features.raw_input(week)
    rng = np.random.default_rng(0)
    scrambled = week.assign(solar_GW=rng.uniform(0, 40, len(week)), wind_GW=rng.uniform(0, 40, len(week)))
    with_targets = week.reset_index()
    expected = features.build(raw, feature_set)
    for frame in (with_targets, scrambled.reset_index(), with_targets.drop(columns=data.TARGETS)):
        pd.testing.assert_frame_equal(features.build(frame, feature_set).set_axis(expected.index), expected)
    # through the model's own transformer, as training and serving use it
    builder = FeatureBuilder(feature_set).fit(raw, week[data.TARGETS])
    pd.testing.assert_frame_equal(builder.transform(scrambled.reset_index()).set_axis(expected.index), expected)
    assert not set(expected.columns) & set(data.TARGETS)


def test_feature_sets():
    assert features.feature_names("tutorial") == data.FEATURES
    names = features.feature_names("weather_calendar")
    assert names[:4] == data.FEATURES and len(names) == len(set(names))
    for expected in ("hour_sin", "doy_cos", "time_trend", "sun_elevation", "sun_azimuth_sin", "poa_global",
                     "windspeed_3", "windspeed_lag1", "windspeed_lead1", "ghi_mean3h"):
        assert expected in names
    with pytest.raises(ValueError, match="unknown feature set"):
        features.build(features.raw_input(data.synthetic_frame(end="2013-01-02")), "everything")


def test_no_missing_values_at_edges_gaps_and_repeats(week):
    built = features.build(features.raw_input(week), "weather_calendar")
    assert len(built) == len(week) and built.notna().all().all()
    assert np.isfinite(built.to_numpy()).all()


def test_leads_and_lags_are_matched_by_time_not_by_row(week):
    raw = features.raw_input(week)
    built = features.build(raw, "weather_calendar").set_axis(week.index)
    speed = week["windspeed"]
    at = lambda stamp: pd.Timestamp(stamp, tz="UTC")  # noqa: E731
    # an ordinary hour: its neighbours' values
    assert built.loc[at("2015-10-23 12:00"), "windspeed_lag1"] == speed.loc[at("2015-10-23 11:00")]
    assert built.loc[at("2015-10-23 12:00"), "windspeed_lead3"] == speed.loc[at("2015-10-23 15:00")]
    # after the gap (10:00-12:00 missing), 13:00's lag 1 is not 09:00's value: the hour's own stands in
    assert built.loc[at("2015-10-27 13:00"), "windspeed_lag1"] == speed.loc[at("2015-10-27 13:00")]
    assert built.loc[at("2015-10-27 13:00"), "windspeed_lag6"] == speed.loc[at("2015-10-27 07:00")]
    assert built.loc[at("2015-10-27 09:00"), "windspeed_lead1"] == speed.loc[at("2015-10-27 09:00")]
    # the repeated autumn hour is read as the mean of its two readings
    readings = speed.loc[at("2015-10-25 01:00")]
    assert len(readings) == 2
    assert built.loc[at("2015-10-25 02:00"), "windspeed_lag1"] == pytest.approx(readings.mean())
    # the edges: the hour's own value
    assert built["windspeed_lag1"].iloc[0] == speed.iloc[0]
    assert built["windspeed_lead1"].iloc[-1] == speed.iloc[-1]


def test_row_order_and_time_format_do_not_matter(week):
    raw = features.raw_input(week).reset_index(drop=True)
    expected = features.build(raw, "weather_calendar")
    shuffled = raw.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(features.build(shuffled, "weather_calendar").sort_index(), expected)
    as_text = raw.assign(utc_timestamp=raw["utc_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S"))
    aware = raw.assign(utc_timestamp=raw["utc_timestamp"].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin"))
    for other in (as_text, aware):
        pd.testing.assert_frame_equal(features.build(other, "weather_calendar"), expected)


def test_one_hour_request_is_answered(week):
    one = features.raw_input(week).iloc[[30]]
    built = features.build(one, "weather_calendar")
    assert built.shape == (1, len(features.feature_names("weather_calendar"))) and built.notna().all().all()
    assert built["windspeed_lag1"].iloc[0] == one["windspeed"].iloc[0]


def test_sun_is_plausible():
    raw = pd.DataFrame({"utc_timestamp": pd.to_datetime(["2016-06-21 11:00", "2016-06-21 23:00",
                                                         "2016-12-21 11:00"]),
                        "windspeed": 3.0, "temperature": 10.0, "rad_horizontal": 0.0, "rad_diffuse": 0.0})
    built = features.build(raw, "weather_calendar")
    # midsummer noon over central Germany: about 90 - 51.2 + 23.4 = 62 degrees; midwinter noon about 15
    assert built["sun_elevation"].iloc[0] == pytest.approx(62.0, abs=1.5)
    assert built["sun_elevation"].iloc[1] < 0
    assert built["sun_elevation"].iloc[2] == pytest.approx(15.3, abs=1.5)
    assert built["sun_elevation_south"].iloc[0] > built["sun_elevation_north"].iloc[0]
    assert built["clearsky_ghi"].iloc[0] > 800 and built["clearsky_ghi"].iloc[1] == 0


def test_pipeline_takes_the_raw_schema_and_clones(week):
    from sklearn.base import clone
    from sklearn.linear_model import LinearRegression

    model = modeling.make_model(LinearRegression(), "weather_calendar")
    raw = features.raw_input(week)
    model.fit(raw, week[data.TARGETS])
    assert list(model.named_steps["features"].feature_names_in_) == RAW_COLUMNS
    assert list(model.named_steps["features"].get_feature_names_out()) == features.feature_names("weather_calendar")
    assert model.predict(raw).shape == (len(week), 2)
    assert clone(model).get_params()["features__feature_set"] == "weather_calendar"


def test_time_index_stands_in_for_the_column(week):
    expected = features.build(features.raw_input(week), "weather_calendar")
    pd.testing.assert_frame_equal(features.build(week[data.FEATURES], "weather_calendar").set_axis(expected.index),
                                  expected)
    with pytest.raises(ValueError, match="needs the time"):
        features.build(week[data.FEATURES].reset_index(drop=True), "weather_calendar")
    # the tutorial set needs the four columns only
    assert list(features.build(week[data.FEATURES].reset_index(drop=True), "tutorial").columns) == data.FEATURES


def test_holdout_features_equal_serving_features():
    """What the test split is scored on is what a served model computes for the same request."""
    frame = data.synthetic_frame("2015-12-20", "2016-01-10 23:00")
    _, X_test, _, _ = evaluation.holdout(frame, {"test_start": "2016-01-01"})
    request = X_test.reset_index(drop=True).assign(
        utc_timestamp=X_test["utc_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy())
    pd.testing.assert_frame_equal(features.build(request, "weather_calendar"),
                                  features.build(X_test, "weather_calendar").reset_index(drop=True))

