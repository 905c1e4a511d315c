"""A pipeline run assembled: every check that can fail before anything is logged, then the run folder,
the parent run, the executor and the ``Pipeline`` (``prepare``); ``run_pipeline`` runs it whole.

``plan`` is the same steps with placeholder runtime values (``--dry-run``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from powerpipe.core.exceptions import ConfigError
from powerpipe.execution.executor import make_executor
from powerpipe.execution.results import StepResult
from powerpipe.forecast import data as data_module
from powerpipe.run.options import RunOptions
from powerpipe.run.pipeline import Pipeline
from powerpipe.run.recorder import RunRecorder, new_pipeline_run_id
from powerpipe.run.runlock import RunLock
from powerpipe.run.step_runner import StepRunner
from powerpipe.spec.config import PipelineConfig, load_config, validate_parameters
from powerpipe.spec.parameterize import notebook_hash
from powerpipe.spec.steps import Runtime, Step, build_steps, without_figures
from powerpipe.tracking import cache, store as tracking

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "load_and_check", "plan", "prepare", "run_pipeline"]


def load_and_check(config_path: Path) -> PipelineConfig:
    config = load_config(config_path)
    validate_parameters(config)
    return config


def plan(config: PipelineConfig) -> list[tuple[Step, dict]]:
    """Every notebook execution and its parameters, runtime values as placeholders (``--dry-run``)."""
    runtime = Runtime.planned(config)
    return [(step, step.parameters(runtime)) for step in build_steps(config)]


def prepare(options, on_step=None, scheduled: bool = False, executor=None):
    """Every check that can fail before anything is logged, then the run folder, parent run and executor.

    ``scheduled``: a pipeline run driven stage by stage (``stagewise``): no executor yet (each stage
    starts its own), and a parent run that outlives this process. ``executor``: one to use instead of a
    new one (a replay's, shared by its weeks so that kernels stay warm; the caller owns it).
    """
    import mlflow

    config = load_and_check(options.config)
    if options.data == "opsd" and config.process is None:
        raise ConfigError(f"{config.path}: --data opsd builds the data in the process stage, but the config "
                          "has no stages.process")
    # Data is checked now; synthetic data is generated only once the run folder exists, into it.
    source = None if options.data == "synthetic" else data_module.resolve(
        options.data, generated_dir=Path(options.outputs).resolve() / "data")
    uri = tracking.tracking_uri(options.tracking_uri, options.outputs)
    if options.executor == "dask":
        from powerpipe.execution.dask_cluster import check_tracking_uri

        check_tracking_uri(uri, options.scheduler)
    tracking.check_reachable(uri)
    from powerpipe.search.study import check_storage

    check_storage(config, uri, getattr(options, "search_storage", None))  # every search has a home for its study
    steps = build_steps(config)
    if not getattr(options, "figures", True):  # the training notebooks that take ``figures`` draw none
        steps = [without_figures(step) if step.stage == "train" else step for step in steps]
    run_id = new_pipeline_run_id()
    lock = RunLock(options.outputs)  # one pipeline run at a time per outputs folder
    lock.acquire(run_id, wait=options.if_running == "wait", scheduled=scheduled)
    run_dir = Path(options.outputs).resolve() / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except BaseException:
        lock.release(run_id)
        raise
    notebooks = [spec.notebook for spec in config.notebook_specs()]
    shared_executor, executor = executor, None
    try:
        if source is None:
            source = data_module.resolve(options.data, generated_dir=run_dir / "data")
        if getattr(options, "as_of", None):  # the run sees only hours before it: its input cut into the run folder
            from powerpipe.run.watch import cut_source

            source = cut_source(source, options.as_of, run_dir)
        if source.synthetic:
            log.warning("SYNTHETIC DATA: %s was generated, not measured; metrics say nothing about the real grid",
                        source.path)
        if shared_executor is not None:
            executor = shared_executor
        elif not scheduled:  # a cluster that cannot see the run folder fails here, before any run is logged
            executor = executor_for(options, notebooks, uri, run_dir, source, planned=planned_notebooks(config, steps))
        tracking.enable_sqlite_wal(uri)
        client = mlflow.MlflowClient(uri)
        experiment_id = tracking.ensure_experiment(client, config.experiment, uri)
        tracking.mark_abandoned_runs(client, experiment_id)
        cached_runs = {} if options.force or scheduled else cache.finished_runs_by_key(client, experiment_id)
        recorder = RunRecorder.create(client, experiment_id, run_id, run_dir, source, config.path, on_step,
                                      runner_owned=not scheduled)
    except BaseException:
        if executor is not None:
            executor.kill()
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing logged yet: leave no empty run folder
        lock.release(run_id)
        raise
    runner = StepRunner(recorder, executor, uri, config.experiment, options.timeout or config.timeout,
                        notebook_hashes(notebooks), cached_runs)
    pipeline = Pipeline(config, steps, source, recorder, runner, force_promote=options.force_promote, options=options)
    pipeline.lock = lock
    pipeline.expected_seconds = last_durations(Path(options.outputs), exclude=run_id)
    return pipeline


def last_durations(outputs: Path, exclude: str = "", runs: int = 5) -> dict[str, float]:
    """Seconds per step label, each as the newest of the last ``runs`` runs of the outputs folder that ran it
    (a point served from the cache has no time): what ``longest_first`` orders the training points by.
    Empty when there is none; a summary.json that cannot be read is passed over."""
    summaries = sorted((p for p in Path(outputs).glob("*/summary.json") if p.parent.name != exclude),
                       key=lambda p: p.parent.name, reverse=True)[:runs]
    durations: dict[str, float] = {}
    for path in summaries:
        try:
            points = json.loads(path.read_text()).get("grid_points") or []
        except (OSError, ValueError, AttributeError):
            continue
        for point in points:
            if not isinstance(point, dict):
                continue
            seconds = point.get("seconds")
            if point.get("output_notebook") and isinstance(seconds, (int, float)) and seconds > 0:
                durations.setdefault(Path(point["output_notebook"]).stem, float(seconds))
    return durations


def executor_for(options, notebooks: list[Path], uri: str, run_dir: Path, source, jobs: int | None = None,
                 planned: int | None = None):
    return make_executor(options.executor, jobs=jobs or options.jobs, notebooks=notebooks, tracking_uri=uri,
                         reuse_kernels=options.reuse_kernels, scheduler=options.scheduler,
                         shared_paths=[run_dir, source.path, *notebooks], planned=planned)


def planned_notebooks(config: PipelineConfig, steps: list[Step]) -> int:
    """The notebooks a run declares: its steps (a search counts its trials) and the refit, if it may refit.
    (The production model's configuration retrained beside the grid is not counted: it is rare, and its
    kernel starts when it comes.)"""
    refit = config.promote is not None and config.promote.refit is not False
    return sum(step.executions for step in steps) + int(refit)


def notebook_hashes(notebooks: list[Path]) -> dict[Path, tuple[str, str]]:
    """Per notebook: its own SHA-256 and that of the package code it runs (taken once, up front)."""
    return {nb: (notebook_hash(nb), cache.notebook_code_sha256(nb)) for nb in notebooks}


def run_pipeline(options: RunOptions, on_step: Callable[[StepResult], None] | None = None,
                 on_start: Callable[[Pipeline, int], None] | None = None) -> dict:
    """Check everything, then run the whole pipeline; returns the summary (also in summary.json)."""
    pipeline = prepare(options, on_step)
    try:
        if on_start:
            on_start(pipeline, sum(step.executions for step in pipeline.steps))
        return pipeline.run()
    finally:
        pipeline.lock.release(pipeline.run_id)
