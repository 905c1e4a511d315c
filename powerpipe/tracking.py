"""MLflow plumbing shared by the notebooks and the runner: where the store is, which run is ours, what we log.

The runner hands a notebook its run through the kernel's environment (``POWERPIPE_RUN_ID`` and
``MLFLOW_TRACKING_URI``), never through parameters, so credentials in a tracking URI never appear in
an executed notebook. Run by hand in Jupyter, a notebook starts its own run in the project's default
store instead.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from . import paths
from .exceptions import TrackingError

log = logging.getLogger(__name__)

EXPERIMENT = "predicting_wind_solar"
RUN_ID_ENV = "POWERPIPE_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "POWERPIPE_EXPERIMENT"
METRICS_SCRAP = "metrics"
MODEL_ARTIFACT = "model"
# Types inside the tree models we fit ourselves; skops refuses to load them unless named.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def tracking_uri(uri: str | None = None, outputs_dir: str | os.PathLike = paths.OUTPUTS_DIR) -> str:
    """The store to use: the argument, else ``MLFLOW_TRACKING_URI``, else SQLite inside ``outputs/``."""
    return uri or os.environ.get(TRACKING_URI_ENV) or paths.default_tracking_uri(Path(outputs_dir))


def redact(uri: str) -> str:
    """A tracking URI fit to print: any password or token in it replaced by ``***``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None and parts.username is None:
        return re.sub(r"(?i)(token|password|secret)=[^&]*", r"\1=***", uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.password is not None else "***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds, before any training, if the store cannot be used."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking store {redact(uri)}: cannot create {db.parent}: {exc.strerror}") from None
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"tracking store {redact(uri)}: folder {db.parent} is not writable")
        return
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {redact(uri)} is not reachable: {reason}") from None
        return
    if scheme in ("", "file"):
        return
    # Databases: at least the host must answer. Other schemes (databricks, …) are left to MLflow.
    parts = urllib.parse.urlsplit(uri)
    default_port = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(scheme.split("+")[0])
    if parts.hostname and default_port:
        try:
            socket.create_connection((parts.hostname, parts.port or default_port), timeout=timeout).close()
        except OSError as exc:
            raise TrackingError(f"tracking store {redact(uri)} is not reachable: {exc}") from None


def ensure_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, creating it (with artifacts beside a local SQLite store) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=paths.artifact_root_for(uri))


