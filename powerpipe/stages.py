"""What the pipeline does before its stages (checks, run folder, store, executor) and the stages
that are more than "run the notebook": process (its output file), promote, report (the pinned model)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from . import cache, paths, tags, tracking
from . import data as data_module
from .exceptions import ConfigError
from .executors import make_executor
from .parameterize import notebook_hash
from .runlock import RunLock
from .recorder import DONE, FAILED, OK, RunRecorder, StepResult, new_pipeline_run_id
from .step_runner import StepRunner
from .steps import Step, build_steps

log = logging.getLogger(__name__)


def prepare(options, on_step=None, scheduled: bool = False):
    """Every check that can fail before anything is logged, then the run folder, parent run and executor.

    ``scheduled``: a pipeline run driven stage by stage (``stagewise``): no executor yet (each stage
    starts its own), and a parent run that outlives this process.
    """
    import mlflow

    from .pipeline import Pipeline, load_and_check

    config = load_and_check(options.config)
    if options.data == "opsd" and config.process is None:
        raise ConfigError(f"{config.path}: --data opsd builds the data in the process stage, but the config "
                          "has no stages.process")
    # Data is checked now; synthetic data is generated only once the run folder exists, into it.
    source = None if options.data == "synthetic" else data_module.resolve(
        options.data, generated_dir=Path(options.outputs).resolve() / "data")
    uri = tracking.tracking_uri(options.tracking_uri, options.outputs)
    if options.executor == "dask":
        from .executors.dask_cluster import check_tracking_uri

        check_tracking_uri(uri, options.scheduler)
    tracking.check_reachable(uri)
    from .search import check_storage

    check_storage(config, uri, getattr(options, "search_storage", None))  # every search has a home for its study
    steps = build_steps(config)
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
    executor = None
    try:
        if source is None:
            source = data_module.resolve(options.data, generated_dir=run_dir / "data")
        if source.synthetic:
            log.warning("SYNTHETIC DATA: %s was generated, not measured; metrics say nothing about the real grid",
                        source.path)
        if not scheduled:  # a cluster that cannot see the run folder fails here, before any run is logged
            executor = executor_for(options, notebooks, uri, run_dir, source)
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
    return pipeline


def executor_for(options, notebooks: list[Path], uri: str, run_dir: Path, source, jobs: int | None = None):
    return make_executor(options.executor, jobs=jobs or options.jobs, notebooks=notebooks, tracking_uri=uri,
                         reuse_kernels=options.reuse_kernels, scheduler=options.scheduler,
                         shared_paths=[run_dir, source.path, *notebooks])


def notebook_hashes(notebooks: list[Path]) -> dict[Path, tuple[str, str]]:
    """Per notebook: its own SHA-256 and that of the package code it runs (taken once, up front)."""
    return {nb: (notebook_hash(nb), cache.notebook_code_sha256(nb)) for nb in notebooks}


def run_process(pipeline, step: Step) -> Path | None:
    """The process notebook writes the run's processed CSV; returns it, or None if it failed."""
    source, recorder = pipeline.source, pipeline.recorder
    processed = recorder.run_dir / "data" / paths.PROCESSED_DATA_NAME
    if source.source == "opsd":  # built from the raw OPSD files: their hashes (once downloaded) are its identity
        from . import opsd

        runtime = dataclasses.replace(pipeline.runtime, input_path=None, output_path=str(processed))
        fingerprint = opsd.process_inputs_fingerprint(step.parameters(runtime))
        inputs = json.dumps(fingerprint, sort_keys=True) if fingerprint else ""
    else:
        runtime = dataclasses.replace(pipeline.runtime, input_path=str(source.path), output_path=str(processed))
        inputs = source.sha256
    result = pipeline.runner.run_with_output(step, runtime, inputs, tags.PROCESSED_PATH, processed,
                                             sha256_tag=tags.PROCESSED_SHA256, data=(source.path, source.sha256))
    if result.status not in DONE:
        return None
    if not processed.is_file():
        result.status, result.error = FAILED, f"the process notebook wrote no file at {processed}"
        recorder.update(result)
        log.error("%s", result.error)
        return None
    if result.status == OK:
        run_tags = {tags.PROCESSED_PATH: str(processed), tags.PROCESSED_SHA256: data_module.file_sha256(processed)}
        if inputs == "":  # raw files downloaded just now: their hashes make the cache key
            from . import opsd

            fingerprint = opsd.process_inputs_fingerprint(step.parameters(runtime))
            if fingerprint:
                run_tags[tags.CACHE_KEY] = pipeline.runner.cache_key(step, runtime, json.dumps(fingerprint,
                                                                                             sort_keys=True))
        recorder.tag_run(result.mlflow_run_id, run_tags)
    return processed


def run_promote(pipeline, trained: list[StepResult]):
    from .promote import Candidate, promote

    spec = pipeline.config.promote
    if spec is None:
        return None
    candidates = [Candidate(r.mlflow_run_id, OK, r.metrics) for r in trained if r.mlflow_run_id]
    return promote(pipeline.recorder.client, candidates, spec, pipeline.recorder.run_id,
                   Path(pipeline.runtime.data_path), force=pipeline.force_promote,
                   evaluation=pipeline.config.evaluation)


def run_report(pipeline, step: Step) -> str | None:
    """The weekly report on the model the alias points at now, pinned by version (the report and its
    cache key name the same model). Returns the HTML's path in the run folder, or None."""
    from .promote import alias_holder

    recorder, spec = pipeline.recorder, pipeline.config.promote
    alias_uri = f"models:/{spec.model_name}@{spec.alias}"
    holder = alias_holder(recorder.client, spec)  # an unreachable store stops the run (never "no model")
    if holder is None:
        log.warning("report skipped: no model holds %s", alias_uri)
        recorder.skip(step, f"no model holds {alias_uri}")
        return None
    runtime = dataclasses.replace(pipeline.runtime, model_uri=f"models:/{spec.model_name}/{holder.version}")
    html = recorder.run_dir / tags.REPORT_ARTIFACT_DIR / tags.REPORT_HTML_NAME
    result = pipeline.runner.run_with_output(step, runtime, pipeline.data_sha256, tags.REPORT_PATH, html,
                                             data=(Path(runtime.data_path), pipeline.data_sha256), render=False,
                                             report_html=html)
    if result.status not in DONE:
        return None
    recorder.client.log_artifact(recorder.parent_run_id, str(html), artifact_path=tags.REPORT_ARTIFACT_DIR)
    return recorder.relative(html)
