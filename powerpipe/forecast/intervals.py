"""Prediction intervals for every model: quantiles of solar and wind generation from its point forecast.

Every model here predicts one number per hour. Its quantiles (p10, p50, p90 by default: the levels of
the pipeline file's ``evaluation.quantiles``) come from how wrong a model of the same kind was, out of
sample, on hours it had not seen: **calibrated empirical residual quantiles**, measured and chosen on the
real data (``docs/forecasting.md``, "Intervals"):

1. **Residuals out of sample, two extra fits, a year ahead.** ``calibrate`` refits the model on the
   training hours before their last year and predicts that year, and again on the hours before the year
   before it and predicts that one (``calibration_windows``; ``CALIBRATION_WINDOWS``): each calibration
   model forecasts a year ahead, as the deployed model does. A model's errors in one year carry that
   year's own bias (the fleet grew 14 % in 2015; the weather of one winter) and one year holds one winter
   only: two years of residuals hold two of each, not one taken as the rule. Only training hours are
   used: the intervals scored on the holdout never saw a holdout hour.
2. **As a share of installed capacity, centred on the deployed model.** Residuals are divided by the
   installed capacity of their hour (``capacity.table_capacity``), so a year with a larger fleet scales
   them. A calibration model is older than the deployed one and, in years of fast growth (wind +14 % in
   2015), under-predicts by the growth it has not seen: each window's residuals are shifted so that their
   median is the deployed model's own on the last year (in sample), so a bias of the model (an underfit,
   as it stands at the end of its training hours) stays and one of a calibration model's age goes.
3. **Conditioned on the forecast** (Mondrian bins): the predicted share of capacity in ``LEVEL_BINS``
   bins (quantiles of the calibration forecasts, plus a bin of its own for a forecast of zero), crossed
   with the half-year (April-September, October-March). Errors grow with the output, and winter errors
   differ from summer ones at the same output.
4. **Zero is a value of its own.** Solar output is exactly zero for about 43 % of hours: per bin, the
   share of recorded zeros is a point mass at 0, and the residuals of the other hours give the rest of
   the distribution (a two-part model). Quantiles never fall below zero and never cross.
5. **Recalibrated leave-one-month-out.** Weather regimes shift from month to month; quantiles fitted on
   all months are too confident for a month they did not see. Each calibration hour's probability
   integral transform (PIT) is computed against the other months' residuals, and the nominal levels are
   mapped through the PIT distribution (Kuleshov et al. 2018, "Accurate uncertainties for deep learning
   using calibrated regression"), so a p90 is the level that covered 90 % of unseen months' hours.

``Calibration`` holds the result and turns point forecasts into quantiles (``quantiles``, ``forecast``);
``backtest`` scores the intervals on every fold, each fold recalibrated with the residuals of the folds
before it (hours before its start only). Pure functions on frames; nothing here knows about MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from powerpipe.forecast.data import TARGETS, TIME_COLUMN

log = logging.getLogger(__name__)

DEFAULT_LEVELS = (0.1, 0.5, 0.9)
REQUIRED_LEVELS = DEFAULT_LEVELS  # every model answers at least these
# The levels scores are computed on (CRPS, reliability): 1 % to 99 %.
DENSE_LEVELS = tuple(round(i / 100, 2) for i in range(1, 100))
LEVEL_BINS = 5  # bins of the predicted share of capacity (besides the bin of zero forecasts)
SUMMER_MONTHS = (4, 5, 6, 7, 8, 9)
MIN_BIN = 30  # residuals a bin needs to stand alone; fewer: it uses all the calibration residuals
CALIBRATION_DAYS = 365  # a calibration window: a year of the training hours
CALIBRATION_WINDOWS = 2  # calibration windows (the last year, the year before it), one extra fit each
GRID = np.linspace(0.0, 1.0, 1001)  # the recalibration map is kept on this grid of levels
ZERO_FORECAST = 1e-9  # a predicted share of capacity at or below this is "zero" (its own bin)

FitPredict = Callable[..., Any]  # (X_train, y_train, X_test) -> predictions, as evaluation.backtest takes


# -- levels and column names --------------------------------------------------------------------------

def level_name(level: float) -> str:
    """``0.1`` -> ``"p10"``, ``0.05`` -> ``"p05"``, ``0.975`` -> ``"p97.5"``."""
    percent = round(float(level) * 100, 6)
    if percent == int(percent):
        return f"p{int(percent):02d}"
    return f"p{percent:g}"


def quantile_column(target: str, level: float) -> str:
    """The served column of ``target``'s quantile at ``level``: ``solar_GW_p10``."""
    return f"{target}_{level_name(level)}"


