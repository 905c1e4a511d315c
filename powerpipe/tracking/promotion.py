"""Pick the best successful training run and move the registry alias (``production``) to it.

Nothing here touches MLflow's global state: every call goes through the client it is given, and
the production model is loaded from its downloaded artifacts.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from powerpipe.core.constants import Goal
from powerpipe.core import tags
from powerpipe.spec.config import METRICS, PROBABILISTIC_METRICS, PromoteSpec
from powerpipe.tracking import alias_history
from powerpipe.tracking.alias_history import FORCED_PROMOTION, PROMOTION, REFRESH
from powerpipe.core.exceptions import StoreUnreachableError

log = logging.getLogger(__name__)

# What an absent model or alias is called by MLflow's stores (SQL: the first two; REST: the same codes).
NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
# Kept with the version's scores so monitoring can set live coverage beside the holdout's.
INTERVAL_COVERAGE = ("solar_coverage_80", "wind_coverage_80")
MAX_ATTEMPTS = 3  # comparisons with an alias holder that another pipeline keeps moving


@dataclass(frozen=True)
class Candidate:
    run_id: str
    status: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    run_id: str  # the run whose model the version is: the refit run, or the evaluated run when refit is off
    metric: str
    value: float
    evaluated_run_id: str = ""  # the run whose holdout and backtest scores chose it
    refit_run_id: str | None = None  # the refit of the evaluated run (on every hour), whose model was registered
    action: str = "promotion"  # alias_history.ACTIONS

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "metric": self.metric,
                "value": self.value, "evaluated_run_id": self.evaluated_run_id or self.run_id,
                "refit_run_id": self.refit_run_id, "action": self.action}


@dataclass(frozen=True)
class Champion:
    """The alias holder's configuration retrained on this run's split: its score is the holder's, like for like."""

    run_id: str
    value: float | None  # None: it failed or has no such metric (then the holder's model is re-scored)


@dataclass(frozen=True)
class Registration:
    """What to register for a candidate the gate let through: the run whose model it is, and its last hour learnt."""

    run_id: str
    trained_until: str = ""  # ISO time; "" unknown
    refit: bool = False  # the run is a refit of the candidate (on every hour)


def best_candidate(candidates: list[Candidate], spec: PromoteSpec) -> Candidate | None:
    """The successful run with the best finite value of the metric; failed runs never qualify."""
    scored = [
        c for c in candidates
        if c.status == "ok" and isinstance(c.metrics.get(spec.metric), (int, float))
        and math.isfinite(c.metrics[spec.metric])
    ]
    if not scored:
        return None
    pick = min if spec.goal == Goal.MINIMIZE else max
    return pick(scored, key=lambda c: c.metrics[spec.metric])


def alias_holder(client, spec: PromoteSpec):
    """The model version holding the alias now, or None if there is none; StoreUnreachableError if the
    store did not answer (never mistaken for "no model")."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(spec.model_name, spec.alias)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            return None
        raise StoreUnreachableError(f"the tracking store did not answer whether a model holds "
                                    f"models:/{spec.model_name}@{spec.alias}: {_first_line(exc)}") from None
    except OSError as exc:
        raise StoreUnreachableError(f"the tracking store is unreachable: {exc}") from None


def load_version(client, name: str, version: str):
    """A registered version as a pyfunc model, downloaded through ``client`` (no global tracking URI)."""
    import mlflow

    from powerpipe.forecast.serving import load_pyfunc

    uri = client.get_model_version_download_uri(name, version)
    # Loaded whole into memory: the downloaded files can go (a weekly gate left a copy of the model each time).
    with tempfile.TemporaryDirectory(prefix="powerpipe-model-") as folder:
        return load_pyfunc(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder,
                                                               tracking_uri=client.tracking_uri))


# What a run that says nothing of its split was scored on: the tutorial's shuffled split of hours.
TUTORIAL_SPLIT = {"split": "random", "test_size": 0.2, "random_state": 42}


def challenger_evaluation(client, run_id: str, declared: dict | None) -> dict:
    """The split the challenger was scored on: the pipeline's declared one, else its run's tag, else the tutorial's."""
    if declared is not None:
        return declared
    from powerpipe.forecast.evaluation import from_tag

    tagged = from_tag(client.get_run(run_id).data.tags.get(tags.EVALUATION))
    return tagged.as_dict() if tagged is not None else TUTORIAL_SPLIT


def evaluate_version(client, name: str, version: str, data_path: Path, metric: str, evaluation: dict) -> float:
    """The registered model's ``metric`` on the test rows of ``data_path`` under ``evaluation`` (the
    challenger's split), fed the raw schema every logged model takes."""
    from powerpipe.forecast import data, modeling
    from powerpipe.forecast.evaluation import holdout

    model = load_version(client, name, version)
    _, X_test, _, y_test = holdout(data.load_processed(data_path), evaluation)
    if metric in PROBABILISTIC_METRICS:  # from its quantiles (a model without: its points, taken as certain)
        from powerpipe.forecast.quantile_model import crps_of_model

        return crps_of_model(model, X_test, y_test)[metric]
    return modeling.evaluate(y_test, modeling.predictions_frame(model.predict(X_test)).to_numpy())[metric]


