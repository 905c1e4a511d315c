"""The model notebooks on the real processed data: the tutorial's figures on its random split, and the honest
figures on the time split (train 2013-2015, test 2016)."""

from __future__ import annotations

import pytest

from powerpipe.core import paths
from powerpipe.execution.engine import execute

from .conftest import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real data not present at {SHARED_DATA}"),
]

TUTORIAL_SPLIT = {"split": "random", "test_size": 0.2, "random_state": 42}
TIME_SPLIT = {"split": "time", "test_start": "2016-01-01", "folds": 4, "fold_length": "quarter"}


def run_notebook(name: str, tmp_path, tracking_uri: str, **parameters) -> dict[str, float]:
    # No figures: the numbers are under test here (drawing them took 3 to 4 s a notebook)
    result = execute(paths.NOTEBOOKS_DIR / name, tmp_path / name,
                     {"data_path": str(SHARED_DATA), "figures": False, **parameters},
                     env={"MLFLOW_TRACKING_URI": tracking_uri}, render=False)
    assert result.ok, result.error
    return result.scraps["metrics"]


def test_linreg_matches_tutorial():
    """The tutorial's linear regression, fitted as it was (raw predictions, random split): its figures."""
    from sklearn.linear_model import LinearRegression

    from powerpipe.forecast import data, evaluation, modeling

    X_train, X_test, y_train, y_test = evaluation.holdout(data.load(SHARED_DATA), TUTORIAL_SPLIT)
    model = modeling.make_model(LinearRegression(), "tutorial").fit(X_train, y_train)
    metrics = modeling.evaluate(y_test, model.predict(X_test))
    assert round(metrics["rmse"], 3) == 2.491
    assert round(metrics["r2"], 4) == 0.8365
    assert round(metrics["mae"], 3) == 1.703


def test_linreg_notebook_on_the_tutorial_split(tmp_path, tracking_uri):
    """The notebook scores what the served model answers: the same fit with forecasts clipped at zero (no
    negative generation), which only lowers the error (RMSE 2.491 raw, 2.475 clipped)."""
    metrics = run_notebook("model_linreg.ipynb", tmp_path, tracking_uri, evaluation=TUTORIAL_SPLIT,
                           feature_set="tutorial")
    assert round(metrics["rmse"], 3) == 2.475
    assert round(metrics["r2"], 4) == 0.8385
    assert round(metrics["mae"], 3) == 1.680
    assert "backtest_r2" not in metrics  # no backtest on a random split


def test_linreg_on_the_time_split(tmp_path, tracking_uri):
    """The honest figures for the tutorial's model, forecasts clipped at zero: R² 0.770 (solar 0.883, wind
    0.658); 0.766 (0.883, 0.650) unclipped."""
    metrics = run_notebook("model_linreg.ipynb", tmp_path, tracking_uri, evaluation=TIME_SPLIT,
                           feature_set="tutorial")
    assert metrics["r2"] == pytest.approx(0.770, abs=0.001)
    assert metrics["solar_r2"] == pytest.approx(0.883, abs=0.001)
    assert metrics["wind_r2"] == pytest.approx(0.658, abs=0.001)
    assert 0.5 < metrics["backtest_r2"] < 0.9 and metrics["backtest_rmse"] > 0


def test_gradient_boosting_on_the_time_split(tmp_path, tracking_uri):
    """The default gradient-boosting notebook (weather_calendar features) on the 2016 holdout. Its backtest on
    the last two quarters before 2016, not four: each fold is a fit on most of the data (R² 0.864 on two,
    0.876 on four), and this was the suite's longest test outside the groups."""
    metrics = run_notebook("model_gbr.ipynb", tmp_path, tracking_uri, evaluation={**TIME_SPLIT, "folds": 2})
    assert metrics["r2"] >= 0.87
    assert metrics["solar_r2"] >= 0.95 and metrics["wind_r2"] >= 0.79
    assert metrics["backtest_r2"] >= 0.85
