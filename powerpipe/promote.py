"""Pick the best successful training run and move the registry alias (``production``) to it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .config import PromoteSpec
from .tracking import MODEL_ARTIFACT

log = logging.getLogger(__name__)

# Tagged on a run that did not beat the alias holder: which version it lost to, so that an unchanged
# pipeline does not load and evaluate the production model again every time.
GATE_TAG = "powerpipe.gate_lost_to"


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


def evaluate_version(client, name: str, version: str, data_path: Path, metric: str) -> float:
    """The registered model's ``metric`` on the test split of ``data_path`` (the split every run uses)."""
    import mlflow

    from . import data, modeling

    # Set only here, when a model must be loaded: MLflow resets its tracing state on every set (~0.2 s).
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    _, X_test, _, y_test = modeling.split(data.load_processed(data_path))
    return modeling.evaluate(y_test, modeling.predictions_frame(model.predict(X_test)).to_numpy())[metric]


def promote(client, candidates: list[Candidate], spec: PromoteSpec, pipeline_run_id: str,
            data_path: Path, force: bool = False) -> Promotion | None:
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
    current = _current(client, spec)
    previous_value = None
    if current is not None:
        if current.run_id == best.run_id:
            log.info("%s version %s (run %s) is already @%s: nothing new to promote", spec.model_name,
                     current.version, best.run_id, spec.alias)
            return None
        holder = f"{spec.model_name}/{current.version}"
        checked = client.get_run(best.run_id).data.tags.get(GATE_TAG)
        if checked == holder and not force:  # this run already lost to this very version (same inputs)
            log.info("best run %s was already compared with @%s version %s and kept out: nothing new to "
                     "promote", best.run_id, spec.alias, current.version)
            return None
        try:
            previous_value = evaluate_version(client, spec.model_name, current.version, data_path, spec.metric)
        except Exception as exc:  # noqa: BLE001 - a production model that cannot even be loaded is replaced
            log.warning("could not evaluate @%s version %s (%s: %s): it will be replaced", spec.alias,
                        current.version, type(exc).__name__, exc)
        better = previous_value is None or (value < previous_value if spec.goal == "minimize"
                                            else value > previous_value)
        if not better and not force:
            client.set_tag(best.run_id, GATE_TAG, holder)
            log.warning("best new run %s has %s=%.4g, not better than @%s version %s (%.4g on the same test "
                        "data): production model kept (--force-promote overrides)", best.run_id, spec.metric,
                        value, spec.alias, current.version, previous_value)
            return None
    version = _register(client, best.run_id, spec.model_name)
    client.set_registered_model_alias(spec.model_name, spec.alias, version)
    tags = {
        "powerpipe.promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "powerpipe.alias": spec.alias,
        "powerpipe.metric": spec.metric,
        "powerpipe.metric_value": repr(value),
        "powerpipe.pipeline_run_id": pipeline_run_id,
        "powerpipe.previous_version": str(current.version) if current else "",
        "powerpipe.previous_metric_value": repr(previous_value) if previous_value is not None else "",
        "powerpipe.forced": str(bool(force)).lower(),
    }
    for key, tag in tags.items():
        client.set_model_version_tag(spec.model_name, version, key, tag)
    log.info("promoted %s version %s (run %s, %s=%.4g%s) to @%s", spec.model_name, version, best.run_id,
             spec.metric, value, f"; previous version {current.version}: {previous_value:.4g}" if current else "",
             spec.alias)
    return Promotion(spec.model_name, str(version), best.run_id, spec.metric, value, spec.alias)


def _register(client, run_id: str, name: str) -> str:
    """A new version of ``name`` from the model the run logged (MLflow 3: a logged model with an id)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    import mlflow

    # MLflow's registry resolves `models:/<model id>` sources through the global tracking URI.
    mlflow.set_tracking_uri(client.tracking_uri)
    outputs = client.get_run(run_id).outputs
    model_outputs = sorted(outputs.model_outputs, key=lambda o: o.step) if outputs else []
    if model_outputs:
        model_id = model_outputs[-1].model_id
        version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    else:  # a model saved as plain run artifacts
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{MODEL_ARTIFACT}"
        version = client.create_model_version(name, source=source, run_id=run_id)
    return str(version.version)


def _current(client, spec: PromoteSpec):
    """The model version holding the alias now, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(spec.model_name, spec.alias)
    except MlflowException:
        return None
