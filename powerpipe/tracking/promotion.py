"""Pick the best successful training run and move the registry alias (``production``) to it.

Nothing here touches MLflow's global state: every call goes through the client it is given, and
the production model is loaded from its downloaded artifacts.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from powerpipe.core.constants import Goal
from powerpipe.core import tags
from powerpipe.spec.config import PromoteSpec
from powerpipe.core.exceptions import StoreUnreachableError

log = logging.getLogger(__name__)

# What an absent model or alias is called by MLflow's stores (SQL: the first two; REST: the same codes).
NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
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
    run_id: str
    metric: str
    value: float

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "metric": self.metric,
                "value": self.value}


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

    uri = client.get_model_version_download_uri(name, version)
    folder = tempfile.mkdtemp(prefix="powerpipe-model-")
    return mlflow.pyfunc.load_model(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder,
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
    return modeling.evaluate(y_test, modeling.predictions_frame(model.predict(X_test)).to_numpy())[metric]


def promote(client, candidates: list[Candidate], spec: PromoteSpec, pipeline_run_id: str,
            data_path: Path, force: bool = False, evaluation: dict | None = None,
            _attempt: int = 1) -> Promotion | None:
    """Give ``spec.alias`` to the best candidate if it beats the current holder on the same test data.

    None when nothing moved: no run succeeded, the best run already holds the alias, or it does not
    beat it (unless ``force``). Each move is recorded on the new version: previous version, both
    metric values, the pipeline run.
    """
    best = best_candidate(candidates, spec)
    if best is None:
        log.warning("no successful training run has metric %r: nothing promoted; @%s stays where it was",
                    spec.metric, spec.alias)
        return None
    value = float(best.metrics[spec.metric])
    current = alias_holder(client, spec)
    previous_value = None
    if current is not None:
        if current.run_id == best.run_id:
            log.info("%s version %s (run %s) is already @%s: nothing new to promote", spec.model_name,
                     current.version, best.run_id, spec.alias)
            return None
        holder = f"{spec.model_name}/{current.version}"
        if client.get_run(best.run_id).data.tags.get(tags.GATE_LOST_TO) == holder and not force:
            log.info("best run %s was already compared with @%s version %s and kept out: nothing new to "
                     "promote", best.run_id, spec.alias, current.version)
            return None
        split = challenger_evaluation(client, best.run_id, evaluation)
        _say_if_other_evaluation(client, current, spec.alias, split)
        try:
            previous_value = evaluate_version(client, spec.model_name, current.version, data_path, spec.metric,
                                              split)
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
        return promote(client, candidates, spec, pipeline_run_id, data_path, force, evaluation, _attempt + 1)
    version = _register(client, best.run_id, spec.model_name)
    client.set_registered_model_alias(spec.model_name, spec.alias, version)
    version_tags = {
        tags.PROMOTED_AT: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tags.ALIAS: spec.alias,
        tags.METRIC: spec.metric,
        tags.METRIC_VALUE: repr(value),
        tags.PIPELINE_RUN_ID: pipeline_run_id,
        tags.PREVIOUS_VERSION: str(current.version) if current else "",
        tags.PREVIOUS_METRIC_VALUE: repr(previous_value) if previous_value is not None else "",
        tags.FORCED: tags.flag(force),
    }
    for key, tag in version_tags.items():
        client.set_model_version_tag(spec.model_name, version, key, tag)
    log.info("promoted %s version %s (run %s, %s=%.4g%s) to @%s", spec.model_name, version, best.run_id,
             spec.metric, value, f"; previous version {current.version}: {previous_value:.4g}"
             if current and previous_value is not None else "", spec.alias)
    return Promotion(spec.model_name, str(version), best.run_id, spec.metric, value)


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
