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

- ``SearchSpec`` is the block, parsed with the pipeline file; ``validate`` checks every key and range
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
import json
import logging
import math
import re
import socket
import time
import urllib.parse
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tags, tracking, trials
from .config import SEARCH_SUFFIX, TRIAL_INFIX, _no_unknown
from .exceptions import ConfigError, ParameterError
from .parameterize import check_values, read_parameters
from .recorder import DONE, FAILED, PRUNED, StepResult
from .trials import pruning_callbacks, report  # noqa: F401 - the notebook's side, named here too

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
KINDS = ("int", "float", "categorical")
STORAGE_NAME = "optuna.db"  # the default storage, beside a SQLite tracking store
# Trial user attributes: who asked it, what it retries, its MLflow run, its result.
RUNNER_ATTR, RETRY_ATTR, RUN_ATTR, STATUS_ATTR, ERROR_ATTR = "runner", "retry_of", "mlflow_run_id", "status", "error"
DEFAULTS_ATTR = "notebook_defaults"  # the first trial of a new study: the notebook's own defaults
GIVE_UP_AFTER = 5  # this many failed trials and none completed: the notebook cannot run; the search stops
POLL_SECONDS = 0.2


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class Dimension:
    """One parameter of a search space: an int or float range, or categorical choices."""

    name: str
    kind: str  # int | float | categorical
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    @classmethod
    def parse(cls, name: str, raw: Any, where: str) -> "Dimension":
        example = "{int: [8, 512]}, {float: [0.1, 1.0], log: true} or {categorical: [a, b]}"
        if not isinstance(raw, dict):
            raise _fail(where, f"must be a mapping such as {example}, got {raw!r}")
        kinds = [kind for kind in KINDS if kind in raw]
        if len(kinds) != 1:
            raise _fail(where, f"needs exactly one of int, float, categorical, e.g. {example}")
        kind, values = kinds[0], raw[kinds[0]]
        _no_unknown(raw, {kind} if kind == "categorical" else {kind, "log", "step"}, where)
        if kind == "categorical":
            if not isinstance(values, list) or not values:
                raise _fail(f"{where}.categorical", f"must be a non-empty list of values, got {values!r}")
            odd = [v for v in values if v is not None and not isinstance(v, (bool, int, float, str))]
            if odd:
                raise _fail(f"{where}.categorical", f"{odd[0]!r} is not a number, string, boolean or null")
            if len({json.dumps(v) for v in values}) != len(values):
                raise _fail(f"{where}.categorical", f"lists a value twice: {values!r}")
            return cls(name, kind, choices=tuple(values))
        number = int if kind == "int" else (int, float)
        if (not isinstance(values, list) or len(values) != 2
                or any(isinstance(v, bool) or not isinstance(v, number) for v in values)):
            what = "integers" if kind == "int" else "numbers"
            raise _fail(f"{where}.{kind}", f"must be a range [low, high] of two {what}, got {values!r}")
        low, high = values
        if not low < high:
            raise _fail(f"{where}.{kind}", f"empty range [{low}, {high}]: low must be below high")
        log, step = raw.get("log", False), raw.get("step")
        if not isinstance(log, bool):
            raise _fail(f"{where}.log", f"must be true or false, got {log!r}")
        if log and low <= 0:
            raise _fail(f"{where}.log", f"a log range must start above 0, got [{low}, {high}]")
        if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0 or log):
            raise _fail(f"{where}.step", f"must be a positive {kind} step, and not with log: true; got {step!r}")
        if kind == "float":
            low, high, step = float(low), float(high), None if step is None else float(step)
        return cls(name, kind, low, high, log, step)

    def distribution(self):
        from optuna import distributions

        if self.kind == "int":
            return distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "float":
            return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        return distributions.CategoricalDistribution(list(self.choices))

    def grid_values(self) -> list | None:
        """Every value, for the grid sampler (None: a float range without a step)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(value == choice and type(value) is type(choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return False
        return self.low <= value <= self.high and (self.step is None or ((value - self.low) / self.step).is_integer())

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} {self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class SearchSpec:
    """A ``search:`` block: sampler, trials, optional timeout, seed, storage and pruner, and the space."""

    space: tuple[Dimension, ...]
    n_trials: int
    sampler: str = "tpe"
    timeout: float | None = None
    seed: int | None = None
    storage: str | None = None
    pruner: dict = field(default_factory=lambda: {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0})

    @classmethod
    def parse(cls, raw: Any, where: str) -> "SearchSpec":
        """The block as the pipeline file gives it; ConfigError names the file and key at fault."""
        if not isinstance(raw, dict):
            raise _fail(where, "must be a mapping with n_trials and space (and optionally sampler, timeout, "
                               "seed, pruner, storage)")
        _no_unknown(raw, {"sampler", "n_trials", "timeout", "seed", "space", "storage", "pruner"}, where)
        sampler, n_trials, timeout = raw.get("sampler", "tpe"), raw.get("n_trials"), raw.get("timeout")
        seed, storage, space = raw.get("seed"), raw.get("storage"), raw.get("space")
        if sampler not in SAMPLERS:
            raise _fail(f"{where}.sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise _fail(f"{where}.n_trials", f"must be a whole number of trials, at least 1; got {n_trials!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise _fail(f"{where}.timeout", f"must be a positive number of seconds, got {timeout!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _fail(f"{where}.seed", f"must be a whole number, got {seed!r}")
        if storage is not None and (not isinstance(storage, str) or "://" not in storage):
            raise _fail(f"{where}.storage", f"must be a database URL such as sqlite:////path/optuna.db, "
                                            f"got {storage!r}")
        if not isinstance(space, dict) or not space:
            raise _fail(f"{where}.space", "must map each searched parameter to its range, e.g. "
                                          "{n_estimators: {int: [8, 512]}}")
        dimensions = tuple(Dimension.parse(str(name), value, f"{where}.space.{name}") for name, value in space.items())
        spec = cls(dimensions, n_trials, sampler, timeout, seed, storage, _pruner(raw.get("pruner", "median"),
                                                                                 f"{where}.pruner"))
        continuous = [d.name for d in dimensions if d.grid_values() is None]
        if sampler == "grid" and continuous:
            raise _fail(f"{where}.space.{continuous[0]}", "the grid sampler needs a step for a float range, "
                                                         "e.g. {float: [0.3, 1.0], step: 0.1}")
        return spec

    def validate(self, notebook: Path, fixed: dict, runtime: tuple[str, ...], where: str) -> None:
        """Every searched parameter is one of the notebook's, and every value of its range one it takes."""
        declared = read_parameters(notebook)
        for dim in self.space:
            key = f"{where}.space.{dim.name}"
            if dim.name in runtime:
                raise _fail(key, f"parameter '{dim.name}' is set by the runner and cannot be searched")
            if dim.name in fixed:
                raise _fail(key, f"parameter '{dim.name}' is also fixed under parameters: search it or fix it")
            if dim.kind == "categorical" or dim.name not in declared:
                for value in dim.choices or (dim.low,):
                    check_values(notebook, {dim.name: value}, key)
                continue
            parameter = declared[dim.name]
            if not (parameter.accepts(dim.low) and parameter.accepts(dim.high)):
                article = "an" if dim.kind == "int" else "a"
                raise ParameterError(f"{key}: parameter '{dim.name}' of notebook {notebook} takes "
                                     f"{parameter.type_name}, but the space gives it {article} {dim.kind} range "
                                     f"[{dim.low:g}, {dim.high:g}]")

    @property
    def limit(self) -> int:
        """Trials to finish: n_trials, or every point of the grid if fewer."""
        return min(self.n_trials, self.grid_size() or self.n_trials)

    def grid_size(self) -> int | None:
        if self.sampler != "grid":
            return None
        return math.prod(len(d.grid_values()) for d in self.space)

    def describe(self) -> str:
        return f"{self.sampler}, {self.n_trials} trials: " + ", ".join(d.describe() for d in self.space)

    def defaults(self, notebook: Path) -> dict:
        """The notebook's own defaults of the searched parameters that lie in the space: a new study's
        first trial (not the grid sampler's), so that a search never ends worse than the notebook as it is."""
        if self.sampler == "grid":
            return {}
        declared = read_parameters(notebook)
        return {d.name: declared[d.name].default for d in self.space if d.contains(declared[d.name].default)}

    def identity(self) -> dict:
        """What makes one study (n_trials, timeout and storage do not: more trials extend it)."""
        return {"sampler": self.sampler, "seed": self.seed, "pruner": self.pruner,
                "space": [dataclasses.asdict(d) for d in self.space]}

    def distributions(self) -> dict:
        return {d.name: d.distribution() for d in self.space}

    def space_json(self) -> str:
        from optuna.distributions import distribution_to_json

        return json.dumps({name: distribution_to_json(d) for name, d in self.distributions().items()})

    def make_sampler(self, offset: int, parallel: bool):
        """The sampler; a random or TPE seed moved on by ``offset`` (trials so far), so that a resumed
        search does not draw its first trials again (the grid's seed orders the grid: never moved)."""
        import optuna

        if self.sampler == "grid":
            return _GridSampler()({d.name: d.grid_values() for d in self.space}, seed=self.seed)
        seed = None if self.seed is None else self.seed + offset
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=parallel)


