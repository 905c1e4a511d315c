"""The production model: loaded once per version, with its card and its predictions on the data shown.

``ProductionModelCache.get()`` asks the registry at most every ``poll_seconds`` whether the alias has
moved; the loaded version predicts on the whole dataset once, and the dashboard slices those predictions
per request.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pandas as pd

from powerpipe.forecast import data as data_module
from powerpipe.core import tags
from powerpipe.tracking import store as tracking
from powerpipe.forecast.evaluation import describe_tag
from powerpipe.forecast.serving import load_pyfunc
from powerpipe.core.exceptions import NoProductionModel, StoreUnreachableError, TrackingError

from powerpipe.dashboard.artifacts import notebook_html_artifact
from powerpipe.dashboard.shown_data import ShownData, shown_data_for_run
from powerpipe.dashboard.store import ALIAS, MODEL_NAME, first_line, is_store_failure, open_client, store_errors

log = logging.getLogger(__name__)

POLL_SECONDS = 180.0


@dataclass
class ServingModel:
    """One loaded version of the production model, with its card and its predictions on the shown data."""

    name: str
    alias: str
    version: str
    run_id: str
    run_name: str
    notebook: str
    notebook_html: str  # artifact path of the training run's executed notebook (HTML)
    params: dict[str, str]
    metrics: dict[str, float]
    promoted_at: str
    promoted_metric: str
    promoted_value: str
    pipeline_run_id: str
    previous_version: str
    evaluation: str  # how its metrics were scored ("time split, test from 2016-01-01, …"), "" if unrecorded
    feature_set: str
    shown_data: ShownData
    frame: pd.DataFrame
    predictions: pd.DataFrame
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # A model refit on every hour (stages.promote.refit): the run whose scores chose it, and its last hour learnt.
    evaluated_run_id: str = ""  # params, metrics, evaluation and notebook above are this run's
    trained_until: str = ""

    @property
    def refit(self) -> bool:
        return bool(self.evaluated_run_id) and self.evaluated_run_id != self.run_id

    @property
    def data_start(self) -> pd.Timestamp:
        return self.frame.index.min()

    @property
    def data_end(self) -> pd.Timestamp:
        return self.frame.index.max()


def load_serving_model(client, uri: str, name: str, alias: str, version: str) -> ServingModel:
    """Load ``name`` version ``version``, its data, and predict on all of it once."""
    import mlflow

    from powerpipe.forecast.quantile_model import forecast_frame

    model_version = client.get_model_version(name, version)
    run = client.get_run(model_version.run_id)
    scored = _evaluated_run(client, model_version, run)  # a refit's scores are its evaluated run's
    shown = shown_data_for_run(client, run)
    frame = data_module.load_processed(shown.path)
    started = time.perf_counter()
    # Loaded from the version's artifacts through this store's client: a models:/ URI would resolve
    # against MLflow's process-wide tracking URI, which a library must not set.
    with tempfile.TemporaryDirectory(prefix="powerpipe-model-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_artifact_uri(client, model_version),
                                                    dst_path=folder, tracking_uri=uri)
        model = load_pyfunc(local)  # this process's own powerpipe stays what it imports
    predictions = forecast_frame(model, frame)  # the point columns, and the quantiles of a model with intervals
    log.info("loaded %s version %s (run %s) and predicted %d hours of %s in %.1f s", name, version,
             run.info.run_id, len(frame), shown.path, time.perf_counter() - started)
    version_tags = model_version.tags or {}
    return ServingModel(
        name=name, alias=alias, version=str(version), run_id=run.info.run_id, run_name=run.info.run_name or "",
        notebook=scored.data.tags.get(tags.NOTEBOOK, ""), notebook_html=notebook_html_artifact(scored),
        params=dict(scored.data.params), metrics=dict(scored.data.metrics),
        promoted_at=version_tags.get(tags.PROMOTED_AT, ""), promoted_metric=version_tags.get(tags.METRIC, ""),
        promoted_value=version_tags.get(tags.METRIC_VALUE, ""),
        pipeline_run_id=version_tags.get(tags.PIPELINE_RUN_ID, ""),
        previous_version=version_tags.get(tags.PREVIOUS_VERSION, ""),
        evaluation=describe_tag(scored.data.tags.get(tags.EVALUATION)),
        feature_set=scored.data.tags.get(tags.FEATURE_SET, ""),
        shown_data=shown, frame=frame,
        predictions=predictions,
        evaluated_run_id=scored.info.run_id, trained_until=version_tags.get(tags.TRAINED_UNTIL, ""),
    )


def _evaluated_run(client, model_version, run):
    """The run whose holdout and backtest scores chose the version (``powerpipe.evaluated_run``), else its own."""
    from mlflow.exceptions import MlflowException

    evaluated = (model_version.tags or {}).get(tags.EVALUATED_RUN)
    if not evaluated or evaluated == run.info.run_id:
        return run
    try:
        return client.get_run(evaluated)
    except MlflowException as exc:  # gone (garbage-collected): the card shows the version's own run
        log.warning("evaluated run %s of %s version %s not readable: %s", evaluated, model_version.name,
                    model_version.version, first_line(exc))
        return run


def model_artifact_uri(client, model_version) -> str:
    """Where a registered version's model files are: its logged model's artifacts (MLflow 3), else its source."""
    model_id = model_version.model_id
    if not model_id and model_version.source.startswith("models:/m-"):
        model_id = model_version.source[len("models:/"):]
    if model_id:
        return client.get_logged_model(model_id).artifact_location
    return client.get_model_version_download_uri(model_version.name, model_version.version)


class ProductionModelCache:
    """The model behind ``models:/<name>@<alias>``, loaded once and reloaded when the alias moves.

    ``get()`` asks the registry for the alias's version at most every ``poll_seconds``; between checks,
    and when a check fails while a model is loaded, it serves the loaded one. Thread-safe.
    """

    def __init__(self, tracking_uri: str, name: str = MODEL_NAME, alias: str = ALIAS,
                 poll_seconds: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
                 loader: Callable[..., ServingModel] = load_serving_model):
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.loader = loader
        self.last_check_error: str | None = None
        self._model: ServingModel | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def get(self) -> ServingModel:
        """The serving model; NoProductionModel, or a TrackingError for a store that cannot be used."""
        with self._lock:
            now = self.clock()
            if self._model is not None and self._checked_at is not None and now - self._checked_at < self.poll_seconds:
                return self._model
            try:
                client = open_client(self.tracking_uri)
                version = self._alias_version(client)
            except (NoProductionModel, TrackingError) as exc:
                if self._model is None:
                    raise
                # A store that went away (or an alias removed) leaves the last good model serving.
                self.last_check_error = str(exc)
                self._checked_at = now
                log.warning("could not check %s (%s); still serving version %s", self.model_uri, exc,
                            self._model.version)
                return self._model
            self._checked_at = now
            self.last_check_error = None
            if self._model is None:
                self._model = self.loader(client, self.tracking_uri, self.name, self.alias, version)
            elif self._model.version != version:
                self._reload(client, version)
            return self._model

    def _reload(self, client, version: str) -> None:
        log.info("%s moved from version %s to %s: reloading", self.model_uri, self._model.version, version)
        try:
            self._model = self.loader(client, self.tracking_uri, self.name, self.alias, version)
        except Exception as exc:  # noqa: BLE001 - boundary: loading a model can fail in any way (files, code,
            # data), and a version that cannot load must not take down the one that is serving
            self.last_check_error = f"version {version} could not be loaded: {first_line(exc)}"
            log.exception("%s version %s could not be loaded; still serving version %s", self.name,
                          version, self._model.version)

    def _alias_version(self, client) -> str:
        """The alias's version; NoProductionModel when there is none, StoreUnreachableError when the store fails."""
        try:
            return str(client.get_model_version_by_alias(self.name, self.alias).version)
        except store_errors() as exc:
            if is_store_failure(exc):
                raise StoreUnreachableError(f"tracking store {tracking.redact(self.tracking_uri)} could not be "
                                            f"read: {first_line(exc)}") from None
            raise NoProductionModel(f"no model {self.model_uri} in {tracking.redact(self.tracking_uri)}") from None
