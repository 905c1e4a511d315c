"""How every model is scored: the holdout split and the rolling-origin backtest, one contract for all notebooks.

Declared once in the pipeline file and passed by the runner to every training notebook as the
parameter ``evaluation`` (a dict); ``Evaluation.from_dict`` checks it:

- ``{split: time, test_start: "2016-01-01", folds: 4, fold_length: quarter}`` (the default): train on
  every hour before ``test_start``, test on every hour from it on. The backtest refits on an expanding
  window and scores each following period: fold k (1-based) tests on
  ``[test_start + (k-1)·L, test_start + k·L)`` and trains on every hour before that period.
- ``{split: time, test_period: "52w", ...}``: the test period is the last 52 weeks of the data (also
  ``"12w"``, ``"90d"``, ``"72h"``; ``powerpipe.forecast.windows``), so a weekly run tests on its most
  recent year and trains on everything before. It is *resolved* against the data actually used
  (``Evaluation.against``): ``test_start`` becomes the hour ``test_period`` before the data's end. The
  runner resolves it once per pipeline run and passes the resolved contract (``test_period`` and the
  ``test_start`` it resolved to), which enters the cache key and the runs' tags; a notebook given an
  unresolved one resolves it against its own frame.
- ``{split: random, test_size: 0.2, random_state: 42}``: the tutorial's shuffled split of hours. Hours
  of the same day fall on both sides, so its scores flatter every model; kept to reproduce the
  tutorial. No backtest (a backtest needs time order).
- ``{split: none}``: no hour held out; the runner passes it to refit a chosen configuration on every
  hour (``stages.promote.refit``). A notebook then fits and logs its model and scores nothing
  (``Evaluation.has_test`` is False; ``holdout`` gives empty test frames).

``X`` is always the raw schema a served model takes (``utc_timestamp`` as a column plus the four
weather columns, index the time), ``y`` the two targets, so ``model.predict(X_test)`` is exactly what
a served or registered model answers. Pure functions on frames: nothing here knows about MLflow.
``Evaluation`` itself needs only the standard library, so checking a pipeline file stays fast; pandas,
NumPy and scikit-learn are imported by the functions that split frames.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from powerpipe.core.exceptions import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SPLITS = ("time", "random", "none")
FOLD_LENGTHS = {"week": {"weeks": 1}, "month": {"months": 1}, "quarter": {"months": 3}, "year": {"years": 1}}
TIME_KEYS = ("split", "test_start", "test_period", "folds", "fold_length")
RANDOM_KEYS = ("split", "test_size", "random_state")
QUANTILES_KEY = "quantiles"  # allowed with every split: the levels of the models' intervals
REQUIRED_QUANTILES = (0.1, 0.5, 0.9)
NONE_KEYS = ("split",)  # the refit of a chosen configuration: every hour learnt, none held out

DEFAULT_TEST_START = "2016-01-01"
DEFAULT_FOLDS = 4
DEFAULT_FOLD_LENGTH = "quarter"
DEFAULT_TEST_SIZE = 0.2
DEFAULT_RANDOM_STATE = 42

# A model's predictions for X_test after fitting on (X_train, y_train): what the backtest refits.
FitPredict = Callable[..., Any]  # (X_train, y_train, X_test) -> predictions


@dataclass(frozen=True)
class Evaluation:
    """One evaluation contract. Build it with ``from_dict`` (checked) or ``Evaluation()`` (the default)."""

    split: str = "time"
    test_start: str | None = DEFAULT_TEST_START  # time split: first hour of the test period, UTC (None: not
    # resolved yet against the data, see test_period)
    test_period: str | None = None  # time split: the test period is the last this long of the data ("52w")
    folds: int = DEFAULT_FOLDS  # time split: backtest folds (0: no backtest)
    fold_length: str = DEFAULT_FOLD_LENGTH  # time split: one of FOLD_LENGTHS
    test_size: float = DEFAULT_TEST_SIZE  # random split: share of hours held out
    random_state: int = DEFAULT_RANDOM_STATE  # random split: the shuffle's seed
    # Quantile levels every model answers and is scored on (``powerpipe.forecast.intervals``); None: the
    # default, p10, p50, p90. Any split; declared as ``quantiles: [0.1, 0.5, 0.9]``.
    quantiles: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "Evaluation":
        """Check a pipeline file's ``evaluation:`` block (or a notebook's parameter); ConfigError says what is wrong.

        None or ``{}``: the default (time split from 2016-01-01, 4 quarterly folds). Keys of the other
        split are refused rather than ignored, so a half-edited block cannot silently mean something else.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"evaluation must be a mapping such as {{split: time, test_start: '2016-01-01'}}, "
                              f"got {raw!r}")
        if QUANTILES_KEY in raw:  # the levels apply to any split: checked here, the rest as always
            from dataclasses import replace

            rest = cls.from_dict({key: value for key, value in raw.items() if key != QUANTILES_KEY})
            return replace(rest, quantiles=_quantile_levels(raw[QUANTILES_KEY]))
        split = raw.get("split", "time")
        if split not in SPLITS:
            raise ConfigError(f"evaluation.split must be 'time' or 'random', got {split!r}")
        if split == "none":  # what the runner passes to refit a winner; no other key means anything here
            extra = [key for key in raw if key != "split"]
            if extra:
                raise ConfigError(f"evaluation.{extra[0]} means nothing with split: none (every hour is learnt)")
            return cls(split="none", folds=0)
        allowed = TIME_KEYS if split == "time" else RANDOM_KEYS
        for key in raw:
            if key not in allowed:
                other = "random" if split == "time" else "time"
                if key in (RANDOM_KEYS if split == "time" else TIME_KEYS):
                    raise ConfigError(f"evaluation.{key} applies to the {other} split only, not to split: {split}"
                                      + (" (the random split has no backtest)" if split == "random" else ""))
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                raise ConfigError(f"evaluation: unknown key {key!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + f"; allowed with split: {split}: {', '.join(allowed)}")
        if split == "random":
            test_size = raw.get("test_size", DEFAULT_TEST_SIZE)
            if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) \
                    or not 0.0 < float(test_size) < 1.0:
                raise ConfigError(f"evaluation.test_size must be a fraction between 0 and 1, got {test_size!r}")
            random_state = raw.get("random_state", DEFAULT_RANDOM_STATE)
            if isinstance(random_state, bool) or not isinstance(random_state, int) or random_state < 0:
                raise ConfigError(f"evaluation.random_state must be a non-negative integer, got {random_state!r}")
            return cls(split="random", test_size=float(test_size), random_state=random_state, folds=0)
        folds = raw.get("folds", DEFAULT_FOLDS)
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0:
            raise ConfigError(f"evaluation.folds must be a whole number >= 0 (0: no backtest), got {folds!r}")
        fold_length = raw.get("fold_length", DEFAULT_FOLD_LENGTH)
        if fold_length not in FOLD_LENGTHS:
            raise ConfigError(f"evaluation.fold_length must be one of {', '.join(FOLD_LENGTHS)}, got {fold_length!r}")
        test_period = raw.get("test_period")
        if test_period is not None:  # relative: resolved against the data (with its test_start: resolved)
            from powerpipe.forecast.windows import parse_period, period_text

            parse_period(test_period)
            test_start = raw.get("test_start")
            return cls(split="time", test_start=_time_text(test_start) if test_start is not None else None,
                       test_period=period_text(test_period), folds=folds, fold_length=fold_length)
        return cls(split="time", test_start=_time_text(raw.get("test_start", DEFAULT_TEST_START)), folds=folds,
                   fold_length=fold_length)

    def as_dict(self) -> dict[str, Any]:
        """The keys that matter for this split, JSON-ready: what the runner passes and the run is tagged with."""
        keys = TIME_KEYS if self.split == "time" else RANDOM_KEYS if self.split == "random" else NONE_KEYS
        # A fixed window has no test_period, an unresolved relative one no test_start yet: left out, so a
        # fixed window's dict (its cache key, its tag) is what it always was.
        out = {key: getattr(self, key) for key in keys
               if not (key in ("test_start", "test_period") and getattr(self, key) is None)}
        if self.quantiles is not None:
            out[QUANTILES_KEY] = list(self.quantiles)
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def describe(self) -> str:
        """Short text for tags, the leaderboard, the report and the model card."""
        if self.split == "random":
            return f"random split, {self.test_size:.0%} of hours held out (seed {self.random_state})"
        if self.split == "none":
            return "refit on every hour, none held out"
        if self.test_period is not None:
            from powerpipe.forecast.windows import describe_period

            text = f"time split, test on the last {describe_period(self.test_period)}"
            text += f" (from {self.test_start})" if self.test_start is not None else ""
        else:
            text = f"time split, test from {self.test_start}"
        if self.folds:
            text += f", backtest {self.folds} {self.fold_length}ly fold{'s' if self.folds > 1 else ''}"
        return text

    @property
    def start(self) -> "pd.Timestamp":
        """``test_start`` as a UTC time (a relative window must be resolved first: ``against``)."""
        import pandas as pd

        if self.test_start is None:
            raise ConfigError(f"evaluation: the last {self.test_period} of which data? resolve the test period "
                              "against a frame first (Evaluation.against)")
        return pd.Timestamp(self.test_start, tz="UTC")

    @property
    def is_relative(self) -> bool:
        """A test period counted back from the data's end (``test_period``), resolved or not."""
        return self.split == "time" and self.test_period is not None

    def against(self, frame: "pd.DataFrame | None" = None, last_hour=None) -> "Evaluation":
        """This contract with a relative window resolved against the data: ``test_start`` is the hour
        ``test_period`` before the hour after the data's last (``frame``'s, or ``last_hour``). A fixed
        window, a random split, or a window already resolved: itself. A new week of data moves the
        test start, and so the end of training, by a week."""
        from dataclasses import replace

        if not self.is_relative or self.test_start is not None:
            return self
        from powerpipe.forecast.windows import relative_start, time_text

        if last_hour is None:
            if frame is None:
                raise ConfigError("evaluation: a relative test period needs the data to resolve it against")
            last_hour = _by_time(frame).index.max()
        return replace(self, test_start=time_text(relative_start(last_hour.to_pydatetime()
                                                                 if hasattr(last_hour, "to_pydatetime")
                                                                 else last_hour, self.test_period)))

    @property
    def has_backtest(self) -> bool:
        return self.split == "time" and self.folds > 0

    @property
    def has_test(self) -> bool:
        """False for ``split: none`` (a refit): no hour held out, nothing to score, only a model to log."""
        return self.split != "none"


