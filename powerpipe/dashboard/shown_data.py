"""Which data the dashboard plots and predicts on: the data the production model was trained on, if it is still there."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from powerpipe.forecast import data as data_module
from powerpipe.core import paths, tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShownData:
    """Which data the dashboard plots and predicts on, and why that file."""

    path: Path
    origin: str  # a sentence: where the file comes from
    synthetic: bool
    matches_training: bool | None  # SHA-256 equal to the training run's data; None when unknown


def shown_data_for_run(client, run) -> ShownData:
    """The data a training run read: its ``data_path`` param, else its pipeline folder's processed CSV.

    Falls back to the project's default data (``--data auto``) when neither file exists any more.
    """
    from mlflow.exceptions import MlflowException

    run_tags = run.data.tags
    synthetic = run_tags.get(tags.SYNTHETIC_DATA) == tags.flag(True)
    expected_sha = run_tags.get(tags.DATA_SHA256)
    candidates: list[tuple[Path, str]] = []
    if run.data.params.get("data_path"):
        candidates.append((Path(run.data.params["data_path"]), "the training run's data_path"))
    parent_id = run_tags.get(tags.MLFLOW_PARENT_RUN_ID)
    if parent_id:
        try:
            parent = client.get_run(parent_id)
        except MlflowException as exc:  # a missing parent only means: look elsewhere
            log.warning("parent run %s of %s not readable: %s", parent_id, run.info.run_id, exc)
        else:
            outputs = parent.data.tags.get(tags.OUTPUTS)
            if outputs:
                pipeline_id = parent.data.tags.get(tags.PIPELINE_RUN_ID, parent_id)
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
