"""What the dashboard shows, without Dash: the production model and its data, date windows, pipeline runs.

Everything here is a plain function or one cache class, so the dashboard's callbacks stay thin and these
can be tested without a browser. The production model is loaded once per version: the cache predicts on
the whole dataset when it loads a version and the dashboard slices those predictions per request, and it
asks the registry at most every ``poll_seconds`` whether the alias has moved.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from . import data as data_module
from . import paths, tracking
from .exceptions import PipelineError, TrackingError

log = logging.getLogger(__name__)

MODEL_NAME = "BestModel"
ALIAS = "production"
POLL_SECONDS = 180.0
PIPELINE_COMMAND = "python runner/run_all.py"
# Windows longer than this are drawn as daily means: hourly lines over years are unreadable and slow.
MAX_HOURLY_DAYS = 92
DEFAULT_WINDOW_DAYS = 31
# MLflow run ids are 32 lowercase hex digits; anything else never reaches the store.
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# The only artifacts the dashboard serves: executed notebooks, the weekly report, the run summary.
SERVED_ARTIFACT_PATTERN = re.compile(r"notebook/[^/\\]+\.(?:html|ipynb)|report/weekly_report\.html|summary\.json")
PIPELINE_KINDS = ("pipeline", "notebook")
REPORT_ARTIFACT = "report/weekly_report.html"
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:$|T)")


class NoProductionModel(PipelineError):
    """The store has no version behind ``name@alias`` (or no store exists yet): the pipeline must run first."""


def run_command_hint(uri: str) -> str:
    """The command that trains and promotes a model into ``uri`` (the default store needs no flag)."""
    if uri == paths.default_tracking_uri():
        return PIPELINE_COMMAND
    return f"{PIPELINE_COMMAND} --tracking-uri {tracking.redact(uri)}"


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Fail fast and clearly before asking MLflow anything.

    A missing SQLite file is not created (MLflow would silently make an empty store); a tracking
    server must answer its health check within ``timeout`` seconds instead of MLflow's long retries.
    """
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise NoProductionModel(f"there is no tracking store at {db} yet")
        return
    tracking.check_reachable(uri, timeout=timeout)


def open_client(uri: str):
    """A client on ``uri`` once check_store has passed."""
    import mlflow

    check_store(uri)
    return mlflow.MlflowClient(uri)