def promote(client, candidates: list[Candidate], spec: PromoteSpec, pipeline_run_id: str,
            data_path: Path, force: bool = False, evaluation: dict | None = None,
            _attempt: int = 1, champion: Champion | None = None,
            register: Callable[[Candidate], Registration | None] | None = None,
            data_end: str | None = None) -> Promotion | None:
    """Give ``spec.alias`` to the best candidate if it beats the current holder on the same test data.

    None when nothing moved: no run succeeded, the best run already holds the alias, or it does not
    beat it (unless ``force``). Each move is recorded on the new version (previous version, both
    metric values, the pipeline run, the evaluated run, the last hour learnt) and in the alias history.

    ``champion``: the holder's configuration retrained as a point of this run (``powerpipe.run.refit``):
    its score is the holder's, on the very hours the candidates were scored on and that neither has
    learnt; without it (or if it failed) the holder's registered model is re-scored on the challenger's
    split. ``register``: called once the gate let a candidate through, returns what to register (the
    candidate refit on every hour) or None (the refit failed: nothing is promoted). ``data_end``: the
    data's last hour when refitting: a holder of the winning configuration that learnt less is refreshed.
    """
    best = best_candidate(candidates, spec)
    if best is None:
        log.warning("no successful training run has metric %r: nothing promoted; @%s stays where it was",
                    spec.metric, spec.alias)
        return None
    value = float(best.metrics[spec.metric])
    current = alias_holder(client, spec)
    previous_value = None
    action, compared = (FORCED_PROMOTION if force else PROMOTION), "nothing held the alias"
    same = current is not None and (best.run_id in (current.run_id, (current.tags or {}).get(tags.EVALUATED_RUN))
                                    or (champion is not None and champion.run_id == best.run_id))
    if same:
        if not _stale(current, data_end):
            log.info("%s version %s (configuration of run %s) is already @%s: nothing new to promote",
                     spec.model_name, current.version, best.run_id, spec.alias)
            return None
        # Its configuration won again, and the data now goes further than it learnt: refit it on all of it.
        action, previous_value, compared = REFRESH, value, "the same configuration won again"
        log.info("@%s version %s won again on this split; refitting it on the newer data (to %s)", spec.alias,
                 current.version, data_end)
    elif current is not None:
        holder = f"{spec.model_name}/{current.version}"
        if client.get_run(best.run_id).data.tags.get(tags.GATE_LOST_TO) == holder and not force:
            log.info("best run %s was already compared with @%s version %s and kept out: nothing new to "
                     "promote", best.run_id, spec.alias, current.version)
            return None
        if champion is not None and champion.value is not None and math.isfinite(champion.value):
            previous_value = champion.value  # like for like: the same hours, learnt by neither
            compared = f"the holder's configuration retrained on the same split (run {champion.run_id})"
            log.info("@%s version %s's configuration, retrained on this split (run %s): %s=%.4g", spec.alias,
                     current.version, champion.run_id, spec.metric, previous_value)
        else:
            split = challenger_evaluation(client, best.run_id, evaluation)
            _say_if_other_evaluation(client, current, spec.alias, split)
            compared = "the holder's model re-scored on the challenger's split"
            try:
                previous_value = evaluate_version(client, spec.model_name, current.version, data_path,
                                                  spec.metric, split)
            except Exception as exc:  # noqa: BLE001 - boundary: a production model that cannot even be loaded is replaced
                log.warning("could not evaluate @%s version %s (%s: %s): it will be replaced", spec.alias,
                            current.version, type(exc).__name__, exc)
        # Equal within rounding is not better: the same model re-scored must not replace itself.
        better = previous_value is None or (not math.isclose(value, previous_value, rel_tol=1e-9) and (
            value < previous_value if spec.goal == Goal.MINIMIZE else value > previous_value))
        if not better and not force:
            client.set_tag(best.run_id, tags.GATE_LOST_TO, holder)
            log.warning("best new run %s has %s=%.4g, not better than @%s version %s (%.4g on the same test "
                        "data): production model kept (--force-promote overrides)", best.run_id, spec.metric,
                        value, spec.alias, current.version, previous_value)
            return None
    # Check-and-set: another pipeline on the same store may have moved the alias while this one
    # evaluated; then compare again with the new holder rather than move the alias past it.
    moved = alias_holder(client, spec)
    if (moved.version if moved else None) != (current.version if current else None):
        if _attempt >= MAX_ATTEMPTS:
            log.warning("@%s kept moving while this pipeline compared: nothing promoted", spec.alias)
            return None
        log.info("@%s moved to version %s meanwhile: comparing with it", spec.alias, moved.version if moved else "-")
        return promote(client, candidates, spec, pipeline_run_id, data_path, force, evaluation, _attempt + 1,
                       champion, register, data_end)
    registration = register(best) if register is not None else Registration(best.run_id)
    if registration is None:  # the refit failed: its step says why
        log.error("nothing promoted: the model to register (the refit of run %s) could not be made", best.run_id)
        return None
    if registration.refit:  # the refit took a while: the alias must still be where the gate found it
        moved = alias_holder(client, spec)
        if (moved.version if moved else None) != (current.version if current else None):
            log.warning("@%s moved to version %s while run %s was refit: nothing promoted", spec.alias,
                        moved.version if moved else "-", best.run_id)
            return None
    version = _register(client, registration.run_id, spec.model_name)
    client.set_registered_model_alias(spec.model_name, spec.alias, version)
    promoted_at = datetime.now(timezone.utc)
    version_tags = {
        tags.PROMOTED_AT: promoted_at.isoformat(timespec="seconds"),
        tags.ALIAS: spec.alias,
        tags.METRIC: spec.metric,
        tags.METRIC_VALUE: repr(value),
        tags.PIPELINE_RUN_ID: pipeline_run_id,
        tags.PREVIOUS_VERSION: str(current.version) if current else "",
        tags.PREVIOUS_METRIC_VALUE: repr(previous_value) if previous_value is not None else "",
        tags.FORCED: tags.flag(force),
        tags.EVALUATED_RUN: best.run_id,
        tags.SCORES: json.dumps({k: float(v) for k, v in sorted(best.metrics.items())
                                 if (k in METRICS or k in INTERVAL_COVERAGE) and isinstance(v, (int, float))
                                 and math.isfinite(v)}),
        **({tags.TRAINED_UNTIL: registration.trained_until} if registration.trained_until else {}),
    }
    for key, tag in version_tags.items():
        client.set_model_version_tag(spec.model_name, version, key, tag)
    refit_run = registration.run_id if registration.refit else None
    alias_history.record(client, spec.model_name, alias_history.AliasMove(
        alias=spec.alias, action=action, from_version=str(current.version) if current else "",
        to_version=str(version), at=version_tags[tags.PROMOTED_AT], pipeline_run_id=pipeline_run_id,
        by=f"pipeline run {pipeline_run_id}", metric=spec.metric, value=value, previous_value=previous_value,
        compared=compared, evaluated_run_id=best.run_id, registered_run_id=registration.run_id,
        trained_until=registration.trained_until), promoted_at)
    log.info("promoted %s version %s (run %s%s, %s=%.4g%s) to @%s", spec.model_name, version, best.run_id,
             f", refit as run {refit_run}" if refit_run else "", spec.metric, value,
             f"; previous version {current.version}: {previous_value:.4g}"
             if current and previous_value is not None else "", spec.alias)
    return Promotion(spec.model_name, str(version), registration.run_id, spec.metric, value,
                     evaluated_run_id=best.run_id, refit_run_id=refit_run, action=action)


