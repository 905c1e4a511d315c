"""Run a pipeline: process -> train (grids) -> compare -> promote -> report, each notebook an MLflow run.

Wiring only: what each stage computes lives in its notebook and in the small modules it imports.
Notebooks run on a pool of warm kernels (``--jobs`` at once). Failures are collected, never raised
past a stage: a failed grid point is recorded and the others go on; a stage that needs a failed one
is ``skipped``; a grid point whose inputs match an earlier FINISHED run is ``cached`` (reused, not
run again); one summary comes at the end.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import data as data_module
from . import paths
from .config import METRICS, GridPoint, NotebookSpec, PipelineConfig, load_config, validate_parameters

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED, CACHED, KILLED = "ok", "failed", "skipped", "cached", "killed"
DONE = (OK, CACHED)


@dataclass
class RunOptions:
    config: Path = paths.DEFAULT_CONFIG
    data: str = "auto"
    tracking_uri: str | None = None
    outputs: Path = paths.OUTPUTS_DIR
    jobs: int = os.cpu_count() or 1
    reuse_kernels: bool = True
    timeout: float | None = None  # overrides the config's
    force: bool = False  # run every grid point even when a cached run exists
    force_promote: bool = False
    progress: bool = True
    executor: str = "local"  # "local": a pool of warm kernels here; "dask": tasks on a Dask cluster
    scheduler: str | None = None  # Dask scheduler address; None with "dask": a LocalCluster of `jobs` workers


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


@dataclass
class PlannedStep:
    stage: str
    notebook: Path
    parameters: dict[str, Any]
    label: str


def plan(config: PipelineConfig) -> list[PlannedStep]:
    """Every notebook execution the pipeline would make, in order (runtime parameters as placeholders)."""
    steps = []
    if config.process:
        steps.append(PlannedStep("process", config.process.notebook,
                                 {**config.process.parameters, "input_path": "<data>", "output_path": "<run>/data"},
                                 config.process.name))
    for point in config.training_points():
        steps.append(PlannedStep("train", point.spec.notebook, {**point.parameters, "data_path": "<processed data>"},
                                 point.label))
    if config.compare:
        promote = config.promote
        steps.append(PlannedStep("compare", config.compare.notebook,
                                 {**config.compare.parameters, "parent_run_id": "<pipeline run>",
                                  "run_ids": "<training runs>", "metric": promote.metric if promote else "rmse",
                                  "goal": promote.goal if promote else "minimize"}, config.compare.name))
    if config.report:
        model = f"models:/{config.promote.model_name}/<version @{config.promote.alias}>"
        steps.append(PlannedStep("report", config.report.notebook,
                                 {**config.report.parameters, "model_uri": model, "data_path": "<processed data>",
                                  "synthetic_data": "<whether the data is synthetic>"}, config.report.name))
    return steps


def load_and_check(config_path: Path) -> PipelineConfig:
    config = load_config(config_path)
    validate_parameters(config)
    return config


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


@dataclass
class _Step:
    """What to execute for one result: the notebook, its full parameters, where its output goes."""

    spec: NotebookSpec
    parameters: dict[str, Any]  # everything passed to the notebook
    shown: dict[str, Any]  # what the summary and MLflow params show (no per-run paths)
    label: str
    folder: Path
    cache_parameters: dict[str, Any]  # what, besides notebook and data, decides the result
    render: bool = True
    inputs_sha256: str | None = None  # identity of its input data, if not the pipeline's data; "": unknown yet
    report_html: Path | None = None  # the report stage: where its code-free HTML goes


class Pipeline:
    """One execution of a pipeline config: owns the run folder, the parent MLflow run and the results."""

    def __init__(self, config: PipelineConfig, options: RunOptions, source: data_module.DataSource,
                 tracking_uri: str, on_step: Callable[[StepResult], None] | None = None):
        import mlflow

        from . import cache, tracking
        from .parameterize import notebook_hash

        self.config = config
        self.options = options
        self.source = source
        self.tracking_uri = tracking_uri
        self.timeout = options.timeout or config.timeout
        self.on_step = on_step or (lambda result: None)
        self.run_id = new_pipeline_run_id()
        self.run_dir = Path(options.outputs).resolve() / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=False)
        tracking.enable_sqlite_wal(tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri)
        self.experiment_id = tracking.ensure_experiment(self.client, config.experiment, tracking_uri)
        tracking.mark_abandoned_runs(self.client, self.experiment_id)
        self.cached_runs = {} if options.force else cache.finished_runs_by_key(self.client, self.experiment_id)
        self.commit = git_commit()
        self.notebook_hashes = {spec.notebook: notebook_hash(spec.notebook) for spec in config.notebook_specs()}
        self.results: list[StepResult] = []
        self._results_lock = threading.Lock()
        self.started = datetime.now(timezone.utc)
        self.data_path = source.path
        self.data_sha256 = source.sha256
        self.parent = self.client.create_run(
            self.experiment_id,
            run_name=f"pipeline {self.run_id}",
            tags={
                "powerpipe.kind": "pipeline",
                "powerpipe.pipeline_run_id": self.run_id,
                "powerpipe.config": str(config.path),
                "powerpipe.data_source": source.source,
                "powerpipe.data_sha256": source.sha256,
                "powerpipe.synthetic_data": str(source.synthetic).lower(),
                "powerpipe.outputs": str(self.run_dir),
                "mlflow.source.git.commit": self.commit,
                **tracking.runner_tags(),
            },
        )
        self.parent_run_id = self.parent.info.run_id
        self.pool = None

    # -- kernels --------------------------------------------------------------------------------
    def start_kernels(self) -> None:
        from . import kernels

        jobs = max(1, self.options.jobs)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        modules = kernels.notebook_imports([spec.notebook for spec in self.config.notebook_specs()])
        if self.options.executor == "dask":
            from .dask_executor import DaskExecutor

            self.pool = DaskExecutor(self.options.scheduler, jobs, modules, reuse_kernels=self.options.reuse_kernels)
            needed = [self.run_dir, self.source.path, *self.notebook_hashes]
            self.pool.check_paths([path for path in needed if Path(path).exists()])
            return
        warmup = kernels.warmup_code(modules, self.tracking_uri, threads)
        self.pool = LocalExecutor(
            kernels.KernelPool(jobs, kernels.thread_caps(threads), warmup, reuse=self.options.reuse_kernels))

    # -- one notebook -------------------------------------------------------------------------
    def run_step(self, step: _Step) -> StepResult:
        """Reuse a cached run, or execute the notebook on a pool kernel. Blocks until done."""
        from .cache import cache_key

        inputs = self.data_sha256 if step.inputs_sha256 is None else step.inputs_sha256
        key = cache_key(self.notebook_hashes[step.spec.notebook], step.cache_parameters, inputs) if inputs else ""
        cached = self.cached_runs.get(key) if key else None
        if cached is not None:
            result = self._cached_result(step, cached)
            if result is not None:
                self._record(result)
                return result
        result = self._execute(step, key)
        self._record(result)
        return result

    def task(self, step: _Step, key: str) -> "NotebookTask":
        from .tasks import NotebookTask

        spec = step.spec
        output = step.folder / f"{step.label}.ipynb"
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "powerpipe.kind": "notebook",
            "powerpipe.stage": spec.stage,
            "powerpipe.notebook": spec.notebook.name,
            "powerpipe.notebook_sha256": self.notebook_hashes[spec.notebook],
            "powerpipe.pipeline_run_id": self.run_id,
            "powerpipe.data_sha256": self.data_sha256,
            "powerpipe.data_path": str(self.data_path),
            "powerpipe.synthetic_data": str(self.source.synthetic).lower(),
            "powerpipe.parameters": json.dumps(step.shown, sort_keys=True, default=str),
            "powerpipe.output_notebook": str(output),
            "mlflow.source.git.commit": self.commit,
            "mlflow.source.name": _display(spec.notebook),
        }
        return NotebookTask(
            notebook=str(spec.notebook), stage=spec.stage, label=step.label, output_notebook=str(output),
            parameters=step.parameters, shown=step.shown, tags=tags, tracking_uri=self.tracking_uri,
            experiment_id=self.experiment_id, experiment_name=self.config.experiment, cache_key=key,
            timeout=self.timeout, render=step.render, report_html=str(step.report_html) if step.report_html else None,
        )

    def _execute(self, step: _Step, key: str) -> StepResult:
        """Run the step's task on the executor and turn its outcome into a result."""
        task = self.task(step, key)
        outcome = self.pool.run(task)
        if not outcome.ok:
            log.error("%s failed: %s\n  executed notebook: %s", step.label, outcome.error, outcome.output_notebook)
        result = StepResult(
            stage=step.spec.stage, notebook=step.spec.notebook.name, parameters=step.shown,
            status=OK if outcome.ok else FAILED, metrics=outcome.metrics, mlflow_run_id=outcome.run_id or None,
            output_notebook=os.path.relpath(outcome.output_notebook, self.run_dir), seconds=outcome.seconds,
            error=outcome.error,
        )
        result.label = step.label
        return result

    def _cached_result(self, step: _Step, run) -> StepResult | None:
        earlier = run.data.tags.get("powerpipe.output_notebook")
        metrics = {k: v for k, v in run.data.metrics.items() if k in METRICS}
        result = StepResult(
            stage=step.spec.stage, notebook=step.spec.notebook.name, parameters=step.shown, status=CACHED,
            metrics=metrics, mlflow_run_id=run.info.run_id,
            output_notebook=os.path.relpath(earlier, self.run_dir) if earlier and Path(earlier).exists() else None,
        )
        result.cached_run = run
        result.label = step.label
        return result

    def skip(self, stage: str, notebook: Path, parameters: dict[str, Any], reason: str) -> StepResult:
        result = StepResult(stage, notebook.name, parameters, SKIPPED, error=reason)
        self._record(result)
        return result

    def _record(self, result: StepResult) -> None:
        with self._results_lock:
            self.results.append(result)
        self.on_step(result)

    # -- stages -------------------------------------------------------------------------------
    def run_process(self) -> bool:
        spec = self.config.process
        if spec is None:
            return True
        processed = self.run_dir / "data" / paths.PROCESSED_DATA_NAME
        if self.source.source == "opsd":
            # Built from the raw OPSD files: the raw files' hashes (once downloaded) are the input's identity.
            from . import opsd

            parameters = {**spec.parameters, "input_path": None, "output_path": str(processed)}
            fingerprint = opsd.process_inputs_fingerprint(parameters)
            inputs = json.dumps(fingerprint, sort_keys=True) if fingerprint else ""
        else:
            parameters = {**spec.parameters, "input_path": str(self.source.path), "output_path": str(processed)}
            inputs = None
        step = _Step(spec, parameters, dict(spec.parameters), spec.name, self.run_dir / "process",
                     dict(spec.parameters), inputs_sha256=inputs)
        result = self.run_step(step)
        if result.status == CACHED:
            result = self._restore_cached_output(step, result, "powerpipe.processed_path", processed,
                                                 sha256_tag="powerpipe.processed_sha256")
        if result.status not in DONE:
            return False
        if not processed.is_file():
            result.status, result.error = FAILED, f"the process notebook wrote no file at {processed}"
            log.error("%s", result.error)
            return False
        self.data_path = processed
        self.data_sha256 = data_module.file_sha256(processed)
        if result.status == OK:
            self.client.set_tag(result.mlflow_run_id, "powerpipe.processed_path", str(processed))
            self.client.set_tag(result.mlflow_run_id, "powerpipe.processed_sha256", self.data_sha256)
            if step.inputs_sha256 == "":  # raw files downloaded just now: their hashes make the cache key
                from . import cache, opsd

                fingerprint = opsd.process_inputs_fingerprint(step.parameters)
                if fingerprint:
                    key = cache.cache_key(self.notebook_hashes[spec.notebook], step.cache_parameters,
                                          json.dumps(fingerprint, sort_keys=True))
                    self.client.set_tag(result.mlflow_run_id, cache.CACHE_KEY_TAG, key)
        self.client.set_tag(self.parent_run_id, "powerpipe.processed_data_sha256", self.data_sha256)
        return True

    def training_steps(self) -> list[_Step]:
        steps = []
        for point in self.config.training_points():
            steps.append(_Step(point.spec, {**point.parameters, "data_path": str(self.data_path)},
                               dict(point.parameters), point.label, self.run_dir / "train" / point.spec.name,
                               dict(point.parameters)))
        return steps

    def run_training(self, upstream_ok: bool) -> list[StepResult]:
        if not upstream_ok:
            skipped = []
            for point in self.config.training_points():
                skipped.append(self.skip("train", point.spec.notebook, point.parameters, "process stage failed"))
                skipped[-1].label = point.label
            return skipped
        return self._parallel([lambda step=step: self.run_step(step) for step in self.training_steps()])

    def _parallel(self, calls: list[Callable[[], StepResult]]) -> list[StepResult]:
        """Run calls at once (each waits on the kernel pool); results in call order."""
        from concurrent.futures import ThreadPoolExecutor

        if not calls:
            return []
        waiters = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="powerpipe-step")
        try:
            futures = [waiters.submit(call) for call in calls]
            return [_wait(future) for future in futures]
        except BaseException:
            self.pool.kill()  # first, so that no waiter is left waiting on a notebook (Ctrl-C)
            raise
        finally:
            waiters.shutdown(wait=False, cancel_futures=True)

    def compare_step(self, training: list[StepResult]) -> _Step | None:
        spec = self.config.compare
        if spec is None:
            return None
        promote = self.config.promote
        run_ids = sorted(r.mlflow_run_id for r in training if r.mlflow_run_id and r.status in DONE)
        shown = {**spec.parameters, "metric": promote.metric if promote else "rmse",
                 "goal": promote.goal if promote else "minimize"}
        parameters = {**shown, "parent_run_id": self.parent_run_id, "run_ids": run_ids}
        return _Step(spec, parameters, dict(spec.parameters), spec.name, self.run_dir / "compare",
                     {**shown, "run_ids": run_ids})

    def run_promote(self, training: list[StepResult]):
        from .promote import Candidate, promote

        if self.config.promote is None:
            return None
        candidates = [Candidate(r.mlflow_run_id, OK if r.status in DONE else r.status, r.metrics)
                      for r in training if r.mlflow_run_id]
        return promote(self.client, candidates, self.config.promote, self.run_id, self.data_path,
                       force=self.options.force_promote)

    def _promote_and_report(self, trained: list[StepResult]) -> None:
        self.promotion = self.run_promote(trained)
        self.report = self.run_report() if self.config.report else None

    def run_report(self) -> str | None:
        from . import tracking

        spec = self.config.report
        promote = self.config.promote
        alias_uri = f"models:/{promote.model_name}@{promote.alias}"
        try:
            version = tracking.describe_model(alias_uri, self.client)["version"]
        except Exception:  # noqa: BLE001 - no such model or alias yet
            self.skip("report", spec.notebook, spec.parameters, f"no model holds {alias_uri}")
            log.warning("report skipped: no model holds %s", alias_uri)
            return None
        # The version the alias points at now, pinned: the report and its cache key name the same model.
        model_uri = f"models:/{promote.model_name}/{version}"
        html = self.run_dir / "report" / "weekly_report.html"
        parameters = {**spec.parameters, "model_uri": model_uri, "data_path": str(self.data_path),
                      "synthetic_data": self.source.synthetic}
        step = _Step(spec, parameters, dict(spec.parameters), spec.name, self.run_dir / "report",
                     {**spec.parameters, "model": model_uri, "synthetic_data": self.source.synthetic},
                     render=False, report_html=html)
        result = self.run_step(step)
        if result.status == CACHED:
            result = self._restore_cached_output(step, result, "powerpipe.report_path", html)
        if result.status not in DONE:
            return None
        self.client.log_artifact(self.parent_run_id, str(html), artifact_path="report")
        return os.path.relpath(html, self.run_dir)

    def _restore_cached_output(self, step: _Step, result: StepResult, tag: str, target: Path,
                               sha256_tag: str | None = None) -> StepResult:
        """Copy a cached run's output file (named by its ``tag``) to ``target``; if it is gone or changed,
        run the step after all."""
        tags = result.cached_run.data.tags
        earlier = Path(tags.get(tag, ""))
        intact = earlier.is_file() and (sha256_tag is None or data_module.file_sha256(earlier) == tags.get(sha256_tag))
        if intact:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(earlier, target)
            return result
        log.info("%s: the output of cached run %s is gone; running it again", step.label, result.cached_run.info.run_id)
        with self._results_lock:
            self.results.remove(result)
        self.cached_runs.pop(tags.get("powerpipe.cache_key"), None)
        return self.run_step(step)

    # -- whole run ----------------------------------------------------------------------------
    def run(self) -> dict:
        status = KILLED
        self.promotion, self.report = None, None
        try:
            self.start_kernels()
            processed_ok = self.run_process()
            training = self.run_training(processed_ok)
            trained = [r for r in training if r.status in DONE]
            if not trained:
                for stage, spec in (("compare", self.config.compare), ("report", self.config.report)):
                    if spec is not None:
                        self.skip(stage, spec.notebook, spec.parameters, "no training run succeeded")
                if self.config.promote is not None:
                    log.warning("no training run succeeded: nothing promoted, report skipped")
            else:
                # compare needs only the training runs; promote and report go on beside it
                compare = self.compare_step(training)
                calls = [lambda: self.run_step(compare)] if compare else []
                calls.append(lambda: self._promote_and_report(trained))
                self._parallel(calls)
            status = OK if all(r.status in DONE for r in self.results) else FAILED
        finally:
            if status == KILLED:  # interrupted (Ctrl-C) or crashed: leave no run RUNNING
                self.abort()
            else:
                if self.pool is not None:
                    self.pool.close()
                # An attempt whose (Dask) worker died left its run RUNNING; the grid point's result is another run.
                self.end_running_children("left open when the pipeline ended (its worker died before the "
                                          "notebook finished; the grid point ran again or failed)")
            summary = self.summary(status, self.promotion, self.report)
            summary_path = self.run_dir / "summary.json"
            summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            self.client.log_artifact(self.parent_run_id, str(summary_path))
            self.client.set_terminated(self.parent_run_id, {OK: "FINISHED", FAILED: "FAILED"}.get(status, "KILLED"))
        return summary

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.kill()
        self.end_running_children("interrupted")

    def end_running_children(self, reason: str) -> None:
        """Mark this pipeline's child runs still RUNNING as KILLED, with ``reason`` as their error."""
        for run in self.client.search_runs([self.experiment_id],
                                           f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = "
                                           f"'{self.parent_run_id}'"):
            log.warning("run %s (%s) was left RUNNING: marked KILLED", run.info.run_id, run.info.run_name)
            self.client.set_tag(run.info.run_id, "powerpipe.error", reason)
            self.client.set_terminated(run.info.run_id, "KILLED")

    def _data_summary(self) -> dict:
        if self.source.source == "opsd":  # the data is what the process stage built, if it did
            path, sha256 = (self.data_path, self.data_sha256) if self.data_path.is_file() else (self.source.path, "")
        else:
            path, sha256 = self.source.path, self.source.sha256
        return {"path": os.path.relpath(path, self.run_dir), "sha256": sha256, "source": self.source.source}

    def ordered_results(self) -> list[StepResult]:
        """Results in pipeline order (stage, then the config's grid order), not in order of completion."""
        from .config import STAGES

        order = {label: i for i, label in enumerate(p.label for p in self.config.training_points())}
        return sorted(self.results, key=lambda r: (STAGES.index(r.stage), order.get(getattr(r, "label", ""), 0)))

    def summary(self, status: str, promotion, report: str | None) -> dict:
        return {
            "pipeline_run_id": self.run_id,
            "mlflow_parent_run_id": self.parent_run_id,
            "status": status,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": self._data_summary(),
            "grid_points": [r.as_dict() for r in self.ordered_results()],
            "promoted": promotion.as_dict() if promotion else None,
            "report": report,
        }