def _is_store_failure(exc: Exception) -> bool:
    """Errors that mean the store itself cannot be used (as opposed to "no such model")."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
    return True


# -- the production model and the data it is shown on -------------------------------------------------
@dataclass(frozen=True)
class ShownData:
    """Which data the dashboard plots and predicts on, and why that file."""

    path: Path
    origin: str  # a sentence: where the file comes from
    synthetic: bool
    matches_training: bool | None  # SHA-256 equal to the training run's data; None when unknown


@dataclass
class ServingModel:
    """One loaded version of the production model, with its card and its predictions on the shown data."""

    name: str
    alias: str
    version: str
    run_id: str
    run_name: str
    notebook: str
    params: dict[str, str]
    metrics: dict[str, float]
    promoted_at: str
    promoted_metric: str
    promoted_value: str
    pipeline_run_id: str
    previous_version: str
    shown_data: ShownData
    frame: pd.DataFrame
    predictions: pd.DataFrame
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def data_start(self) -> pd.Timestamp:
        return self.frame.index.min()

    @property
    def data_end(self) -> pd.Timestamp:
        return self.frame.index.max()


def shown_data_for_run(client, run) -> ShownData:
    """The data a training run read: its ``data_path`` param, else its pipeline folder's processed CSV.

    Falls back to the project's default data (``--data auto``) when neither file exists any more.
    """
    tags = run.data.tags
    synthetic = tags.get("powerpipe.synthetic_data") == "true"
    expected_sha = tags.get("powerpipe.data_sha256")
    candidates: list[tuple[Path, str]] = []
    if run.data.params.get("data_path"):
        candidates.append((Path(run.data.params["data_path"]), "the training run's data_path"))
    parent_id = tags.get("mlflow.parentRunId")
    if parent_id:
        try:
            parent = client.get_run(parent_id)
        except Exception as exc:  # noqa: BLE001 - a missing parent only means: look elsewhere
            log.warning("parent run %s of %s not readable: %s", parent_id, run.info.run_id, exc)
        else:
            outputs = parent.data.tags.get("powerpipe.outputs")
            if outputs:
                pipeline_id = parent.data.tags.get("powerpipe.pipeline_run_id", parent_id)
                candidates.append((Path(outputs) / "data" / paths.PROCESSED_DATA_NAME,
                                   f"the processed data of pipeline run {pipeline_id}, which trained this model"))
    for path, origin in candidates:
        if path.is_file():
            matches = data_module.file_sha256(path) == expected_sha if expected_sha else None
            return ShownData(path, origin, synthetic, matches)
    source = data_module.resolve("auto")
    log.warning("the training data of run %s is gone; showing %s instead", run.info.run_id, source.path)
    matches = source.sha256 == expected_sha if expected_sha else None
    return ShownData(source.path, f"the project's default data ({source.source}); the training data is gone",
                     source.synthetic, matches)


def load_serving_model(client, uri: str, name: str, alias: str, version: str) -> ServingModel:
    """Load ``name`` version ``version``, its data, and predict on all of it once."""
    import mlflow

    from .figures import predict_frame

    model_version = client.get_model_version(name, version)
    run = client.get_run(model_version.run_id)
    shown = shown_data_for_run(client, run)
    frame = data_module.load_processed(shown.path)
    started = time.perf_counter()
    # Loaded from the version's artifacts through this store's client: a models:/ URI would resolve
    # against MLflow's process-wide tracking URI, which a library must not set.
    with tempfile.TemporaryDirectory(prefix="powerpipe-model-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_artifact_uri(client, model_version),
                                                    dst_path=folder, tracking_uri=uri)
        model = mlflow.pyfunc.load_model(local)
    predictions = predict_frame(model, frame)
    log.info("loaded %s version %s (run %s) and predicted %d hours of %s in %.1f s", name, version,
             run.info.run_id, len(frame), shown.path, time.perf_counter() - started)
    tags = model_version.tags or {}
    return ServingModel(
        name=name, alias=alias, version=str(version), run_id=run.info.run_id, run_name=run.info.run_name or "",
        notebook=run.data.tags.get("powerpipe.notebook", ""), params=dict(run.data.params),
        metrics=dict(run.data.metrics), promoted_at=tags.get("powerpipe.promoted_at", ""),
        promoted_metric=tags.get("powerpipe.metric", ""), promoted_value=tags.get("powerpipe.metric_value", ""),
        pipeline_run_id=tags.get("powerpipe.pipeline_run_id", ""),
        previous_version=tags.get("powerpipe.previous_version", ""), shown_data=shown, frame=frame,
        predictions=predictions,
    )


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
        """The serving model; NoProductionModel or TrackingError when there is none to serve."""
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
                log.info("%s moved from version %s to %s: reloading", self.model_uri, self._model.version, version)
                try:
                    self._model = self.loader(client, self.tracking_uri, self.name, self.alias, version)
                except Exception as exc:  # noqa: BLE001 - a version that cannot load must not take the page down
                    self.last_check_error = f"version {version} could not be loaded: {first_line(exc)}"
                    log.exception("%s version %s could not be loaded; still serving version %s", self.name,
                                  version, self._model.version)
            return self._model

    def _alias_version(self, client) -> str:
        try:
            return str(client.get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:  # noqa: BLE001 - sorted into "no model" and "store unusable" below
            if _is_store_failure(exc):
                raise TrackingError(f"tracking store {tracking.redact(self.tracking_uri)} could not be read: "
                                    f"{first_line(exc)}") from None
            raise NoProductionModel(f"no model {self.model_uri} in {tracking.redact(self.tracking_uri)}") from None


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (MLflow's can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the date window ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A chosen window [start, end) in UTC, or the problem that stops it being drawn."""

    start: pd.Timestamp | None
    end: pd.Timestamp | None
    problem: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _day(value: str | None) -> pd.Timestamp | None:
    """A picker date (``YYYY-MM-DD``, possibly followed by a time) as UTC midnight; ValueError otherwise."""
    if not value:
        return None
    # Strict ISO dates only: pandas would read "June" as June of year 1.
    if not isinstance(value, str) or not ISO_DATE.match(value):
        raise ValueError(value)
    return pd.Timestamp(date.fromisoformat(value[:10])).tz_localize("UTC")


def default_window(data_start: pd.Timestamp, data_end: pd.Timestamp,
                   days: int = DEFAULT_WINDOW_DAYS) -> tuple[str, str]:
    """The last ``days`` whole days of the data, as the date picker's (start, end) ISO dates."""
    last = data_end.normalize()
    first = max(last - pd.Timedelta(days=days - 1), data_start.normalize())
    return first.date().isoformat(), last.date().isoformat()