def _GridSampler():
    """Optuna's grid sampler for ask-and-tell: it would ``study.stop()`` itself once the grid is done,
    which only an ``optimize`` loop allows; the search stops by itself when every point is asked."""
    import optuna

    class AskAndTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return AskAndTellGridSampler


def _pruner(raw: Any, where: str) -> dict:
    settings = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(settings, dict) or settings.get("name") not in PRUNERS:
        raise _fail(where, f"must be one of {', '.join(PRUNERS)}, or {{name: median, n_startup_trials: 5, "
                           f"n_warmup_steps: 0}}; got {raw!r}")
    _no_unknown(settings, {"name", "n_startup_trials", "n_warmup_steps"}, where)
    for key, default in (("n_startup_trials", 5), ("n_warmup_steps", 0)):
        value = settings.setdefault(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(f"{where}.{key}", f"must be a whole number, 0 or more; got {value!r}")
    return dict(settings)


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
    failed: int = 0  # not counting trials cut short by a runner that died (they are asked again)

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
        self.recover()
        if first and not self.study.get_trials(deepcopy=False):  # a new study: the notebook's defaults first
            self.study.enqueue_trial(first, user_attrs={DEFAULTS_ATTR: True})
        self.study.sampler = spec.make_sampler(len(self.study.get_trials(deepcopy=False)), parallel)
        self.distributions = spec.distributions()
        self.tally = self.count()

    def recover(self) -> None:
        """Trials left RUNNING by a runner that died (SIGKILL, power cut): FAIL, and asked again first."""
        for trial in self.study.get_trials(deepcopy=False, states=(self.states.RUNNING,)):
            if _runner_alive(trial.user_attrs.get(RUNNER_ATTR)):
                continue
            log.warning("study %s: trial %d was cut short by a runner that stopped; running it again",
                        self.name, trial.number)
            self.study.tell(trial.number, state=self.states.FAIL)
            if trial.params:
                self.study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})

    def count(self) -> Tally:
        everything = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(RETRY_ATTR) for t in everything}
        return Tally(completed=sum(t.state == self.states.COMPLETE for t in everything),
                     pruned=sum(t.state == self.states.PRUNED for t in everything),
                     failed=sum(t.state == self.states.FAIL and t.number not in retried for t in everything))

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
        self.metric, self.goal = (promote.metric, promote.goal) if promote else ("rmse", "minimize")
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
        return self.spec.sampler != "grid" or tally.finished + tally.failed + flying < self.spec.grid_size()

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


def trial_position(label: str, rank: dict[str, int]) -> tuple[int, int]:
    """Where a result goes in summary.json: a trial right after its search's place, by number."""
    if label in rank:
        return rank[label], 0
    base, infix, number = label.rpartition(TRIAL_INFIX)
    if infix and number.isdigit() and base + SEARCH_SUFFIX in rank:
        return rank[base + SEARCH_SUFFIX], int(number) + 1
    return len(rank), 0


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
                        key=lambda p: -p["metrics"][metric] if goal == "maximize" else p["metrics"][metric])
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
