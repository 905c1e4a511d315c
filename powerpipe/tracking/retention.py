"""Retention: keep the newest N pipeline runs, remove the older ones, never what is still in use.

A pipeline run is its folder ``outputs/<pipeline-run-id>/`` and, in MLflow, its parent run and the
child runs tagged with its id (each with its artifacts and, in MLflow 3, its logged models, which
hold the model files). ``collect_garbage`` keeps the newest ``keep_runs`` (ids sort by start time)
and removes the others, except:

- a run behind any registered model version (the production model's among them), and its logged model;
- a run that a kept pipeline run reused from the cache (its summary.json lists it as ``cached``);
- a pipeline run still RUNNING (a live runner, or one on another machine).

A removed pipeline run that holds such a run is *pinned*: its folder (the data and notebooks the
model came from) and its parent run stay, its other child runs go. Runs are deleted through MLflow:
``MlflowClient.delete_run`` / ``delete_logged_model``, then ``mlflow gc`` removes them and their
artifacts for good (a local store); a tracking server keeps them in its ``deleted`` stage until its
operator runs ``mlflow gc`` there. The SQLite file keeps its size (SQLite reuses the freed pages).

A pipeline that registers a version every week pins a run folder every week. ``keep_versions`` bounds
that too: of each registered model only the newest ``keep_versions`` versions made by these pipeline
runs stay, besides any version an alias points at (``production``), the one that held it before (what
``rollback`` goes back to) and those named in ``also_keep`` (a replay's first model); the others are
deleted from the registry (the alias history, a tag on the registered model, keeps their moves), and
their runs are then removed like any other. A rollback to an older version needs it kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from powerpipe.core.constants import CACHED
from powerpipe.core import tags
from powerpipe.core.exceptions import TrackingError
from powerpipe.core.fsutil import MB, tree_bytes

log = logging.getLogger(__name__)

# New ids are YYYYMMDD-HHMMSS-mmm-xxxx; older ones had no milliseconds.
PIPELINE_RUN_ID = re.compile(r"^\d{8}-\d{6}(?:-\d{3})?-[0-9a-f]{4,}$")
_PAGE = 1000


@dataclass
class GcReport:
    """What ``collect_garbage`` removed (or, with ``dry_run``, would remove), and what it kept and why."""

    keep_runs: int
    dry_run: bool = False
    kept: list[str] = field(default_factory=list)  # pipeline run ids kept (the newest, and RUNNING ones)
    removed: list[str] = field(default_factory=list)  # pipeline run ids removed whole
    pinned: dict[str, str] = field(default_factory=dict)  # old pipeline run id -> why its folder and parent stay
    deleted_runs: list[str] = field(default_factory=list)  # MLflow run ids deleted
    deleted_models: list[str] = field(default_factory=list)  # MLflow logged model ids deleted
    deleted_versions: list[str] = field(default_factory=list)  # registered versions deleted ("Name/7")
    protected_runs: dict[str, str] = field(default_factory=dict)  # run id -> why it is never deleted
    removed_paths: list[Path] = field(default_factory=list)  # folders removed (run folders, artifact folders)
    bytes_freed: int = 0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"retention: keeping the newest {self.keep_runs} pipeline run(s): "
                 f"{', '.join(self.kept[:self.keep_runs]) if self.kept else 'none found'}"]
        if not self.removed and not self.pinned:
            lines.append("retention: nothing older to remove")
        for run_id in self.removed:
            lines.append(f"  {verb} pipeline run {run_id}")
        for run_id, why in self.pinned.items():
            lines.append(f"  kept folder and parent run of {run_id}: {why}")
        if self.deleted_versions:
            lines.append(f"retention: {verb} registered model version(s) {', '.join(self.deleted_versions)}")
        lines.append(f"retention: {verb} {len(self.deleted_runs)} MLflow run(s) and {len(self.deleted_models)} "
                     f"logged model(s); {'would free' if self.dry_run else 'freed'} {self.bytes_freed / MB:.1f} MB")
        lines.extend(f"retention: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class _PipelineRun:
    run_id: str  # the pipeline run id (folder name)
    folder: Path | None = None
    parent: object | None = None  # the parent MLflow Run, if the store has it
    children: list = field(default_factory=list)  # MLflow Runs tagged with this pipeline run id (not the parent)

    @property
    def sort_key(self) -> tuple:
        start = self.parent.info.start_time if self.parent is not None else 0
        return self.run_id[:15], start or 0, self.run_id


def collect_garbage(outputs_dir: str | os.PathLike, tracking_uri: str, keep_runs: int,
                    dry_run: bool = False, keep_versions: int | None = None,
                    also_keep: frozenset[tuple[str, str]] = frozenset()) -> GcReport:
    """Keep the newest ``keep_runs`` pipeline runs; remove the older ones' folders, runs and artifacts.

    Never removes a run behind a registered model version, a run a kept pipeline run reused from the
    cache, or a pipeline run still RUNNING. With ``keep_versions``, first deletes the registered
    versions beyond the newest ``keep_versions`` of each model that no alias points at and that are not
    in ``also_keep`` ((name, version) pairs). Returns what it removed and the bytes it freed.
    """
    import mlflow

    from powerpipe.tracking import store as tracking

    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1, got {keep_runs}")
    if keep_versions is not None and keep_versions < 1:
        raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
    outputs_dir = Path(outputs_dir).resolve()
    report = GcReport(keep_runs=keep_runs, dry_run=dry_run)
    store_exists = _store_exists(tracking_uri)
    if store_exists:
        tracking.check_reachable(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri) if store_exists else None

    with tracking.store_guard(tracking_uri):
        runs = _pipeline_runs(outputs_dir, client)
        ordered = sorted(runs.values(), key=lambda r: r.sort_key, reverse=True)
        kept, old = ordered[:keep_runs], ordered[keep_runs:]
        for run in list(old):
            if run.parent is not None and run.parent.info.status == "RUNNING" and _maybe_alive(run.parent):
                old.remove(run)
                kept.append(run)
                report.notes.append(f"pipeline run {run.run_id} is still RUNNING: kept")
        report.kept = [run.run_id for run in kept]
        ours = {r.info.run_id for run in runs.values() for r in ([run.parent] if run.parent else []) + run.children}
        versions = _every(client.search_model_versions) if client is not None else []  # listed once, used twice
        retired = _retired_versions(client, versions, keep_versions, also_keep, ours) if keep_versions else []
        report.deleted_versions = [f"{v.name}/{v.version}" for v in retired]
        protected_runs, protected_models = _protected(client, versions, kept, report,
                                                      skip={(v.name, str(v.version)) for v in retired})
        report.protected_runs = protected_runs

        doomed_runs, doomed_folders = [], []
        for run in old:
            mlflow_runs = ([run.parent] if run.parent is not None else []) + run.children
            held = [r for r in mlflow_runs if r.info.run_id in protected_runs]
            if held:
                report.pinned[run.run_id] = "; ".join(
                    f"run {r.info.run_id} ({r.info.run_name}) {protected_runs[r.info.run_id]}" for r in held)
                doomed_runs += [r for r in run.children if r.info.run_id not in protected_runs]
            else:
                report.removed.append(run.run_id)
                doomed_runs += mlflow_runs
                if run.folder is not None:
                    doomed_folders.append(run.folder)
        models = _logged_models(client, {r.info.run_id for r in doomed_runs}, protected_models)

        local_paths = doomed_folders + _local_artifact_paths(doomed_runs, models)
        sizes_before = {path: tree_bytes(path) for path in local_paths}
        report.deleted_runs = [r.info.run_id for r in doomed_runs]
        report.deleted_models = [m.model_id for m in models]
        if dry_run:
            report.bytes_freed = sum(sizes_before.values())
            return report
        for version in retired:
            if client.get_model_version(version.name, version.version).aliases:  # a rollback since: it stays
                report.deleted_versions.remove(f"{version.name}/{version.version}")
                continue
            client.delete_model_version(version.name, version.version)
        if doomed_runs or models:
            for run in doomed_runs:
                client.delete_run(run.info.run_id)
            for model in models:
                client.delete_logged_model(model.model_id)
            _purge(tracking_uri, report)
    for folder in doomed_folders:
        shutil.rmtree(folder, ignore_errors=True)
    for path in local_paths:
        _remove_empty_parents(path, stop=outputs_dir)
    report.removed_paths = [path for path in local_paths if not path.exists()]
    report.bytes_freed = sum(size - tree_bytes(path) for path, size in sizes_before.items())
    log.info("retention: removed %d pipeline run(s), %d MLflow run(s), %d logged model(s); freed %.1f MB",
             len(report.removed), len(report.deleted_runs), len(report.deleted_models), report.bytes_freed / MB)
    return report


# -- what there is -----------------------------------------------------------------------------------

def _store_exists(uri: str) -> bool:
    """A local SQLite store that was never created has no runs to remove (and is not created here)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    return True