def quantile_columns(levels: Iterable[float] = DEFAULT_LEVELS, targets: Iterable[str] = TARGETS) -> list[str]:
    """Point columns first, then each target's quantiles in level order: what the served model returns."""
    levels = check_levels(levels, require=False)
    return [*TARGETS, *(quantile_column(t, level) for t in targets for level in levels)]


def check_levels(levels: Any, require: bool = True) -> tuple[float, ...]:
    """Levels as a sorted tuple of distinct floats strictly between 0 and 1; ValueError names the fault.

    ``require``: the levels must include p10, p50 and p90 (what every model answers and the coverage of
    the 80 % interval needs).
    """
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise ValueError(f"quantile levels must be a list of numbers between 0 and 1, got {levels!r}")
    values = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
                or not 0.0 < float(level) < 1.0:
            raise ValueError(f"quantile level {level!r} is not a number strictly between 0 and 1")
        values.append(round(float(level), 6))
    if not values:
        raise ValueError("quantile levels: none given")
    if len(set(values)) != len(values):
        raise ValueError(f"quantile levels repeat: {sorted(values)}")
    if require:
        missing = [level_name(level) for level in REQUIRED_LEVELS if level not in values]
        if missing:
            raise ValueError(f"quantile levels must include {', '.join(missing)} (every model answers p10, p50 "
                             f"and p90), got {sorted(values)}")
    return tuple(sorted(values))


def scoring_levels(levels: Iterable[float] = DEFAULT_LEVELS) -> tuple[float, ...]:
    """``DENSE_LEVELS`` and ``levels`` together: what a forecast is scored on (CRPS, reliability, coverage)."""
    return tuple(sorted(set(DENSE_LEVELS) | set(check_levels(levels, require=False))))


def levels_of(evaluation: Any) -> tuple[float, ...]:
    """The quantile levels an evaluation declares (``quantiles``), else ``DEFAULT_LEVELS``.

    ``evaluation``: an ``Evaluation``, the dict a notebook gets, or None.
    """
    declared = evaluation.get("quantiles") if isinstance(evaluation, Mapping) else getattr(evaluation, "quantiles", None)
    return check_levels(declared) if declared else DEFAULT_LEVELS


# -- the calibration ----------------------------------------------------------------------------------

@dataclass
class TargetCalibration:
    """One target's interval model: bins, zero shares, sorted residuals per bin, the recalibration map."""

    target: str
    centre: float  # the mean shift taken off its residuals (share of capacity; ``calibrate``'s centring)
    edges: np.ndarray  # bin edges of the predicted share of capacity (the first: ZERO_FORECAST)
    zero_share: dict[int, float]  # per bin: share of recorded zeros
    residuals: dict[int, np.ndarray]  # per bin: sorted normalised residuals of the hours not recorded as 0
    pooled_zero_share: float
    pooled: np.ndarray  # all of them: for a bin with fewer than MIN_BIN
    recalibration: np.ndarray  # the PIT quantiles on GRID: nominal level -> level used

    def keys(self, times: pd.DatetimeIndex, share: np.ndarray) -> np.ndarray:
        level = np.searchsorted(self.edges, share, side="left")  # 0: at or below ZERO_FORECAST
        return level * 2 + np.isin(times.month, SUMMER_MONTHS).astype(int)

    def adjusted(self, levels: np.ndarray) -> np.ndarray:
        """The levels actually read from the residuals for the nominal ``levels`` (monotone)."""
        return np.clip(np.interp(levels, GRID, self.recalibration), 0.0, 1.0)

    def quantiles(self, times: pd.DatetimeIndex, point: np.ndarray, capacity: np.ndarray,
                  levels: np.ndarray) -> np.ndarray:
        """n × len(levels) quantiles (GW), at least 0, non-decreasing along the levels."""
        point = np.maximum(np.asarray(point, dtype="float64"), 0.0)
        keys = self.keys(times, point / capacity)
        levels = np.asarray(levels, dtype="float64")
        out = np.zeros((len(point), len(levels)))
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            zero, residuals = self._bin(int(key))
            # the level within the hours with output, recalibrated
            relative = self.adjusted(np.clip((levels - zero) / max(1.0 - zero, 1e-12), 0.0, 1.0))
            spread = np.quantile(residuals, relative) if len(residuals) else np.zeros(len(levels))
            values = point[rows, None] + spread[None, :] * capacity[rows, None]
            values[:, levels <= zero] = 0.0  # the point mass at zero
            out[rows] = values
        return np.maximum.accumulate(np.maximum(out, 0.0), axis=1)

    def _bin(self, key: int) -> tuple[float, np.ndarray]:
        residuals = self.residuals.get(key)
        if residuals is None or len(residuals) < MIN_BIN:
            return self.pooled_zero_share, self.pooled
        return self.zero_share[key], residuals


