"""The promote stage of the weekly loop: a like-for-like gate, then the winner refit on every hour.

1. **The champion, retrained.** The configuration of the model that holds the alias (its evaluated
   run's notebook and parameters) is one more point of this run's training grid (label
   ``<notebook>__champion_v<version>``, tagged ``powerpipe.champion_of``), unless an identical grid point
   is already there: then that point stands for it. Champion and challengers are so scored on the same
   hours, none of which either has learnt; its score is the holder's in the gate (``promotion.promote``).
   Where that is impossible (no holder, a holder whose run or notebook is gone, parameters the notebook
   no longer takes, a failed retrain) the gate re-scores the holder's model as before, and says so.
2. **The winner, refit.** Once the gate lets a candidate through, its notebook runs again with its
   parameters and ``evaluation: {split: none}`` (every hour learnt, nothing scored, no backtest, no
   figures), as a ``promote``-stage child run tagged ``powerpipe.refit_of`` the evaluated run, through
   the same ``StepRunner`` as every notebook (cache, kernels, failures). That model is registered; its
   version records ``trained_until`` (the data's last hour), the evaluated run and its scores. A
   failed refit promotes nothing. ``stages.promote.refit: false`` registers the evaluated run's model
   (``trained_until``: the last hour of its training window).

In a whole run the champion trains beside the grid; in a stage-by-stage run (a scheduler's tasks), in
the promote stage, if no grid point stood for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from powerpipe.core import tags
from powerpipe.core.constants import DONE, OK
from powerpipe.core.exceptions import ConfigError, PipelineError
from powerpipe.execution.results import StepResult
from powerpipe.spec.config import PipelineConfig
from powerpipe.spec.parameterize import check_values, read_parameters
from powerpipe.spec.steps import Step, without_figures

log = logging.getLogger(__name__)

REFIT_EVALUATION = {"split": "none"}  # what the refit passes as `evaluation`: every hour learnt, none held out
REFIT_FOLDER = "promote"  # in the run folder: promote/<winner label>__refit.ipynb
REFIT_SUFFIX = "__refit"
CHAMPION_INFIX = "__champion_v"


def refit_enabled(config: PipelineConfig) -> bool:
    """Whether the winner is refit before it is registered: ``stages.promote.refit``; left out, when every
    training notebook takes ``evaluation`` (how the refit is told to learn every hour)."""
    spec = config.promote
    if spec is None or spec.refit is False:
        return False
    if spec.refit is True:
        return True
    able = all("evaluation" in read_parameters(train.notebook) for train in config.train)
    if not able:
        log.info("refit off: not every training notebook takes `evaluation`; the evaluated run's model is "
                 "registered (set stages.promote.refit to say so)")
    return able


@dataclass(frozen=True)
class ChampionPlan:
    """How the alias holder's configuration takes part in this run."""

    holder: str  # "<model>/<version>"
    version: str
    evaluated_run_id: str  # the run whose configuration it is
    label: str  # the step whose result is its score: an identical grid point's, or ``step``'s
    step: Step | None  # the extra grid point to run; None when an identical grid point stands for it


NO_CHAMPION = ChampionPlan("", "", "", "", None)  # planned: nothing holds the alias, or it cannot be retrained


def _canonical(parameters: dict) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)


