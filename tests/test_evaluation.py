"""The evaluation contract: the split (time or random), the expanding-window backtest, the checks on the YAML block."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from powerpipe.forecast import data, evaluation, modeling
from powerpipe.forecast.evaluation import Evaluation
from powerpipe.core.exceptions import ConfigError
from powerpipe.forecast.features import RAW_COLUMNS


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    """Fifteen months of synthetic hours, with the autumn clock-change hour repeated as in the real file."""
    frame = data.synthetic_frame("2015-10-01", "2016-12-31 23:00")
    repeated = frame.loc[["2015-10-25 01:00:00+00:00"]]
    return pd.concat([frame, repeated]).sort_index(kind="stable")


# -- the contract ----------------------------------------------------------------------------------


def test_default_is_the_time_split_with_quarterly_folds():
    spec = Evaluation.from_dict(None)
    assert spec == Evaluation.from_dict({}) == Evaluation()
    assert spec.as_dict() == {"split": "time", "test_start": "2016-01-01", "folds": 4, "fold_length": "quarter"}
    assert spec.describe() == "time split, test from 2016-01-01, backtest 4 quarterly folds"
    assert spec.has_backtest


def test_random_split_is_the_tutorials():
    spec = Evaluation.from_dict({"split": "random", "test_size": 0.2, "random_state": 42})
    assert spec.as_dict() == {"split": "random", "test_size": 0.2, "random_state": 42}
    assert Evaluation.from_dict({"split": "random"}) == spec
    assert not spec.has_backtest
    assert "random split" in spec.describe() and "20%" in spec.describe()


def test_as_dict_round_trips_and_is_json(tmp_path):
    import json

    for raw in ({}, {"split": "random", "test_size": 0.25, "random_state": 1},
                {"test_start": "2015-07-01 06:00", "folds": 6, "fold_length": "month"}):
        spec = Evaluation.from_dict(raw)
        assert Evaluation.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
        assert evaluation.from_tag(spec.to_json()) == spec
    assert evaluation.from_tag(None) is None and evaluation.from_tag("not json") is None


def test_yaml_dates_are_accepted():
    # YAML reads `test_start: 2016-01-01` (unquoted) as a date.
    assert Evaluation.from_dict({"test_start": dt.date(2016, 1, 1)}).test_start == "2016-01-01"
    assert Evaluation.from_dict({"test_start": "2016-01-01T00:00:00+01:00"}).test_start == "2015-12-31 23:00"


@pytest.mark.parametrize("raw, message", [
    ([1, 2], "must be a mapping"),
    ({"split": "times"}, "'time' or 'random'"),
    ({"split": "random", "folds": 4}, "folds applies to the time split only"),
    ({"split": "time", "test_size": 0.2}, "test_size applies to the random split only"),
    ({"test_strat": "2016-01-01"}, "did you mean 'test_start'"),
    ({"test_start": "soon"}, "not a date"),
    ({"test_start": 2016}, "must be a date"),
    ({"folds": -1}, "folds must be a whole number"),
    ({"folds": 2.5}, "folds must be a whole number"),
    ({"folds": True}, "folds must be a whole number"),
    ({"fold_length": "fortnight"}, "fold_length must be one of"),
    ({"split": "random", "test_size": 1.2}, "test_size must be a fraction"),
    ({"split": "random", "random_state": "x"}, "random_state must be"),
])
def test_bad_blocks_are_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Evaluation.from_dict(raw)


# -- the holdout -------------------------------------------------------------------------------------


def test_time_split_on_three_rows(three_rows):
    X_train, X_test, y_train, y_test = evaluation.holdout(three_rows, {"test_start": "2016-06-01 11:00"})
    assert list(X_train.columns) == RAW_COLUMNS and list(y_train.columns) == data.TARGETS
    assert len(X_train) == 1 and len(X_test) == 2
    assert X_train.index.max() < X_test.index.min()
    assert not set(X_train.index) & set(X_test.index)
    # The served schema: utc_timestamp a column of naive UTC times, the same hours as the index.
    assert X_test["utc_timestamp"].dt.tz is None
    assert list(X_test["utc_timestamp"]) == list(X_test.index.tz_localize(None))
    assert list(y_test["solar_GW"]) == [12.5, 14.0]
    assert (X_test.index == y_test.index).all()


def test_time_split_needs_hours_on_both_sides(three_rows):
    with pytest.raises(ConfigError, match="no training hours"):
        evaluation.holdout(three_rows, {"test_start": "2016-06-01"})
    with pytest.raises(ConfigError, match="no test hours"):
        evaluation.holdout(three_rows, {"test_start": "2016-07-01"})


def test_time_split_keeps_every_test_period_row_out_of_training(small):
    X_train, X_test, y_train, y_test = evaluation.holdout(small, None)
    start = pd.Timestamp("2016-01-01", tz="UTC")
    assert (X_train.index < start).all() and (X_test.index >= start).all()
    assert len(X_train) + len(X_test) == len(small)
    assert (small.index >= start).sum() == len(X_test)
    # the repeated autumn hour stays, twice, in training
    assert (X_train.index == pd.Timestamp("2015-10-25 01:00", tz="UTC")).sum() == 2


def test_holdout_accepts_a_time_column(small):
    with_column = small.reset_index()
    for a, b in zip(evaluation.holdout(with_column, {}), evaluation.holdout(small, {})):
        pd.testing.assert_frame_equal(a, b)


def test_random_split_gives_the_tutorials_rows(small):
    X_train, X_test, y_train, y_test = evaluation.holdout(small, {"split": "random"})
    T_train, T_test, t_train, t_test = modeling.split(small)
    assert list(X_test.index) == list(T_test.index) and list(X_train.index) == list(T_train.index)
    pd.testing.assert_frame_equal(X_test[data.FEATURES], T_test.set_axis(X_test.index))
    pd.testing.assert_frame_equal(y_test, t_test.set_axis(y_test.index))


# -- the backtest ------------------------------------------------------------------------------------


def test_backtest_folds_expand_and_never_train_on_their_test_period(small):
    folds = evaluation.backtest_folds(small, {"folds": 4})
    assert [f.fold for f in folds] == [1, 2, 3, 4]
    assert [f.start.strftime("%Y-%m-%d") for f in folds] == ["2016-01-01", "2016-04-01", "2016-07-01", "2016-10-01"]
    for before, after in zip(folds, folds[1:]):
        assert len(after.X_train) > len(before.X_train)  # expanding
        assert set(before.X_train.index) | set(before.X_test.index) == set(after.X_train.index)
        assert before.end == after.start
    for fold in folds:
        assert fold.X_train.index.max() < fold.start <= fold.X_test.index.min()
        assert fold.X_test.index.max() < fold.end
        assert not set(fold.X_train.index) & set(fold.X_test.index)
        assert list(fold.X_train.columns) == RAW_COLUMNS
        assert len(fold.X_train) == len(fold.y_train) and len(fold.X_test) == len(fold.y_test)
    assert sum(len(f.X_test) for f in folds) == len(evaluation.holdout(small)[1])


def test_folds_past_the_data_are_left_out_and_random_split_has_none(small):
    assert len(evaluation.backtest_folds(small, {"folds": 8})) == 4
    months = evaluation.backtest_folds(small, {"folds": 3, "fold_length": "month"})
    assert [f.end.strftime("%Y-%m-%d") for f in months] == ["2016-02-01", "2016-03-01", "2016-04-01"]
    assert evaluation.backtest_folds(small, {"split": "random"}) == []
    assert evaluation.backtest_folds(small, {"folds": 0}) == []


def test_backtest_scores_each_fold_with_a_fresh_fit(small):
    from sklearn.linear_model import LinearRegression

    seen = []

    def fit_predict(X_train, y_train, X_test):
        seen.append((len(X_train), X_train.index.max(), X_test.index.min()))
        return LinearRegression().fit(X_train[data.FEATURES], y_train).predict(X_test[data.FEATURES])

    table = evaluation.backtest(small, {"folds": 4}, fit_predict)
    assert list(table["fold"]) == [1, 2, 3, 4] and len(seen) == 4
    assert all(last < first for _, last, first in seen)
    assert list(table["n_train"]) == [n for n, _, _ in seen]
    for column in ("rmse", "mae", "r2", "solar_r2", "wind_r2", "solar_rmse", "wind_rmse"):
        assert table[column].notna().all()
    summary = evaluation.backtest_summary(table)
    assert summary["backtest_r2"] == pytest.approx(table["r2"].mean())
    assert summary["backtest_rmse"] == pytest.approx(table["rmse"].mean())
    assert evaluation.backtest_summary(evaluation.backtest(small, {"split": "random"}, fit_predict)) == {}


def test_refit_clones_the_estimator(small):
    from sklearn.exceptions import NotFittedError

    model = modeling.make_model(modeling.gradient_boosting(max_iter=5), "tutorial")
    evaluation.backtest(small, {"folds": 1}, evaluation.refit(model))
    with pytest.raises(NotFittedError):  # the template itself is never fitted
        model.predict(evaluation.holdout(small)[1])


def test_skill_per_month(small):
    _, X_test, _, y_test = evaluation.holdout(small)
    table = evaluation.skill_by_period(y_test, y_test.to_numpy())
    assert len(table) == 12 and table.index[0] == pd.Timestamp("2016-01-01", tz="UTC")
    assert np.allclose(table["r2"], 1.0) and table["n"].sum() == len(y_test)
