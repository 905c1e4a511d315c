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
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from powerpipe.core import paths, tags
from powerpipe.execution.results import StepResult  # noqa: F401 - read from here by the runner too
from powerpipe.core.constants import CACHED, DONE, FAILED, KILLED, OK, PRUNED, SETTLED, SKIPPED  # noqa: F401 - re-read by the runner
from powerpipe.core.fsutil import atomic_write_text

log = logging.getLogger(__name__)

# Step results are small and rewritten from the MLflow store if lost: no fsync per step.
_NO_FSYNC = {"fsync": False}
RUN_STATUS = {OK: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}


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


STATE_DIR = ".state"  # in the run folder: what a later process needs to go on with this pipeline run
RESULTS_DIR = "results"
SEARCHES_DIR = "searches"


def _read_kept(folder: Path) -> dict[str, dict]:
    """What an earlier process of this pipeline run kept in ``folder`` (one JSON file each, by name)."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


class RunRecorder:
    """The parent MLflow run of one pipeline execution, its children's tags, its results and summary.

    Each result is also kept as a file in the run folder's ``.state/results/``, so that a pipeline run
    driven stage by stage from separate processes (a scheduler's tasks) ends with one summary.
    """

    def __init__(self, client, experiment_id: str, run_id: str, run_dir: Path, source,
                 parent_run_id: str, started: datetime, on_step: Callable[[StepResult], None] | None = None,
                 commit: str | None = None):
        self.client, self.experiment_id, self.run_id, self.run_dir = client, experiment_id, run_id, run_dir
        self.source, self.parent_run_id, self.started = source, parent_run_id, started
        self.on_step = on_step or (lambda result: None)
        self.commit = commit or git_commit()
        self._lock = threading.Lock()
        self.results_dir = run_dir / STATE_DIR / RESULTS_DIR
        self.results = [StepResult(**kept) for kept in _read_kept(self.results_dir).values()]
        self.searches: dict[str, dict] = _read_kept(run_dir / STATE_DIR / SEARCHES_DIR)

    @classmethod
    def create(cls, client, experiment_id: str, run_id: str, run_dir: Path, source, config_path: Path,
               on_step=None, runner_owned: bool = True) -> "RunRecorder":
        """A new parent run. ``runner_owned``: tagged with this process, so that a later runner marks it
        KILLED if this one dies; a scheduled pipeline run outlives the process that started it."""
        from powerpipe.tracking import store as tracking

        commit = git_commit()
        parent = client.create_run(experiment_id, run_name=f"pipeline {run_id}", tags={
            tags.KIND: tags.KIND_PIPELINE,
            tags.PIPELINE_RUN_ID: run_id,
            tags.CONFIG: str(config_path),
            tags.DATA_SOURCE: source.source,
            tags.DATA_SHA256: source.sha256,
            tags.SYNTHETIC_DATA: tags.flag(source.synthetic),
            tags.OUTPUTS: str(run_dir),
            tags.MLFLOW_GIT_COMMIT: commit,
            **(tracking.runner_tags() if runner_owned else {}),
        })
        return cls(client, experiment_id, run_id, run_dir, source, parent.info.run_id,
                   datetime.now(timezone.utc), on_step, commit)

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
            **step.extra_tags,
        }

    # -- results ------------------------------------------------------------------------------------
    def record(self, result: StepResult) -> StepResult:
        """Add (or, for a step run again, replace) a step's result."""
        with self._lock:
            self.results = [r for r in self.results if r.label != result.label] + [result]
        self._keep(result)
        self.on_step(result)
        return result

    def update(self, result: StepResult) -> None:
        """A recorded result changed after the fact (a process step whose file is missing: failed)."""
        self._keep(result)

    def forget(self, result: StepResult) -> None:
        """A cached result that turned out unusable (its output is gone): the step runs after all."""
        with self._lock:
            self.results.remove(result)
        (self.results_dir / f"{result.label}.json").unlink(missing_ok=True)

    def _keep(self, result: StepResult) -> None:
        if result.label:
            text = json.dumps({**result.as_dict(), "label": result.label}, indent=1, default=str)
            atomic_write_text(self.results_dir / f"{result.label}.json", text, **_NO_FSYNC)

    def add_search(self, search: dict) -> None:
        """A search's entry in summary.json (``searches``), kept as results are."""
        with self._lock:
            self.searches[search["label"]] = search
        atomic_write_text(self.run_dir / STATE_DIR / SEARCHES_DIR / f"{search['label']}.json",
                          json.dumps(search, indent=1, default=str), **_NO_FSYNC)

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

    def summary(self, status: str, order: list[str], data: dict, promotion, report: str | None,
                error: str | None = None, watch: dict | None = None) -> dict:
        """summary.json's content; results in pipeline order (``order``: step labels; a search's trials
        where the search is, by number), not completion order. ``watch``: ``as_of``, ``data_period``,
        ``monitoring`` and ``alerts`` (``run.watch``)."""
        from powerpipe.spec.search_space import trial_position

        rank = {label: i for i, label in enumerate(order)}
        results = sorted(self.results, key=lambda r: trial_position(r.label, rank))
        searches = sorted(self.searches.values(), key=lambda s: rank.get(s["label"], len(rank)))
        return {
            "pipeline_run_id": self.run_id,
            "mlflow_parent_run_id": self.parent_run_id,
            "status": status,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": data,
            **(watch or {}),
            "grid_points": [r.as_dict() for r in results],
            "promoted": promotion.as_dict() if promotion else None,
            "report": report,
            "error": error,  # what stopped the whole run (a full disk, an unreachable store), if anything
            **({"searches": searches} if searches else {}),
        }

    def finish(self, summary: dict, store: bool = True) -> Path:
        """Write summary.json (whole or not at all), then, if the ``store`` answers, attach it and end the
        parent run with the pipeline's status."""
        from powerpipe.core.fsutil import disk_full_guard

        path = self.run_dir / tags.SUMMARY_ARTIFACT
        with disk_full_guard(self.run_dir, writing=path):
            atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        if not store:
            return path
        self.client.log_artifact(self.parent_run_id, str(path))
        self.client.set_terminated(self.parent_run_id, RUN_STATUS.get(summary["status"], "KILLED"))
        return path

    def relative(self, path: str | os.PathLike) -> str:
        return os.path.relpath(path, self.run_dir)