def plan_champion(pipeline) -> ChampionPlan | None:
    """The holder's configuration as a point of this run's grid, or None (no holder, or it cannot be retrained)."""
    from mlflow.exceptions import MlflowException

    from powerpipe.tracking.promotion import NOT_FOUND_CODES, alias_holder

    spec = pipeline.config.promote
    if spec is None:
        return None
    client = pipeline.recorder.client
    current = alias_holder(client, spec)
    if current is None:
        return None
    holder = f"{spec.model_name}/{current.version}"
    evaluated = (current.tags or {}).get(tags.EVALUATED_RUN) or current.run_id
    why = None
    run = None
    if not evaluated:
        why = "it records no run"
    else:
        try:
            run = client.get_run(evaluated)
        except MlflowException as exc:
            if exc.error_code not in NOT_FOUND_CODES:
                raise
            why = f"its run {evaluated} is gone"
    notebook = run.data.tags.get(tags.NOTEBOOK, "") if run else ""
    shown_json = run.data.tags.get(tags.PARAMETERS) if run else None
    if run is not None and (not notebook or shown_json is None):
        why = f"its run {evaluated} records no notebook or parameters"
    if why is None:
        shown = json.loads(shown_json)
        for step in pipeline.of_stage("train"):
            if not step.is_search and step.notebook.name == notebook and _canonical(step.shown) == _canonical(shown):
                log.info("@%s %s: its configuration is grid point %s of this run", spec.alias, holder, step.label)
                return ChampionPlan(holder, str(current.version), evaluated, step.label, None)
        specs = [train for train in pipeline.config.train if train.notebook.name == notebook]
        if not specs:
            why = f"this pipeline does not train its notebook {notebook}"
        else:
            try:
                check_values(specs[0].notebook, shown, f"the configuration of {holder}")
            except ConfigError as exc:
                why = str(exc)
    if why is not None:
        log.warning("@%s %s cannot be retrained on this run's split (%s): its registered model is re-scored "
                    "instead", spec.alias, holder, why)
        return None
    notebook_spec = dataclasses.replace(specs[0], parameters=dict(shown), grid={}, search=None)
    step = Step(notebook_spec, f"{notebook_spec.name}{CHAMPION_INFIX}{current.version}", dict(shown),
                f"train/{notebook_spec.name}", pipeline.config.runtime_parameters("train"),
                extra_tags={tags.CHAMPION_OF: holder})
    if not getattr(pipeline.options, "figures", True):
        step = without_figures(step)
    return ChampionPlan(holder, str(current.version), evaluated, step.label, step)


def champion_calls(pipeline) -> list:
    """What the training stage runs beside its grid for the champion: [run_champion] when promoting."""
    return [lambda: run_champion(pipeline)] if pipeline.config.promote is not None else []


def run_champion(pipeline) -> list[StepResult]:
    """Plan the champion (kept on the pipeline for the promote stage) and, if no grid point stands for it,
    train its configuration like a grid point. Returns []: its result is recorded (summary.json) and read by
    the promote stage, but it is no challenger (not in the leaderboard; alone, it is not "a training run
    that succeeded")."""
    plan = plan_champion(pipeline)
    pipeline.champion = plan or NO_CHAMPION  # the promote stage asks the store again only if never planned
    _train_champion(pipeline, plan)
    return []


def _train_champion(pipeline, plan: ChampionPlan | None) -> list[StepResult]:
    if plan is None or plan.step is None:
        return []
    _add_step(pipeline, plan.step, before="compare")
    log.info("retraining the configuration of @%s (%s) on this run's split", plan.holder, plan.step.label)
    return [pipeline.run_step(plan.step)]


def _add_step(pipeline, step: Step, before: str) -> None:
    """List a step decided during the run where summary.json should show it: before the first step of ``before``."""
    position = next((i for i, s in enumerate(pipeline.steps) if s.stage == before), len(pipeline.steps))
    if all(s.label != step.label for s in pipeline.steps):
        pipeline.steps.insert(position, step)