def choose_window(start_date: str | None, end_date: str | None, data_start: pd.Timestamp,
                  data_end: pd.Timestamp) -> Window:
    """Turn the picker's inclusive dates into a window inside the data, or say why there is none."""
    span = f"{data_start:%Y-%m-%d} to {data_end:%Y-%m-%d}"
    try:
        start, end_day = _day(start_date), _day(end_date)
    except (ValueError, TypeError):
        return Window(None, None, problem=f"Those are not dates: {start_date!r}, {end_date!r}.")
    if start is None or end_day is None:
        return Window(None, None, problem="Pick a start and an end date.")
    if start > end_day:
        return Window(None, None, problem=f"The start date ({start:%Y-%m-%d}) is after the end date "
                                          f"({end_day:%Y-%m-%d}): pick an end on or after the start.")
    end = end_day + pd.Timedelta(days=1)
    if end <= data_start or start > data_end:
        return Window(None, None, problem=f"{start:%Y-%m-%d} to {end_day:%Y-%m-%d} is outside the data, "
                                          f"which covers {span}.")
    note = None
    if start < data_start.normalize() or end > data_end.normalize() + pd.Timedelta(days=1):
        start, end = max(start, data_start.normalize()), min(end, data_end.normalize() + pd.Timedelta(days=1))
        note = f"Cut to the data, which covers {span}."
    return Window(start, end, note=note)


