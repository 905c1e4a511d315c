"""The field's measures of a forecast with quantiles: coverage, width, pinball loss, CRPS, skill, nRMSE.

As GEFCom2014 and the Solar Forecast Arbiter score probabilistic solar and wind forecasts:

- **coverage** of a central interval (p10-p90: the 80 % interval): the share of hours whose recorded
  value lies inside it (ends included), and its mean **width** (GW);
- **pinball loss** of each quantile (GW): ``mean(max(τ·(y - q), (τ - 1)·(y - q)))``;
- **CRPS** (GW) from the quantiles on ``intervals.DENSE_LEVELS`` (1 % to 99 %), with ``scoringrules``
  (``crps_quantile``: twice the mean pinball loss over the levels);
- **skill** against climatology: ``1 - CRPS / CRPS_clim`` on the same hours, where the climatology
  forecast is the quantiles of the training hours' values by hour of day × month;
- **nRMSE, nMAE** of the point forecast as a share of installed capacity (``capacity``), each hour's
  error divided by that hour's capacity; fractions (0.035 is 3.5 %).

Solar coverage, width and reliability are taken over daylight hours only (``daylight``: the sun above
-6°, civil twilight, somewhere in Germany): at night output is zero and any interval holding zero
"covers" it, which would say nothing about the intervals (as solar verification excludes night).
Pinball loss and CRPS run over every hour (a night hour adds zero to model and climatology alike).

Metric names, per target (``solar_…``, ``wind_…``): ``coverage_80`` (``coverage_NN`` for each central
interval of the levels), ``width_80``, ``pinball_p10``…, ``crps``, ``crps_climatology``, ``crps_skill``,
``nrmse_capacity``, ``nmae_capacity``; over both targets: ``crps`` and ``crps_skill``. Pure, vectorised
functions; nothing here knows about MLflow.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from powerpipe.forecast.data import TARGETS
from powerpipe.forecast.intervals import (DEFAULT_LEVELS, DENSE_LEVELS, check_levels, level_name, quantile_column,
                                          scoring_levels)

PREFIXES = {target: target.removesuffix("_GW") for target in TARGETS}
TWILIGHT_DEGREES = -6.0  # civil twilight: below this everywhere in Germany, no PV output to speak of


def central_intervals(levels: Iterable[float]) -> list[tuple[float, float, int]]:
    """``(lower, upper, nominal %)`` for each pair of levels symmetric about 0.5: (0.1, 0.9, 80)."""
    levels = check_levels(levels, require=False)
    pairs = []
    for lower in levels:
        upper = round(1.0 - lower, 6)
        if lower < 0.5 and upper in levels:
            pairs.append((lower, upper, int(round((upper - lower) * 100))))
    return pairs


# -- the measures ---------------------------------------------------------------------------------------

def coverage(recorded, lower, upper) -> float:
    """Share of hours with ``lower <= recorded <= upper``; NaN without hours."""
    recorded = np.asarray(recorded, dtype="float64")
    if not len(recorded):
        return float("nan")
    return float(np.mean((recorded >= np.asarray(lower)) & (recorded <= np.asarray(upper))))


def width(lower, upper) -> float:
    """Mean width of the intervals (GW); NaN without hours."""
    difference = np.asarray(upper, dtype="float64") - np.asarray(lower, dtype="float64")
    return float(difference.mean()) if len(difference) else float("nan")


def pinball(recorded, quantile, level: float) -> float:
    """Mean pinball (quantile) loss of the ``level`` quantile forecasts ``quantile``."""
    error = np.asarray(recorded, dtype="float64") - np.asarray(quantile, dtype="float64")
    return float(np.mean(np.maximum(level * error, (level - 1.0) * error)))


def crps(recorded, quantiles, levels: Iterable[float] = DENSE_LEVELS) -> float:
    """Mean CRPS of forecasts given as quantiles (n × len(levels)), with ``scoringrules.crps_quantile``."""
    import scoringrules

    recorded = np.asarray(recorded, dtype="float64")
    if not len(recorded):
        return float("nan")
    values = scoringrules.crps_quantile(recorded, np.asarray(quantiles, dtype="float64"),
                                        np.asarray(list(levels), dtype="float64"), backend="numpy")
    return float(np.mean(values))


def skill(score: float, reference: float) -> float:
    """``1 - score / reference`` (1: perfect, 0: no better than the reference, negative: worse)."""
    return float(1.0 - score / reference) if reference else float("nan")


def nrmse(recorded, point, capacity) -> float:
    """Root mean square of each hour's error as a share of that hour's installed capacity (a fraction)."""
    relative = (np.asarray(point, dtype="float64") - np.asarray(recorded, dtype="float64")) / np.asarray(capacity)
    return float(np.sqrt(np.mean(relative ** 2))) if len(relative) else float("nan")


def nmae(recorded, point, capacity) -> float:
    """Mean absolute error as a share of each hour's installed capacity (a fraction)."""
    relative = (np.asarray(point, dtype="float64") - np.asarray(recorded, dtype="float64")) / np.asarray(capacity)
    return float(np.mean(np.abs(relative))) if len(relative) else float("nan")


