"""Pick the best successful training run and move the registry alias (``production``) to it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone

from .config import PromoteSpec
from .tracking import MODEL_ARTIFACT

log = logging.getLogger(__name__)


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
    alias: str

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
    pick = min if spec.goal == "minimize" else max
    return pick(scored, key=lambda c: c.metrics[spec.metric])


def promote(client, candidates: list[Candidate], spec: PromoteSpec, pipeline_run_id: str) -> Promotion | None:
    """Register the best candidate's model and give it ``spec.alias``; None if no run succeeded."""
    best = best_candidate(candidates, spec)
    if best is None:
        log.warning("no successful training run has metric %r: nothing promoted", spec.metric)
        return None
    previous = _current_version(client, spec)
    version = _register(client, best.run_id, spec.model_name)
    client.set_registered_model_alias(spec.model_name, spec.alias, version)
    value = float(best.metrics[spec.metric])
    tags = {
        "powerpipe.promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "powerpipe.alias": spec.alias,
        "powerpipe.metric": spec.metric,
        "powerpipe.metric_value": repr(value),
        "powerpipe.pipeline_run_id": pipeline_run_id,
        "powerpipe.previous_version": previous or "",
    }
    for key, tag in tags.items():
        client.set_model_version_tag(spec.model_name, version, key, tag)
    log.info("promoted %s version %s (run %s, %s=%.4g) to @%s", spec.model_name, version, best.run_id,
             spec.metric, value, spec.alias)
    return Promotion(spec.model_name, str(version), best.run_id, spec.metric, value, spec.alias)


def _register(client, run_id: str, name: str) -> str:
    """A new version of ``name`` from the model the run logged (MLflow 3: a logged model with an id)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    outputs = client.get_run(run_id).outputs
    model_outputs = sorted(outputs.model_outputs, key=lambda o: o.step) if outputs else []
    if model_outputs:
        model_id = model_outputs[-1].model_id
        version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    else:  # a model saved as plain run artifacts
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{MODEL_ARTIFACT}"
        version = client.create_model_version(name, source=source, run_id=run_id)
    return str(version.version)


def _current_version(client, spec: PromoteSpec) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(spec.model_name, spec.alias).version)
    except MlflowException:
        return None