class LocalExecutor:
    """Runs notebook tasks on this machine's pool of warm kernels; ``DaskExecutor`` has the same methods."""

    def __init__(self, pool):
        self.pool = pool

    def run(self, task) -> "TaskOutcome":
        from .kernels import KernelError
        from .tasks import TaskOutcome, run_task

        try:
            return _wait(self.pool.submit(lambda kernel: run_task(task, kernel)))
        except KernelError as exc:  # no kernel could be started for it: this grid point fails
            return TaskOutcome(run_id="", ok=False, error=str(exc), output_notebook=task.output_notebook)

    def close(self) -> None:
        self.pool.close()

    def kill(self) -> None:
        self.pool.kill()


def _wait(future):
    """Wait for a future without blocking Ctrl-C."""
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            continue


def _display(path: Path) -> str:
    return str(path.relative_to(paths.PROJECT_ROOT)) if path.is_relative_to(paths.PROJECT_ROOT) else str(path)


def run_pipeline(options: RunOptions, on_step: Callable[[StepResult], None] | None = None,
                 on_start: Callable[["Pipeline", int], None] | None = None) -> dict:
    """Check everything, then run the whole pipeline; returns the summary (also in summary.json)."""
    from . import tracking

    config = load_and_check(options.config)
    if options.data == "opsd" and config.process is None:
        from .exceptions import ConfigError

        raise ConfigError(f"{config.path}: --data opsd builds the data in the process stage, but the config "
                          "has no stages.process")
    source = data_module.resolve(options.data)
    if source.synthetic:
        log.warning("SYNTHETIC DATA: %s was generated, not measured; metrics say nothing about the real grid",
                    source.path)
    uri = tracking.tracking_uri(options.tracking_uri, options.outputs)
    if options.executor == "dask":
        from .dask_executor import check_tracking_uri

        check_tracking_uri(uri, options.scheduler)
    tracking.check_reachable(uri)
    pipeline = Pipeline(config, options, source, uri, on_step=on_step)
    if on_start:
        on_start(pipeline, len(plan(config)))
    return pipeline.run()
