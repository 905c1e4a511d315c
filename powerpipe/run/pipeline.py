"""Run a pipeline: process -> train (grids) -> compare -> promote -> report, each notebook an MLflow run.

Wiring only. ``steps`` renders the pipeline once (the same steps for ``--dry-run`` and for a run);
``step_runner`` executes one step (or reuses its cached run) on an executor from ``executors``;
``recorder`` owns the parent run, the tags and summary.json. Failures are collected, never raised
past a stage: a failed grid point is recorded and the others go on; a stage that needs a failed one
is ``skipped``; one summary comes at the end.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from powerpipe.forecast import data as data_module
from powerpipe.core import tags
from powerpipe.core.constants import INTERRUPTED
from powerpipe.spec.config import PipelineConfig
from powerpipe.core.exceptions import DiskFullError, StoreUnreachableError
from powerpipe.execution.executor import wait
from powerpipe.run.recorder import DONE, FAILED, KILLED, OK, SETTLED, RunRecorder, StepResult
from powerpipe.run.options import RunOptions
from powerpipe.run.refit import champion_calls
from powerpipe.run.stages import run_process, run_promote, run_report
from powerpipe.run.step_runner import StepRunner
from powerpipe.spec.steps import Runtime, Step

log = logging.getLogger(__name__)



def longest_first(steps: list[Step], expected_seconds: dict[str, float]) -> list[int]:
    """The order to hand ``steps`` to the executor: the longest first, as long as recent runs took
    (``session.last_durations``; a step never timed, or a search, first; ties in declared order). Two
    kernels then finish together instead of one running the slowest notebook alone at the end (a replay's
    Keras point, started last, did). Best effort: each is handed over by its own thread."""
    unknown = float("inf")
    return sorted(range(len(steps)), key=lambda i: (-(unknown if steps[i].is_search else
                                                      expected_seconds.get(steps[i].label, unknown)), i))


def declared_order(order: list[int], started: list) -> list:
    """Results of calls made in ``order`` (positions of the declared steps), put back in declared order; any
    results after those (the champion's) stay at the end."""
    results = [None] * len(order)
    for position, index in enumerate(order):
        results[index] = started[position]
    return results + started[len(order):]


class Pipeline:
    """One execution of a pipeline config: its steps, stage by stage."""

    def __init__(self, config: PipelineConfig, steps: list[Step], source: data_module.DataSource,
                 recorder: RunRecorder, runner: StepRunner, force_promote: bool = False,
                 options: RunOptions | None = None):
        self.config, self.steps, self.source = config, steps, source
        self.recorder, self.runner, self.force_promote = recorder, runner, force_promote
        self.options = options or RunOptions(config=config.path)  # jobs, --force, storage: what a search needs
        self.runtime = dataclasses.replace(Runtime.planned(config), parent_run_id=recorder.parent_run_id,
                                           data_path=str(source.path), synthetic_data=source.synthetic)
        self.data_sha256 = source.sha256
        self.promotion, self.report = None, None
        self.watch: dict | None = None  # as_of, data_period, monitoring, alerts: once the data is settled (``watch``)
        self.champion = None  # the alias holder's configuration in this run's grid (``refit.plan_champion``)
        self.on_change: Callable[[Pipeline], None] = lambda pipeline: None  # state to keep (stage-wise runs)
        self.expected_seconds: dict[str, float] = {}  # per step label, from the last run (``longest_first``)

    run_id = property(lambda self: self.recorder.run_id)
    run_dir = property(lambda self: self.recorder.run_dir)
    tracking_uri = property(lambda self: self.runner.tracking_uri)

    def of_stage(self, stage: str) -> list[Step]:
        return [step for step in self.steps if step.stage == stage]

    def run(self) -> dict:
        status, fatal = KILLED, None
        try:
            processed = self.run_process()
            training = self.run_training() if processed else self.skip("train", "process stage failed")
            trained = [r for r in training if r.status in DONE]
            if trained:  # compare needs only the training runs; promote and report go on beside it
                self.runtime = dataclasses.replace(self.runtime, run_ids=sorted(r.mlflow_run_id for r in trained))
                self.in_parallel([self.run_compare, lambda: self.promote_and_report(trained)])
            else:
                self.skip("compare", "no training run succeeded")
                self.skip("report", "no training run succeeded")
                if self.config.promote is not None:
                    log.warning("no training run succeeded: nothing promoted, report skipped")
            status = self.outcome()
        except (DiskFullError, StoreUnreachableError) as exc:  # nothing more can succeed: stop, say why once
            status, fatal = FAILED, exc
            raise
        finally:
            summary = self.close(status, fatal)
        return summary

    def outcome(self) -> str:
        return OK if all(r.status in SETTLED for r in self.recorder.results) else FAILED

    def close(self, status: str, fatal: BaseException | None = None) -> dict:
        """Stop the executor, leave no child run RUNNING, write summary.json, end the parent run.

        ``fatal``: what stopped the run (a full disk, an unreachable store): summary.json says so, and
        a store that does not answer is not asked again (each call would wait out its budget); the
        next run marks what this one left RUNNING as KILLED and reuses what FINISHED.
        """
        store_ok = not isinstance(fatal, StoreUnreachableError)
        self.runner.close(kill=status == KILLED or fatal is not None)  # Ctrl-C or a crash: kernels killed at once
        if store_ok:  # interrupted, or a (Dask) attempt whose worker died: its run must not stay RUNNING
            self.recorder.end_running_children(
                INTERRUPTED if status == KILLED else str(fatal) if fatal else "left open when the pipeline "
                "ended (its worker died before the notebook finished; the grid point ran again or failed)")
        from powerpipe.run.watch import summary_keys

        summary = self.recorder.summary(status, [step.label for step in self.steps], self.data_summary(),
                                        self.promotion, self.report, error=str(fatal) if fatal else None,
                                        watch=summary_keys(self))
        self.recorder.finish(summary, store=store_ok)
        return summary

    # -- stages ---------------------------------------------------------------------------------------
    def run_process(self) -> bool:
        steps = self.of_stage("process")
        if not steps:
            return self.settle_data()
        processed = run_process(self, steps[0])
        if processed is None:
            return False
        self.runtime = dataclasses.replace(self.runtime, data_path=str(processed))
        self.data_sha256 = data_module.file_sha256(processed)
        self.recorder.tag_run(self.recorder.parent_run_id, {tags.PROCESSED_DATA_SHA256: self.data_sha256})
        self.on_change(self)
        return self.settle_data()

    def settle_data(self) -> bool:
        """Before training: the data cut at --as-of, the relative test window resolved, the production
        model monitored (``watch.settle``; once per pipeline run)."""
        from powerpipe.run.watch import settle

        return settle(self)

    def run_training(self, labels: list[str] | None = None) -> list[StepResult]:
        """Every training grid point at once, each search beside them, trials sharing the executor (or
        those named by ``labels``). A search's results are its trials'."""
        steps = [step for step in self.of_stage("train") if labels is None or step.label in labels]
        order = longest_first(steps, self.expected_seconds)  # handed over longest first, results as declared
        calls = [lambda s=steps[i]: self.run_search(s) if s.is_search else [self.run_step(s)] for i in order]
        started = self.in_parallel(calls + (champion_calls(self) if labels is None else []))  # production's config
        return [result for each in declared_order(order, started) for result in each]

    def run_search(self, step: Step) -> list[StepResult]:
        from powerpipe.search.study import SearchRunner
        return SearchRunner(self, step).run()

    def run_step(self, step: Step, **options) -> StepResult:
        options.setdefault("render", getattr(self.options, "render_notebooks", True))
        return self.runner.run(step, self.runtime, self.data_sha256, (Path(self.runtime.data_path), self.data_sha256),
                               **options)

    def run_compare(self) -> None:
        for step in self.of_stage("compare"):
            self.run_step(step)

    def promote_and_report(self, trained: list[StepResult]) -> None:
        self.run_promote(trained)
        self.run_report()

    def run_promote(self, trained: list[StepResult]) -> None:
        self.promotion = run_promote(self, trained)
        self.on_change(self)

    def run_report(self) -> None:
        for step in self.of_stage("report"):
            self.report = run_report(self, step)
        self.on_change(self)

    def skip(self, stage: str, reason: str) -> list[StepResult]:
        return [self.recorder.skip(step, reason) for step in self.of_stage(stage)]

    def in_parallel(self, calls: list[Callable[[], StepResult | None]]) -> list:
        """Run calls at once (each waits on the executor); results in call order."""
        if not calls:
            return []
        waiters = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="powerpipe-step")
        try:
            return [wait(future) for future in [waiters.submit(call) for call in calls]]
        except BaseException:
            self.runner.close(kill=True)  # first, so that no waiter is left waiting on a notebook (Ctrl-C)
            raise
        finally:
            waiters.shutdown(wait=False, cancel_futures=True)

    def data_summary(self) -> dict:
        if self.source.source == "opsd":  # the data is what the process stage built, if it did
            built = Path(self.runtime.data_path)
            path, sha256 = (built, self.data_sha256) if built.is_file() else (self.source.path, "")
        else:
            path, sha256 = self.source.path, self.source.sha256
        return {"path": self.recorder.relative(path), "sha256": sha256, "source": self.source.source}
