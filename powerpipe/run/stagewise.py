"""One pipeline run driven stage by stage from separate processes: an external scheduler's tasks.

``start`` checks everything and creates the run folder and the parent MLflow run, as a whole run
does, and keeps what later processes need in ``<run folder>/.state/pipeline.json``. ``run_stage``
runs one stage (or one training grid point) of it in a new process, exactly as the whole run would:
the same steps, MLflow child runs, cache keys and result entries. A search is one point
(``--point model_rf__search``): its whole study, its trials ``--jobs`` at once. ``finish`` records the steps that
never ran as skipped, writes summary.json and ends the parent run. A stage run again (a retried
task) replaces its earlier result; a grid point that already FINISHED is a cache hit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from powerpipe.tracking import cache, store as tracking
from powerpipe.forecast import data as data_module
from powerpipe.spec.config import SEARCH_SUFFIX, TRIAL_INFIX
from powerpipe.core.exceptions import ConfigError
from powerpipe.core.fsutil import atomic_write_text
from powerpipe.run.options import RunOptions
from powerpipe.run.pipeline import Pipeline
from powerpipe.run.session import load_and_check
from powerpipe.tracking.promotion import Promotion
from powerpipe.run.recorder import DONE, SETTLED, SKIPPED, STATE_DIR, RunRecorder
from powerpipe.run.runlock import RunLock
from powerpipe.run.step_runner import StepRunner
from powerpipe.core.constants import STAGES
from powerpipe.spec.steps import Runtime, build_steps

log = logging.getLogger(__name__)

STATE_FILE = "pipeline.json"
_OPTIONS = ("data", "jobs", "reuse_kernels", "timeout", "force", "force_promote", "executor", "scheduler",
            "search_storage", "as_of", "fail_on_alert")


def state_path(run_dir: Path) -> Path:
    return run_dir / STATE_DIR / STATE_FILE


def save_state(pipeline: Pipeline, options: RunOptions) -> None:
    """What a later process needs to go on with this pipeline run (written whole, after each change)."""
    recorder = pipeline.recorder
    state = {
        "pipeline_run_id": recorder.run_id,
        "parent_run_id": recorder.parent_run_id,
        "experiment_id": recorder.experiment_id,
        "started": recorder.started.isoformat(),
        "tracking_uri": pipeline.tracking_uri,
        "config": str(pipeline.config.path),
        "config_sha256": data_module.file_sha256(pipeline.config.path),
        "options": {name: getattr(options, name) for name in _OPTIONS},
        "source": {"path": str(pipeline.source.path), "sha256": pipeline.source.sha256,
                   "source": pipeline.source.source},
        "runtime": dataclasses.asdict(pipeline.runtime),
        "data_sha256": pipeline.data_sha256,
        "promotion": dataclasses.asdict(pipeline.promotion) if pipeline.promotion else None,
        "report": pipeline.report,
        "watch": pipeline.watch,  # as_of, data_period, monitoring, alerts (``watch.settle``)
    }
    atomic_write_text(state_path(recorder.run_dir), json.dumps(state, indent=1, default=str) + "\n")


def start(options: RunOptions) -> Pipeline:
    """Check everything, create the run folder and parent run; no notebook runs yet."""
    from powerpipe.run.session import prepare

    pipeline = prepare(options, scheduled=True)
    save_state(pipeline, options)
    pipeline.on_change = lambda changed: save_state(changed, options)
    if pipeline.config.process is None:  # the data is final now: monitoring, the window, before any training task
        pipeline.settle_data()
    return pipeline


def resume(outputs: Path, pipeline_run_id: str, stage: str | None = None, point: str | None = None,
           jobs: int | None = None, on_step=None) -> Pipeline:
    """The pipeline run that ``start`` began, as it stands now (its results so far read back)."""
    import mlflow
    from datetime import datetime

    from powerpipe.run.session import executor_for, notebook_hashes

    run_dir = Path(outputs).resolve() / pipeline_run_id
    path = state_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"no pipeline run {pipeline_run_id} in {Path(outputs).resolve()} (no {path}); start one "
                          "with: run_all.py --start")
    state = json.loads(path.read_text(encoding="utf-8"))
    config = load_and_check(Path(state["config"]))
    if data_module.file_sha256(config.path) != state["config_sha256"]:
        raise ConfigError(f"{config.path} changed since pipeline run {pipeline_run_id} started; finish it, "
                          "then start a new one")
    options = RunOptions(config=config.path, outputs=Path(outputs), tracking_uri=state["tracking_uri"],
                         **state["options"])
    source = data_module.DataSource(Path(state["source"]["path"]), state["source"]["sha256"],
                                    state["source"]["source"])
    uri = state["tracking_uri"]
    tracking.check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    recorder = RunRecorder(client, state["experiment_id"], pipeline_run_id, run_dir, source, state["parent_run_id"],
                           datetime.fromisoformat(state["started"]), on_step)
    notebooks = [spec.notebook for spec in config.notebook_specs()]
    steps = build_steps(config)
    # Kernels are warmed with what this stage's notebooks import, not every notebook's (TensorFlow for a
    # linear regression point would cost seconds per task).
    mine = list(dict.fromkeys(step.notebook for step in steps
                              if step.stage == stage and point in (None, step.label)))
    if stage == "promote":  # the production model's configuration retrained, the winner's refit (powerpipe.run.refit)
        mine = list(dict.fromkeys(spec.notebook for spec in config.train))  # kernels start only if one runs
    executor = executor_for(options, mine, uri, run_dir, source, jobs) if mine else None
    cached_runs = {} if options.force else cache.finished_runs_by_key(client, state["experiment_id"])
    runner = StepRunner(recorder, executor, uri, config.experiment, options.timeout or config.timeout,
                        notebook_hashes(notebooks), cached_runs)
    pipeline = Pipeline(config, steps, source, recorder, runner, force_promote=options.force_promote,
                        options=options)
    pipeline.runtime = Runtime(**state["runtime"])
    pipeline.data_sha256 = state["data_sha256"]
    pipeline.promotion = Promotion(**state["promotion"]) if state["promotion"] else None
    pipeline.report = state["report"]
    pipeline.watch = state.get("watch")
    pipeline.on_change = lambda changed: save_state(changed, options)
    return pipeline


def run_stage(outputs: Path, pipeline_run_id: str, stage: str, point: str | None = None, on_step=None) -> bool:
    """Run one stage (``train`` with ``point``: one grid point) of a started pipeline run. True if it went well."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    if point is not None and stage != "train":
        raise ConfigError("--point names a training grid point: use it with --stage train")
    one_notebook = point is not None and not point.endswith(SEARCH_SUFFIX)  # a search runs --jobs trials at once
    pipeline = resume(outputs, pipeline_run_id, stage, point, jobs=1 if one_notebook else None, on_step=on_step)
    failed = True
    try:
        failed = not _run(pipeline, stage, point)
    finally:
        pipeline.runner.close(kill=failed)
    return not failed