def window_frames(frame: pd.DataFrame, predictions: pd.DataFrame, window: Window,
                  max_hourly_days: int = MAX_HOURLY_DAYS) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Recorded and predicted rows in the window (daily means past ``max_hourly_days``) and the resolution.

    The frames come back indexed by naive UTC times: plotly copies and encodes tz-aware timestamps one
    Python object at a time, which makes a month's figure three times slower to build and send.
    """
    # Binary search on the sorted index: a 31-day slice of four years takes microseconds.
    lo, hi = frame.index.searchsorted(window.start, "left"), frame.index.searchsorted(window.end, "left")
    recorded = frame.iloc[lo:hi][data_module.TARGETS]
    predicted = predictions.iloc[lo:hi]
    resolution = "hourly"
    if window.end - window.start > pd.Timedelta(days=max_hourly_days):
        recorded, predicted, resolution = recorded.resample("D").mean(), predicted.resample("D").mean(), "daily means"
    naive = recorded.index.tz_convert("UTC").tz_localize(None)
    return recorded.set_axis(naive), predicted.set_axis(naive), resolution


class WindowFigure:
    """``figures.recorded_vs_predicted_figure`` for one window after another, fast.

    plotly builds and validates the figure once, here; each window then only puts its times, values and
    title into a copy of that figure's dict: a month takes a few milliseconds instead of tens, most of
    which plotly spends validating the same layout again.
    """

    def __init__(self):
        from .figures import recorded_vs_predicted_figure

        empty = pd.DataFrame({target: pd.Series(dtype="float64") for target in data_module.TARGETS},
                             index=pd.DatetimeIndex([]))
        self.template = recorded_vs_predicted_figure(empty, empty, title="").to_plotly_json()
        # Which frame and column fills each trace: its name (recorded / predicted) and its panel's y axis.
        axes = ["y"] + [f"y{i}" for i in range(2, len(data_module.TARGETS) + 1)]
        self.slots = [(trace["name"], data_module.TARGETS[axes.index(trace.get("yaxis", "y"))])
                      for trace in self.template["data"]]
        if sorted(self.slots) != sorted((name, target) for name in ("predicted", "recorded")
                                        for target in data_module.TARGETS):
            raise ValueError(f"unexpected traces in recorded_vs_predicted_figure: {self.slots}")

    def __call__(self, recorded: pd.DataFrame, predicted: pd.DataFrame, title: str) -> dict:
        frames = {"recorded": recorded, "predicted": predicted}
        times = recorded.index.strftime("%Y-%m-%dT%H:%M:%S").tolist()
        data = []
        for trace, (name, target) in zip(self.template["data"], self.slots):
            data.append({**trace, "x": times, "y": frames[name][target].to_numpy()})
        layout = {**self.template["layout"], "title": {**self.template["layout"].get("title", {}), "text": title}}
        return {"data": data, "layout": layout}


# -- pipeline runs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NotebookLink:
    label: str
    stage: str
    status: str
    run_id: str
    html_path: str  # artifact path of the executed notebook's HTML


@dataclass(frozen=True)
class PipelineRunRow:
    """One pipeline run as the runs page lists it."""

    run_id: str
    pipeline_run_id: str
    experiment: str
    started: datetime | None
    status: str
    notebooks_ok: int
    notebooks_failed: int
    best_metric: str
    best_value: float | None
    promoted_version: str
    is_production: bool
    synthetic: bool
    report_run_id: str | None  # the run whose artifacts hold report/weekly_report.html
    notebooks: tuple[NotebookLink, ...]


def pipeline_runs(client, model_name: str = MODEL_NAME, alias: str = ALIAS, max_results: int = 20,
                  metric: str = "rmse") -> list[PipelineRunRow]:
    """The latest pipeline runs in every experiment of the store, newest first, with their notebooks.

    Three queries in all (parents, their notebook runs, the model's versions), whatever the number of runs.
    """
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    ids = list(experiments)
    parents = client.search_runs(ids, "tags.`powerpipe.kind` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], max_results=max_results)
    if not parents:
        return []
    oldest = min(p.info.start_time for p in parents)
    children = client.search_runs(
        ids, f"tags.`powerpipe.kind` = 'notebook' and attributes.start_time >= {oldest}",
        order_by=["attributes.start_time ASC"], max_results=50000,
    )
    by_parent: dict[str, list] = {}
    for child in children:
        by_parent.setdefault(child.data.tags.get("mlflow.parentRunId", ""), []).append(child)
    versions_by_pipeline = _promoted_versions(client, model_name)
    production = _alias_version_or_none(client, model_name, alias)

    rows = []
    for parent in parents:
        kids = by_parent.get(parent.info.run_id, [])
        pipeline_id = parent.data.tags.get("powerpipe.pipeline_run_id", "")
        trained = [k.data.metrics[metric] for k in kids
                   if k.data.tags.get("powerpipe.stage") == "train" and k.info.status == "FINISHED"
                   and metric in k.data.metrics and math.isfinite(k.data.metrics[metric])]
        report_runs = [k for k in kids if k.data.tags.get("powerpipe.stage") == "report" and k.info.status == "FINISHED"]
        version = versions_by_pipeline.get(pipeline_id, "")
        rows.append(PipelineRunRow(
            run_id=parent.info.run_id,
            pipeline_run_id=pipeline_id,
            experiment=experiments.get(parent.info.experiment_id, parent.info.experiment_id),
            started=datetime.fromtimestamp(parent.info.start_time / 1000, timezone.utc) if parent.info.start_time else None,
            status=parent.info.status,
            notebooks_ok=sum(k.info.status == "FINISHED" for k in kids),
            notebooks_failed=sum(k.info.status in ("FAILED", "KILLED") for k in kids),
            best_metric=metric,
            best_value=min(trained) if trained else None,
            promoted_version=version,
            is_production=bool(version) and version == production,
            synthetic=parent.data.tags.get("powerpipe.synthetic_data") == "true",
            # The report is attached to the parent run too; only a finished report run made one.
            report_run_id=parent.info.run_id if report_runs else None,
            notebooks=tuple(_notebook_link(k) for k in kids if k.info.run_name),
        ))
    return rows


def _notebook_link(run) -> NotebookLink:
    stage = run.data.tags.get("powerpipe.stage", "")
    # The report notebook is rendered without code into report/, not into notebook/ like the others.
    html_path = REPORT_ARTIFACT if stage == "report" else f"notebook/{run.info.run_name}.html"
    return NotebookLink(run.info.run_name, stage, run.info.status, run.info.run_id, html_path)


def _promoted_versions(client, model_name: str) -> dict[str, str]:
    """pipeline run id -> the version of ``model_name`` that run promoted (the latest, if several)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return {}
    promoted: dict[str, str] = {}
    for v in sorted(versions, key=lambda v: int(v.version)):
        pipeline_id = (v.tags or {}).get("powerpipe.pipeline_run_id")
        if pipeline_id:
            promoted[pipeline_id] = str(v.version)
    return promoted


def _alias_version_or_none(client, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


# -- artifacts of pipeline runs ----------------------------------------------------------------------
class ArtifactNotServed(LookupError):
    """The run or artifact is unknown, or not one the dashboard serves."""


def fetch_artifact(client, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
    """A local copy of one served artifact of a pipeline's run; ArtifactNotServed for anything else.

    Only runs the pipeline made (tag ``powerpipe.kind``), only the artifact kinds in
    SERVED_ARTIFACT_PATTERN, and only paths the store itself lists: a path is never joined to a folder
    before the store has named it, so ``..`` and absolute paths cannot escape.
    """
    if not RUN_ID_PATTERN.fullmatch(run_id or ""):
        raise ArtifactNotServed(f"not a run id: {run_id!r}")
    if not SERVED_ARTIFACT_PATTERN.fullmatch(artifact_path or "") or any(
            part in ("", ".", "..") for part in artifact_path.split("/")):
        raise ArtifactNotServed(f"not an artifact the dashboard serves: {artifact_path!r}")
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - an unknown run and an unreadable one both mean "not served"
        raise ArtifactNotServed(f"no run {run_id}") from None
    if run.data.tags.get("powerpipe.kind") not in PIPELINE_KINDS:
        raise ArtifactNotServed(f"run {run_id} is not a pipeline run")
    folder = artifact_path.rpartition("/")[0] or None
    listed = {f.path for f in client.list_artifacts(run_id, folder) if not f.is_dir}
    if artifact_path not in listed:
        raise ArtifactNotServed(f"run {run_id} has no artifact {artifact_path}")
    return Path(client.download_artifacts(run_id, artifact_path, str(dst_dir)))
