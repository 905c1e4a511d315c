"""What every model notebook does the same way: build, split, score and plot. Pure functions on frames.

The holdout split and the backtest of the evaluation contract are in ``powerpipe.evaluation``; ``split``
here is the tutorial's random split on the four weather columns, kept as it was.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from powerpipe.forecast.data import FEATURES, TARGETS

TEST_SIZE = 0.2
SPLIT_SEED = 42


def split(frame: pd.DataFrame, test_size: float = TEST_SIZE, random_state: int = SPLIT_SEED):
    """The tutorial's split: ``X_train, X_test, y_train, y_test`` on the four weather features.

    The same rows as ``evaluation.holdout(frame, {"split": "random"})``, which gives X in the raw schema.
    """
    from sklearn.model_selection import train_test_split

    return train_test_split(frame[FEATURES], frame[TARGETS], test_size=test_size, random_state=random_state)


def make_model(regressor, feature_set: str):
    """``Pipeline([("features", FeatureBuilder(feature_set)), ("model", regressor)])``: takes the raw schema."""
    from sklearn.pipeline import Pipeline

    from powerpipe.forecast.features import FeatureBuilder, check_feature_set

    return Pipeline([("features", FeatureBuilder(check_feature_set(feature_set))), ("model", regressor)])


def gradient_boosting(**hyperparameters):
    """scikit-learn's HistGradientBoostingRegressor, one per target (MultiOutputRegressor).

    No early stopping by default: it would hold out a random 10 % of the training hours, so the
    number of trees would depend on a shuffle; ``max_iter`` trees are fitted.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.multioutput import MultiOutputRegressor

    hyperparameters.setdefault("early_stopping", False)
    return MultiOutputRegressor(HistGradientBoostingRegressor(**hyperparameters))


def evaluate(y_true: pd.DataFrame, y_pred) -> dict[str, float]:
    """RMSE, MAE and R² over both targets together (as the tutorial computed them), then per target.

    Per-target keys are prefixed with the target's name before ``_GW``: ``solar_rmse``, ``wind_r2``…
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true = pd.DataFrame(y_true, columns=TARGETS)
    y_pred = np.asarray(y_pred, dtype="float64").reshape(len(y_true), len(TARGETS))
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }
    for i, target in enumerate(TARGETS):
        prefix = target.removesuffix("_GW")
        actual, predicted = y_true[target].to_numpy(), y_pred[:, i]
        metrics[f"{prefix}_rmse"] = float(np.sqrt(mean_squared_error(actual, predicted)))
        metrics[f"{prefix}_mae"] = float(mean_absolute_error(actual, predicted))
        metrics[f"{prefix}_r2"] = float(r2_score(actual, predicted))
    return metrics


def metrics_table(metrics: dict[str, float]) -> pd.DataFrame:
    """Metrics as a small targets × (rmse, mae, r2) table for display."""
    rows = {"both": {k: metrics[k] for k in ("rmse", "mae", "r2")}}
    for target in TARGETS:
        prefix = target.removesuffix("_GW")
        rows[target] = {k: metrics[f"{prefix}_{k}"] for k in ("rmse", "mae", "r2")}
    return pd.DataFrame(rows).T


def predictions_frame(y_pred, index=None) -> pd.DataFrame:
    """A model's raw output (n × 2) as a frame with the target names (a model that answers with quantile
    columns too, ``quantile_model``: its point columns)."""
    if isinstance(y_pred, pd.DataFrame) and all(target in y_pred.columns for target in TARGETS):
        y_pred = y_pred[TARGETS].to_numpy()
    return pd.DataFrame(np.asarray(y_pred, dtype="float64").reshape(-1, len(TARGETS)), columns=TARGETS, index=index)


def plot_actual_vs_predicted(y_test: pd.DataFrame, y_pred, X_test: pd.DataFrame, title: str = ""):
    """The tutorial's two scatter plots: solar coloured by temperature, wind coloured by windspeed."""
    import matplotlib.pyplot as plt

    y_pred = predictions_frame(y_pred)
    fig, axes = plt.subplots(ncols=2, figsize=(11, 4.5), constrained_layout=True)
    panels = [("solar_GW", "temperature", (-5, 25), "Solar"), ("wind_GW", "windspeed", (0, 8), "Wind")]
    for ax, (target, colour_by, (vmin, vmax), label) in zip(axes, panels):
        points = ax.scatter(
            y_test[target], y_pred[target], c=X_test[colour_by], s=2, alpha=0.5,
            cmap="inferno", vmin=vmin, vmax=vmax, rasterized=True,
        )
        top = float(max(y_test[target].max(), y_pred[target].max()))
        ax.plot([0, top], [0, top], color="grey", lw=1, ls="--")
        ax.set_xlabel(f"Actual {label} (GW)")
        ax.set_ylabel(f"Predicted {label} (GW)")
        fig.colorbar(points, ax=ax, label=colour_by)
    if title:
        fig.suptitle(title)
    return fig


def plot_skill(table: pd.DataFrame, x: str, title: str = "", ax=None):
    """R² per target (and over both) against ``x`` (a fold number or a period): does skill hold over time?"""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    positions = table[x] if x in table else table.index
    for key, label in (("r2", "both"), *((f"{t.removesuffix('_GW')}_r2", t) for t in TARGETS)):
        if key in table:
            ax.plot(positions, table[key], marker="o", label=label)
    ax.set(xlabel=x, ylabel="R²", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax.figure


def skill_figure(table: pd.DataFrame, title: str = ""):
    """Interactive (plotly) R² per period and target, from ``evaluation.skill_by_period``: for the report."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, label in (("r2", "both targets"), *((f"{t.removesuffix('_GW')}_r2", t) for t in TARGETS)):
        if key in table:
            fig.add_trace(go.Scatter(x=table.index, y=table[key], mode="lines+markers", name=label))
    fig.update_layout(title=title, yaxis_title="R²", template="plotly_white", height=380,
                      margin={"l": 60, "r": 20, "t": 60, "b": 40})
    return fig
