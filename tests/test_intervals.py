"""Intervals: names and levels, coverage on synthetic data with known noise, quantiles that never cross nor
fall below zero, calibration on training hours only, and the backtest's folds calibrated on hours before
them. Fast: no notebook, no MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from powerpipe.core.exceptions import ConfigError
from powerpipe.forecast import data, evaluation, intervals, scores


def test_level_names_and_columns():
    assert [intervals.level_name(x) for x in (0.1, 0.05, 0.5, 0.975)] == ["p10", "p05", "p50", "p97.5"]
    assert intervals.quantile_columns((0.9, 0.1, 0.5)) == [
        "solar_GW", "wind_GW", "solar_GW_p10", "solar_GW_p50", "solar_GW_p90", "wind_GW_p10", "wind_GW_p50",
        "wind_GW_p90"]
    assert intervals.levels_of(None) == (0.1, 0.5, 0.9)
    assert intervals.levels_of({"split": "time", "quantiles": [0.95, 0.5, 0.1, 0.9, 0.05]}) == (0.05, 0.1, 0.5, 0.9, 0.95)
    for bad, message in (([0.1, 0.9], "p50"), ([0.1, 0.5, 0.9, 1.0], "strictly between"), ("0.5", "list"),
                         ([0.1, 0.5, 0.5, 0.9], "repeat")):
        with pytest.raises(ValueError, match=message):
            intervals.check_levels(bad)


def test_evaluation_declares_the_levels_for_any_split():
    spec = evaluation.Evaluation.from_dict({"split": "time", "test_start": "2016-01-01", "quantiles": [0.5, 0.9, 0.1]})
    assert spec.quantiles == (0.1, 0.5, 0.9) and spec.as_dict()["quantiles"] == [0.1, 0.5, 0.9]
    assert "quantiles" not in evaluation.Evaluation.from_dict({"split": "time"}).as_dict()  # default: unchanged
    assert evaluation.Evaluation.from_dict({"split": "random", "quantiles": [0.1, 0.5, 0.9]}).quantiles == (0.1, 0.5, 0.9)
    assert evaluation.Evaluation.from_dict({"split": "none", "quantiles": [0.1, 0.5, 0.9]}).as_dict() == {
        "split": "none", "quantiles": [0.1, 0.5, 0.9]}
    with pytest.raises(ConfigError, match="must include 0.1, 0.5 and 0.9"):
        evaluation.Evaluation.from_dict({"quantiles": [0.05, 0.5, 0.95]})


def synthetic_forecasts(start: str, end: str, seed: int) -> tuple[pd.DatetimeIndex, pd.DataFrame, pd.DataFrame]:
    """A known truth and a perfect point model: solar zero at night and noise growing with output by day,
    wind with noise proportional to its level (capacity-sized values)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, end, freq="h", tz="UTC")
    hour = times.hour.to_numpy()
    sun = np.clip(np.sin(np.pi * (hour - 5) / 14), 0, None)
    solar = 25.0 * sun * rng.uniform(0.3, 1.0, len(times))
    wind = rng.uniform(2.0, 30.0, len(times))
    point = pd.DataFrame({"solar_GW": solar, "wind_GW": wind}, index=times)
    noise = pd.DataFrame({"solar_GW": rng.normal(0, 1.0, len(times)) * (0.2 + 0.1 * solar),
                          "wind_GW": rng.normal(0, 1.0, len(times)) * (0.5 + 0.12 * wind)}, index=times)
    recorded = (point + noise).clip(lower=0.0)
    recorded.loc[sun == 0, "solar_GW"] = 0.0
    return times, point, recorded


def test_coverage_on_synthetic_data_with_known_noise():
    times, point, recorded = synthetic_forecasts("2015-01-01", "2015-12-31 23:00", seed=1)
    calibration = intervals.Calibration.fit(times, point, recorded)
    new_times, new_point, new_recorded = synthetic_forecasts("2016-01-01", "2016-06-30 23:00", seed=2)
    forecast = calibration.forecast(new_times, new_point, intervals.scoring_levels())
    coverage = scores.coverage_of(new_recorded, forecast)
    assert 0.76 <= coverage["solar_coverage_80"] <= 0.84
    assert 0.76 <= coverage["wind_coverage_80"] <= 0.84
    for target in data.TARGETS:  # the median too: half the hours below it (solar by day; a tie at 0 counts half)
        shown = scores.scored_hours(target, new_times)
        median = forecast[intervals.quantile_column(target, 0.5)]
        below = ((new_recorded[target] < median).astype(float) + (new_recorded[target] <= median)) / 2
        assert 0.45 <= below[shown].mean() <= 0.55, target
    night = new_point["solar_GW"].to_numpy() == 0  # nothing forecast, and nothing ever recorded then
    assert (forecast.loc[night, ["solar_GW_p10", "solar_GW_p50", "solar_GW_p90"]] == 0).all().all()