def fit_target(target: str, times: pd.DatetimeIndex, point: np.ndarray, recorded: np.ndarray,
               capacity: np.ndarray, recalibrate: bool = True, offset: np.ndarray | None = None) -> TargetCalibration:
    """One target's ``TargetCalibration`` from out-of-sample forecasts ``point`` of ``recorded`` at ``times``.

    ``offset`` (GW per hour, default 0) is taken off each residual first (``calibrate``'s centring).
    """
    point = np.maximum(np.asarray(point, dtype="float64"), 0.0)
    recorded = np.asarray(recorded, dtype="float64")
    share = point / capacity
    offset = np.zeros(len(point)) if offset is None else np.asarray(offset, dtype="float64")
    residual = (recorded - point - offset) / capacity
    zero = recorded <= 0.0
    centre = float(np.mean(offset / capacity)) if len(offset) else 0.0
    positive = share[share > ZERO_FORECAST]
    inner = np.quantile(positive, np.linspace(0, 1, LEVEL_BINS + 1)[1:-1]) if len(positive) else np.array([])
    edges = np.concatenate([[ZERO_FORECAST], np.unique(inner[inner > ZERO_FORECAST])])
    model = TargetCalibration(target, centre, edges, {}, {}, float(zero.mean()) if len(zero) else 0.0,
                              np.sort(residual[~zero]), GRID.copy())
    keys = model.keys(times, share)
    for key in np.unique(keys):
        in_bin = keys == key
        model.zero_share[int(key)] = float(zero[in_bin].mean())
        model.residuals[int(key)] = np.sort(residual[in_bin & ~zero])
    if recalibrate:
        model.recalibration = _recalibration(model, times, keys, residual, zero, recorded, point)
    return model


def _recalibration(model: TargetCalibration, times: pd.DatetimeIndex, keys: np.ndarray, residual: np.ndarray,
                   zero: np.ndarray, recorded: np.ndarray, point: np.ndarray) -> np.ndarray:
    """PIT quantiles on GRID, each calibration hour's PIT taken against the other months' residuals.

    The map recalibrates the levels within the hours with output (the continuous part; the point mass at
    zero is its bin's share of zeros), so only hours with output count. Identity with fewer than two months.
    """
    months = np.asarray(times.year * 100 + times.month)
    if len(np.unique(months)) < 2:
        return GRID.copy()
    pit = np.full(len(residual), np.nan)
    for month in np.unique(months):
        held = (months == month) & ~zero
        rest = (months != month) & ~zero
        for key in np.unique(keys[held]):
            rows = np.flatnonzero(held & (keys == key))
            same = rest & (keys == key)
            if same.sum() < MIN_BIN:
                same = rest
            reference = np.sort(residual[same])
            if not len(reference):
                continue
            pit[rows] = (np.searchsorted(reference, residual[rows], "left")
                         + np.searchsorted(reference, residual[rows], "right")) / (2.0 * len(reference))
    values = pit[~np.isnan(pit)]
    if len(values) < 100:
        return GRID.copy()
    mapped = np.quantile(values, GRID)
    mapped[0], mapped[-1] = 0.0, 1.0
    return np.maximum.accumulate(mapped)