def reliability(recorded, quantiles, levels: Iterable[float]) -> pd.Series:
    """Observed frequency of ``recorded <= quantile`` per nominal level (a calibrated forecast: the diagonal)."""
    recorded = np.asarray(recorded, dtype="float64")
    values = np.asarray(quantiles, dtype="float64")
    levels = list(levels)
    frequency = (recorded[:, None] <= values).mean(axis=0) if len(recorded) else np.full(len(levels), np.nan)
    return pd.Series(frequency, index=pd.Index(levels, name="level"), name="observed")


def daylight(times) -> np.ndarray:
    """True for hours with the sun above ``TWILIGHT_DEGREES`` at the middle of the hour somewhere in Germany
    (the five points of ``features``: centre and borders)."""
    from powerpipe.forecast.features import BORDER_SITES, CENTRE, _solar_position

    index = pd.DatetimeIndex(times)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    if not len(index):
        return np.zeros(0, dtype=bool)
    elevation = np.column_stack([_solar_position(index, site, "ephemeris")["elevation"].to_numpy()
                                 for site in (CENTRE, *BORDER_SITES)])
    return elevation.max(axis=1) > TWILIGHT_DEGREES


def scored_hours(target: str, times) -> np.ndarray:
    """The hours coverage, width and reliability are taken over: daylight for solar, every hour for wind."""
    return daylight(times) if target == "solar_GW" else np.ones(len(times), dtype=bool)


# -- climatology ----------------------------------------------------------------------------------------

def climatology_quantiles(training: pd.DataFrame, times, levels: Iterable[float] = DENSE_LEVELS
                          ) -> dict[str, np.ndarray]:
    """Per target, the quantiles of ``training`` (indexed by time) for the hour of day × month of each of
    ``times`` (n × len(levels)). A cell the training data lacks falls back to that hour over all months."""
    levels = list(levels)
    index = pd.DatetimeIndex(training.index)
    wanted = pd.DatetimeIndex(times)
    if wanted.tz is not None and index.tz is not None:
        wanted = wanted.tz_convert(index.tz)
    out = {}
    for target in TARGETS:
        values = training[target].to_numpy(dtype="float64")
        cell = index.hour.to_numpy() * 100 + index.month.to_numpy()
        table = _quantile_table(cell, values, levels)
        by_hour = _quantile_table(index.hour.to_numpy(), values, levels)
        keys = wanted.hour.to_numpy() * 100 + wanted.month.to_numpy()
        result = table.reindex(keys).to_numpy().copy()
        missing = np.isnan(result[:, 0]) if len(result) else np.zeros(0, dtype=bool)
        if missing.any():
            result[missing] = by_hour.reindex(wanted.hour.to_numpy()[missing]).to_numpy()
            still = np.isnan(result[:, 0])
            result[still] = np.quantile(values, levels)
        out[target] = result
    return out


def _quantile_table(keys: np.ndarray, values: np.ndarray, levels: list[float]) -> pd.DataFrame:
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    unique, starts = np.unique(keys, return_index=True)
    rows = [np.quantile(chunk, levels) for chunk in np.split(values, starts[1:])] if len(values) else []
    return pd.DataFrame(np.array(rows).reshape(len(unique), len(levels)), index=unique)


