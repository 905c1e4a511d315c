"""Run one step: reuse a cached run if one has the same inputs, else execute the notebook on the executor."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from powerpipe.tracking import cache
from powerpipe.core import tags
from powerpipe.forecast import data as data_module
from powerpipe.core.fsutil import atomic_path
from powerpipe.run.recorder import CACHED, FAILED, OK, PRUNED, RunRecorder, StepResult
from powerpipe.spec.steps import Runtime, Step
from powerpipe.execution.tasks import NotebookTask, run_metrics

log = logging.getLogger(__name__)


class StepRunner:
    """Turns steps into results: cache lookup, the executor, restoring a cached run's output file.

    ``notebook_hashes``: per notebook, its own SHA-256 and that of the package code it runs, taken
    once before anything runs (the notebooks' identity is what they were when the run started).
    """

    def __init__(self, recorder: RunRecorder, executor, tracking_uri: str, experiment_name: str,
                 timeout: float | None, notebook_hashes: dict[Path, tuple[str, str]], cached_runs: dict):
        self.recorder, self.executor, self.tracking_uri = recorder, executor, tracking_uri
        self.experiment_name, self.timeout = experiment_name, timeout
        self.notebook_hashes, self.cached_runs = notebook_hashes, cached_runs
        self._closed = False

    closed = property(lambda self: self._closed)

    def close(self, kill: bool = False) -> None:
        """Stop the executor once: ``kill`` at once (Ctrl-C), else after queued work."""
        if not self._closed and self.executor is not None:
            self._closed = True
            self.executor.kill() if kill else self.executor.close()

    def run(self, step: Step, runtime: Runtime, inputs_sha256: str, data: tuple[Path, str], render: bool = True,
            report_html: Path | None = None) -> StepResult:
        """Reuse a cached run, or execute the notebook; blocks until done.

        ``inputs_sha256``: the identity of its input data for the cache ("" when unknown yet: no
        lookup, no key); ``data``: the data file it reads and its SHA-256, tagged on its run.
        """
        key = self.cache_key(step, runtime, inputs_sha256) if inputs_sha256 else ""
        notebook_sha = self.notebook_hashes[step.notebook][0]
        cached = self.cached_runs.get(key) if key else None
        if cached is not None:
            return self.recorder.record(self.cached_result(step, cached))
        output = self.recorder.run_dir / step.folder / f"{step.label}.ipynb"
        task = NotebookTask(
            notebook=str(step.notebook), stage=step.stage, label=step.label, output_notebook=str(output),
            parameters=step.parameters(runtime), shown=step.shown,
            tags=self.recorder.child_tags(step, notebook_sha, *data, output),
            tracking_uri=self.tracking_uri, experiment_id=self.recorder.experiment_id,
            experiment_name=self.experiment_name, cache_key=key, timeout=self.timeout, render=render,
            report_html=str(report_html) if report_html else None, env=dict(step.env))
        outcome = self.executor.run(task)
        status = OK if outcome.ok else PRUNED if outcome.pruned else FAILED
        if status == FAILED:
            log.error("%s failed: %s\n  executed notebook: %s", step.label, outcome.error, outcome.output_notebook)
        return self.recorder.record(StepResult(
            stage=step.stage, notebook=step.notebook.name, parameters=step.shown, status=status,
            metrics=outcome.metrics, mlflow_run_id=outcome.run_id or None,
            output_notebook=self.recorder.relative(outcome.output_notebook), seconds=outcome.seconds,
            error=outcome.error, label=step.label))

    def cache_key(self, step: Step, runtime: Runtime, inputs_sha256: str) -> str:
        notebook_sha, code_sha = self.notebook_hashes[step.notebook]
        return cache.cache_key(notebook_sha, step.cache_parameters(runtime), inputs_sha256, code_sha)

    def cached_result(self, step: Step, run) -> StepResult:
        """The result of ``step`` that reuses the FINISHED ``run``."""
        earlier = run.data.tags.get(tags.OUTPUT_NOTEBOOK)
        return StepResult(
            stage=step.stage, notebook=step.notebook.name, parameters=step.shown, status=CACHED,
            metrics=run_metrics(run), mlflow_run_id=run.info.run_id,
            output_notebook=self.recorder.relative(earlier) if earlier and Path(earlier).exists() else None,
            label=step.label, cached_run=run)

    def run_with_output(self, step: Step, runtime: Runtime, inputs_sha256: str, output_tag: str, target: Path,
                        sha256_tag: str | None = None, **options) -> StepResult:
        """Run a step that writes one file (``target``); on a cache hit, copy the cached run's file
        (named by its ``output_tag``) there, and if it is gone or changed, run the step after all."""
        result = self.run(step, runtime, inputs_sha256, **options)
        if result.status != CACHED:
            return result
        run_tags = result.cached_run.data.tags
        earlier = Path(run_tags.get(output_tag, ""))
        intact = earlier.is_file() and (sha256_tag is None or data_module.file_sha256(earlier) == run_tags.get(sha256_tag))
        if intact:
            with atomic_path(target) as temporary:
                shutil.copyfile(earlier, temporary)
            return result
        log.info("%s: the output of cached run %s is gone; running it again", step.label, result.cached_run.info.run_id)
        self.recorder.forget(result)
        self.cached_runs.pop(run_tags.get(tags.CACHE_KEY), None)
        return self.run(step, runtime, inputs_sha256, **options)