def _run(pipeline: Pipeline, stage: str, point: str | None) -> bool:
    if stage == "process":
        return pipeline.run_process()
    if stage == "train":
        labels = [step.label for step in pipeline.of_stage("train")]
        if point is not None and point not in labels:
            raise ConfigError(f"no training grid point {point!r} in {pipeline.config.path}; run_all.py "
                              "--list-points lists them")
        results = pipeline.run_training([point] if point else None)
        return all(r.status in SETTLED for r in results)
    trained = [r for r in pipeline.recorder.results if r.stage == "train" and r.status in DONE]  # trials too
    if not trained:  # skipped, not failed: nothing for a scheduler to retry
        if stage in ("compare", "report"):
            pipeline.skip(stage, "no training run succeeded")
        return True
    pipeline.runtime = dataclasses.replace(pipeline.runtime, run_ids=sorted(r.mlflow_run_id for r in trained))
    if stage == "compare":
        pipeline.run_compare()
    elif stage == "promote":
        pipeline.run_promote(trained)
    else:
        pipeline.run_report()
    ran = {r.label: r for r in pipeline.recorder.results}
    return all(ran[s.label].status in (*DONE, SKIPPED) for s in pipeline.of_stage(stage) if s.label in ran)


def finish(outputs: Path, pipeline_run_id: str, on_step=None) -> dict:
    """Steps that never ran are skipped; summary.json written; the parent run ended."""
    pipeline = resume(outputs, pipeline_run_id, on_step=on_step)
    ran = {r.label for r in pipeline.recorder.results}
    ran |= {label.rpartition(TRIAL_INFIX)[0] + SEARCH_SUFFIX for label in ran if TRIAL_INFIX in label}  # searches
    for step in pipeline.steps:
        if step.label not in ran:
            pipeline.recorder.skip(step, "not run (its task did not run or its upstream failed)")
    try:
        return pipeline.close(pipeline.outcome())
    finally:
        RunLock(outputs).release(pipeline_run_id)


def fails_on_alert(outputs: Path, pipeline_run_id: str) -> bool:
    """Whether the pipeline run was started with ``--fail-on-alert`` (``finish`` then exits 3 on an alert)."""
    path = state_path(Path(outputs).resolve() / pipeline_run_id)
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text(encoding="utf-8"))["options"].get("fail_on_alert"))


def list_points(config_path: Path) -> list[str]:
    return [step.label for step in build_steps(load_and_check(config_path)) if step.stage == "train"]
