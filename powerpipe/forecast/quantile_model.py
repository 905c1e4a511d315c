"""The logged model with its intervals: point forecasts and quantiles for the same raw request.

``QuantileForecastModel`` is an MLflow pyfunc model around a fitted model that takes the raw schema (a
scikit-learn ``modeling.make_model`` Pipeline, or a Keras net on ``FeatureBuilder`` features) and its
``intervals.Calibration``. For a request of ``utc_timestamp`` and the four weather columns it returns
``solar_GW``, ``wind_GW`` (never below zero) and, per target, one column per quantile level
(``solar_GW_p10``, ``solar_GW_p50``, ``solar_GW_p90``, ``wind_GW_…``): never below zero, never crossing.
Other levels on request: ``params={"quantiles": [0.05, 0.5, 0.95]}`` (in a REST request, the
``"params"`` key beside ``"dataframe_split"``).

**Timestamps as users send them.** MLflow's ``datetime`` column type refuses text and time-zone-aware
values before a model sees them, so the signature declares ``utc_timestamp`` as ``Any`` and the model
reads it itself (``request_times``): ISO 8601 text with or without an offset (``"2016-06-01T12:00:00"``,
``"2016-06-01T12:00:00Z"``, ``"2016-06-01 12:00:00+00:00"``), naive datetimes (taken as UTC) and
time-zone-aware datetimes (converted to UTC). Anything else is refused with a message that names the
column and these forms (HTTP 400 from ``mlflow models serve``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from powerpipe.core.exceptions import RequestError
from powerpipe.forecast.data import FEATURES, TARGETS, TIME_COLUMN
from powerpipe.forecast.intervals import Calibration, check_levels, quantile_columns

KERAS_ARTIFACT = "keras_model"
QUANTILES_PARAM = "quantiles"
ACCEPTED_TIMES = ("ISO 8601 text with or without an offset (\"2016-06-01T12:00:00\", \"2016-06-01T12:00:00Z\", "
                  "\"2016-06-01 12:00:00+00:00\"; without an offset: UTC), naive datetimes (taken as UTC) or "
                  "time-zone-aware datetimes (converted to UTC)")


def request_times(values: pd.Series) -> pd.DatetimeIndex:
    """``utc_timestamp`` of a request as UTC times; ``RequestError`` for anything but the accepted forms."""
    values = pd.Series(values)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        times = pd.DatetimeIndex(values).tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        times = pd.DatetimeIndex(values).tz_localize("UTC")
    elif pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        raise _refused(f"numbers are not times (got {values.iloc[0]!r})" if len(values) else "numbers are not times")
    else:
        times = pd.DatetimeIndex([_one_time(value) for value in values])
    return times.rename(None)


def _one_time(value: Any) -> pd.Timestamp:
    if isinstance(value, str):
        try:
            stamp = pd.Timestamp(pd.to_datetime(value.strip(), format="ISO8601"))
        except (ValueError, TypeError):
            raise _refused(f"cannot read {value!r} as a time") from None
    elif isinstance(value, (dt.datetime, np.datetime64, pd.Timestamp)) and not pd.isna(value):
        stamp = pd.Timestamp(value)
    elif value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        raise _refused("a time is missing")
    else:
        raise _refused(f"cannot read {value!r} ({type(value).__name__}) as a time")
    if pd.isna(stamp):
        raise _refused(f"cannot read {value!r} as a time")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _refused(detail: str) -> RequestError:
    return RequestError(f"column {TIME_COLUMN}: {detail}. Accepted: {ACCEPTED_TIMES}.")


def request_frame(model_input: Any) -> pd.DataFrame:
    """The request as the raw schema (``utc_timestamp`` naive UTC, four float weather columns), index kept."""
    frame = pd.DataFrame(model_input)
    missing = [column for column in (TIME_COLUMN, *FEATURES) if column not in frame.columns]
    if missing:
        raise RequestError(f"the request lacks column(s) {', '.join(missing)}; a request holds {TIME_COLUMN} "
                           f"and {', '.join(FEATURES)}")
    out = frame[FEATURES].astype("float64")
    out.insert(0, TIME_COLUMN, request_times(frame[TIME_COLUMN]).tz_localize(None))
    out.index = frame.index
    return out


def requested_levels(params: dict | None, default: tuple[float, ...]) -> tuple[float, ...]:
    """The levels a request asks for (``params["quantiles"]``), else the model's own."""
    wanted = (params or {}).get(QUANTILES_PARAM)
    if wanted is None or (hasattr(wanted, "__len__") and list(wanted) == list(default)):
        return default
    try:
        return check_levels(list(np.atleast_1d(wanted)), require=False)
    except ValueError as exc:
        raise RequestError(f"params.{QUANTILES_PARAM}: {exc}") from None


