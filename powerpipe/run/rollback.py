"""``powerpipe rollback [--to VERSION]``: move the production alias back, under the outputs lock, and record it.

The move itself and its record are ``tracking.alias_history.rollback``; here, what a command around it
needs: the store checked, the model and alias of the pipeline file, and the outputs folder's lock held
(as a pipeline run holds it: a run promoting meanwhile would race the rollback), so a held lock is
``RunLockedError`` (exit 75).
"""

from __future__ import annotations

import logging
from pathlib import Path

from powerpipe.core import paths
from powerpipe.core.exceptions import ConfigError
from powerpipe.run.recorder import new_pipeline_run_id
from powerpipe.run.runlock import RunLock
from powerpipe.tracking import store as tracking
from powerpipe.tracking.alias_history import AliasMove

log = logging.getLogger(__name__)

LOCK_PREFIX = "rollback-"  # the lock holder's id: a rollback, not a pipeline run


def rollback(config_path: Path = paths.DEFAULT_CONFIG, to_version: str | None = None,
             tracking_uri: str | None = None, outputs: Path = paths.OUTPUTS_DIR) -> tuple[str, str, AliasMove | None]:
    """Move the alias of ``config_path``'s promote stage back to ``to_version`` (default: its previous holder).

    Returns (model name, alias, the move recorded — None when that version already held it).
    """
    import mlflow

    from powerpipe.spec.config import load_config
    from powerpipe.tracking import alias_history

    config = load_config(config_path)
    if config.promote is None:
        raise ConfigError(f"{config.path} has no stages.promote: it names no registered model or alias to roll back")
    name, alias = config.promote.model_name, config.promote.alias
    uri = tracking.tracking_uri(tracking_uri, outputs)
    tracking.check_reachable(uri)
    lock, holder = RunLock(outputs), f"{LOCK_PREFIX}{new_pipeline_run_id()}"
    lock.acquire(holder)
    try:
        client = mlflow.MlflowClient(uri)
        return name, alias, alias_history.rollback(client, name, alias, to_version)
    finally:
        lock.release(holder)