def _stale(current, data_end: str | None) -> bool:
    """Whether the holder learnt less than the data now holds (``data_end``: None when not refitting)."""
    if not data_end:
        return False
    learnt = (current.tags or {}).get(tags.TRAINED_UNTIL, "")
    if not learnt:
        return True  # registered before refits, on its training window
    try:
        return datetime.fromisoformat(learnt) < datetime.fromisoformat(data_end)
    except ValueError:
        return True


def _say_if_other_evaluation(client, current, alias: str, evaluation: dict) -> None:
    """The holder is re-scored on the challenger's split; say so when it was chosen on another."""
    import json

    from powerpipe.forecast.evaluation import describe_tag, from_tag

    recorded = client.get_run(current.run_id).data.tags.get(tags.EVALUATION, "") if current.run_id else ""
    holder_split = from_tag(recorded)
    if holder_split is None or holder_split.as_dict() != evaluation:
        log.warning("@%s version %s was scored on %s; it is re-scored on the challenger's %s to compare them",
                    alias, current.version, describe_tag(recorded) or "an unrecorded split",
                    describe_tag(json.dumps(evaluation)))


def _register(client, run_id: str, name: str) -> str:
    """A new version of ``name`` from the model the run logged (MLflow 3: a logged model with an id)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND_CODES:
            raise
        client.create_registered_model(name)
    outputs = client.get_run(run_id).outputs
    model_outputs = sorted(outputs.model_outputs, key=lambda o: o.step) if outputs else []
    if model_outputs:  # its own artifact location: registering never resolves `models:/<id>` globally
        model_id = model_outputs[-1].model_id
        source = client.get_logged_model(model_id).artifact_location
        version = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id)
    else:  # a model saved as plain run artifacts
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{tags.MODEL_ARTIFACT}"
        version = client.create_model_version(name, source=source, run_id=run_id)
    return str(version.version)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