def _search_runs(client, experiment_ids: list[str], filter_string: str) -> list:
    found, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=_PAGE, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _experiment_ids(client) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def _pipeline_runs(outputs_dir: Path, client) -> dict[str, _PipelineRun]:
    """Every pipeline run, from its folder, its parent MLflow run, or both; with its child runs."""
    runs: dict[str, _PipelineRun] = {}
    if outputs_dir.is_dir():
        for entry in outputs_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink() and PIPELINE_RUN_ID.match(entry.name):
                runs[entry.name] = _PipelineRun(entry.name, folder=entry)
    if client is None:
        return runs
    experiments = _experiment_ids(client)
    if not experiments:
        return runs
    parents = {}
    for parent in _search_runs(client, experiments, tags.equals(tags.KIND, tags.KIND_PIPELINE)):
        run_id = parent.data.tags.get(tags.PIPELINE_RUN_ID)
        if run_id:
            runs.setdefault(run_id, _PipelineRun(run_id)).parent = parent
            parents[parent.info.run_id] = run_id
    for kind in (tags.KIND_NOTEBOOK, tags.KIND_MONITORING):  # notebook runs, and each run's monitoring run
        for child in _search_runs(client, experiments, tags.equals(tags.KIND, kind)):
            run_id = child.data.tags.get(tags.PIPELINE_RUN_ID) or parents.get(child.data.tags.get(tags.MLFLOW_PARENT_RUN_ID))
            if run_id in runs:
                runs[run_id].children.append(child)
    return runs


