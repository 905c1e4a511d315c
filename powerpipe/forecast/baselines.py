"""Reference forecasts and skill: is a forecast error of 2 GW good?

Two baselines any forecast must beat (as the Solar Forecast Arbiter scores forecasts):

- ``persistence``: the same hour one day earlier (what was measured 24 hours before);
- ``climatology``: the mean of each target by month and hour of day over the training data (the hours
  up to the model's ``trained_until``).

``skill = 1 - RMSE / RMSE_ref`` (1: perfect, 0: no better than the reference, below 0: worse).
``live_scores`` scores a model's predictions and both baselines on the same hours (those after
``trained_until``), over all of them and week by week. Pure, vectorised functions on frames indexed
by UTC time; nothing here knows about MLflow. A model that answers quantiles is also scored on the
coverage of its p10–p90 interval (``solar_coverage_80``, ``wind_coverage_80``; solar over daylight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from powerpipe.forecast.data import TARGETS

BASELINES = ("persistence", "climatology")
PERSISTENCE_LAG = pd.Timedelta(hours=24)
METRICS = ("rmse", "mae", "bias", "r2")  # bias: mean of predicted - recorded (positive: too high)
PREFIXES = {target: target.removesuffix("_GW") for target in TARGETS}
COVERAGE_LEVELS = (0.1, 0.9)  # a model with intervals: coverage of its p10-p90 on the new hours too


def _unique(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per time (the autumn clock-change hour, recorded twice in the published file: the first)."""
    return frame[~frame.index.duplicated(keep="first")]


