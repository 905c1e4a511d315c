"""MLflow plumbing shared by the notebooks and the runner: where the store is, which run is ours, what we log.

The runner hands a notebook its run through the kernel's environment (``POWERPIPE_RUN_ID`` and
``MLFLOW_TRACKING_URI``), never through parameters, so credentials in a tracking URI never appear in
an executed notebook. Run by hand in Jupyter, a notebook starts its own run in the project's default
store instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from powerpipe.core import paths, tags
from powerpipe.core.constants import EXPERIMENT  # noqa: F401 - read as tracking.EXPERIMENT too
from powerpipe.core.exceptions import StoreUnreachableError, TrackingError, chain

log = logging.getLogger(__name__)

RUN_ID_ENV = "POWERPIPE_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "POWERPIPE_EXPERIMENT"
METRICS_SCRAP = "metrics"
MODEL_ARTIFACT = tags.MODEL_ARTIFACT
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
        check_sqlite_store(db)
        return
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"
            reason = getattr(exc, "reason", exc)
            raise StoreUnreachableError(f"tracking server {redact(uri)} is not reachable: {reason}") from None
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
            raise StoreUnreachableError(f"tracking store {redact(uri)} is not reachable: {exc}") from None


# Tables every MLflow SQL store has had since its first schema; alembic_version is its migration mark.
MLFLOW_STORE_TABLES = frozenset({"alembic_version", "experiments", "runs"})
SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_store(db: str | os.PathLike) -> None:
    """Refuse a file that is not an MLflow SQLite store, reading it only (nothing is written to it).

    Missing, empty (0 bytes) or an SQLite database without any table: accepted, MLflow sets it up.
    Not an SQLite file, a corrupt one, or an SQLite database holding other tables: TrackingError
    naming the file, before MLflow would add its tables to somebody else's database.
    """
    import sqlite3

    db = Path(db)
    if not db.exists():
        return
    not_store = f"{db} is not an MLflow store"
    if not db.is_file():
        raise TrackingError(f"{not_store}: it is not a file")
    try:
        with open(db, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"tracking store {db} cannot be read: {exc.strerror}") from None
    if not header:
        return  # 0 bytes: SQLite treats it as a new database and MLflow creates its tables
    if header != SQLITE_HEADER:
        raise TrackingError(f"{not_store}: not an SQLite database (wrong file, or overwritten). "
                            "Move it away or point --tracking-uri / --outputs elsewhere; it was not changed.")
    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"{not_store}: the SQLite database is unreadable or corrupt ({exc}). "
                            "Restore it from a backup or point --tracking-uri elsewhere; it was not changed.") from None
    if tables and not MLFLOW_STORE_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
        raise TrackingError(f"{not_store}: an SQLite database without MLflow's tables (it holds: {shown}); "
                            "it was not changed.")


# -- a bounded budget for calls to a tracking server ------------------------------------------------

STORE_BUDGET_SECONDS = 60.0  # how long one call may keep trying an unreachable tracking server
# MLflow's HTTP client settings (mlflow/environment_variables.py); a value the user set is kept.
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
HTTP_JITTER_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_BACKOFF_FACTOR = 1  # urllib3 waits 0, 2, 4, 8, … s between attempts (MLflow: an int)
_JITTER = 0.5


def store_call_settings(budget_seconds: float = STORE_BUDGET_SECONDS) -> dict[str, str]:
    """MLflow HTTP settings whose worst case, all attempts timing out, stays within ``budget_seconds``.

    With r retries urllib3 sleeps ``2**r - 2`` s in all (plus jitter); each of the r + 1 attempts may
    wait ``timeout`` s. A quarter of the budget at most goes to sleeping, the rest to the attempts.
    60 s: 3 retries, 13 s per attempt (59 s at worst; a refused connection fails after about 7 s).
    """
    if budget_seconds <= 0:
        raise ValueError(f"the store budget must be positive, got {budget_seconds}")
    retries = 0
    while 2 ** (retries + 1) - 2 + (retries + 1) * _JITTER <= budget_seconds / 4 and retries < 10:
        retries += 1
    sleeping = (2 ** retries - 2 if retries else 0) + max(retries - 1, 0) * _JITTER
    timeout = max(1, int((budget_seconds - sleeping) / (retries + 1)))
    return {HTTP_RETRIES_ENV: str(retries), HTTP_BACKOFF_ENV: str(_BACKOFF_FACTOR),
            HTTP_JITTER_ENV: str(_JITTER), HTTP_TIMEOUT_ENV: str(timeout)}


def bound_store_calls(budget_seconds: float = STORE_BUDGET_SECONDS,
                      environ: dict[str, str] | None = None) -> dict[str, str]:
    """Bound every MLflow call to a tracking server to about ``budget_seconds``; returns what was set.

    Sets MLflow's HTTP retry and timeout variables in ``environ`` (default ``os.environ``), except those
    the user set already. Call it before MLflow is imported: MLflow caches its HTTP sessions by these
    values, and kernels and Dask workers inherit the environment. MLflow's own defaults (7 retries,
    120 s timeouts) let one call hang for minutes when the server is down.
    """
    environ = os.environ if environ is None else environ
    applied = {}
    for name, value in store_call_settings(budget_seconds).items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    return applied


# Exceptions (by class name, anywhere in the chain) and messages that mean "the server did not answer".
_UNREACHABLE_TYPES = frozenset({
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "NewConnectionError",
    "ProtocolError", "RemoteDisconnected", "ConnectionRefusedError", "ConnectionResetError",
    "ConnectionAbortedError", "socket.timeout", "TimeoutError", "ResponseError",
})
_UNREACHABLE_MESSAGES = (
    "max retries exceeded", "connection refused", "failed to establish a new connection",
    "failed with timeout exception", "read timed out", "connection aborted", "connection reset",
    "remote end closed connection", "name or service not known", "temporary failure in name resolution",
    "too many 5", "no route to host", "network is unreachable",
    # SQL stores: the database host does not answer
    "could not connect to server", "can't connect to mysql server", "connection timed out",
)


def is_unreachable(exc: BaseException | None) -> bool:
    """True if ``exc`` (or anything in its chain) says the tracking store did not answer.

    MLflow wraps requests' errors in a plain ``MlflowException`` ("API request to … failed with
    exception HTTPConnectionPool(…): Max retries exceeded … Connection refused"), so the message
    counts as well as the types. An answer that refuses (404, a bad parameter) is not "unreachable".
    """
    return any(isinstance(link, (StoreUnreachableError, ConnectionError, socket.timeout))
               or type(link).__name__ in _UNREACHABLE_TYPES
               or any(message in str(link).lower() for message in _UNREACHABLE_MESSAGES) for link in chain(exc))


def _reason(exc: BaseException) -> str:
    """The useful part of an unreachable-server error: the innermost message, without MLflow's preamble."""
    text = " ".join(str(exc).split())
    errno_message = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno_message:
        return errno_message.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "no answer in time (timed out)"
    if "too many 5" in text.lower():
        return "it answers with server errors (HTTP 5xx)"
    for marker in ("Caused by ", "failed with exception "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:300] or type(exc).__name__