def _maybe_alive(parent) -> bool:
    """A RUNNING parent is left alone unless its runner was on this machine and is gone."""
    from powerpipe.tracking import store as tracking

    run_tags = parent.data.tags
    if run_tags.get(tags.RUNNER_HOST) != socket.gethostname():
        return True
    return tracking._runner_alive(run_tags)


def _retired_versions(client, all_versions: list, keep_versions: int, also_keep: frozenset[tuple[str, str]],
                      ours: set[str]) -> list:
    """The registered versions made from the pipeline runs' own runs (``ours``: never another project's
    model in a shared store) beyond the newest ``keep_versions`` of each model, except those an alias
    points at, the holder before each alias's current one (what ``rollback`` goes back to), and
    ``also_keep``."""
    from powerpipe.tracking.alias_history import previous_holder

    if client is None:
        return []
    retired = []
    for model in _every(client.search_registered_models):
        spared = {str(version) for version in (model.aliases or {}).values()}
        spared |= {str(before) for alias, version in (model.aliases or {}).items()
                   if (before := previous_holder(client, model.name, alias, str(version)))}
        versions = sorted((v for v in all_versions if v.name == model.name and v.run_id in ours),
                          key=lambda v: int(v.version), reverse=True)
        retired += [v for v in versions[keep_versions:]
                    if str(v.version) not in spared and (model.name, str(v.version)) not in also_keep]
    return retired


