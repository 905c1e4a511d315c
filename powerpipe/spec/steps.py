"""The pipeline rendered once: every notebook execution, in order, built from the config.

``build_steps`` turns a ``PipelineConfig`` into ``Step``s (the process notebook, one step per
training grid point, one per search, compare, report). ``--dry-run`` prints them with placeholder
runtime values; a run executes the very same steps with the values it learns as it goes (``Runtime``).
A search's step stands for all its trials (``--dry-run``: one line); ``powerpipe.search`` runs each
trial as a copy of it with the trial's label, parameters, tags and environment. The runner's
own parameter names are declared once, in ``config.RUNTIME_PARAMETERS``; ``Runtime`` has a field of
each name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from powerpipe.core import paths, tags
from powerpipe.core.constants import DEFAULT_GOAL, DEFAULT_METRIC
from powerpipe.spec.config import KEYED_RUNTIME_PARAMETERS, RUNTIME_PARAMETERS, SEARCH_SUFFIX, NotebookSpec, PipelineConfig
from powerpipe.spec.parameterize import read_parameters


FIGURES_PARAMETER = "figures"  # a notebook parameter: False draws no figure (``without_figures``)


@dataclass(frozen=True)
class Runtime:
    """The runner's own parameter values; placeholders until the run knows them."""

    input_path: Any = "<data>"
    output_path: Any = f"<run>/data/{paths.PROCESSED_DATA_NAME}"
    data_path: Any = "<processed data>"
    evaluation: Any = None
    parent_run_id: Any = "<pipeline run>"
    run_ids: Any = "<training runs>"
    metric: Any = DEFAULT_METRIC
    goal: Any = DEFAULT_GOAL
    model_uri: Any = "<production model version>"
    synthetic_data: Any = "<whether the data is synthetic>"
    monitoring_path: Any = "<run>/monitoring.json"  # what monitoring found before training (as_of, alerts, ...)

    @classmethod
    def planned(cls, config: PipelineConfig) -> "Runtime":
        """What the config alone tells; the rest stays a placeholder (``--dry-run``, and a run's start)."""
        promote = config.promote
        return cls(evaluation=config.evaluation, metric=promote.metric if promote else DEFAULT_METRIC,
                   goal=promote.goal if promote else DEFAULT_GOAL,
                   model_uri=f"models:/{promote.model_name}/<version @{promote.alias}>" if promote else None)


assert set(f.name for f in fields(Runtime)) == {n for names in RUNTIME_PARAMETERS.values() for n in names}


@dataclass(frozen=True)
class Step:
    """One notebook execution: the notebook, its config parameters (shown and cached), where it lands."""

    spec: NotebookSpec
    label: str  # file-name-safe name of this execution
    shown: dict[str, Any]  # the config's parameters: summary.json and MLflow params show these
    folder: str  # relative to the run folder
    runtime_names: tuple[str, ...]  # the runner's own parameters for this notebook
    extra_tags: dict[str, str] = field(default_factory=dict)  # on its MLflow run besides the usual (a trial's)
    env: dict[str, str] = field(default_factory=dict)  # in its kernel's environment besides its run (a trial's)
    # Passed and keyed but not its configuration (``shown``: what grid point it is): a replay's figures=False.
    extra_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def is_search(self) -> bool:
        """A search: it stands for its trials, which the pipeline runs in its place."""
        return self.spec.search is not None and self.label.endswith(SEARCH_SUFFIX)

    @property
    def executions(self) -> int:
        """How many notebook executions it stands for (a search: at most its number of trials)."""
        return self.spec.search.n_trials if self.is_search else 1

    @property
    def notebook(self) -> Path:
        return self.spec.notebook

    def parameters(self, runtime: Runtime) -> dict[str, Any]:
        """Everything passed to the notebook."""
        return {**self.shown, **self.extra_parameters, **{name: getattr(runtime, name) for name in self.runtime_names}}

    def cache_parameters(self, runtime: Runtime) -> dict[str, Any]:
        """What, besides the notebook and its input data, decides the result (no per-run paths)."""
        keyed = {name: getattr(runtime, name) for name in self.runtime_names if name in KEYED_RUNTIME_PARAMETERS}
        return {**self.shown, **self.extra_parameters, **keyed}


def without_figures(step: Step) -> Step:
    """``step`` drawing no figures, if its notebook takes ``figures`` (the model notebooks do); its metrics,
    tables and model stay. A replay's weeks without reports: nobody opens those figures."""
    if FIGURES_PARAMETER not in read_parameters(step.notebook):
        return step
    extra = {**step.extra_parameters, FIGURES_PARAMETER: False}
    # Tagged on its run, so that the figures missing from it are explained there.
    return replace(step, extra_parameters=extra,
                   extra_tags={**step.extra_tags, tags.EXTRA_PARAMETERS: json.dumps(extra, sort_keys=True)})


def build_steps(config: PipelineConfig) -> list[Step]:
    """Every notebook execution of the pipeline, in pipeline order."""
    def single(spec: NotebookSpec | None) -> list[Step]:
        if spec is None:
            return []
        return [Step(spec, spec.name, dict(spec.parameters), spec.stage, config.runtime_parameters(spec.stage))]

    def training(spec: NotebookSpec) -> list[Step]:
        names = config.runtime_parameters("train")
        if spec.search is not None:
            return [Step(spec, spec.search_label, {"search": spec.search.describe()}, f"train/{spec.name}", names)]
        return [Step(point.spec, point.label, dict(point.parameters), f"train/{point.spec.name}", names)
                for point in spec.grid_points()]

    return [*single(config.process), *(step for spec in config.train for step in training(spec)),
            *single(config.compare), *single(config.report)]
