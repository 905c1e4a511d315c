"""The pipeline runs page's rows: every pipeline run with its notebooks, best metric and promoted version.

Three queries in all (parents, their notebook runs, the model's versions), whatever the number of runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from powerpipe.core.constants import DEFAULT_METRIC
from powerpipe.core import tags

from powerpipe.dashboard.artifacts import REPORT_STAGE, notebook_html_artifact
from powerpipe.dashboard.store import ALIAS, MODEL_NAME, is_store_failure

TRAIN_STAGE = "train"


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
    report_run_id: str | None  # the run whose artifacts hold tags.REPORT_ARTIFACT
    notebooks: tuple[NotebookLink, ...]
    trials: int = 0  # of its notebook runs, the trials of searches (powerpipe.search)


def pipeline_runs(client, model_name: str = MODEL_NAME, alias: str = ALIAS, max_results: int = 20,
                  metric: str = DEFAULT_METRIC) -> list[PipelineRunRow]:
    """The latest pipeline runs in every experiment of the store, newest first, with their notebooks."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    ids = list(experiments)
    parents = client.search_runs(ids, tags.equals(tags.KIND, tags.KIND_PIPELINE),
                                 order_by=["attributes.start_time DESC"], max_results=max_results)
    if not parents:
        return []
    oldest = min(p.info.start_time for p in parents)
    children = client.search_runs(
        ids, f"{tags.equals(tags.KIND, tags.KIND_NOTEBOOK)} and attributes.start_time >= {oldest}",
        order_by=["attributes.start_time ASC"], max_results=50000,
    )
    by_parent: dict[str, list] = {}
    for child in children:
        by_parent.setdefault(child.data.tags.get(tags.MLFLOW_PARENT_RUN_ID, ""), []).append(child)
    versions_by_pipeline = _promoted_versions(client, model_name)
    production = _alias_version_or_none(client, model_name, alias)
    return [_row(parent, by_parent.get(parent.info.run_id, []), experiments, versions_by_pipeline, production,
                 metric) for parent in parents]


def _row(parent, kids: list, experiments: dict[str, str], versions_by_pipeline: dict[str, str],
         production: str | None, metric: str) -> PipelineRunRow:
    pipeline_id = parent.data.tags.get(tags.PIPELINE_RUN_ID, "")
    trained = [k.data.metrics[metric] for k in kids
               if k.data.tags.get(tags.STAGE) == TRAIN_STAGE and k.info.status == "FINISHED"
               and metric in k.data.metrics and math.isfinite(k.data.metrics[metric])]
    report_runs = [k for k in kids if k.data.tags.get(tags.STAGE) == REPORT_STAGE and k.info.status == "FINISHED"]
    version = versions_by_pipeline.get(pipeline_id, "")
    started = parent.info.start_time
    return PipelineRunRow(
        run_id=parent.info.run_id,
        pipeline_run_id=pipeline_id,
        experiment=experiments.get(parent.info.experiment_id, parent.info.experiment_id),
        started=datetime.fromtimestamp(started / 1000, timezone.utc) if started else None,
        status=parent.info.status,
        notebooks_ok=sum(k.info.status == "FINISHED" for k in kids),
        notebooks_failed=sum(k.info.status in ("FAILED", "KILLED") for k in kids),
        best_metric=metric,
        best_value=min(trained) if trained else None,
        promoted_version=version,
        is_production=bool(version) and version == production,
        synthetic=parent.data.tags.get(tags.SYNTHETIC_DATA) == tags.flag(True),
        # The report is attached to the parent run too; only a finished report run made one.
        report_run_id=parent.info.run_id if report_runs else None,
        notebooks=tuple(NotebookLink(k.info.run_name, k.data.tags.get(tags.STAGE, ""), k.info.status,
                                     k.info.run_id, notebook_html_artifact(k)) for k in kids if k.info.run_name),
        trials=sum(tags.SEARCH_TRIAL in k.data.tags for k in kids),
    )


def _promoted_versions(client, model_name: str) -> dict[str, str]:
    """pipeline run id -> the version of ``model_name`` that run promoted (the latest, if several)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException as exc:
        if is_store_failure(exc):
            raise
        return {}
    promoted: dict[str, str] = {}
    for v in sorted(versions, key=lambda v: int(v.version)):
        pipeline_id = (v.tags or {}).get(tags.PIPELINE_RUN_ID)
        if pipeline_id:
            promoted[pipeline_id] = str(v.version)
    return promoted


def _alias_version_or_none(client, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if is_store_failure(exc):
            raise
        return None