def resolve(evaluation: "Evaluation | Mapping[str, Any] | None") -> Evaluation:
    """An ``Evaluation`` from what a notebook or the runner holds: an Evaluation, a dict, or None (the default)."""
    return evaluation if isinstance(evaluation, Evaluation) else Evaluation.from_dict(evaluation)


def from_tag(value: str | None) -> Evaluation | None:
    """The evaluation a run was tagged with (``tags.EVALUATION``: JSON), or None for an untagged run."""
    if not value or not isinstance(value, str):  # absent, or NaN in a frame of runs where others have it
        return None
    try:
        return Evaluation.from_dict(json.loads(value))
    except (ValueError, ConfigError):
        return None


def describe_tag(value: str | None) -> str:
    """Readable text of a run's ``powerpipe.evaluation`` tag ("time split, test from 2016-01-01, …"); "" if absent."""
    spec = from_tag(value)
    return spec.describe() if spec else (str(value) if value else "")


@dataclass(frozen=True)
class Fold:
    """One backtest fold: train on every hour before ``start``, test on ``[start, end)``."""

    fold: int  # 1-based: the MLflow step
    start: pd.Timestamp
    end: pd.Timestamp
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.DataFrame
    y_test: pd.DataFrame


def holdout(frame: pd.DataFrame, evaluation: "Evaluation | Mapping[str, Any] | None" = None
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``X_train, X_test, y_train, y_test`` of ``frame`` under ``evaluation``.

    ``frame``: a processed frame, indexed by time (as ``data.load`` returns it) or with a
    ``utc_timestamp`` column. X in the raw schema (``utc_timestamp`` column + the four weather
    columns), y the two targets; both indexed by time. The time split is ordered and disjoint: every
    training hour is before ``test_start``, every test hour at or after it. The random split is the
    tutorial's ``train_test_split(test_size, random_state)``, row for row.
    """
    import numpy as np

    from powerpipe.forecast.data import TARGETS
    from powerpipe.forecast.features import raw_input

    spec = resolve(evaluation).against(frame)
    frame = _by_time(frame)
    X, y = raw_input(frame), frame[TARGETS]
    y = y.set_axis(X.index)
    if spec.split == "random":
        from sklearn.model_selection import train_test_split

        return tuple(train_test_split(X, y, test_size=spec.test_size, random_state=spec.random_state))
    if spec.split == "none":  # a refit: every hour to train on, an empty test set
        return X, X.iloc[:0], y, y.iloc[:0]
    test = np.asarray(frame.index >= spec.start)
    _check_sides(frame, spec.start, test)
    return X[~test], X[test], y[~test], y[test]


def backtest_folds(frame: pd.DataFrame, evaluation: "Evaluation | Mapping[str, Any] | None" = None) -> list[Fold]:
    """The rolling-origin folds: each trains on every hour before its period (an expanding window).

    Fold k tests on ``[test_start + (k-1)·L, test_start + k·L)``, L = ``fold_length``; periods past the
    end of the data are left out (a fold without test hours cannot be scored). Empty for the random
    split or ``folds: 0``.
    """
    import numpy as np
    import pandas as pd

    from powerpipe.forecast.data import TARGETS
    from powerpipe.forecast.features import raw_input

    spec = resolve(evaluation).against(frame)
    if not spec.has_backtest:
        return []
    frame = _by_time(frame)
    _check_sides(frame, spec.start, np.asarray(frame.index >= spec.start))
    X, y = raw_input(frame), frame[TARGETS]
    y = y.set_axis(X.index)
    times = frame.index
    step = pd.DateOffset(**FOLD_LENGTHS[spec.fold_length])
    folds = []
    for k in range(spec.folds):
        start, end = spec.start + k * step, spec.start + (k + 1) * step
        train = np.asarray(times < start)
        test = np.asarray((times >= start) & (times < end))
        if test.any():
            folds.append(Fold(k + 1, start, end, X[train], X[test], y[train], y[test]))
    return folds


def backtest(frame: pd.DataFrame, evaluation: "Evaluation | Mapping[str, Any] | None", fit_predict: FitPredict
             ) -> pd.DataFrame:
    """Refit and score on every fold: one row per fold (fold, start, end, n_train, n_test, then the metrics
    of ``modeling.evaluate``: rmse, mae, r2 over both targets and per target). Empty without folds.

    ``fit_predict(X_train, y_train, X_test)`` returns predictions for ``X_test``: a fresh model each call
    (``refit(model)`` makes one from a scikit-learn estimator).
    """
    import pandas as pd

    from powerpipe.forecast.modeling import evaluate

    rows = []
    for fold in backtest_folds(frame, evaluation):
        predicted = fit_predict(fold.X_train, fold.y_train, fold.X_test)
        rows.append({"fold": fold.fold, "start": fold.start, "end": fold.end, "n_train": len(fold.X_train),
                     "n_test": len(fold.X_test), **evaluate(fold.y_test, predicted)})
    return pd.DataFrame(rows, columns=["fold", "start", "end", "n_train", "n_test", *_metric_names()])


def refit(estimator) -> FitPredict:
    """``fit_predict`` for a scikit-learn estimator: an unfitted clone of it, fitted on each fold's training hours."""
    from sklearn.base import clone

    def fit_predict(X_train, y_train, X_test):
        return clone(estimator).fit(X_train, y_train).predict(X_test)

    return fit_predict


def backtest_summary(table: pd.DataFrame) -> dict[str, float]:
    """The backtest's headline metrics: mean over folds of r2 and rmse (and per target); {} without folds."""
    from powerpipe.forecast.data import TARGETS

    if table.empty:
        return {}
    keys = ["r2", "rmse", *(f"{t.removesuffix('_GW')}_{m}" for t in TARGETS for m in ("r2", "rmse"))]
    # The intervals' measures, when the folds were scored with them (powerpipe.forecast.intervals.backtest).
    keys += [key for key in ("crps", "crps_skill", *(f"{t.removesuffix('_GW')}_{m}" for t in TARGETS
                                                     for m in ("coverage_80", "crps", "crps_skill", "nrmse_capacity")))
             if key in table.columns]
    return {f"backtest_{key}": float(table[key].mean()) for key in keys}


def skill_by_period(y_true: pd.DataFrame, y_pred, freq: str = "MS") -> pd.DataFrame:
    """``modeling.evaluate``'s metrics per calendar period of the test hours (default: per month).

    ``y_true`` indexed by time; ``y_pred`` in the same row order. One row per period, indexed by its
    start, with ``n`` (hours) and every metric.
    """
    import numpy as np
    import pandas as pd

    from powerpipe.forecast.modeling import evaluate, predictions_frame

    index = pd.DatetimeIndex(y_true.index)
    predicted = predictions_frame(y_pred, index=index)
    rows = {}
    naive = index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index
    for period, positions in pd.Series(np.arange(len(index)), index=naive).groupby(
            naive.to_period(_period_code(freq))).indices.items():
        if len(positions) < 2:
            continue
        rows[period.start_time.tz_localize("UTC")] = {
            "n": len(positions), **evaluate(y_true.iloc[positions], predicted.iloc[positions].to_numpy())}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "period"
    return table.sort_index()


def _period_code(freq: str) -> str:
    return {"MS": "M", "M": "M", "ME": "M", "QS": "Q", "Q": "Q", "W": "W", "D": "D"}.get(freq, freq)


def _metric_names() -> list[str]:
    from powerpipe.forecast.data import TARGETS

    names = ["rmse", "mae", "r2"]
    for target in TARGETS:
        names += [f"{target.removesuffix('_GW')}_{m}" for m in ("rmse", "mae", "r2")]
    return names


def _by_time(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame indexed by UTC time (from its index or its ``utc_timestamp`` column), in time order."""
    import pandas as pd

    from powerpipe.forecast.data import FEATURES, TARGETS, TIME_COLUMN

    if TIME_COLUMN in frame.columns:
        frame = frame.set_index(pd.DatetimeIndex(pd.to_datetime(frame[TIME_COLUMN], utc=True)))
        frame.index.name = TIME_COLUMN
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError(f"need a frame indexed by time or with a {TIME_COLUMN} column")
    missing = [c for c in [*FEATURES, *TARGETS] if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {', '.join(missing)}")
    if frame.index.tz is None:
        frame = frame.tz_localize("UTC")
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index(kind="stable")
    return frame


def _check_sides(frame: pd.DataFrame, start: pd.Timestamp, test: np.ndarray) -> None:
    if not test.any() or test.all():
        first, last = frame.index.min(), frame.index.max()
        side = "no test hours: the data ends" if not test.any() else "no training hours: the data starts"
        raise ConfigError(f"evaluation: time split at {start:%Y-%m-%d %H:%M} UTC leaves {side} "
                          f"{last if not test.any() else first:%Y-%m-%d %H:%M} (data {first:%Y-%m-%d} to "
                          f"{last:%Y-%m-%d}); set test_start inside the data (or a test_period shorter "
                          "than the data)")


def _quantile_levels(value: Any) -> tuple[float, ...]:
    """``evaluation.quantiles``: distinct numbers strictly between 0 and 1, p10, p50 and p90 among them."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"evaluation.quantiles must be a list of levels such as [0.1, 0.5, 0.9], got {value!r}")
    levels = []
    for level in value:
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
            raise ConfigError(f"evaluation.quantiles: {level!r} is not a level strictly between 0 and 1")
        levels.append(round(float(level), 6))
    if len(set(levels)) != len(levels):
        raise ConfigError(f"evaluation.quantiles repeats a level: {value!r}")
    missing = [f"{level:g}" for level in REQUIRED_QUANTILES if level not in levels]
    if missing:
        raise ConfigError(f"evaluation.quantiles must include 0.1, 0.5 and 0.9 (every model answers p10, p50, p90);"
                          f" {', '.join(missing)} missing from {value!r}")
    return tuple(sorted(levels))


def _time_text(value: Any) -> str:
    """``test_start`` as canonical text: ``YYYY-MM-DD``, or ``YYYY-MM-DD HH:MM`` when not at midnight (UTC).

    Text in ISO 8601 (``2016-01-01``, ``2016-01-01 06:00``, with or without an offset; no offset: UTC),
    or a date (YAML reads an unquoted ``2016-01-01`` as one).
    """
    from powerpipe.forecast.windows import parse_time, time_text

    return time_text(parse_time(value, "evaluation.test_start", example="2016-01-01"))
