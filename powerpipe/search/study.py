"""Search beyond grids: an Optuna study per ``search:`` entry of the pipeline file, its trials notebook executions.

A training entry may carry a ``search:`` block instead of a ``grid:``::

    - notebook: notebooks/model_rf.ipynb
      search:
        sampler: tpe            # tpe | random | grid (Optuna's samplers)
        n_trials: 40
        timeout: 900            # seconds for the whole search (optional)
        seed: 0
        pruner: median          # or {name: median, n_startup_trials: 5, n_warmup_steps: 0}, or none
        storage: postgresql://...   # optional: where the study lives (default: beside a SQLite store)
        space:
          n_estimators: {int: [8, 512], log: true}
          max_features: {float: [0.3, 1.0]}
          criterion: {categorical: [squared_error, friedman_mse]}

- ``spec.search_space.SearchSpec`` is the block, parsed with the pipeline file; ``validate`` checks every key and range
  against the notebook's ``parameters`` cell before anything runs, as grids are checked.
- ``SearchRunner`` runs one search in place of its step (``steps.Step.is_search``): ask-and-tell, up to
  ``--jobs`` trials in flight, each trial a copy of the step (label ``<entry>__trial_<n>``, its
  parameters, tags and kernel environment) run by the pipeline's ``StepRunner`` exactly as a grid
  point is (cache lookup, MLflow child run, executed notebook, result entry). The objective is the
  promotion metric. A failed or timed-out trial is FAIL, a pruned one PRUNED; the search goes on.
- ``SearchStudy`` is the study in its storage, named from the entry, the data's SHA-256 and the
  notebook (the cache key's ingredients), so an interrupted search resumes and a finished one is
  reused: its trials come back as cached results. ``--force`` starts a new study (``<name>-2``, ...).

What the notebooks see of a search (pruning, figures of a study) is ``powerpipe.trials``.
Optuna is imported inside functions: parsing the pipeline file does not need it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import socket
import time
import urllib.parse
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powerpipe.core.constants import DEFAULT_GOAL, DEFAULT_METRIC, Goal
from powerpipe.core import tags
from powerpipe.tracking import store as tracking, trials
from powerpipe.spec.config import SEARCH_SUFFIX, TRIAL_INFIX
from powerpipe.spec.search_space import Dimension, SearchSpec  # noqa: F401 - the block's parts, named here too
from powerpipe.core.exceptions import ConfigError
from powerpipe.core.constants import DONE, FAILED, PRUNED
from powerpipe.execution.results import StepResult
from powerpipe.tracking.trials import pruning_callbacks, report  # noqa: F401 - the notebook's side, named here too

log = logging.getLogger(__name__)

STORAGE_NAME = "optuna.db"  # the default storage, beside a SQLite tracking store
# Trial user attributes: who asked it, what it retries, its MLflow run, its result.
RUNNER_ATTR, RETRY_ATTR, RUN_ATTR, STATUS_ATTR, ERROR_ATTR = "runner", "retry_of", "mlflow_run_id", "status", "error"
DEFAULTS_ATTR = "notebook_defaults"  # the first trial of a new study: the notebook's own defaults
GIVE_UP_AFTER = 5  # this many failed trials and none completed: the notebook cannot run; the search stops
POLL_SECONDS = 0.2


def storage_url(spec: SearchSpec, tracking_uri: str, override: str | None = None) -> str:
    """Where a search's study lives: ``override`` (--search-storage), else the block's ``storage``, else
    ``optuna.db`` beside a local tracking store (a SQLite file or an ``mlruns`` folder)."""
    if override or spec.storage:
        return override or spec.storage
    scheme = urllib.parse.urlsplit(tracking_uri).scheme
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).resolve().parent / STORAGE_NAME}"
    if scheme in ("", "file"):
        folder = Path(urllib.parse.urlsplit(tracking_uri).path if scheme else tracking_uri).resolve()
        return f"sqlite:///{folder.parent / STORAGE_NAME}"
    raise ConfigError(f"a search keeps its study in a database, and the tracking store {tracking.redact(tracking_uri)} "
                      "is not a local file: give one with `storage: postgresql://...` in the search block, or "
                      "--search-storage URL (it must be reachable from every machine that runs a trial)")


def check_storage(config, tracking_uri: str, override: str | None = None) -> None:
    """Before anything runs: every search of the config has somewhere to keep its study."""
    for spec in config.train:
        if spec.search is not None:
            try:
                storage_url(spec.search, tracking_uri, override)
            except ConfigError as exc:
                raise ConfigError(f"{spec.where}.search: {exc}") from None


def _runner_alive(runner: dict | None) -> bool:
    """Whether the runner that asked a trial still runs; one on another machine is taken to be alive."""
    if not runner:
        return False
    if runner.get(tracking.RUNNER_HOST_TAG) != socket.gethostname():
        return True
    return tracking._runner_alive(runner)


def _study_name(existing: list[str], base: str, force: bool) -> str:
    """``base``, or with --force the next generation ``base-2``, ``base-3``...; else the latest one."""
    pattern = re.compile(re.escape(base) + r"(?:-(\d+))?")
    generations = [int(m.group(1) or 1) for m in map(pattern.fullmatch, existing) if m]
    latest = max(generations, default=0)
    generation = latest + 1 if force or not latest else latest
    return base if generation == 1 else f"{base}-{generation}"


@dataclass
class Tally:
    completed: int = 0
    pruned: int = 0
    failed: int = 0  # trials that ran and failed (not those cut short by a runner that died)
    cut_short: int = 0  # cut short before their parameters were all drawn: nothing to run again
    cut_short_on_grid: int = 0  # of those, the ones Optuna's grid sampler had given a grid point (visited, to it)

    @property
    def finished(self) -> int:
        return self.completed + self.pruned


class SearchStudy:
    """One search's Optuna study in its storage: found or created, cleaned up after a runner that died,
    asked for trials and told their results (by one thread, the search's)."""

    def __init__(self, spec: SearchSpec, url: str, base_name: str, goal: str, force: bool, parallel: bool,
                 first: dict | None = None):
        import optuna

        optuna.logging.disable_default_handler()  # its messages go where ours go (the CLI's), warnings only
        optuna.logging.enable_propagation()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.url, self.states = spec, url, optuna.trial.TrialState
        storage = trials.open_storage(url)
        self.name = _study_name(optuna.get_all_study_names(storage), base_name, force)
        self.study = optuna.create_study(storage=storage, study_name=self.name, direction=goal, load_if_exists=True,
                                         pruner=trials.make_pruner(spec.pruner))
        self.distributions = spec.distributions()
        self.recover()
        if first and not self.study.get_trials(deepcopy=False):  # a new study: the notebook's defaults first
            self.study.enqueue_trial(first, user_attrs={DEFAULTS_ATTR: True})
        self.study.sampler = spec.make_sampler(len(self.study.get_trials(deepcopy=False)), parallel)
        self.tally = self.count()

    def recover(self) -> None:
        """Trials left RUNNING by a runner that died (SIGKILL, power cut): FAIL, and asked again first with
        the same parameters. A runner killed while it asked for a trial leaves it without all of them (Optuna
        stores the trial, then each parameter): that one never ran, and the search draws a new trial."""
        for trial in self.study.get_trials(deepcopy=False, states=(self.states.RUNNING,)):
            if _runner_alive(trial.user_attrs.get(RUNNER_ATTR)):
                continue
            self.study.tell(trial.number, state=self.states.FAIL)
            if set(trial.params) >= set(self.distributions):
                log.warning("study %s: trial %d was cut short by a runner that stopped; running it again",
                            self.name, trial.number)
                self.study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
            else:
                log.warning("study %s: trial %d was cut short by a runner that stopped before its parameters "
                            "were drawn; it never ran", self.name, trial.number)

    def count(self) -> Tally:
        everything = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(RETRY_ATTR) for t in everything}
        ended = [t for t in everything if t.state == self.states.FAIL and t.number not in retried]
        # A trial that ran and failed says why (``tell``); one cut short before it ran says nothing.
        return Tally(completed=sum(t.state == self.states.COMPLETE for t in everything),
                     pruned=sum(t.state == self.states.PRUNED for t in everything),
                     failed=sum(ERROR_ATTR in t.user_attrs for t in ended),
                     cut_short=sum(ERROR_ATTR not in t.user_attrs for t in ended),
                     cut_short_on_grid=sum(ERROR_ATTR not in t.user_attrs and "grid_id" in t.system_attrs
                                           for t in ended))

    def finished_trials(self) -> list:
        return self.study.get_trials(deepcopy=False, states=(self.states.COMPLETE, self.states.PRUNED))

    def ask(self):
        trial = self.study.ask(self.distributions)
        trial.set_user_attr(RUNNER_ATTR, tracking.runner_tags())
        return trial

    def tell(self, trial, result: StepResult, metric: str) -> None:
        value = result.metrics.get(metric)
        trial.set_user_attr(RUN_ATTR, result.mlflow_run_id)
        trial.set_user_attr(STATUS_ATTR, result.status)
        if result.status == PRUNED:
            self.study.tell(trial, state=self.states.PRUNED)
            self.tally.pruned += 1
        elif result.status in DONE and value is not None and math.isfinite(value):
            self.study.tell(trial, value)
            self.tally.completed += 1
        else:
            trial.set_user_attr(ERROR_ATTR, (result.error or f"the notebook recorded no {metric}")[:1000])
            self.study.tell(trial, state=self.states.FAIL)
            self.tally.failed += 1

    def best(self):
        try:
            return self.study.best_trial
        except ValueError:  # no trial completed
            return None


