"""Run a pipeline: process -> train (grids) -> compare -> promote -> report, each notebook an MLflow run.

Wiring only: what each stage computes lives in its notebook and in the small modules it imports.
Failures are collected, never raised past a stage: a failed grid point is recorded and the others
go on; a failed stage that others depend on makes them ``skipped``; one summary comes at the end.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import data as data_module
from . import paths
from .config import GridPoint, NotebookSpec, PipelineConfig, load_config, validate_parameters

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class RunOptions:
    config: Path = paths.DEFAULT_CONFIG
    data: str = "auto"
    tracking_uri: str | None = None
    outputs: Path = paths.OUTPUTS_DIR
    dry_run: bool = False
    progress: bool = True


@dataclass
class StepResult:
    """One notebook execution (a grid point, or a single-notebook stage) as summary.json lists it."""

    stage: str
    notebook: str
    parameters: dict[str, Any]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    output_notebook: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PlannedStep:
    stage: str
    notebook: Path
    parameters: dict[str, Any]
    label: str


def plan(config: PipelineConfig) -> list[PlannedStep]:
    """Every notebook execution the pipeline would make, in order (runtime parameters as placeholders)."""
    steps = []
    if config.process:
        steps.append(PlannedStep("process", config.process.notebook,
                                 {**config.process.parameters, "input_path": "<data>", "output_path": "<run>/data"},
                                 config.process.name))
    for point in config.training_points():
        steps.append(PlannedStep("train", point.spec.notebook, {**point.parameters, "data_path": "<processed data>"},
                                 point.label))
    if config.compare:
        steps.append(PlannedStep("compare", config.compare.notebook,
                                 {**config.compare.parameters, "parent_run_id": "<pipeline run>"}, config.compare.name))
    if config.report:
        model = f"models:/{config.promote.model_name}@{config.promote.alias}"
        steps.append(PlannedStep("report", config.report.notebook,
                                 {**config.report.parameters, "model_uri": model, "data_path": "<processed data>"},
                                 config.report.name))
    return steps


def load_and_check(config_path: Path) -> PipelineConfig:
    config = load_config(config_path)
    validate_parameters(config)
    return config


def new_pipeline_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def git_commit(root: Path = paths.PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Pipeline:
    """One execution of a pipeline config: owns the run folder, the parent MLflow run and the results."""

    def __init__(self, config: PipelineConfig, options: RunOptions, source: data_module.DataSource,
                 tracking_uri: str, on_step: Callable[[StepResult], None] | None = None):
        import mlflow

        from . import tracking
        from .parameterize import notebook_hash

        self.config = config
        self.options = options
        self.source = source
        self.tracking_uri = tracking_uri
        self.on_step = on_step or (lambda result: None)
        self.run_id = new_pipeline_run_id()
        self.run_dir = Path(options.outputs).resolve() / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.client = mlflow.MlflowClient(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)  # for mlflow.register_model
        self.experiment_id = tracking.ensure_experiment(self.client, config.experiment, tracking_uri)
        self.commit = git_commit()
        self.notebook_hashes = {spec.notebook: notebook_hash(spec.notebook) for spec in config.notebook_specs()}
        self.results: list[StepResult] = []
        self.started = datetime.now(timezone.utc)
        self.data_path = source.path
        self.data_sha256 = source.sha256
        self.parent = self.client.create_run(
            self.experiment_id,
            run_name=f"pipeline {self.run_id}",
            tags={
                "powerpipe.kind": "pipeline",
                "powerpipe.pipeline_run_id": self.run_id,
                "powerpipe.config": str(config.path),
                "powerpipe.data_source": source.source,
                "powerpipe.data_sha256": source.sha256,
                "powerpipe.synthetic_data": str(source.synthetic).lower(),
                "powerpipe.outputs": str(self.run_dir),
                "mlflow.source.git.commit": self.commit,
            },
        )
        self.parent_run_id = self.parent.info.run_id

    # -- one notebook -------------------------------------------------------------------------
    def execute_step(self, spec: NotebookSpec, parameters: dict[str, Any], label: str,
                     logged_parameters: dict[str, Any], folder: Path, render: bool = True):
        """Create the child run, execute the notebook under it, attach the notebook, close the run."""
        from . import tracking
        from .execute import execute

        child = self.client.create_run(
            self.experiment_id,
            run_name=label,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "powerpipe.kind": "notebook",
                "powerpipe.stage": spec.stage,
                "powerpipe.notebook": spec.notebook.name,
                "powerpipe.notebook_sha256": self.notebook_hashes[spec.notebook],
                "powerpipe.pipeline_run_id": self.run_id,
                "powerpipe.data_sha256": self.data_sha256,
                "powerpipe.synthetic_data": str(self.source.synthetic).lower(),
                "mlflow.source.git.commit": self.commit,
                "mlflow.source.name": str(spec.notebook.relative_to(paths.PROJECT_ROOT))
                if spec.notebook.is_relative_to(paths.PROJECT_ROOT) else str(spec.notebook),
            },
        )
        run_id = child.info.run_id
        for key, value in logged_parameters.items():
            self.client.log_param(run_id, key, _param_text(value))
        env = {
            tracking.RUN_ID_ENV: run_id,
            tracking.TRACKING_URI_ENV: self.tracking_uri,
            tracking.EXPERIMENT_ENV: self.config.experiment,
        }
        output = folder / f"{label}.ipynb"
        execution = execute(spec.notebook, output, parameters, env=env, timeout=self.config.timeout, render=render)
        for path in (execution.output_notebook, execution.output_html):
            if path is not None and path.exists():
                self.client.log_artifact(run_id, str(path), artifact_path="notebook")
        if execution.error:
            self.client.set_tag(run_id, "powerpipe.error", execution.error[:5000])
        self.client.set_terminated(run_id, "FINISHED" if execution.ok else "FAILED")
        metrics = execution.scraps.get(tracking.METRICS_SCRAP) or {}
        result = StepResult(
            stage=spec.stage,
            notebook=spec.notebook.name,
            parameters=logged_parameters,
            status=OK if execution.ok else FAILED,
            metrics={k: float(v) for k, v in metrics.items()},
            mlflow_run_id=run_id,
            output_notebook=str(output.relative_to(self.run_dir)),
            seconds=round(execution.seconds, 2),
            error=execution.error,
        )
        if not execution.ok:
            log.error("%s failed: %s (see %s)", label, execution.error, output)
        self._record(result)
        return result, execution

    def skip(self, stage: str, notebook: Path, parameters: dict[str, Any], reason: str) -> StepResult:
        result = StepResult(stage, notebook.name, parameters, SKIPPED, error=reason)
        self._record(result)
        return result

    def _record(self, result: StepResult) -> None:
        self.results.append(result)
        self.on_step(result)

    # -- stages -------------------------------------------------------------------------------
    def run_process(self) -> bool:
        spec = self.config.process
        if spec is None:
            return True
        processed = self.run_dir / "data" / data_module.paths.PROCESSED_DATA_NAME
        parameters = {**spec.parameters, "input_path": str(self.source.path), "output_path": str(processed)}
        result, _ = self.execute_step(spec, parameters, spec.name, dict(spec.parameters), self.run_dir / "process")
        if result.status != OK:
            return False
        if not processed.is_file():
            result.status, result.error = FAILED, f"the process notebook wrote no file at {processed}"
            log.error("%s", result.error)
            return False
        self.data_path = processed
        self.data_sha256 = data_module.file_sha256(processed)
        self.client.set_tag(self.parent_run_id, "powerpipe.processed_data_sha256", self.data_sha256)
        return True

    def run_training(self, upstream_ok: bool) -> list[StepResult]:
        results = []
        for point in self.config.training_points():
            if not upstream_ok:
                results.append(self.skip("train", point.spec.notebook, point.parameters, "process stage failed"))
                continue
            results.append(self.run_point(point))
        return results

    def run_point(self, point: GridPoint) -> StepResult:
        parameters = {**point.parameters, "data_path": str(self.data_path)}
        folder = self.run_dir / "train" / point.spec.name
        result, _ = self.execute_step(point.spec, parameters, point.label, dict(point.parameters), folder)
        return result

    def run_compare(self, any_trained: bool) -> None:
        spec = self.config.compare
        if spec is None:
            return
        if not any_trained:
            self.skip("compare", spec.notebook, spec.parameters, "no training run succeeded")
            return
        promote = self.config.promote
        parameters = {
            **spec.parameters,
            "parent_run_id": self.parent_run_id,
            "metric": promote.metric if promote else "rmse",
            "goal": promote.goal if promote else "minimize",
        }
        self.execute_step(spec, parameters, spec.name, dict(spec.parameters), self.run_dir / "compare")

    def run_promote(self, training: list[StepResult]):
        from .promote import Candidate, promote

        if self.config.promote is None:
            return None
        candidates = [Candidate(r.mlflow_run_id, r.status, r.metrics) for r in training if r.mlflow_run_id]
        return promote(self.client, candidates, self.config.promote, self.run_id)

    def run_report(self, promotion) -> str | None:
        from .execute import render_html

        spec = self.config.report
        if spec is None:
            return None
        if promotion is None:
            self.skip("report", spec.notebook, spec.parameters, "no model was promoted in this run")
            log.warning("report skipped: no model was promoted in this run")
            return None
        promote = self.config.promote
        parameters = {
            **spec.parameters,
            "model_uri": f"models:/{promote.model_name}@{promote.alias}",
            "data_path": str(self.data_path),
            "synthetic_data": self.source.synthetic,
        }
        folder = self.run_dir / "report"
        result, execution = self.execute_step(spec, parameters, spec.name, dict(spec.parameters), folder,
                                              render=False)
        if not execution.ok:
            return None
        html = render_html(execution.output_notebook, exclude_input=True,
                           template_file=paths.REPORT_TEMPLATES_DIR / "offline_report.html.j2")
        for run_id in (result.mlflow_run_id, self.parent_run_id):
            self.client.log_artifact(run_id, str(html), artifact_path="report")
        return str(html.relative_to(self.run_dir))

    # -- whole run ----------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            processed_ok = self.run_process()
            training = self.run_training(processed_ok)
            any_trained = any(r.status == OK for r in training)
            self.run_compare(any_trained)
            promotion = self.run_promote(training) if processed_ok else None
            report = self.run_report(promotion)
        except BaseException:
            self.client.set_terminated(self.parent_run_id, "KILLED")
            raise
        status = OK if all(r.status == OK for r in self.results) else FAILED
        summary = self.summary(status, promotion, report)
        summary_path = self.run_dir / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        self.client.log_artifact(self.parent_run_id, str(summary_path))
        self.client.set_terminated(self.parent_run_id, "FINISHED" if status == OK else "FAILED")
        return summary

    def summary(self, status: str, promotion, report: str | None) -> dict:
        return {
            "pipeline_run_id": self.run_id,
            "mlflow_parent_run_id": self.parent_run_id,
            "status": status,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": {"path": _relative(self.source.path, self.run_dir), "sha256": self.source.sha256,
                     "source": self.source.source},
            "grid_points": [r.as_dict() for r in self.results],
            "promoted": promotion.as_dict() if promotion else None,
            "report": report,
        }


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def run_pipeline(options: RunOptions, on_step: Callable[[StepResult], None] | None = None,
                 on_start: Callable[["Pipeline", int], None] | None = None) -> dict:
    """Check everything, then run the whole pipeline; returns the summary (also in summary.json)."""
    from . import tracking

    config = load_and_check(options.config)
    source = data_module.resolve(options.data)
    if source.synthetic:
        log.warning("SYNTHETIC DATA: %s was generated, not measured; metrics say nothing about the real grid",
                    source.path)
    uri = tracking.tracking_uri(options.tracking_uri, options.outputs)
    tracking.check_reachable(uri)
    pipeline = Pipeline(config, options, source, uri, on_step=on_step)
    if on_start:
        on_start(pipeline, len(plan(config)))
    return pipeline.run()
