"""Re-execute one recorded grid point exactly as it ran, and say whether its metrics come out the same.

Everything needed is on the original MLflow run: the notebook source (artifact ``source/``), the
parameters (tag ``powerpipe.parameters``) and the data's SHA-256. The data must be the same file,
byte for byte; a different or missing file is refused, not silently used.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from powerpipe.forecast import data
from powerpipe.core import paths, tags
from powerpipe.tracking import store as tracking
from powerpipe.core.exceptions import PipelineError

log = logging.getLogger(__name__)


@dataclass
class Reproduction:
    original_run_id: str
    new_run_id: str
    notebook: str
    output_notebook: Path
    recorded: dict[str, float]
    reproduced: dict[str, float]
    error: str | None = None
    mismatched: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return self.error is None and not self.mismatched and bool(self.recorded)

    def report(self) -> str:
        lines = [f"reproduced run {self.original_run_id} ({self.notebook}) as run {self.new_run_id}",
                 f"executed notebook: {self.output_notebook}"]
        if self.error:
            lines.append(f"FAILED: {self.error}")
            return "\n".join(lines)
        for name in sorted(self.recorded):
            old, new = self.recorded[name], self.reproduced.get(name)
            verdict = "same" if new == old else ("missing" if new is None else f"differs by {new - old:+.3g}")
            lines.append(f"  {name:12} recorded {old!r:24} reproduced {new!r:24} {verdict}")
        lines.append("every metric matches exactly" if self.matches else
                     f"{len(self.mismatched)} metric(s) differ: {', '.join(self.mismatched)}")
        return "\n".join(lines)


def reproduce_run(run_id: str, tracking_uri: str | None = None, outputs: Path = paths.OUTPUTS_DIR,
                  data_path: str | None = None, timeout: float | None = None) -> Reproduction:
    import mlflow
    from mlflow.exceptions import MlflowException

    from powerpipe.execution.tasks import NotebookTask, run_metrics, run_task

    uri = tracking.tracking_uri(tracking_uri, outputs)
    tracking.check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PipelineError(f"no run {run_id} in tracking store {tracking.redact(uri)}") from None
    recorded_tags = run.data.tags
    if recorded_tags.get(tags.STAGE) != "train" or tags.PARAMETERS not in recorded_tags:
        raise PipelineError(f"run {run_id} is not a training grid point recorded by this pipeline; "
                            "only those can be reproduced")

    expected_sha = recorded_tags[tags.DATA_SHA256]
    path = Path(data_path or recorded_tags.get(tags.DATA_PATH, "")).expanduser()
    if not path.is_file():
        raise PipelineError(f"the data of run {run_id} is missing: {path} (SHA-256 {expected_sha}); "
                            "pass --data with a copy of that file")
    actual_sha = data.file_sha256(path)
    if actual_sha != expected_sha:
        raise PipelineError(f"{path} is not the data of run {run_id}: its SHA-256 is {actual_sha}, "
                            f"the run used {expected_sha}")

    notebook_name = recorded_tags[tags.NOTEBOOK]
    parameters = json.loads(recorded_tags[tags.PARAMETERS])
    with tempfile.TemporaryDirectory(prefix="powerpipe-reproduce-") as source_dir:
        try:
            notebook = client.download_artifacts(run_id, tags.source_artifact(notebook_name), source_dir)
        except (MlflowException, OSError) as exc:
            raise PipelineError(f"run {run_id} has no notebook source recorded (artifact "
                                f"{tags.source_artifact(notebook_name)}): "
                                f"{exc}") from None
        output = Path(outputs).resolve() / "reproductions" / run_id / f"{run.info.run_name}.ipynb"
        task = NotebookTask(
            notebook=notebook, stage="reproduce", label=f"reproduce {run.info.run_name}", output_notebook=str(output),
            parameters={**parameters, **_runtime(recorded_tags, notebook), "data_path": str(path)}, shown=parameters,
            tags={
                # What the original ran (its notebook and parameters), then what this run is.
                **{name: recorded_tags.get(name, "") for name in (tags.NOTEBOOK, tags.NOTEBOOK_SHA256, tags.PARAMETERS)},
                tags.KIND: tags.KIND_REPRODUCTION,
                tags.REPRODUCES: run_id,
                tags.STAGE: "reproduce",
                tags.DATA_SHA256: actual_sha,
                tags.DATA_PATH: str(path),
            },
            tracking_uri=uri, experiment_id=run.info.experiment_id,
            experiment_name=client.get_experiment(run.info.experiment_id).name, cache_key="", timeout=timeout,
        )
        log.info("re-executing %s with %s on %s", notebook_name, parameters, path)
        outcome, _ = run_task(task, kernel=None)  # a fresh kernel, as nothing else runs beside it
    recorded = run_metrics(run)
    mismatched = sorted(k for k in recorded if outcome.metrics.get(k) != recorded[k])
    client.set_tag(outcome.run_id, tags.METRICS_MATCH, tags.flag(not mismatched and outcome.ok))
    return Reproduction(run_id, outcome.run_id, notebook_name, output, recorded, outcome.metrics,
                        error=outcome.error, mismatched=mismatched)


def _runtime(recorded_tags: dict, notebook: str) -> dict:
    """The runner's own parameters the original got besides its data: its evaluation (split and backtest)."""
    from powerpipe.spec.parameterize import read_parameters

    evaluation = recorded_tags.get(tags.EVALUATION)
    return {"evaluation": json.loads(evaluation)} if evaluation and "evaluation" in read_parameters(notebook) else {}