class SearchRunner:
    """Runs one search of a pipeline in place of its step: trials asked, run, told, ``--jobs`` at once.

    Each trial is a copy of the search's step run by ``Pipeline.run_step``, as a grid point is; the
    pipeline's executor (warm local kernels, or Dask) is shared with the grid points running beside.
    """

    def __init__(self, pipeline, step):
        self.pipeline, self.step, self.spec = pipeline, step, step.spec.search
        self.base = step.label.removesuffix(SEARCH_SUFFIX)
        promote = pipeline.config.promote
        self.metric, self.goal = (promote.metric, promote.goal) if promote else (DEFAULT_METRIC, DEFAULT_GOAL)
        self.jobs = max(1, pipeline.options.jobs)

    @property
    def stopped(self) -> bool:
        return self.pipeline.runner.closed  # Ctrl-C: the executor was killed; ask nothing more

    def run(self) -> list[StepResult]:
        started = time.perf_counter()
        try:
            study = self.open()
        except Exception as exc:  # noqa: BLE001 - boundary: no storage, no study: this search fails, not the pipeline
            error = str(exc) if isinstance(exc, ConfigError) else f"cannot open the study: {type(exc).__name__}: {exc}"
            log.error("%s: %s", self.step.label, error)
            return [self.pipeline.recorder.record(StepResult(self.step.stage, self.step.notebook.name, self.step.shown,
                                                             FAILED, error=error, label=self.step.label))]
        earlier = self.earlier(study)
        ran = self.loop(study)
        self.pipeline.recorder.add_search(self.summary(study, len(ran), time.perf_counter() - started))
        return earlier + ran

    def open(self) -> SearchStudy:
        """The study named from the entry, its objective, the data and the notebook (as a cache key is)."""
        pipeline = self.pipeline
        url = storage_url(self.spec, pipeline.tracking_uri, pipeline.options.search_storage)
        identity = {**self.step.spec.parameters, "search": self.spec.identity(), "objective": [self.goal, self.metric],
                    "experiment": pipeline.config.experiment}
        key = pipeline.runner.cache_key(dataclasses.replace(self.step, shown=identity), pipeline.runtime,
                                        pipeline.data_sha256)
        return SearchStudy(self.spec, url, f"{self.base}-{key[:12]}", self.goal, pipeline.options.force,
                           parallel=self.jobs > 1, first=self.spec.defaults(self.step.notebook))

    def loop(self, study: SearchStudy) -> list[StepResult]:
        deadline = time.monotonic() + self.spec.timeout if self.spec.timeout else None
        results, flying = [], {}
        pool = futures.ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="powerpipe-trial")
        try:
            while True:
                while len(flying) < self.jobs and self.wants_more(study, len(flying), deadline):
                    trial = study.ask()
                    flying[pool.submit(self.run_trial, study, trial)] = trial
                if not flying or self.stopped:
                    break  # stopped: trials in flight stay RUNNING; the next run asks them again
                done, _ = futures.wait(flying, timeout=POLL_SECONDS, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    trial = flying.pop(future)
                    if not self.stopped:
                        results.append(future.result())
                        study.tell(trial, results[-1], self.metric)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if deadline is not None and time.monotonic() >= deadline:
            log.info("study %s: its timeout (%g s) is up after %d trials", study.name, self.spec.timeout, len(results))
        return results

    def wants_more(self, study: SearchStudy, flying: int, deadline: float | None) -> bool:
        tally = study.tally
        if self.stopped or (deadline is not None and time.monotonic() >= deadline):
            return False
        if tally.failed >= self.spec.n_trials or (not tally.completed and tally.failed >= min(GIVE_UP_AFTER,
                                                                                          self.spec.n_trials)):
            if not flying:
                log.error("study %s: stopped after %d failed trials", study.name, tally.failed)
            return False
        if tally.finished + flying >= self.spec.limit:
            return False
        # A grid point whose trial was cut short is visited, to Optuna's grid sampler: it is not run again.
        return self.spec.sampler != "grid" or (tally.finished + tally.failed + tally.cut_short_on_grid + flying
                                               < self.spec.grid_size())

    def run_trial(self, study: SearchStudy, trial) -> StepResult:
        result = self.pipeline.run_step(self.trial_step(study, trial.number, trial.params))
        result.trial = {"study": study.name, "number": trial.number}
        self.pipeline.recorder.update(result)
        return result

    def trial_step(self, study: SearchStudy, number: int, params: dict):
        shown = {**self.step.spec.parameters, **{d.name: params[d.name] for d in self.spec.space if d.name in params}}
        return dataclasses.replace(
            self.step, label=f"{self.base}{TRIAL_INFIX}{number}", shown=shown,
            extra_tags={tags.SEARCH_STUDY: study.name, tags.SEARCH_TRIAL: str(number),
                        tags.SEARCH_SAMPLER: self.spec.sampler, tags.SEARCH_SPACE: self.spec.space_json(),
                        tags.SEARCH_OBJECTIVE: f"{self.goal} {self.metric}"},
            env=trials.environment(study.url, study.name, number, self.spec.pruner))

    def earlier(self, study: SearchStudy) -> list[StepResult]:
        """Trials that finished before this run (a resumed or finished study): their runs, reused."""
        finished = study.finished_trials()
        runs = self.runs_by_id([t.user_attrs.get(RUN_ATTR) for t in finished])
        results = []
        for trial in finished:
            run = runs.get(trial.user_attrs.get(RUN_ATTR))
            if run is None:
                log.warning("study %s: the MLflow run of trial %d is gone; it is not shown", study.name, trial.number)
                continue
            result = self.pipeline.runner.cached_result(self.trial_step(study, trial.number, trial.params), run)
            if trial.state == study.states.PRUNED:
                result.status, result.metrics = PRUNED, {}
            result.trial = {"study": study.name, "number": trial.number}
            results.append(self.pipeline.recorder.record(result))
        return results

    def runs_by_id(self, run_ids: list[str | None]) -> dict[str, Any]:
        recorder, wanted, found = self.pipeline.recorder, sorted({i for i in run_ids if i}), {}
        for start in range(0, len(wanted), 100):
            quoted = ", ".join(f"'{run_id}'" for run_id in wanted[start:start + 100])
            for run in recorder.client.search_runs([recorder.experiment_id], f"attributes.run_id IN ({quoted})",
                                                   max_results=1000):
                found[run.info.run_id] = run
        return found

    def summary(self, study: SearchStudy, ran: int, seconds: float) -> dict:
        """The search's entry in summary.json's ``searches``."""
        tally, best = study.tally, study.best()
        return {
            "label": self.step.label, "notebook": self.step.notebook.name, "study": study.name,
            "storage": tracking.redact(study.url), "sampler": self.spec.sampler, "n_trials": self.spec.n_trials,
            "completed": tally.completed, "pruned": tally.pruned, "failed": tally.failed, "ran": ran,
            "metric": self.metric, "goal": self.goal,
            "best_trial": best.number if best else None,
            "best_run_id": best.user_attrs.get(RUN_ATTR) if best else None,
            "best_value": best.value if best else None,
            "best_parameters": best.params if best else None,
            "seconds": round(seconds, 3),
        }


# -- the terminal's summary table (cli.print_summary) -----------------------------------------------------

SHOWN_TRIALS = 3  # of each search, the table lists the best few trials and counts the others


def listed_points(summary: dict, best: int = SHOWN_TRIALS) -> list:
    """summary.json's results as the table lists them: every grid point; of each search's trials its
    ``best`` few (by its metric), then a line counting the others, so 200 trials do not flood it."""
    searches = {s["study"]: s for s in summary.get("searches", [])}
    by_study: dict[str, list] = {}
    for point in summary["grid_points"]:
        if point.get("trial"):
            by_study.setdefault(point["trial"]["study"], []).append(point)
    shown = set()
    for study, points in by_study.items():
        metric, goal = searches.get(study, {}).get("metric", "rmse"), searches.get(study, {}).get("goal")
        scored = sorted((p for p in points if metric in p["metrics"]),
                        key=lambda p: -p["metrics"][metric] if goal == Goal.MAXIMIZE else p["metrics"][metric])
        shown |= {id(p) for p in scored[:best]}
    listed, hidden = [], []

    def count_hidden() -> None:
        if hidden:
            statuses = ", ".join(f"{sum(p['status'] == s for p in hidden)} {s}"
                                 for s in dict.fromkeys(p["status"] for p in hidden))
            listed.append(f"… {len(hidden)} more trials of {hidden[0]['trial']['study']} ({statuses})")
            hidden.clear()

    for point in summary["grid_points"]:
        study = (point.get("trial") or {}).get("study")
        if hidden and study != hidden[0]["trial"]["study"]:
            count_hidden()
        (listed if study is None or id(point) in shown else hidden).append(point)
    count_hidden()
    return listed


def search_lines(summary: dict, run_dir: Path) -> list[str]:
    """One line per search (its study, counts and best trial), and one per search with failed trials."""
    lines = []
    for search in summary.get("searches", []):
        best = (f"best trial {search['best_trial']} {search['metric']}={search['best_value']:.4g} "
                f"(run {search['best_run_id']})" if search["best_trial"] is not None else "no trial completed")
        lines.append(f"search {search['label']}: study {search['study']} ({search['sampler']}), "
                     f"{search['completed']} completed, {search['pruned']} pruned, {search['failed']} failed "
                     f"of {search['n_trials']}; {best}")
    failed: dict[str, list] = {}
    for point in summary["grid_points"]:
        if point["status"] == FAILED and point.get("trial"):
            failed.setdefault(point["trial"]["study"], []).append(point)
    for study, points in failed.items():
        lines.append(f"FAILED {len(points)} trial(s) of {study}, e.g. trial {points[0]['trial']['number']}: "
                     f"{points[0]['error']}")
        lines.append(f"       executed notebook: {run_dir / (points[0]['output_notebook'] or '')}")
    return lines
