"""The pipeline declared as data: load ``pipeline.yaml``, expand grids, check them against the notebooks.

Stages always run in this order; each is optional except ``train``:

    process -> train -> compare -> promote -> report

Notebook paths are relative to ``root`` (itself relative to the YAML file), by default the project root.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from powerpipe.core import paths
from powerpipe.core.exceptions import ConfigError
from powerpipe.core.constants import DEFAULT_GOAL, DEFAULT_METRIC, MODEL_NAME, PRODUCTION_ALIAS, STAGES, Goal
from powerpipe.spec.monitor import MonitorSpec, parse_monitor
from powerpipe.spec.parameterize import check_values, read_parameters

if TYPE_CHECKING:
    from powerpipe.spec.search_space import SearchSpec


BACKTEST_METRICS = ("backtest_r2", "backtest_rmse")
# The metrics the runner reads back from a notebook (summary.json, promotion).
# CRPS of the models' quantiles (powerpipe.forecast.scores): lowest wins, as for rmse.
PROBABILISTIC_METRICS = ("crps", "solar_crps", "wind_crps")
METRICS = ("rmse", "mae", "r2") + tuple(f"{t}_{m}" for t in ("solar", "wind") for m in ("rmse", "mae", "r2")) \
    + BACKTEST_METRICS + PROBABILISTIC_METRICS

# Parameters the runner itself passes to each stage's notebook, declared once: they must exist in
# its parameters cell and cannot be set in the config. ``steps.Runtime`` has a field of each name.
RUNTIME_PARAMETERS = {
    "process": ("input_path", "output_path"),
    "train": ("data_path", "evaluation"),
    "compare": ("parent_run_id", "run_ids", "metric", "goal"),
    "report": ("model_uri", "data_path", "synthetic_data", "monitoring_path"),
}
# Passed only when the pipeline file declares it (then every notebook of the stage must take it).
OPTIONAL_RUNTIME_PARAMETERS = {"evaluation"}
# Runtime parameters that decide a result, and so enter its cache key (paths do not: the data's
# SHA-256 does).
KEYED_RUNTIME_PARAMETERS = {"evaluation", "run_ids", "metric", "goal", "model_uri", "synthetic_data"}
# Labels of a search (``search:`` instead of ``grid:``): ``model_rf__search``, its trials ``model_rf__trial_7``.
SEARCH_SUFFIX = "__search"
TRIAL_INFIX = "__trial_"


@dataclass(frozen=True)
class NotebookSpec:
    """One notebook of a stage with its fixed parameters and its grid (lists of values per key), or
    instead of a grid a search (``powerpipe.search``: an Optuna study whose trials are executions)."""

    stage: str
    notebook: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    where: str = ""  # "file: stages.train[1]" for messages
    label_keys: tuple[str, ...] = ()  # fixed parameters named in labels (a notebook listed more than once)
    search: "SearchSpec | None" = None

    @property
    def name(self) -> str:
        return self.notebook.stem

    @property
    def search_label(self) -> str:
        """The search's label (``model_rf__search``); its trials' are ``model_rf__trial_<number>``."""
        return GridPoint(self, dict(self.parameters), {}).label + SEARCH_SUFFIX

    def grid_points(self) -> list["GridPoint"]:
        keys = list(self.grid)
        points = []
        for values in itertools.product(*(self.grid[k] for k in keys)) if keys else [()]:
            varying = dict(zip(keys, values))
            points.append(GridPoint(self, {**self.parameters, **varying}, varying))
        return points


@dataclass(frozen=True)
class GridPoint:
    spec: NotebookSpec
    parameters: dict[str, Any]
    varying: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def label(self) -> str:
        """File-name-safe name built from the notebook and the grid values: ``model_rf__max_depth_4``."""
        named = {**{k: self.parameters[k] for k in self.spec.label_keys}, **self.varying}
        return "__".join([self.spec.name] + [f"{k}_{_slug(v)}" for k, v in named.items()])


@dataclass(frozen=True)
class PromoteSpec:
    metric: str = DEFAULT_METRIC
    goal: str = DEFAULT_GOAL
    model_name: str = MODEL_NAME
    alias: str = PRODUCTION_ALIAS
    # Register the winner refit on every hour of the data (not the model fitted on its training window).
    # None (the key left out): refit when every training notebook takes ``evaluation`` (the refit's split).
    refit: bool | None = None


@dataclass(frozen=True)
class PipelineConfig:
    path: Path
    experiment: str
    timeout: float | None
    process: NotebookSpec | None
    train: list[NotebookSpec]
    compare: NotebookSpec | None
    promote: PromoteSpec | None
    report: NotebookSpec | None
    evaluation: dict[str, Any] | None = None  # how every model is scored (``powerpipe.evaluation``)
    monitor: "MonitorSpec | None" = None  # when the production model's live error is an alert (``monitor:``)

    def runtime_parameters(self, stage: str) -> tuple[str, ...]:
        """The runner's own parameters for a stage's notebooks under this config."""
        names = RUNTIME_PARAMETERS.get(stage, ())
        return tuple(name for name in names
                     if name not in OPTIONAL_RUNTIME_PARAMETERS or getattr(self, name, None) is not None)

    def training_points(self) -> list[GridPoint]:
        """The grid points of the training stage (a search's trials are not known before it runs)."""
        return [point for spec in self.train if spec.search is None for point in spec.grid_points()]

    def notebook_specs(self) -> list[NotebookSpec]:
        return [s for s in [self.process, *self.train, self.compare, self.report] if s is not None]


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "x"


def load_config(path: str | Path) -> PipelineConfig:
    """Parse and check a pipeline file; ConfigError names the file and the key at fault."""
    import yaml

    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"pipeline config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    _no_unknown(raw, {"experiment", "root", "timeout", "evaluation", "monitor", "stages"}, str(path))

    root_value = _typed(raw, "root", str, path, ".", default=None)
    root = (path.parent / root_value).resolve() if root_value is not None else paths.PROJECT_ROOT
    experiment = _typed(raw, "experiment", str, path, "experiment", default="predicting_wind_solar")
    timeout = _typed(raw, "timeout", (int, float), path, "timeout", default=None)
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"{path}: key 'timeout' must be a positive number of seconds, got {timeout}")

    evaluation = _evaluation(raw.get("evaluation"), path)
    monitor = parse_monitor(raw.get("monitor"), f"{path}: monitor")

    stages = raw.get("stages")
    if not isinstance(stages, dict):
        raise ConfigError(f"{path}: key 'stages' must be a mapping of {', '.join(STAGES)}")
    _no_unknown(stages, set(STAGES), f"{path}: stages")
    if "train" not in stages:
        raise ConfigError(f"{path}: stages.train is required")
    train_raw = stages["train"]
    if not isinstance(train_raw, list) or not train_raw:
        raise ConfigError(f"{path}: stages.train must be a non-empty list of notebooks")

    def notebook_spec(stage: str, entry: Any, key: str) -> NotebookSpec:
        where = f"{path}: {key}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with a 'notebook' key")
        _no_unknown(entry, {"notebook", "parameters", "grid", "search"}, where)
        notebook = entry.get("notebook")
        if not isinstance(notebook, str) or not notebook:
            raise ConfigError(f"{where}.notebook must name a notebook file")
        notebook_path = (root / notebook).resolve()
        if not notebook_path.is_file():
            raise ConfigError(f"{where}.notebook: notebook not found: {notebook_path}")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ConfigError(f"{where}.parameters must be a mapping")
        grid = entry.get("grid") or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"{where}.grid must be a mapping of parameter to a list of values")
        for name, values in grid.items():
            if not isinstance(values, list):
                raise ConfigError(f"{where}.grid.{name} must be a list of values, got {values!r}")
            if not values:
                raise ConfigError(f"{where}.grid.{name} is an empty list: the grid would have no points")
        search = None
        if entry.get("search") is not None:
            from powerpipe.spec.search_space import SearchSpec

            if stage != "train":
                raise ConfigError(f"{where}.search: {stage} runs once; a search is allowed only in stages.train")
            if grid:
                raise ConfigError(f"{where}: give either a grid or a search, not both")
            search = SearchSpec.parse(entry["search"], f"{where}.search")
        return NotebookSpec(stage, notebook_path, dict(parameters), dict(grid), where, search=search)

    train = [notebook_spec("train", e, f"stages.train[{i}]") for i, e in enumerate(train_raw)]
    listed = [spec.notebook for spec in train]
    # A notebook listed twice (say, with other fixed parameters): its labels name those too.
    train = [replace(spec, label_keys=tuple(spec.parameters)) if listed.count(spec.notebook) > 1 else spec
             for spec in train]
    seen: dict[str, str] = {}
    for spec in train:
        for label in [spec.search_label] if spec.search else [point.label for point in spec.grid_points()]:
            if label in seen:
                raise ConfigError(f"{spec.where}: grid point {label} is already in {seen[label]}; "
                                  "each grid point must differ in its notebook or parameters")
            seen[label] = spec.where
    single = {
        stage: notebook_spec(stage, stages[stage], f"stages.{stage}") if stages.get(stage) is not None else None
        for stage in ("process", "compare", "report")
    }
    for stage in ("process", "compare", "report"):
        if single[stage] is not None and single[stage].grid:
            raise ConfigError(f"{path}: stages.{stage} runs once; a grid is allowed only in stages.train")

    promote = None
    if stages.get("promote") is not None:
        entry = stages["promote"]
        where = f"{path}: stages.promote"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping")
        _no_unknown(entry, {"metric", "goal", "model_name", "alias", "refit"}, where)
        refit = entry.get("refit")
        if refit is not None and not isinstance(refit, bool):
            raise ConfigError(f"{where}.refit must be true or false, got {refit!r}")
        metric = _typed(entry, "metric", str, path, "stages.promote.metric", default="rmse")
        if metric not in METRICS:
            raise ConfigError(f"{where}.metric: unknown metric {metric!r}; one of {', '.join(METRICS)}")
        goal = _typed(entry, "goal", str, path, "stages.promote.goal",
                      default=Goal.MAXIMIZE if metric.endswith("r2") else Goal.MINIMIZE)
        if goal not in tuple(Goal):
            raise ConfigError(f"{where}.goal must be 'minimize' or 'maximize', got {goal!r}")
        promote = PromoteSpec(
            metric=metric,
            goal=goal,
            model_name=_typed(entry, "model_name", str, path, "stages.promote.model_name", default=MODEL_NAME),
            alias=_typed(entry, "alias", str, path, "stages.promote.alias", default=PRODUCTION_ALIAS),
            refit=refit,
        )
    if single["report"] is not None and promote is None:
        raise ConfigError(f"{path}: stages.report needs stages.promote (the report uses the promoted model)")

    return PipelineConfig(path, experiment, timeout, single["process"], train, single["compare"], promote,
                          single["report"], evaluation, monitor)


