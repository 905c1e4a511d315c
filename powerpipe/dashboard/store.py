"""The tracking store the dashboard reads: which model it serves, whether the store is there, its errors.

``check_store`` fails fast and says which failure it is: a missing SQLite file is "no model yet"
(``NoProductionModel``: the pipeline never ran there), a server or database that does not answer is
``StoreUnreachableError``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from powerpipe.core import paths
from powerpipe.tracking import store as tracking
from powerpipe.spec.config import PromoteSpec
from powerpipe.core.exceptions import NoProductionModel, StoreUnreachableError, TrackingError

# The registered model and alias the pipeline promotes to, unless its YAML says otherwise.
MODEL_NAME = PromoteSpec().model_name
ALIAS = PromoteSpec().alias
PIPELINE_COMMAND = "python runner/run_all.py"
# MLflow error codes that mean "no such thing": the store itself answered.
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


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
        tracking.check_sqlite_store(db)  # a file that is not an MLflow store is refused, never written to
        return
    try:
        tracking.check_reachable(uri, timeout=timeout)
    except StoreUnreachableError:
        raise
    except TrackingError as exc:  # for a server or a database, every failure of this check is "no answer"
        raise StoreUnreachableError(str(exc)) from None


def store_errors() -> tuple[type[BaseException], ...]:
    """What asking a store can raise when the store itself fails: MLflow's errors, I/O, HTTP, database errors."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return MlflowException, OSError, requests.RequestException, sqlalchemy.exc.SQLAlchemyError


def open_client(uri: str):
    """A client on ``uri`` once check_store has passed."""
    import mlflow

    check_store(uri)
    try:
        return mlflow.MlflowClient(uri)
    except store_errors() as exc:
        raise StoreUnreachableError(f"tracking store {tracking.redact(uri)} could not be opened: "
                                    f"{first_line(exc)}") from None


def is_store_failure(exc: BaseException) -> bool:
    """Whether an error means the store itself cannot be used (as opposed to "no such model or run")."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in NOT_FOUND_CODES
    return True


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (MLflow's can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
