"""The field's measures on tiny frames with hand-computed values: coverage, width, pinball, CRPS, skill,
climatology quantiles, nRMSE/nMAE as a share of capacity; and installed capacity, from the table or
carried from the raw OPSD time series through the process step."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from powerpipe.forecast import capacity, data, intervals, opsd, scores

from .test_opsd import raw_opsd_bytes


def hours(start: str, n: int) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="h", tz="UTC", name=data.TIME_COLUMN)


def test_pinball_by_hand():
    # errors y - q: -1, 0, 1; level 0.1: 0.9·1, 0, 0.1·1 -> mean 1/3
    assert scores.pinball([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], 0.1) == pytest.approx(1.0 / 3.0)
    assert scores.pinball([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], 0.9) == pytest.approx(1.0 / 3.0)
    assert scores.pinball([4.0], [1.0], 0.5) == pytest.approx(1.5)


def test_crps_from_quantiles_by_hand():
    # quantiles 0, 1, 2 at 25, 50, 75 %, y = 1: pinball 0.25, 0, 0.25 -> CRPS = 2 · mean = 1/3
    assert scores.crps([1.0], [[0.0, 1.0, 2.0]], [0.25, 0.5, 0.75]) == pytest.approx(1.0 / 3.0)
    # a forecast whose every quantile is x (a certain forecast) scores |y - x| over symmetric levels
    levels = intervals.DENSE_LEVELS
    value = scores.crps([3.0, 0.5], np.full((2, len(levels)), 1.0), levels)
    assert value == pytest.approx(scores.crps_of_point([3.0, 0.5], [1.0, 1.0])) == pytest.approx(1.25)


def test_coverage_width_skill_and_capacity_shares_by_hand():
    recorded, lower, upper = [1.0, 5.0, 3.0, 2.0], [0.0, 1.0, 3.0, 2.5], [2.0, 4.0, 4.0, 3.0]
    assert scores.coverage(recorded, lower, upper) == 0.5  # 1 inside, 5 above, 3 on the edge (in), 2 below
    assert scores.width(lower, upper) == pytest.approx((2 + 3 + 1 + 0.5) / 4)
    assert scores.skill(1.0, 4.0) == 0.75
    # errors 1 and -3 GW on 10 and 20 GW of capacity: shares 0.1 and -0.15
    assert scores.nrmse([1.0, 5.0], [2.0, 2.0], [10.0, 20.0]) == pytest.approx(np.sqrt((0.01 + 0.0225) / 2))
    assert scores.nmae([1.0, 5.0], [2.0, 2.0], [10.0, 20.0]) == pytest.approx(0.125)
    assert scores.central_intervals([0.05, 0.1, 0.5, 0.9, 0.95]) == [(0.05, 0.95, 90), (0.1, 0.9, 80)]


def test_climatology_quantiles_by_hour_and_month():
    index = pd.DatetimeIndex(["2015-06-01 12:00", "2015-06-02 12:00", "2015-06-03 12:00", "2015-06-01 13:00",
                              "2015-07-01 12:00"], tz="UTC")
    training = pd.DataFrame({"solar_GW": [1.0, 2.0, 3.0, 10.0, 50.0], "wind_GW": [4.0, 4.0, 4.0, 4.0, 4.0]},
                            index=index)
    wanted = pd.DatetimeIndex(["2016-06-15 12:00", "2016-06-15 13:00", "2016-08-01 12:00"], tz="UTC")
    table = scores.climatology_quantiles(training, wanted, [0.5, 0.9])
    np.testing.assert_allclose(table["solar_GW"][0], [2.0, 2.8])  # June, noon: 1, 2, 3
    np.testing.assert_allclose(table["solar_GW"][1], [10.0, 10.0])  # June, 13:00: 10
    np.testing.assert_allclose(table["solar_GW"][2], [2.5, 35.9])  # no August: noon of every month: 1, 2, 3, 50
    np.testing.assert_allclose(table["wind_GW"], 4.0)


def test_score_names_and_values_on_a_tiny_frame():
    times = hours("2016-06-01 10:00", 4)  # daylight: every hour counts for solar
    recorded = pd.DataFrame({"solar_GW": [10.0, 12.0, 14.0, 9.0], "wind_GW": [5.0, 4.0, 6.0, 7.0]}, index=times)
    levels = intervals.scoring_levels()
    point = recorded + 0.5
    columns = {t: point[t].to_numpy() for t in data.TARGETS}
    for target in data.TARGETS:
        spread = np.array([0.5, 3.0, 0.5, 0.5])[:, None] * (np.asarray(levels) - 0.5)[None, :] * 4
        for i, level in enumerate(levels):
            columns[intervals.quantile_column(target, level)] = point[target].to_numpy() + spread[:, i]
    forecast = pd.DataFrame(columns, index=times)
    training = pd.DataFrame({"solar_GW": [0.0, 8.0, 11.0, 13.0], "wind_GW": [3.0, 3.0, 3.0, 3.0]},
                            index=hours("2015-06-01 10:00", 4))
    cap = pd.DataFrame({"solar_GW": [40.0] * 4, "wind_GW": [50.0] * 4}, index=times)
    metrics = scores.score(recorded, forecast, training, cap)
    # p10, p90 = point ∓ 1.6·spread; recorded = point - 0.5: inside where 1.6·spread >= 0.5 (all but none)
    assert metrics["solar_coverage_80"] == 1.0 and metrics["wind_coverage_80"] == 1.0
    assert metrics["solar_width_80"] == pytest.approx(np.mean([0.5, 3.0, 0.5, 0.5]) * 3.2)
    assert metrics["solar_nrmse_capacity"] == pytest.approx(0.5 / 40) and metrics["wind_nmae_capacity"] == pytest.approx(0.01)
    assert metrics["solar_pinball_p50"] == pytest.approx(0.25)  # |0.5| · 0.5
    assert metrics["crps"] == pytest.approx((metrics["solar_crps"] + metrics["wind_crps"]) / 2)
    assert metrics["wind_crps_skill"] == pytest.approx(1 - metrics["wind_crps"] / metrics["wind_crps_climatology"])
    assert {"solar_pinball_p10", "wind_pinball_p90", "solar_crps_climatology", "crps_skill"} <= set(metrics)


def test_coverage_of_skips_solar_at_night():
    """What monitoring calls on a week: solar coverage over daylight hours only, wind over every hour."""
    times = pd.DatetimeIndex(["2016-06-01 00:00", "2016-06-01 12:00", "2016-12-01 00:00", "2016-12-01 12:00"], tz="UTC")
    recorded = pd.DataFrame({"solar_GW": [0.0, 10.0, 0.0, 3.0], "wind_GW": [5.0, 5.0, 5.0, 50.0]}, index=times)
    forecast = pd.DataFrame({"solar_GW_p10": [1.0, 8.0, 1.0, 4.0], "solar_GW_p90": [2.0, 12.0, 2.0, 6.0],
                             "wind_GW_p10": [4.0, 4.0, 4.0, 4.0], "wind_GW_p90": [6.0, 6.0, 6.0, 6.0]}, index=times)
    assert scores.daylight(times).tolist() == [False, True, False, True]
    # solar: noon in June inside, noon in December below; the nights (outside, at zero) do not count
    assert scores.coverage_of(recorded, forecast) == {"solar_coverage_80": 0.5, "wind_coverage_80": 0.75}


def test_reliability_is_the_observed_frequency_below_each_quantile():
    frequency = scores.reliability([1.0, 2.0, 3.0, 4.0], np.tile([2.5, 3.5], (4, 1)), [0.25, 0.75])
    assert frequency.tolist() == [0.5, 0.75]


# -- installed capacity -----------------------------------------------------------------------------

def test_table_capacity_is_linear_between_year_ends():
    times = pd.DatetimeIndex(["2016-01-01 00:00", "2017-01-01 00:00", "2016-07-02 00:00", "2030-01-01"], tz="UTC")
    table = capacity.table_capacity(times)
    solar, wind = capacity.YEAR_END_GW["solar_GW"], capacity.YEAR_END_GW["wind_GW"]
    assert table["solar_GW"].tolist()[:2] == [solar[2015], solar[2016]]
    assert table["wind_GW"].iloc[2] == pytest.approx((wind[2015] + wind[2016]) / 2, abs=0.02)
    assert table["wind_GW"].iloc[3] == wind[max(wind)]  # after the table: its last year end
    frame = data.synthetic_frame("2016-06-01", "2016-06-02 23:00")
    assert capacity.capacity(frame).source == capacity.SOURCE_TABLE == capacity.source_of(frame)


def test_capacity_columns_are_carried_from_the_raw_opsd_time_series(tmp_path):
    """The process step keeps DE_solar_capacity and DE_wind_capacity (MW) as GW columns, carried over the
    file's gaps; the processed file keeps them, loading keeps them, and nRMSE uses them."""
    processed = data.synthetic_frame("2015-12-30", "2016-01-03 23:00")
    processed[data.TARGETS] = np.round(processed[data.TARGETS].to_numpy() * 1000) * 0.001
    processed = processed.drop(pd.DatetimeIndex(["2016-01-01 05:00"], tz="UTC"))

    def wind_capacity(times: pd.DatetimeIndex) -> np.ndarray:
        values = np.where(times < pd.Timestamp("2016-01-01", tz="UTC"), 44900.0, 45100.0)
        values[(times >= pd.Timestamp("2016-01-02 00:00", tz="UTC")) & (times < pd.Timestamp("2016-01-02 06:00", tz="UTC"))] = np.nan
        return values

    time_series, weather, _ = raw_opsd_bytes(processed, wind_capacity_mw=wind_capacity)
    (tmp_path / "ts.csv").write_bytes(time_series)
    (tmp_path / "weather.zip").write_bytes(weather)
    built = opsd.build_processed(tmp_path / "ts.csv", tmp_path / "weather.zip", start_date="2015-12-30")

    assert list(built.columns) == data.COLUMNS + ["solar_capacity_GW", "wind_capacity_GW"]
    pd.testing.assert_frame_equal(built[data.COLUMNS], processed, check_freq=False)
    assert (built["solar_capacity_GW"] == 38.0).all()
    assert built.loc["2015-12-31 23:00", "wind_capacity_GW"].item() == pytest.approx(44.9)
    assert built.loc["2016-01-02 03:00", "wind_capacity_GW"].item() == pytest.approx(45.1)  # a gap: carried forward
    path = data.write_processed(built, tmp_path / "germany.csv")
    loaded = data.load(path)
    assert list(loaded.columns) == list(built.columns)
    found = capacity.capacity(loaded)
    assert found.source == capacity.SOURCE_DATA
    assert found.values["wind_GW"].iloc[-1] == pytest.approx(45.1)
    wanted = loaded.index[[5, 2]]
    np.testing.assert_allclose(capacity.capacity(loaded, wanted).of("solar_GW"), [38.0, 38.0])

    # without DE_wind_capacity (the fixture's usual file): nothing carried, the table is used
    plain_ts, _, _ = raw_opsd_bytes(processed)
    (tmp_path / "plain.csv").write_bytes(plain_ts)
    plain = opsd.build_processed(tmp_path / "plain.csv", tmp_path / "weather.zip", start_date="2015-12-30")
    assert list(plain.columns) == data.COLUMNS and capacity.source_of(plain) == capacity.SOURCE_TABLE