def persistence(frame: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame:
    """The recorded targets 24 hours before each of ``times`` (NaN where the data has no such hour)."""
    recorded = _unique(frame[TARGETS])
    earlier = recorded.reindex(pd.DatetimeIndex(times) - PERSISTENCE_LAG)
    return earlier.set_axis(pd.DatetimeIndex(times))


def climatology(training: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame:
    """Per target, the mean of ``training`` for the month and hour of day of each of ``times``.

    A (month, hour) the training data lacks falls back to that hour's mean over all months, then to the
    overall mean (short training data in tests; never on the real four years).
    """
    times = pd.DatetimeIndex(times)
    values = training[TARGETS]
    index = values.index
    table = values.groupby([index.month, index.hour]).mean()
    by_hour = values.groupby(index.hour).mean()
    keys = pd.MultiIndex.from_arrays([times.month, times.hour])
    out = table.reindex(keys).set_axis(times)
    fallback = by_hour.reindex(times.hour).set_axis(times)
    return out.fillna(fallback).fillna(values.mean())


def scores(recorded, predicted) -> dict[str, float]:
    """RMSE, MAE, bias and R² over both targets (as ``modeling.evaluate``: R² averaged over targets), then
    per target (``solar_rmse``, ``wind_bias``, ...). NaN where undefined (no hours; R² of a constant)."""
    actual = np.asarray(recorded, dtype="float64").reshape(-1, len(TARGETS))
    guess = np.asarray(predicted, dtype="float64").reshape(-1, len(TARGETS))
    out: dict[str, float] = {}
    if not len(actual):
        return {key: float("nan") for key in _metric_keys()}
    error = guess - actual
    per_r2 = []
    for i, target in enumerate(TARGETS):
        e, a = error[:, i], actual[:, i]
        total = float(np.sum((a - a.mean()) ** 2))
        r2 = 1.0 - float(np.sum(e ** 2)) / total if total > 0 else float("nan")
        per_r2.append(r2)
        prefix = PREFIXES[target]
        out[f"{prefix}_rmse"] = float(np.sqrt(np.mean(e ** 2)))
        out[f"{prefix}_mae"] = float(np.mean(np.abs(e)))
        out[f"{prefix}_bias"] = float(np.mean(e))
        out[f"{prefix}_r2"] = r2
    both = {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
            "bias": float(np.mean(error)), "r2": float(np.mean(per_r2))}
    return {**both, **out}


def _metric_keys() -> list[str]:
    return [*METRICS, *(f"{p}_{m}" for p in PREFIXES.values() for m in METRICS)]


def skill(rmse: float, rmse_reference: float) -> float:
    """``1 - rmse / rmse_reference``; NaN when the reference is perfect or undefined."""
    if not np.isfinite(rmse) or not np.isfinite(rmse_reference) or rmse_reference <= 0:
        return float("nan")
    return float(1.0 - rmse / rmse_reference)


def skills(model: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """``skill`` over both targets and per target (``solar_skill``, ``wind_skill``)."""
    out = {"skill": skill(model["rmse"], reference["rmse"])}
    for prefix in PREFIXES.values():
        out[f"{prefix}_skill"] = skill(model[f"{prefix}_rmse"], reference[f"{prefix}_rmse"])
    return out


@dataclass
class LiveScores:
    """A model and both baselines on the same new hours: over all of them, and one row per week."""

    hours: int
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    overall: dict[str, dict[str, float]]  # "model", "persistence", "climatology" -> metrics (+ skill)
    weekly: pd.DataFrame  # one row per week: week, hours, model_rmse, ..., persistence_skill, ...
    dropped: int = 0  # new hours left out (no recorded hour a day earlier for persistence)

    @property
    def best_baseline(self) -> str | None:
        """The baseline with the lower RMSE over all new hours (the one that is harder to beat)."""
        scored = [(self.overall[name]["rmse"], name) for name in BASELINES
                  if name in self.overall and np.isfinite(self.overall[name]["rmse"])]
        return min(scored)[1] if scored else None


def live_scores(frame: pd.DataFrame, predicted: pd.DataFrame, trained_until: pd.Timestamp,
                freq: str = "W") -> LiveScores:
    """Score ``predicted`` (the model's predictions, indexed by time, for at least the hours of ``frame``
    after ``trained_until``) and both baselines on those hours, overall and per week (``freq``: pandas
    period code, weeks Monday to Sunday).

    ``frame``: the data, indexed by UTC time, with the hours before ``trained_until`` too (the
    climatology learns from those up to it; persistence looks a day back). Hours whose persistence
    forecast is missing are left out for all three, so every score covers the same hours.
    """
    frame = frame.sort_index(kind="stable")
    new = frame[frame.index > trained_until]
    training = frame[frame.index <= trained_until]
    if new.empty or training.empty:
        empty = pd.DataFrame(columns=["week", "hours"])
        return LiveScores(0, None, None, {}, empty)
    forecasts = {"model": _aligned(predicted, new.index),
                 "persistence": persistence(frame, new.index),
                 "climatology": climatology(training, new.index)}
    usable = np.ones(len(new), dtype=bool)
    for values in forecasts.values():
        usable &= ~np.isnan(values.to_numpy()).any(axis=1)
    dropped = int((~usable).sum())
    new = new[usable]
    forecasts = {name: values[usable] for name, values in forecasts.items()}
    if new.empty:
        return LiveScores(0, None, None, {}, pd.DataFrame(columns=["week", "hours"]), dropped)
    recorded = new[TARGETS].to_numpy()
    quantiles = _quantiles(predicted, new.index)
    overall = _scored(recorded, {name: values.to_numpy() for name, values in forecasts.items()})
    if quantiles is not None:
        overall["model"].update(_coverage(new, quantiles))
    naive = new.index.tz_convert("UTC").tz_localize(None)
    rows = []
    for period, positions in pd.Series(np.arange(len(new)), index=naive).groupby(naive.to_period(freq)).indices.items():
        scored = _scored(recorded[positions], {name: values.to_numpy()[positions] for name, values in forecasts.items()})
        if quantiles is not None:
            scored["model"].update(_coverage(new.iloc[positions], quantiles.iloc[positions]))
        row = {"week": period.start_time.tz_localize("UTC"), "hours": len(positions)}
        for name, metrics in scored.items():
            row.update({f"{name}_{key}": value for key, value in metrics.items()})
        rows.append(row)
    weekly = pd.DataFrame(rows).sort_values("week", kind="stable").reset_index(drop=True)
    return LiveScores(len(new), new.index.min(), new.index.max(), overall, weekly, dropped)


def _quantiles(predicted: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame | None:
    """The p10 and p90 columns of ``predicted`` at ``times`` (None: the model answers no intervals)."""
    from powerpipe.forecast.intervals import quantile_column

    columns = [quantile_column(target, level) for target in TARGETS for level in COVERAGE_LEVELS]
    if not all(column in predicted.columns for column in columns):
        return None
    if len(predicted) == len(times) and predicted.index.equals(times):
        return predicted[columns]
    return _unique(predicted[columns]).reindex(times)


def _coverage(recorded: pd.DataFrame, quantiles: pd.DataFrame) -> dict[str, float]:
    from powerpipe.forecast.scores import coverage_of

    return coverage_of(recorded, quantiles, *COVERAGE_LEVELS)


def _aligned(predicted: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame:
    """``predicted`` at ``times``: by position when it has exactly those rows, else by time (first of a repeat)."""
    if len(predicted) == len(times) and predicted.index.equals(times):
        return predicted[TARGETS]
    return _unique(predicted[TARGETS]).reindex(times)


def _scored(recorded: np.ndarray, forecasts: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {name: scores(recorded, values) for name, values in forecasts.items()}
    for name in BASELINES:
        if name in out and "model" in out:
            out[name].update(skills(out["model"], out[name]))
    return out