@dataclass
class Calibration:
    """Quantiles for every target from a model's point forecasts; what a logged model carries.

    ``sample``: the out-of-sample forecasts it was fitted on (times, point and recorded per target),
    kept so that the backtest can refit it with the residuals of earlier folds.
    """

    levels: tuple[float, ...]
    targets: dict[str, TargetCalibration]
    window: tuple[str, str]  # the calibration hours, first and last (UTC, text)
    sample: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    @classmethod
    def fit(cls, times, point, recorded, levels: Iterable[float] = DEFAULT_LEVELS,
            recalibrate: bool = True, offset=None) -> "Calibration":
        """From out-of-sample forecasts: ``point`` and ``recorded`` (n × 2, columns ``TARGETS``) at ``times``;
        ``offset`` (n × 2, GW; default 0) is taken off the residuals first."""
        from powerpipe.forecast.capacity import table_capacity

        times = _utc(times)
        point = _targets(point, times)
        recorded = _targets(recorded, times)
        offset = _targets(np.zeros((len(times), len(TARGETS))) if offset is None else offset, times)
        if not len(times):
            raise ValueError("no calibration hours: the training data is too short to calibrate intervals")
        capacity = table_capacity(times)
        targets = {target: fit_target(target, times, point[target].to_numpy(), recorded[target].to_numpy(),
                                      capacity[target].to_numpy(), recalibrate, offset[target].to_numpy())
                   for target in TARGETS}
        sample = pd.concat([point.add_prefix("point_").reset_index(drop=True),
                            recorded.add_prefix("recorded_").reset_index(drop=True),
                            offset.add_prefix("offset_").reset_index(drop=True)], axis=1)
        sample.insert(0, TIME_COLUMN, times)
        return cls(check_levels(levels), targets, (f"{times.min():%Y-%m-%d %H:%M}", f"{times.max():%Y-%m-%d %H:%M}"),
                   sample)

    def extended(self, times, point, recorded) -> "Calibration":
        """Refitted on its own sample plus more out-of-sample forecasts (a backtest's earlier folds)."""
        times = _utc(times)
        old = self.sample
        all_times = pd.DatetimeIndex(pd.concat([old[TIME_COLUMN], pd.Series(times)], ignore_index=True))
        point = pd.concat([old[[f"point_{t}" for t in TARGETS]].set_axis(TARGETS, axis=1),
                           _targets(point, times).reset_index(drop=True)], ignore_index=True)
        recorded = pd.concat([old[[f"recorded_{t}" for t in TARGETS]].set_axis(TARGETS, axis=1),
                              _targets(recorded, times).reset_index(drop=True)], ignore_index=True)
        offset = np.concatenate([old[[f"offset_{t}" for t in TARGETS]].to_numpy(), np.zeros((len(times), len(TARGETS)))])
        return Calibration.fit(all_times, point.to_numpy(), recorded.to_numpy(), self.levels, offset=offset)

    def without_sample(self) -> "Calibration":
        """The same calibration without its sample (what a served model needs)."""
        return replace(self, sample=pd.DataFrame())

    def quantiles(self, times, point, levels: Iterable[float] | None = None) -> pd.DataFrame:
        """The quantile columns (``solar_GW_p10``…) for point forecasts ``point`` (n × 2) at ``times``."""
        from powerpipe.forecast.capacity import table_capacity

        levels = check_levels(self.levels if levels is None else levels, require=False)
        index = _utc(times)
        point = _targets(point, index)
        capacity = table_capacity(index)
        columns = {}
        for target in TARGETS:
            values = self.targets[target].quantiles(index, point[target].to_numpy(), capacity[target].to_numpy(),
                                                    np.asarray(levels))
            for i, level in enumerate(levels):
                columns[quantile_column(target, level)] = values[:, i]
        return pd.DataFrame(columns, index=times if isinstance(times, pd.Index) else None)

    def forecast(self, times, point, levels: Iterable[float] | None = None) -> pd.DataFrame:
        """Point forecasts (clipped at 0) followed by their quantiles: what the served model returns."""
        index = _utc(times)
        frame = _targets(point, index).clip(lower=0.0)
        quantiles = self.quantiles(index, frame.to_numpy(), levels)
        out = pd.concat([frame.reset_index(drop=True), quantiles.reset_index(drop=True)], axis=1)
        return out.set_axis(times if isinstance(times, pd.Index) else pd.RangeIndex(len(out)))

    def describe(self) -> str:
        return (f"empirical residual quantiles, calibrated on out-of-sample forecasts of {self.window[0]} to "
                f"{self.window[1]} ({len(self.sample):,} hours)")


def _targets(values, index: pd.DatetimeIndex) -> pd.DataFrame:
    """Predictions (n × 2 array, or a frame with the target columns) as a frame with the target names."""
    if isinstance(values, pd.DataFrame) and all(t in values.columns for t in TARGETS):
        return values[TARGETS].astype("float64").set_axis(index)
    array = np.asarray(values, dtype="float64").reshape(len(index), len(TARGETS))
    return pd.DataFrame(array, columns=TARGETS, index=index)