# -- promotion on CRPS ------------------------------------------------------------------------------

def test_promotion_may_rank_on_crps_lowest_wins(tmp_path):
    from powerpipe.spec.config import load_config

    (tmp_path / "train.ipynb").write_text("{}")
    path = tmp_path / "pipeline.yaml"
    path.write_text("root: .\nstages:\n  train:\n    - notebook: train.ipynb\n  promote: {metric: crps}\n")
    promote = load_config(path).promote
    assert (promote.metric, promote.goal) == ("crps", "minimize")


def test_crps_of_a_model_without_quantiles_is_its_mean_absolute_error(three_rows):
    """What the gate re-scores a production model logged before intervals with: its points, taken as certain."""
    from sklearn.dummy import DummyRegressor

    from powerpipe.forecast import features, quantile_model

    y = three_rows[data.TARGETS]
    model = DummyRegressor(strategy="constant", constant=[11.0, 5.0]).fit(features.raw_input(three_rows), y)
    scored = quantile_model.crps_of_model(model, features.raw_input(three_rows), y)
    assert scored["solar_crps"] == pytest.approx((1.0 + 1.5 + 3.0) / 3)  # |11 - 10|, |11 - 12.5|, |11 - 14|
    assert scored["wind_crps"] == pytest.approx((0.0 + 1.0 + 1.5) / 3)
    assert scored["crps"] == pytest.approx((scored["solar_crps"] + scored["wind_crps"]) / 2)