# -- all of them ------------------------------------------------------------------------------------------

def score(recorded: pd.DataFrame, forecast: pd.DataFrame, training: pd.DataFrame, capacity,
          levels: Iterable[float] = DEFAULT_LEVELS) -> dict[str, float]:
    """Every interval and capacity measure of ``forecast`` for the hours of ``recorded`` (same rows, indexed
    by time), per target and over both.

    ``forecast``: the point columns and the quantile columns of ``intervals.scoring_levels(levels)``
    (``Calibration.forecast``); ``training``: the hours before (their targets make the climatology);
    ``capacity``: a ``capacity.Capacity`` (or a frame of GW per target) for the same hours.
    """
    levels = check_levels(levels, require=False)
    dense = scoring_levels(levels)
    times = pd.DatetimeIndex(recorded.index)
    capacity_values = capacity if isinstance(capacity, pd.DataFrame) else capacity.values  # a capacity.Capacity
    climate = climatology_quantiles(training, times, dense)
    metrics: dict[str, float] = {}
    for target in TARGETS:
        prefix = PREFIXES[target]
        actual = recorded[target].to_numpy(dtype="float64")
        point = forecast[target].to_numpy(dtype="float64")
        quantiles = forecast[[quantile_column(target, level) for level in dense]].to_numpy(dtype="float64")
        column = {level: quantiles[:, i] for i, level in enumerate(dense)}
        shown = scored_hours(target, times)
        for lower, upper, nominal in central_intervals(levels):
            metrics[f"{prefix}_coverage_{nominal}"] = coverage(actual[shown], column[lower][shown], column[upper][shown])
            metrics[f"{prefix}_width_{nominal}"] = width(column[lower][shown], column[upper][shown])
        for level in levels:
            metrics[f"{prefix}_pinball_{level_name(level)}"] = pinball(actual, column[level], level)
        model_crps = crps(actual, quantiles, dense)
        reference = crps(actual, climate[target], dense)
        metrics[f"{prefix}_crps"] = model_crps
        metrics[f"{prefix}_crps_climatology"] = reference
        metrics[f"{prefix}_crps_skill"] = skill(model_crps, reference)
        cap = np.asarray(capacity_values[target], dtype="float64")
        metrics[f"{prefix}_nrmse_capacity"] = nrmse(actual, point, cap)
        metrics[f"{prefix}_nmae_capacity"] = nmae(actual, point, cap)
    metrics["crps"] = float(np.mean([metrics[f"{PREFIXES[t]}_crps"] for t in TARGETS]))
    metrics["crps_skill"] = skill(metrics["crps"],
                                  float(np.mean([metrics[f"{PREFIXES[t]}_crps_climatology"] for t in TARGETS])))
    return metrics


def coverage_of(recorded: pd.DataFrame, forecast: pd.DataFrame, lower: float = 0.1,
                upper: float = 0.9) -> dict[str, float]:
    """Coverage of the ``lower``-``upper`` interval per target on a frame of recorded hours and the served
    model's answer for them (same rows; ``solar_GW_p10``… columns): ``{"solar_coverage_80": …,
    "wind_coverage_80": …}``. Solar over daylight hours. For monitoring new weeks."""
    nominal = int(round((upper - lower) * 100))
    times = pd.DatetimeIndex(recorded.index)
    out = {}
    for target in TARGETS:
        shown = scored_hours(target, times)
        out[f"{PREFIXES[target]}_coverage_{nominal}"] = coverage(
            recorded[target].to_numpy(dtype="float64")[shown],
            forecast[quantile_column(target, lower)].to_numpy(dtype="float64")[shown],
            forecast[quantile_column(target, upper)].to_numpy(dtype="float64")[shown])
    return out


def crps_of_point(recorded, point) -> float:
    """The CRPS of a point forecast taken as certain: its mean absolute error (for a model without quantiles)."""
    recorded = np.asarray(recorded, dtype="float64")
    return float(np.mean(np.abs(np.asarray(point, dtype="float64") - recorded))) if recorded.size else float("nan")
