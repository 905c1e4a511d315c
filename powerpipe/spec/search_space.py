"""A ``search:`` block of the pipeline file, parsed and checked: its sampler, trials, pruner and space.

Declared here, with the pipeline file (``config``), so that parsing a pipeline needs neither Optuna nor
the search runner (``powerpipe.search.study``); Optuna is imported only to build a sampler. Also how a
trial's label relates to its search's (``trial_position``), which summary.json's order follows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powerpipe.core.exceptions import ConfigError, ParameterError
from powerpipe.spec.config import SEARCH_SUFFIX, TRIAL_INFIX, _no_unknown
from powerpipe.spec.parameterize import check_values, read_parameters

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
KINDS = ("int", "float", "categorical")


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


def trial_position(label: str, rank: dict[str, int]) -> tuple[int, int]:
    """Where a result goes in summary.json: a trial right after its search's place, by number."""
    if label in rank:
        return rank[label], 0
    base, infix, number = label.rpartition(TRIAL_INFIX)
    if infix and number.isdigit() and base + SEARCH_SUFFIX in rank:
        return rank[base + SEARCH_SUFFIX], int(number) + 1
    return len(rank), 0