class QuantileForecastModel(mlflow.pyfunc.PythonModel):
    """A fitted point model and its calibration behind the raw schema (see the module's docstring)."""

    def __init__(self, calibration: Calibration, flavor: str, estimator=None, feature_set: str | None = None):
        self.calibration = calibration.without_sample()
        self.flavor = flavor  # "sklearn": ``estimator`` takes the raw schema; "keras": the net is an artifact
        self.estimator = estimator
        self.feature_set = feature_set
        self.net = None

    def load_context(self, context) -> None:
        if self.flavor == "keras":
            import keras

            self.net = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT])

    def point(self, raw: pd.DataFrame) -> np.ndarray:
        """The point model's raw output (n × 2) for a raw-schema frame."""
        if self.flavor == "keras":
            from powerpipe.forecast.features import FeatureBuilder

            values = FeatureBuilder(self.feature_set).transform(raw).to_numpy(dtype="float32")
            return np.asarray(self.net.predict(values, verbose=0), dtype="float64")
        return np.asarray(self.estimator.predict(raw), dtype="float64")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            raw = request_frame(model_input)
            levels = requested_levels(params, self.calibration.levels)
        except RequestError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        if raw.empty:
            return pd.DataFrame(columns=quantile_columns(levels), dtype="float64")
        times = pd.DatetimeIndex(raw[TIME_COLUMN])
        forecast = self.calibration.forecast(times, self.point(raw), levels)
        return forecast.set_axis(raw.index)


def signature(levels: tuple[float, ...]):
    """Input: ``utc_timestamp`` (Any: read by the model) and four doubles; output: the point and quantile
    columns; params: ``quantiles`` (a list of levels, default the model's)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(AnyType(), TIME_COLUMN), *(ColSpec("double", column) for column in FEATURES)])
    outputs = Schema([ColSpec("double", column) for column in quantile_columns(levels)])
    params = ParamSchema([ParamSpec(QUANTILES_PARAM, "double", list(levels), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_request(X_example: pd.DataFrame) -> pd.DataFrame:
    """Rows of the raw schema as a REST client sends them: ``utc_timestamp`` as ISO text (UTC, no offset)."""
    from powerpipe.forecast.features import raw_input

    example = raw_input(X_example.head(5))
    example[TIME_COLUMN] = pd.DatetimeIndex(example[TIME_COLUMN]).strftime("%Y-%m-%dT%H:%M:%S")
    return example.reset_index(drop=True)


def log(model, X_example: pd.DataFrame, flavor: str, calibration: Calibration, name: str,
        requirements: list[str], code_paths: list[str], feature_set: str | None = None) -> None:
    """Log ``model`` with ``calibration`` as a ``QuantileForecastModel`` (pyfunc) under ``name``."""
    import tempfile

    if flavor not in ("sklearn", "keras"):
        raise ValueError(f"unknown model flavor {flavor!r}")
    wrapper = QuantileForecastModel(calibration, flavor, estimator=model if flavor == "sklearn" else None,
                                    feature_set=feature_set or "tutorial")
    example = example_request(X_example)
    arguments = dict(name=name, python_model=wrapper, code_paths=code_paths, signature=signature(calibration.levels),
                     input_example=example, pip_requirements=requirements)
    if flavor == "sklearn":
        mlflow.pyfunc.log_model(**arguments)
        return
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "model.keras"
        model.save(saved)
        mlflow.pyfunc.log_model(artifacts={KERAS_ARTIFACT: str(saved)}, **arguments)


def forecast_frame(model, frame: pd.DataFrame) -> pd.DataFrame:
    """A loaded model's answer for the rows of a processed frame (indexed by time), on that index: the point
    columns and, for a model with intervals, its quantile columns (a model without: the point columns)."""
    from powerpipe.forecast.features import raw_input

    if frame.empty:
        return pd.DataFrame(columns=TARGETS, index=frame.index, dtype="float64")
    answer = model.predict(raw_input(frame))
    if isinstance(answer, pd.DataFrame) and all(t in answer.columns for t in TARGETS):
        return answer.set_axis(frame.index)
    return pd.DataFrame(np.asarray(answer, dtype="float64").reshape(-1, len(TARGETS)), columns=TARGETS,
                        index=frame.index)


def has_quantiles(frame: pd.DataFrame, levels=(0.1, 0.9)) -> bool:
    """True when ``frame`` (a model's answer) holds the quantile columns of ``levels`` for every target."""
    from powerpipe.forecast.intervals import quantile_column

    return all(quantile_column(t, level) in frame.columns for t in TARGETS for level in levels)


def crps_of_model(model, X_test: pd.DataFrame, y_test: pd.DataFrame) -> dict[str, float]:
    """A loaded model's CRPS on test rows (``crps``, ``solar_crps``, ``wind_crps``), from its quantiles on
    ``intervals.DENSE_LEVELS``; a model without quantiles (logged before intervals) is scored as a certain
    point forecast, whose CRPS is its mean absolute error. What the promotion gate re-scores with."""
    from powerpipe.forecast import scores
    from powerpipe.forecast.features import raw_input
    from powerpipe.forecast.intervals import DENSE_LEVELS, quantile_column
    from powerpipe.forecast.modeling import predictions_frame

    raw = raw_input(X_test)
    try:
        answer = model.predict(raw, params={QUANTILES_PARAM: list(DENSE_LEVELS)})
    except TypeError:  # a bare scikit-learn estimator: no params
        answer = model.predict(raw)
    out = {}
    for target in TARGETS:
        actual = y_test[target].to_numpy(dtype="float64")
        columns = [quantile_column(target, level) for level in DENSE_LEVELS]
        if isinstance(answer, pd.DataFrame) and all(column in answer.columns for column in columns):
            out[scores.PREFIXES[target]] = scores.crps(actual, answer[columns].to_numpy(), DENSE_LEVELS)
        else:
            point = np.clip(predictions_frame(answer)[target].to_numpy(), 0.0, None)
            out[scores.PREFIXES[target]] = scores.crps_of_point(actual, point)
    return {"crps": float(np.mean(list(out.values()))), **{f"{prefix}_crps": value for prefix, value in out.items()}}