def _utc(times) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(times)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


# -- the extra fits ------------------------------------------------------------------------------------

def calibration_window(times: pd.DatetimeIndex) -> pd.Timestamp:
    """The first hour of the calibration window: ``CALIBRATION_DAYS`` before the end of the training
    hours, or the last half of them when they span less than twice that."""
    times = _utc(times)
    first, last = times.min(), times.max()
    length = min(pd.Timedelta(days=CALIBRATION_DAYS), (last - first) / 2)
    return (last - length).ceil("h")


def calibration_windows(times: pd.DatetimeIndex, count: int = CALIBRATION_WINDOWS) -> list[pd.Timestamp]:
    """The first hours of the calibration windows, newest first: ``calibration_window`` of the training
    hours, then of the hours before that window, and so on, up to ``count``. A window ends where the next
    newer one starts (the newest: with the training hours); an earlier window is used only when the hours
    before the newer one span at least ``CALIBRATION_DAYS`` (so its model has at least half a year to learn
    from, and usually a whole one)."""
    times = _utc(times)
    starts = [calibration_window(times)]
    while len(starts) < count:
        earlier = times[times < starts[-1]]
        if len(earlier) < 4 or earlier.max() - earlier.min() < pd.Timedelta(days=CALIBRATION_DAYS):
            break
        starts.append(calibration_window(earlier))
    return starts


def calibrate(fit_predict: FitPredict, X_train: pd.DataFrame, y_train: pd.DataFrame,
              evaluation: Any = None, fitted: Callable[[pd.DataFrame], Any] | None = None) -> Calibration:
    """A ``Calibration`` from one extra fit per calibration window (``calibration_windows``: the last year of
    the training hours and the year before it): ``fit_predict`` on the training hours before a window,
    predicting the window (its hours' forecasts are out of sample, up to a year ahead; no hour after the
    training hours is read). ``evaluation``: where the levels come from (``levels_of``).

    ``fitted``: the deployed model's predict (fitted on every training hour). A calibration model is older
    and, when the fleet grew, biased by the growth it did not see; each window's residuals are shifted so
    that their median (as a share of capacity, over hours with output) is the deployed model's own on the
    last window's hours, in sample: a bias that is the model's (an underfit, as it stands at the end of its
    training hours, which it carries into the next year) stays, one that is a calibration model's age goes.
    Without ``fitted``: shifted to a median of zero.
    """
    from powerpipe.forecast.capacity import table_capacity
    from powerpipe.forecast.features import timestamps

    times = timestamps(X_train)
    starts = calibration_windows(times)
    parts, bias = [], None
    for k, start in enumerate(starts):  # newest first
        inside = np.asarray(times >= start) if k == 0 else np.asarray((times >= start) & (times < starts[k - 1]))
        before = np.asarray(times < start)
        if before.sum() < 2 or inside.sum() < 2:
            raise ValueError(f"too few training hours ({len(times)}) to calibrate intervals")
        window = times[inside]
        predicted = _targets(fit_predict(X_train[before], y_train[before], X_train[inside]), window)
        recorded = _targets(y_train[inside][TARGETS].to_numpy(), window)
        capacity = table_capacity(window)
        if bias is None:  # the newest window: the deployed model's own bias there, kept in every window
            deployed = _targets(fitted(X_train[inside]), window) if fitted is not None else None
            bias = {t: _median_share(recorded[t], deployed[t], capacity[t].to_numpy()) if deployed is not None
                    else 0.0 for t in TARGETS}
        offset = pd.DataFrame({t: (_median_share(recorded[t], predicted[t], capacity[t].to_numpy()) - bias[t])
                               * capacity[t].to_numpy() for t in TARGETS}, index=window)
        parts.append((window, predicted, recorded, offset))
        log.info("intervals: %d out-of-sample hours from %s (fitted on %d earlier hours); residuals shifted by %s",
                 int(inside.sum()), start, int(before.sum()),
                 ", ".join(f"{t} {offset[t].mean():+.3f} GW" for t in TARGETS))
    parts.reverse()  # oldest first: the calibration hours in time order
    window = pd.DatetimeIndex(np.concatenate([part[0] for part in parts]))
    predicted, recorded, offset = (pd.concat([part[i] for part in parts]).to_numpy() for i in (1, 2, 3))
    return Calibration.fit(window, predicted, recorded, levels_of(evaluation), offset=offset)


