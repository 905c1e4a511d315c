"""What a training run records to MLflow, so that its model serves exactly what it was trained and scored on.

- **The model takes the raw schema** (``features.RAW_COLUMNS``: ``utc_timestamp`` plus the four weather
  columns) and computes its features itself. scikit-learn models are logged as
  ``Pipeline([("features", FeatureBuilder(feature_set)), ("model", regressor)])``; the Keras net through
  ``FeatureModel``, a pyfunc wrapper that applies the same ``FeatureBuilder`` before the net (whose
  ``Normalization`` layer holds the scaling). Both are logged with ``code_paths`` pointing at this
  package, so ``mlflow models serve -m models:/BestModel@production`` imports ``powerpipe.features``
  wherever it runs, and the signature and input example say what a request holds. ``utc_timestamp``
  is a UTC time without offset (MLflow's ``datetime`` type is timezone-naive): in JSON,
  ``"2016-06-01T12:00:00"``.
- **Data lineage**: the training and test rows as MLflow datasets (``mlflow.log_input``), named after the
  file and the part of the split, sourced at the file's path, with the first 32 hex digits of the full
  file's SHA-256 as digest (MLflow's own digest hashes only the first rows), so the MLflow UI's
  Datasets column shows which file and rows each model saw.
- **Evaluation**: the run's tags ``powerpipe.evaluation`` (the contract, JSON) and
  ``powerpipe.feature_set``; the backtest's per-fold metrics (``step`` = fold) and table; the holdout's
  skill per month.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from powerpipe.core import tags
from powerpipe.forecast.data import TARGETS
from powerpipe.forecast.evaluation import Evaluation, backtest_summary, resolve, skill_by_period
from powerpipe.forecast.features import RAW_COLUMNS, FeatureBuilder, check_feature_set, raw_input
from powerpipe.forecast.modeling import predictions_frame

log = logging.getLogger(__name__)

KERAS_ARTIFACT = "keras_model"
MODEL_ARTIFACT = tags.MODEL_ARTIFACT
BACKTEST_ARTIFACT = "evaluation/backtest.csv"
MONTHLY_SKILL_ARTIFACT = "evaluation/monthly_skill.csv"
RELIABILITY_ARTIFACT = "evaluation/reliability.csv"  # observed frequency per nominal quantile level (holdout)
# Per-fold metrics, logged with step = fold number (1-based).
FOLD_METRICS = {"r2": "fold_r2", "rmse": "fold_rmse", "solar_r2": "fold_solar_r2", "wind_r2": "fold_wind_r2",
                # the intervals' (powerpipe.forecast.intervals.backtest), when the table has them
                "crps": "fold_crps", "crps_skill": "fold_crps_skill", "solar_coverage_80": "fold_solar_coverage_80",
                "wind_coverage_80": "fold_wind_coverage_80"}
DIGEST_LENGTH = 32  # MLflow stores dataset digests in 36 characters
# Types inside the models we fit ourselves; skops refuses to load them unless named.
SKOPS_TRUSTED_TYPES = [
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "powerpipe.forecast.features.FeatureBuilder",
    "powerpipe.features.FeatureBuilder",  # models logged before the package had layers
]


class FeatureModel(mlflow.pyfunc.PythonModel):
    """A Keras net behind the raw schema: ``FeatureBuilder(feature_set)`` first, then the net.

    MLflow's Keras flavor takes one float32 tensor (and fails to save an input example); this takes
    the same named columns as every other model and answers with ``solar_GW``, ``wind_GW``.
    """

    def __init__(self, feature_set: str = "tutorial"):
        self.feature_set = check_feature_set(feature_set)

    def load_context(self, context) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        # Nets logged before feature sets (as ``KerasRegressor``) took the four weather columns: "tutorial".
        values = FeatureBuilder(getattr(self, "feature_set", "tutorial")).transform(frame).to_numpy(dtype="float32")
        return predictions_frame(self.model.predict(values, verbose=0), index=frame.index)


# The name the Keras wrapper had before features: models logged then still load.
KerasRegressor = FeatureModel


def model_input(X: pd.DataFrame) -> pd.DataFrame:
    """Rows in the served schema, exactly: ``utc_timestamp`` (naive UTC) and the four weather columns."""
    return raw_input(X)


def log_model(model, X_example: pd.DataFrame, flavor: str, feature_set: str | None = None,
              calibration=None) -> None:
    """Log a fitted model that takes the raw schema, with signature and input example in that schema.

    With ``calibration`` (an ``intervals.Calibration``): the model with its intervals, a
    ``quantile_model.QuantileForecastModel`` answering the point and quantile columns for the same
    request, and reading ``utc_timestamp`` as text or datetimes with or without a time zone.

    ``flavor="sklearn"``: ``model`` is a fitted scikit-learn estimator taking the raw schema (a
    ``modeling.make_model`` Pipeline). ``flavor="keras"``: a fitted Keras net taking the features of
    ``feature_set``; it is wrapped in ``FeatureModel``.
    """
    import mlflow
    from mlflow.models import infer_signature

    from powerpipe.forecast.data import TIME_COLUMN

    # The raw schema; a caller that still passes the four weather columns alone (a model fitted on
    # them, such as the tests' stand-ins) gets a model of those four, as before features.
    example = model_input(X_example.head(5)) if TIME_COLUMN in X_example.columns else X_example.head(5)
    requirements = [f"mlflow=={mlflow.__version__}", f"pandas=={_version('pandas')}",
                    f"scikit-learn=={_version('scikit-learn')}", f"pvlib=={_version('pvlib')}"]
    # Explicit requirements: inferring them would start a subprocess that loads the model again.
    code_paths = [str(Path(__file__).resolve().parent.parent)]  # the powerpipe package: FeatureBuilder at serving time
    if calibration is not None:
        from powerpipe.forecast import quantile_model

        if flavor == "keras":
            requirements += [f"tensorflow=={_version('tensorflow')}", f"keras=={_version('keras')}"]
        requirements += [f"scoringrules=={_version('scoringrules')}"]
        quantile_model.log(model, X_example, flavor, calibration, MODEL_ARTIFACT, requirements, code_paths,
                           feature_set=feature_set)
        return
    if flavor == "sklearn":
        signature = infer_signature(example, predictions_frame(model.predict(example)))
        mlflow.sklearn.log_model(model, name=MODEL_ARTIFACT, signature=signature, input_example=example,
                                 pip_requirements=requirements, code_paths=code_paths,
                                 skops_trusted_types=SKOPS_TRUSTED_TYPES)
    elif flavor == "keras":
        import tempfile

        feature_set = feature_set or "tutorial"
        wrapper = FeatureModel(feature_set)
        requirements += [f"tensorflow=={_version('tensorflow')}", f"keras=={_version('keras')}"]
        features = FeatureBuilder(feature_set).transform(example).to_numpy("float32")
        signature = infer_signature(example, predictions_frame(model.predict(features, verbose=0)))
        with tempfile.TemporaryDirectory() as folder:
            saved = Path(folder) / "model.keras"
            model.save(saved)
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=wrapper, artifacts={KERAS_ARTIFACT: str(saved)},
                code_paths=code_paths, signature=signature, input_example=example, pip_requirements=requirements,
            )
    else:
        raise ValueError(f"unknown model flavor {flavor!r}")


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def load_pyfunc(local_path: str | os.PathLike):
    """``mlflow.pyfunc.load_model`` of a downloaded model, leaving this process's own code as it was.

    A model logged with ``code_paths`` (ours carry the ``powerpipe`` package) makes MLflow put its copy of
    the code first on ``sys.path`` and drop the package's modules from ``sys.modules``: every later
    ``powerpipe`` import in the process (and in processes it spawns, which inherit ``sys.path``: Dask
    workers) would come from the model's temporary folder, where the report templates are not
    (``TemplateNotFound: offline_report.html.j2``). The loaded model keeps the classes it was unpickled with.
    """
    def ours(name: str) -> bool:
        return name == "powerpipe" or name.startswith("powerpipe.")

    own = {name: module for name, module in sys.modules.items() if ours(name)}
    path = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(str(local_path))
    finally:
        sys.path[:] = path
        for name in [n for n in sys.modules if ours(n) and n not in own]:
            del sys.modules[name]  # imported from the model's copy: the next import finds our own
        sys.modules.update(own)


def predict_frame(model, frame: pd.DataFrame) -> pd.DataFrame:
    """``model``'s predictions (any flavour, loaded or fitted) for the rows of a processed frame, target-named.

    The frame may be indexed by time (as ``data.load`` returns it); the model gets the raw schema.
    """
    if frame.empty:
        return pd.DataFrame(columns=TARGETS, index=frame.index, dtype="float64")
    return predictions_frame(model.predict(model_input(frame)), index=frame.index)


def log_training_setup(evaluation: Evaluation | dict | None, feature_set: str, data_path: str | os.PathLike,
                       X_train: pd.DataFrame, X_test: pd.DataFrame, y_train: pd.DataFrame,
                       y_test: pd.DataFrame) -> None:
    """What every training notebook records before it fits: ``tag_run`` and ``log_datasets``."""
    tag_run(evaluation, feature_set)
    log_datasets(data_path, evaluation, X_train, X_test, y_train, y_test)


def tag_run(evaluation: Evaluation | dict | None, feature_set: str) -> dict[str, str]:
    """Tag the active run with its evaluation contract (JSON) and feature set; log ``feature_set`` as a param."""
    import mlflow

    spec = resolve(evaluation)
    run_tags = {tags.EVALUATION: spec.to_json(), tags.FEATURE_SET: check_feature_set(feature_set)}
    mlflow.set_tags(run_tags)
    mlflow.log_param("feature_set", feature_set)
    return run_tags


def log_datasets(data_path: str | os.PathLike, evaluation: Evaluation | dict | None, X_train: pd.DataFrame,
                 X_test: pd.DataFrame, y_train: pd.DataFrame, y_test: pd.DataFrame,
                 sha256: str | None = None) -> None:
    """The training and test rows as MLflow inputs (contexts ``training`` and ``testing``).

    Name: the file and the part (``germany.csv (training, before 2016-01-01)``); source: the file's
    path; digest: the first 32 hex digits of the SHA-256 of the whole file (the full hash, the split
    and the row count and time range go into the input's tags).
    """
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    from powerpipe.forecast.data import file_sha256

    path = Path(data_path).resolve()
    sha256 = sha256 or file_sha256(path)
    spec = resolve(evaluation)
    for context, X, y in (("training", X_train, y_train), ("testing", X_test, y_test)):
        if not len(X):  # a refit (split: none) holds no hour out
            continue
        frame = pd.concat([model_input(X).reset_index(drop=True), y[TARGETS].reset_index(drop=True)], axis=1)
        dataset = PandasDataset(frame, source=LocalArtifactDatasetSource(str(path)), targets=None,
                                name=f"{path.name} ({context}, {_part(spec, context)})", digest=sha256[:DIGEST_LENGTH])
        times = frame[RAW_COLUMNS[0]]
        input_tags = {
            "sha256": sha256, "evaluation": spec.describe(), "rows": str(len(frame)),
            "from": f"{times.min():%Y-%m-%d %H:%M}" if len(frame) else "",
            "to": f"{times.max():%Y-%m-%d %H:%M}" if len(frame) else "",
        }
        _log_input(dataset, context, input_tags)


def _log_input(dataset, context: str, input_tags: dict[str, str], attempts: int = 5) -> None:
    """``mlflow.log_input``, again if a parallel run created the same dataset (name, digest) at that instant.

    Grid points running at once log the same training rows: MLflow's get-or-create of the dataset
    then races, and the loser's insert fails on the store's unique key; the dataset exists by then.
    """
    import time

    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            mlflow.log_input(dataset, context=context, tags=input_tags)
            return
        except MlflowException as exc:
            if attempt == attempts or "unique" not in str(exc).lower():
                raise
            log.info("dataset %s was being created by another run; logging it again", dataset.name)
            time.sleep(0.2 * attempt)


def _part(spec: Evaluation, context: str) -> str:
    if spec.split == "none":
        return "every hour"
    if spec.split == "time":
        return f"before {spec.test_start}" if context == "training" else f"from {spec.test_start}"
    share = 1 - spec.test_size if context == "training" else spec.test_size
    return f"random {share:.0%}, seed {spec.random_state}"


def log_backtest(table: pd.DataFrame) -> dict[str, float]:
    """Per-fold metrics (``fold_r2``… with ``step`` = fold), the table as ``evaluation/backtest.csv``.

    Returns the mean metrics (``backtest_r2``, ``backtest_rmse``, and per target) for
    ``tracking.record_metrics``; {} when there is no backtest.
    """
    import mlflow

    if table.empty:
        return {}
    for row in table.itertuples(index=False):
        row = row._asdict()
        mlflow.log_metrics({name: float(row[key]) for key, name in FOLD_METRICS.items() if key in row},
                           step=int(row["fold"]))
    _log_table(table, BACKTEST_ARTIFACT)
    return backtest_summary(table)


def log_monthly_skill(y_test: pd.DataFrame, y_pred) -> pd.DataFrame:
    """The holdout's metrics per month of the test hours, logged as ``evaluation/monthly_skill.csv``."""
    table = skill_by_period(y_test, y_pred, "MS")
    _log_table(table.reset_index(), MONTHLY_SKILL_ARTIFACT)
    return table


def log_reliability(table: pd.DataFrame) -> None:
    """The holdout's reliability table (``interval_figures.reliability_table``) as ``evaluation/reliability.csv``:
    the report draws it for a model refit on every hour, which has no unseen hours of its own."""
    _log_table(table.reset_index(), RELIABILITY_ARTIFACT)


def _log_table(table: pd.DataFrame, artifact: str) -> None:
    import tempfile

    import mlflow

    folder, name = artifact.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        table.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S+00:00")
        mlflow.log_artifact(str(path), artifact_path=folder)


def load_table(client, run_id: str, artifact: str) -> pd.DataFrame | None:
    """A table a training run logged (``BACKTEST_ARTIFACT``, ``MONTHLY_SKILL_ARTIFACT``), or None if absent."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact, tmp)
        except (MlflowException, OSError):
            return None
        return pd.read_csv(path)