def _every(search, filter_string: str | None = None) -> list:
    """Every result of an MLflow client search, page after page."""
    found, token = [], None
    while True:
        page = search(filter_string, max_results=_PAGE, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _protected(client, versions: list, kept: list[_PipelineRun], report: GcReport,
               skip: set[tuple[str, str]] = frozenset()) -> tuple[dict[str, str], set[str]]:
    """Run ids never deleted (with why), and the logged model ids behind registered versions (those in
    ``skip``, about to be deleted, protect nothing)."""
    protected: dict[str, str] = {}
    models: set[str] = set()
    if client is not None:
        for version in versions:
            if (version.name, str(version.version)) in skip:
                continue
            if version.run_id:
                protected.setdefault(version.run_id, f"is behind model {version.name} version {version.version}")
            evaluated = (version.tags or {}).get(tags.EVALUATED_RUN)
            if evaluated and evaluated != version.run_id:  # a refit's scores, read by the report and dashboard
                protected.setdefault(evaluated, f"scored model {version.name} version {version.version}")
            if getattr(version, "model_id", None):
                models.add(version.model_id)
    for run in kept:
        for point in _summary(run, client).get("grid_points", []):
            if point.get("status") == CACHED and point.get("mlflow_run_id"):
                protected.setdefault(point["mlflow_run_id"], f"was reused by kept pipeline run {run.run_id}")
    return protected, models


def _summary(run: _PipelineRun, client) -> dict:
    """A pipeline run's summary.json: from its folder, else the copy attached to its parent run."""
    if run.folder is not None and (run.folder / tags.SUMMARY_ARTIFACT).is_file():
        try:
            return json.loads((run.folder / tags.SUMMARY_ARTIFACT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("retention: %s is unreadable", run.folder / tags.SUMMARY_ARTIFACT)
    if run.parent is not None and client is not None:
        import mlflow

        try:
            text = mlflow.artifacts.load_text(f"{run.parent.info.artifact_uri.rstrip('/')}/{tags.SUMMARY_ARTIFACT}")
            return json.loads(text)
        except Exception as exc:  # noqa: BLE001 - no summary (a run killed early): nothing reused
            log.debug("retention: no summary for %s: %s", run.run_id, exc)
    return {}


def _logged_models(client, run_ids: set[str], protected_models: set[str]) -> list:
    """The logged models (MLflow 3: where model files live) made by ``run_ids``, except protected ones."""
    if client is None or not run_ids:
        return []
    experiments = _experiment_ids(client)
    found, token = [], None
    while True:
        page = client.search_logged_models(experiments, max_results=_PAGE, page_token=token)
        found.extend(m for m in page if m.source_run_id in run_ids and m.model_id not in protected_models)
        token = page.token
        if not token:
            return found


def _local_path(uri: str | None) -> Path | None:
    if not uri:
        return None
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" and os.path.isabs(uri):
        return Path(uri)
    return None


def _local_artifact_paths(runs: list, models: list) -> list[Path]:
    """Local folders of the artifacts of ``runs`` and ``models`` (for a tracking server: none known)."""
    paths = []
    for run in runs:
        path = _local_path(run.info.artifact_uri)
        if path is not None:
            paths.append(path)
    for model in models:
        path = _local_path(model.artifact_location)
        if path is not None:
            paths.append(path)
    return paths


# -- removing ------------------------------------------------------------------------------------------

def _purge(tracking_uri: str, report: GcReport) -> None:
    """Remove the deleted runs and logged models for good with ``mlflow gc`` (a local store), or say who can."""
    scheme = urllib.parse.urlsplit(tracking_uri).scheme
    if scheme in ("http", "https", "databricks"):
        report.notes.append("the tracking server keeps the deleted runs and their artifacts until its operator "
                            "runs `mlflow gc` there")
        return
    command = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", tracking_uri]
    if report.deleted_runs:
        command += ["--run-ids", ",".join(report.deleted_runs)]
    if report.deleted_models:
        command += ["--logged-model-ids", ",".join(report.deleted_models)]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TrackingError(f"mlflow gc could not remove the deleted runs (they stay in MLflow's deleted stage, "
                            f"`mlflow gc` removes them later): {last}")


def _remove_empty_parents(path: Path, stop: Path) -> None:
    """After ``mlflow gc`` emptied ``.../<run id>/artifacts``, remove the empty folders it left (up to ``stop``)."""
    for folder in (path, *path.parents):
        if folder == stop or stop not in folder.parents:
            return
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone already
            if folder.exists():
                return