def _median_share(recorded: pd.Series, point: pd.Series, capacity: np.ndarray) -> float:
    """Median residual as a share of capacity over the hours with output recorded and forecast."""
    actual = recorded.to_numpy(dtype="float64")
    forecast = np.maximum(point.to_numpy(dtype="float64"), 0.0)
    informative = (actual > 0) & (forecast > 0)
    return float(np.median(((actual - forecast) / capacity)[informative])) if informative.any() else 0.0


# -- what a training notebook calls ---------------------------------------------------------------------

def holdout_scores(calibration: Calibration, frame: pd.DataFrame, y_train: pd.DataFrame, y_test: pd.DataFrame,
                   y_predict) -> tuple[pd.DataFrame, dict[str, float]]:
    """The holdout's forecast and every metric of it.

    The forecast: the points clipped at zero (as the served model answers) and the quantiles on
    ``scoring_levels``; the metrics: ``modeling.evaluate`` of those points (rmse, mae, r2…) and
    ``scores.score`` (coverage, width, pinball, CRPS and its skill against climatology, nRMSE/nMAE as a
    share of the installed capacity of ``frame``'s source, ``capacity.capacity``).
    """
    from powerpipe.forecast import scores
    from powerpipe.forecast.capacity import capacity
    from powerpipe.forecast.modeling import evaluate

    times = _utc(y_test.index)
    forecast = calibration.forecast(times, y_predict, scoring_levels(calibration.levels)).set_axis(y_test.index)
    metrics = evaluate(y_test, forecast[TARGETS].to_numpy())
    metrics |= scores.score(y_test, forecast, y_train, capacity(frame, times), calibration.levels)
    return forecast, metrics


def run_params(calibration: Calibration, frame: pd.DataFrame) -> dict[str, str]:
    """What a training run logs as params about its intervals: the method, its calibration hours, the levels,
    and where installed capacity came from (``capacity_source``: ``opsd`` or ``table``)."""
    from powerpipe.forecast.capacity import source_of

    return {"intervals": "calibrated residual quantiles", "intervals_calibration": " to ".join(calibration.window),
            "quantiles": ",".join(f"{level:g}" for level in calibration.levels), "capacity_source": source_of(frame)}


# -- the backtest with intervals -----------------------------------------------------------------------

def backtest(frame: pd.DataFrame, evaluation: Any, fit_predict: FitPredict, calibration: Calibration,
             capacity_of: Callable[..., Any] | None = None) -> pd.DataFrame:
    """``evaluation.backtest`` with intervals: per fold, the point metrics of ``modeling.evaluate`` (on
    forecasts clipped at 0) and the interval scores of ``scores.score`` (coverage, width, pinball, CRPS,
    skill against climatology, nRMSE/nMAE). Fold k's intervals are calibrated on ``calibration``'s sample
    plus the forecasts of folds 1..k-1: only hours before fold k's start.
    """
    from powerpipe.forecast import scores
    from powerpipe.forecast.capacity import capacity as capacity_for
    from powerpipe.forecast.evaluation import _by_time, backtest_folds
    from powerpipe.forecast.modeling import evaluate

    capacity_of = capacity_of or capacity_for
    ordered = _by_time(frame)
    rows, earlier = [], []
    current = calibration
    for fold in backtest_folds(frame, evaluation):
        predicted = fit_predict(fold.X_train, fold.y_train, fold.X_test)
        times = _utc(fold.X_test.index)
        forecast = current.forecast(times, predicted, scoring_levels(calibration.levels))
        point = forecast[TARGETS].to_numpy()
        scored = scores.score(fold.y_test, forecast.set_axis(fold.y_test.index), fold.y_train,
                              capacity_of(ordered, times), calibration.levels)
        rows.append({"fold": fold.fold, "start": fold.start, "end": fold.end, "n_train": len(fold.X_train),
                     "n_test": len(fold.X_test), **evaluate(fold.y_test, point), **scored})
        earlier.append((times, point, fold.y_test[TARGETS].to_numpy()))
        current = calibration.extended(pd.DatetimeIndex(np.concatenate([e[0] for e in earlier])),
                                       np.concatenate([e[1] for e in earlier]), np.concatenate([e[2] for e in earlier]))
    return pd.DataFrame(rows)