def test_quantiles_never_cross_nor_fall_below_zero():
    times, point, recorded = synthetic_forecasts("2015-01-01", "2015-06-30 23:00", seed=3)
    calibration = intervals.Calibration.fit(times, point, recorded, (0.05, 0.1, 0.5, 0.9, 0.95))
    rng = np.random.default_rng(4)
    wild = pd.DataFrame({"solar_GW": rng.uniform(-5, 40, len(times)), "wind_GW": rng.uniform(-5, 60, len(times))},
                        index=times)  # negative points too: what a net may answer at night
    forecast = calibration.forecast(times, wild)
    assert (forecast >= 0).all().all()
    for target in data.TARGETS:
        values = forecast[[intervals.quantile_column(target, x) for x in calibration.levels]].to_numpy()
        assert (np.diff(values, axis=1) >= 0).all()
    assert (forecast[data.TARGETS].to_numpy() == np.clip(wild.to_numpy(), 0, None)).all()


def test_calibration_reads_training_hours_only_and_shifts_an_aged_models_bias():
    """One extra fit per window: on the training hours before their last year, predicting it, and on the
    hours before the year before it, predicting that one."""
    frame = data.synthetic_frame("2013-01-01", "2015-12-31 23:00")
    X_train, y_train = evaluation.holdout(frame, {"test_start": "2015-12-31"})[0::2]
    seen = []

    def fit_predict(X_fit, y_fit, X_window):
        seen.append((X_fit.index, X_window.index))
        return y_train.loc[X_window.index].to_numpy() - 1.0  # an older model: 1 GW too low everywhere

    calibration = intervals.calibrate(fit_predict, X_train, y_train, {"quantiles": [0.1, 0.5, 0.9]},
                                      fitted=lambda X: y_train.loc[X.index].to_numpy())  # the deployed: unbiased
    (last_fit, last), (earlier_fit, earlier) = seen  # newest window first
    assert last_fit.max() < last.min() and last.max() <= X_train.index.max()
    assert last.min() == pd.Timestamp("2014-12-30 23:00", tz="UTC")  # 365 days before the last hour
    assert earlier_fit.max() < earlier.min() and earlier.max() < last.min()  # the year before, fitted before it
    assert earlier.min() == pd.Timestamp("2013-12-31 11:00", tz="UTC")  # the later half of the hours before it
    assert calibration.window == ("2013-12-31 11:00", "2015-12-30 23:00")
    # every residual was +1 GW (the aged model's bias, 2-3 % of capacity), the deployed model's none: the
    # residuals' median (as a share of capacity) goes to 0
    centred = calibration.targets["wind_GW"].residuals
    assert np.median(np.concatenate(list(centred.values()))) == pytest.approx(0.0, abs=1e-3)
    assert calibration.sample["offset_wind_GW"].mean() == pytest.approx(1.0, abs=0.05)


def test_backtest_folds_are_calibrated_on_earlier_hours():
    frame = data.synthetic_frame("2015-01-01", "2016-06-30 23:00")
    spec = {"test_start": "2016-01-01", "folds": 2, "fold_length": "quarter"}
    truth = frame[data.TARGETS]

    def fit_predict(X_fit, y_fit, X_test):
        return truth.loc[X_test.index].to_numpy() * 1.05

    X_train, _, y_train, _ = evaluation.holdout(frame, spec)
    calibration = intervals.calibrate(fit_predict, X_train, y_train, spec)
    extended = []
    original = intervals.Calibration.extended

    def spy(self, times, point, recorded):
        extended.append(pd.DatetimeIndex(times))
        return original(self, times, point, recorded)

    intervals.Calibration.extended = spy
    try:
        table = intervals.backtest(frame, spec, fit_predict, calibration)
    finally:
        intervals.Calibration.extended = original
    assert list(table["fold"]) == [1, 2]
    assert extended[0].max() < pd.Timestamp("2016-04-01", tz="UTC")  # fold 2 calibrated on fold 1's hours
    assert {"solar_coverage_80", "wind_coverage_80", "crps", "crps_skill", "wind_nrmse_capacity"} <= set(table)
    assert (table["r2"] > 0.9).all() and table["solar_coverage_80"].between(0, 1).all()
    assert evaluation.backtest_summary(table)["backtest_crps"] == pytest.approx(table["crps"].mean())