def notebook_run(run_name: str | None = None):
    """This notebook's MLflow run: the one the runner created for it, or a new one when run by hand."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    run_id = os.environ.get(RUN_ID_ENV)
    if run_id:
        return mlflow.start_run(run_id=run_id)
    experiment_id = ensure_experiment(mlflow.MlflowClient(uri), os.environ.get(EXPERIMENT_ENV, EXPERIMENT), uri)
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name)


def record_metrics(metrics: dict[str, float]) -> None:
    """Log metrics to the active run and glue them into the notebook, where the runner reads them."""
    import mlflow
    import scrapbook

    mlflow.log_metrics(metrics)
    scrapbook.glue(METRICS_SCRAP, metrics, display=False)


def log_model(model, X_example, flavor: str) -> None:
    """Log a fitted model with signature and input example, so it can be served as it is."""
    import mlflow
    from mlflow.models import infer_signature

    from .modeling import predictions_frame

    example = X_example.head(5)
    requirements = [f"mlflow=={mlflow.__version__}", f"pandas=={_version('pandas')}"]
    # Explicit requirements: inferring them would start a subprocess that loads the model again.
    if flavor == "sklearn":
        requirements.append(f"scikit-learn=={_version('scikit-learn')}")
        signature = infer_signature(example, predictions_frame(model.predict(example)))
        mlflow.sklearn.log_model(model, name=MODEL_ARTIFACT, signature=signature, input_example=example,
                                 pip_requirements=requirements, skops_trusted_types=SKOPS_TRUSTED_TYPES)
    elif flavor == "keras":
        import tempfile

        from . import serving

        requirements += [f"tensorflow=={_version('tensorflow')}", f"keras=={_version('keras')}"]
        signature = infer_signature(example, predictions_frame(model.predict(example.to_numpy("float32"), verbose=0)))
        with tempfile.TemporaryDirectory() as folder:
            saved = Path(folder) / "model.keras"
            model.save(saved)
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=serving.KerasRegressor(),
                artifacts={serving.KERAS_ARTIFACT: str(saved)}, code_paths=[str(Path(__file__).parent)],
                signature=signature, input_example=example, pip_requirements=requirements,
            )
    else:
        raise ValueError(f"unknown model flavor {flavor!r}")


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def describe_model(model_uri: str, client=None) -> dict[str, str]:
    """Name, version, run and alias behind ``models:/Name@alias`` or ``models:/Name/version``."""
    import mlflow

    client = client or mlflow.MlflowClient(tracking_uri())
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        raise TrackingError(f"not a registered-model URI: {model_uri}")
    name, alias, version = match.groups()
    if alias:
        model_version = client.get_model_version_by_alias(name, alias)
    else:
        model_version = client.get_model_version(name, version)
    return {"name": name, "version": str(model_version.version), "run_id": model_version.run_id or "",
            "alias": alias or "", "source": model_version.source}


def training_runs(parent_run_id: str | None = None, run_ids: list[str] | None = None):
    """One row per training grid point: notebook, parameters, status and metrics (empty frame if none).

    ``run_ids``: exactly those runs (a pipeline run's own and the cached ones it reused); otherwise
    the training runs that are children of ``parent_run_id``. Searched in every experiment.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if run_ids is not None:
        quoted = ", ".join(f"'{run_id}'" for run_id in run_ids) or "''"
        selection = f"attributes.run_id IN ({quoted})"
    else:
        selection = f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`powerpipe.stage` = 'train'"
    return mlflow.search_runs(search_all_experiments=True, filter_string=selection, output_format="pandas")


def latest_pipeline_run_id(experiment: str | None = None) -> str | None:
    """The most recent pipeline (parent) run in the experiment, for notebooks run by hand."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(
        experiment_names=[experiment or os.environ.get(EXPERIMENT_ENV, EXPERIMENT)],
        filter_string="tags.`powerpipe.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


RUNNER_HOST_TAG = "powerpipe.runner_host"
RUNNER_PID_TAG = "powerpipe.runner_pid"
RUNNER_STARTED_TAG = "powerpipe.runner_started"


def runner_tags() -> dict[str, str]:
    """Who is running this run: lets a later pipeline tell a live run from one whose runner died."""
    import psutil

    me = psutil.Process()
    return {RUNNER_HOST_TAG: socket.gethostname(), RUNNER_PID_TAG: str(me.pid),
            RUNNER_STARTED_TAG: repr(me.create_time())}


def _runner_alive(tags: dict[str, str]) -> bool:
    import psutil

    try:
        process = psutil.Process(int(tags[RUNNER_PID_TAG]))
        return repr(process.create_time()) == tags.get(RUNNER_STARTED_TAG)
    except (KeyError, ValueError, psutil.Error):
        return False


def mark_abandoned_runs(client, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a runner of this machine that no longer lives: marked KILLED. Returns their ids."""
    host = socket.gethostname()
    stale = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{RUNNER_HOST_TAG}` = '{host}'",
        max_results=5000,
    )
    killed = []
    for run in stale:
        if not _runner_alive(run.data.tags):
            client.set_tag(run.info.run_id, "powerpipe.error", "its runner stopped (killed or interrupted)")
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    if killed:
        log.warning("marked %d run(s) left RUNNING by a runner that died as KILLED", len(killed))
    return killed


def enable_sqlite_wal(uri: str) -> None:
    """Let the runner and its kernels write to a local SQLite store at once (write-ahead log)."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    connection = sqlite3.connect(uri[len("sqlite:///"):], timeout=30)
    try:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:  # another process has it open: stay in the default mode
        log.debug("could not switch %s to WAL: %s", uri, exc)
    finally:
        connection.close()