def _evaluation(raw: Any, path: Path) -> dict[str, Any] | None:
    """The ``evaluation:`` block, checked and with its defaults filled in (what the notebooks get)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: key 'evaluation' must be a mapping, e.g. {{split: time, test_start: "
                          "'2016-01-01'}")
    from powerpipe.forecast.evaluation import Evaluation

    try:
        if raw.get("test_start") is not None and raw.get("test_period") is not None:
            raise ConfigError("give either test_start (a fixed date) or test_period (the last weeks of the data, "
                              "e.g. '52w'), not both")
        evaluation = Evaluation.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: evaluation: {exc}") from None
    if not evaluation.has_test:
        raise ConfigError(f"{path}: evaluation: split: none scores nothing; it is what the runner passes to refit "
                          "the winner (stages.promote.refit)")
    return evaluation.as_dict()


def validate_parameters(config: PipelineConfig) -> None:
    """Check every grid key and value, every search range, and the runner's own parameters, against each
    notebook."""
    for spec in config.notebook_specs():
        runtime = config.runtime_parameters(spec.stage)
        declared = read_parameters(spec.notebook)
        missing = [key for key in runtime if key not in declared]
        if missing:
            raise ConfigError(
                f"{spec.where}: notebook {spec.notebook} must declare parameter(s) "
                f"{', '.join(missing)} in its parameters cell (the runner sets them)"
            )
        overridden = [key for key in (*spec.parameters, *spec.grid) if key in RUNTIME_PARAMETERS.get(spec.stage, ())]
        if overridden:
            raise ConfigError(
                f"{spec.where}: parameter '{overridden[0]}' is set by the runner and cannot be "
                "given in the config"
            )
        check_values(spec.notebook, spec.parameters, f"{spec.where}.parameters")
        for key, values in spec.grid.items():
            for value in values:
                check_values(spec.notebook, {key: value}, f"{spec.where}.grid.{key}")
        if spec.search is not None:
            spec.search.validate(spec.notebook, spec.parameters, RUNTIME_PARAMETERS.get(spec.stage, ()),
                                 f"{spec.where}.search")
        if spec.stage == "train" and config.promote is not None and config.promote.refit \
                and "evaluation" not in declared:
            raise ConfigError(f"{config.path}: stages.promote.refit: {spec.notebook.name} cannot be refit on every "
                              "hour: its parameters cell has no `evaluation` (the refit passes {split: none}); "
                              "declare it, or set refit: false")


def _no_unknown(mapping: dict, allowed: set[str], where: str) -> None:
    import difflib

    for key in mapping:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            raise ConfigError(
                f"{where}: unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                + f"; allowed: {', '.join(sorted(allowed))}"
            )


def _typed(mapping: dict, key: str, kind, path: Path, where: str, default: Any) -> Any:
    value = mapping.get(key, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{path}: key '{where}' must be {names}, got {value!r} ({type(value).__name__})")
    return value