def unreachable_error(uri: str, exc: BaseException) -> StoreUnreachableError:
    """The one-line ``StoreUnreachableError`` for ``exc``: "tracking server <uri> unreachable: <reason>"."""
    if isinstance(exc, StoreUnreachableError):
        return exc
    kind = "server" if urllib.parse.urlsplit(uri).scheme in ("http", "https") else "store"
    return StoreUnreachableError(f"tracking {kind} {redact(uri)} unreachable: {_reason(exc)}")


@contextlib.contextmanager
def store_guard(uri: str):
    """Turn an unreachable-store failure inside the block into ``StoreUnreachableError``; others pass."""
    try:
        yield
    except StoreUnreachableError:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted: unreachable is translated, anything else re-raised
        if not is_unreachable(exc):
            raise
        raise unreachable_error(uri, exc) from exc


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

    mlflow.log_metrics(metrics)
    glue(METRICS_SCRAP, metrics)


# scrapbook's media type for a JSON scrap, and the version of its payload
SCRAP_MIMETYPE, SCRAP_VERSION = "application/scrapbook.scrap.json+json", 1


def glue(name: str, data) -> None:
    """``scrapbook.glue(name, data, encoder="json", display=False)``, written out: the same output, which
    ``scrapbook.read_notebook`` reads. Importing scrapbook cost every kernel 1.5 s (papermill, nbformat, and
    jsonschema compiling its IRI grammars), in each notebook that records a metric."""
    from IPython.display import display

    payload = {"name": name, "data": data, "encoder": "json", "version": SCRAP_VERSION}
    display({SCRAP_MIMETYPE: payload}, metadata={"scrapbook": {"name": name, "data": True, "display": False}},
            raw=True)


def log_model(model, X_example, flavor: str, feature_set: str | None = None, calibration=None) -> None:
    """Log a fitted model with signature and input example, so it can be served as it is.

    The model takes the raw schema (``utc_timestamp`` + the four weather columns) and computes its
    features itself; with ``calibration`` (``intervals.calibrate``) it answers its quantiles too: see
    ``serving.log_model``, which does the work.
    """
    from powerpipe.forecast import serving

    serving.log_model(model, X_example, flavor, feature_set=feature_set, calibration=calibration)


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
        selection = f"{tags.equals(tags.MLFLOW_PARENT_RUN_ID, parent_run_id)} and {tags.equals(tags.STAGE, 'train')}"
    return mlflow.search_runs(search_all_experiments=True, filter_string=selection, output_format="pandas")


def latest_pipeline_run_id(experiment: str | None = None) -> str | None:
    """The most recent pipeline (parent) run in the experiment, for notebooks run by hand."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(
        experiment_names=[experiment or os.environ.get(EXPERIMENT_ENV, EXPERIMENT)],
        filter_string=tags.equals(tags.KIND, tags.KIND_PIPELINE),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


RUNNER_HOST_TAG, RUNNER_PID_TAG, RUNNER_STARTED_TAG = tags.RUNNER_HOST, tags.RUNNER_PID, tags.RUNNER_STARTED


def runner_tags() -> dict[str, str]:
    """Who is running this run: lets a later pipeline tell a live run from one whose runner died."""
    import psutil

    me = psutil.Process()
    return {RUNNER_HOST_TAG: socket.gethostname(), RUNNER_PID_TAG: str(me.pid),
            RUNNER_STARTED_TAG: repr(me.create_time())}


def _runner_alive(run_tags: dict[str, str]) -> bool:
    import psutil

    try:
        process = psutil.Process(int(run_tags[RUNNER_PID_TAG]))
        return repr(process.create_time()) == run_tags.get(RUNNER_STARTED_TAG)
    except (KeyError, ValueError, psutil.Error):
        return False


def mark_abandoned_runs(client, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a runner of this machine that no longer lives: marked KILLED. Returns their ids."""
    host = socket.gethostname()
    stale = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and {tags.equals(RUNNER_HOST_TAG, host)}",
        max_results=5000,
    )
    killed = []
    for run in stale:
        if not _runner_alive(run.data.tags):
            client.set_tag(run.info.run_id, tags.ERROR, "its runner stopped (killed or interrupted)")
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
