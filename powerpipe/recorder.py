"""What a pipeline run records: its parent MLflow run and tags, each step's result, summary.json.

The recorder owns the tag schema of a pipeline run (names from ``tags``) and the results list;
the pipeline only says what happened.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import paths, tags
from .fsutil import atomic_write_text

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED, CACHED, KILLED = "ok", "failed", "skipped", "cached", "killed"
DONE = (OK, CACHED)
RUN_STATUS = {OK: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}


@dataclass
class StepResult:
    """One notebook execution (a grid point, or a single-notebook stage) as summary.json lists it."""

    stage: str
    notebook: str
    parameters: dict[str, Any]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    output_notebook: str | None = None
    seconds: float = 0.0
    error: str | None = None
    # Not in summary.json: the name of the execution, and the earlier run a cached result reuses.
    label: str = field(default="", repr=False, compare=False)
    cached_run: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("label", "cached_run")}


def new_pipeline_run_id() -> str:
    """UTC time to the millisecond, then random: run folders sort in the order the runs started."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


def git_commit(root: Path = paths.PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def display_path(path: Path) -> str:
    return str(path.relative_to(paths.PROJECT_ROOT)) if path.is_relative_to(paths.PROJECT_ROOT) else str(path)


class RunRecorder:
    """The parent MLflow run of one pipeline execution, its children's tags, its results and summary."""

    def __init__(self, client, experiment_id: str, run_id: str, run_dir: Path, source,
                 config_path: Path, on_step: Callable[[StepResult], None] | None = None):
        from . import tracking

        self.client, self.experiment_id, self.run_id, self.run_dir = client, experiment_id, run_id, run_dir
        self.source = source
        self.on_step = on_step or (lambda result: None)
        self.commit = git_commit()
        self.started = datetime.now(timezone.utc)
        self.results: list[StepResult] = []
        self._lock = threading.Lock()
        self.parent_run_id = client.create_run(experiment_id, run_name=f"pipeline {run_id}", tags={
            tags.KIND: tags.KIND_PIPELINE,
            tags.PIPELINE_RUN_ID: run_id,
            tags.CONFIG: str(config_path),
            tags.DATA_SOURCE: source.source,
            tags.DATA_SHA256: source.sha256,
            tags.SYNTHETIC_DATA: tags.flag(source.synthetic),
            tags.OUTPUTS: str(run_dir),
            tags.MLFLOW_GIT_COMMIT: self.commit,
            **tracking.runner_tags(),
        }).info.run_id

    def child_tags(self, step, notebook_sha256: str, data_path: Path, data_sha256: str, output: Path) -> dict:
        """The tags of a notebook execution's run (the runner adds its own host and pid)."""
        return {
            tags.MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            tags.KIND: tags.KIND_NOTEBOOK,
            tags.STAGE: step.stage,
            tags.NOTEBOOK: step.notebook.name,
            tags.NOTEBOOK_SHA256: notebook_sha256,
            tags.PIPELINE_RUN_ID: self.run_id,
            tags.DATA_SHA256: data_sha256,
            tags.DATA_PATH: str(data_path),
            tags.SYNTHETIC_DATA: tags.flag(self.source.synthetic),
            tags.PARAMETERS: json.dumps(step.shown, sort_keys=True, default=str),
            tags.OUTPUT_NOTEBOOK: str(output),
            tags.MLFLOW_GIT_COMMIT: self.commit,
            tags.MLFLOW_SOURCE_NAME: display_path(step.notebook),
        }

    # -- results ------------------------------------------------------------------------------------
    def record(self, result: StepResult) -> StepResult:
        with self._lock:
            self.results.append(result)
        self.on_step(result)
        return result

    def forget(self, result: StepResult) -> None:
        """A cached result that turned out unusable (its output is gone): the step runs after all."""
        with self._lock:
            self.results.remove(result)

    def skip(self, step, reason: str) -> StepResult:
        return self.record(StepResult(step.stage, step.notebook.name, step.shown, SKIPPED, error=reason,
                                      label=step.label))

    def tag_run(self, run_id: str, values: dict[str, str]) -> None:
        for name, value in values.items():
            self.client.set_tag(run_id, name, value)

    # -- the end --------------------------------------------------------------------------------------
    def end_running_children(self, reason: str) -> None:
        """Mark this pipeline's child runs still RUNNING as KILLED, with ``reason`` as their error."""
        for run in self.client.search_runs([self.experiment_id],
                                           f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = "
                                           f"'{self.parent_run_id}'"):
            log.warning("run %s (%s) was left RUNNING: marked KILLED", run.info.run_id, run.info.run_name)
            self.client.set_tag(run.info.run_id, tags.ERROR, reason)
            self.client.set_terminated(run.info.run_id, "KILLED")

    def summary(self, status: str, order: list[str], data: dict, promotion, report: str | None) -> dict:
        """summary.json's content; results in pipeline order (``order``: step labels), not completion order."""
        rank = {label: i for i, label in enumerate(order)}
        results = sorted(self.results, key=lambda r: rank.get(r.label, len(rank)))
        return {
            "pipeline_run_id": self.run_id,
            "mlflow_parent_run_id": self.parent_run_id,
            "status": status,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": data,
            "grid_points": [r.as_dict() for r in results],
            "promoted": promotion.as_dict() if promotion else None,
            "report": report,
        }

    def finish(self, summary: dict) -> Path:
        """Write summary.json (whole or not at all), attach it, end the parent run with the pipeline's status."""
        path = self.run_dir / tags.SUMMARY_ARTIFACT
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        self.client.log_artifact(self.parent_run_id, str(path))
        self.client.set_terminated(self.parent_run_id, RUN_STATUS.get(summary["status"], "KILLED"))
        return path

    def relative(self, path: str | os.PathLike) -> str:
        return os.path.relpath(path, self.run_dir)