def run_promote(pipeline, trained: list[StepResult]):
    """The promote stage: the gate (like for like), then the refit of the winner, then the registry."""
    from powerpipe.tracking.promotion import Candidate, Champion, Registration, promote

    config, recorder = pipeline.config, pipeline.recorder
    spec = config.promote
    if spec is None:
        return None
    plan = getattr(pipeline, "champion", None)
    plan = plan_champion(pipeline) if plan is None else None if plan is NO_CHAMPION else plan
    results = {r.label: r for r in recorder.results}
    champion_result = results.get(plan.label) if plan else None
    if plan is not None and plan.step is not None and champion_result is None:  # a stage-by-stage run
        champion_result = _train_champion(pipeline, plan)[0]
    champion = None
    if champion_result is not None:
        value = (champion_result.metrics or {}).get(spec.metric)
        if champion_result.status in DONE and isinstance(value, (int, float)):
            champion = Champion(champion_result.mlflow_run_id, float(value))
        else:
            log.warning("the retrained configuration of @%s (%s) has no %s (%s): its registered model is re-scored "
                        "instead", plan.holder, plan.label, spec.metric, champion_result.status)
    extra = plan.step.label if plan is not None and plan.step is not None else None
    candidates = [Candidate(r.mlflow_run_id, OK, r.metrics) for r in trained
                  if r.mlflow_run_id and r.label != extra]
    by_run = {r.mlflow_run_id: r for r in trained if r.mlflow_run_id}
    refit = refit_enabled(config)
    data_path = Path(pipeline.runtime.data_path)

    def register(candidate: Candidate) -> Registration | None:
        if not refit:
            return Registration(candidate.run_id, training_end(recorder.client, candidate.run_id, data_path,
                                                               pipeline.runtime.evaluation))
        result = run_refit(pipeline, by_run[candidate.run_id])
        if result.status not in DONE or not result.mlflow_run_id:
            log.error("the refit of run %s on every hour failed (%s): nothing promoted", candidate.run_id,
                      result.error or result.status)
            return None
        return Registration(result.mlflow_run_id, data_end(data_path), refit=True)

    return promote(recorder.client, candidates, spec, recorder.run_id, data_path, force=pipeline.force_promote,
                   evaluation=pipeline.runtime.evaluation,  # a relative test window, as resolved for this run
                   champion=champion, register=register,
                   data_end=data_end(data_path) if refit else None)


def refit_step(pipeline, winner: StepResult) -> Step:
    """The winner's notebook and parameters as a promote-stage step that learns every hour."""
    specs = [train for train in pipeline.config.train if train.notebook.name == winner.notebook]
    if not specs:
        raise ConfigError(f"the winner's notebook {winner.notebook} is not a training notebook of this pipeline")
    shown = dict(winner.parameters or {})
    notebook_spec = dataclasses.replace(specs[0], stage="promote", parameters=shown, grid={}, search=None)
    return Step(notebook_spec, f"{winner.label or notebook_spec.name}{REFIT_SUFFIX}", shown, REFIT_FOLDER,
                ("data_path", "evaluation"), extra_tags={tags.REFIT_OF: winner.mlflow_run_id or ""})


def run_refit(pipeline, winner: StepResult) -> StepResult:
    """Execute the refit of ``winner`` (or reuse a cached one of the same inputs); its result is recorded."""
    step = refit_step(pipeline, winner)
    _add_step(pipeline, step, before="report")
    # The pipeline's quantile levels go along: the refitted model answers the same intervals.
    levels = (pipeline.runtime.evaluation or {}).get("quantiles")
    runtime = dataclasses.replace(pipeline.runtime, evaluation=dict(REFIT_EVALUATION, **(
        {"quantiles": levels} if levels else {})))
    log.info("refitting %s (run %s) on every hour of the data", winner.label, winner.mlflow_run_id)
    return pipeline.runner.run(step, runtime, pipeline.data_sha256, (Path(runtime.data_path), pipeline.data_sha256),
                               render=getattr(pipeline.options, "render_notebooks", True))


def data_end(data_path: Path) -> str:
    """The data's last hour, ISO (what a refit learnt up to)."""
    from powerpipe.forecast import data

    return data.load_processed(data_path).index.max().isoformat()


def training_end(client, run_id: str, data_path: Path, declared: dict | None) -> str:
    """The last hour of the training window a run's model learnt ("" if it cannot be told)."""
    from powerpipe.forecast import data
    from powerpipe.forecast.evaluation import holdout
    from powerpipe.tracking.promotion import challenger_evaluation

    try:
        X_train = holdout(data.load_processed(data_path), challenger_evaluation(client, run_id, declared))[0]
        return X_train.index.max().isoformat() if len(X_train) else ""
    except (PipelineError, ValueError) as exc:
        log.warning("the training window of run %s cannot be told (%s): its version has no trained_until", run_id, exc)
        return ""
