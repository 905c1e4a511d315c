"""One notebook execution as a self-contained, picklable task, and the code that runs it anywhere.

The runner builds a ``NotebookTask`` per grid point; an executor runs ``run_task`` on a kernel (a
local warm kernel, or one on a remote worker) and hands back a ``TaskOutcome``. Everything the task
needs travels with it: paths, parameters, run tags and the tracking URI, never a live client.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tags

log = logging.getLogger(__name__)

_clients: dict[str, Any] = {}


@dataclass(frozen=True)
class NotebookTask:
    notebook: str  # source notebook path
    stage: str
    label: str  # file-name-safe name of this execution
    output_notebook: str  # where the executed notebook goes (its .html beside it)
    parameters: dict[str, Any]  # everything passed to the notebook
    shown: dict[str, Any]  # logged as MLflow params (no per-run paths)
    tags: dict[str, str]  # tags of the MLflow run created for it
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    cache_key: str
    timeout: float | None = None
    render: bool = True
    report_html: str | None = None  # also render the executed notebook as a report here: no code, offline
    run_id: str | None = None  # record into this existing run (an MLflow Project's) instead of a new one


@dataclass
class TaskOutcome:
    run_id: str
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    output_notebook: str = ""


def store_client(uri: str):
    """One MlflowClient per tracking URI in this process (runner or worker)."""
    import mlflow

    if uri not in _clients:
        _clients[uri] = mlflow.MlflowClient(uri)
    return _clients[uri]


def run_metrics(run) -> dict[str, float]:
    """The metrics of a recorded run that the runner reports (summary.json, promotion)."""
    from .config import METRICS

    return {name: value for name, value in run.data.metrics.items() if name in METRICS}


def finished_outcome(run, output_notebook: str) -> TaskOutcome:
    """The outcome of a run that already FINISHED (a Dask attempt whose worker died after recording it)."""
    return TaskOutcome(run_id=run.info.run_id, ok=True, metrics=run_metrics(run),
                       seconds=round(((run.info.end_time or 0) - run.info.start_time) / 1000, 3),
                       output_notebook=output_notebook)


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _render_report(notebook: Path, html: Path) -> None:
    from . import paths
    from .execute import render_html

    render_html(notebook, html, exclude_input=True, template_file=paths.REPORT_TEMPLATES_DIR / "offline_report.html.j2")


def run_task(task: NotebookTask, kernel) -> tuple[TaskOutcome, bool]:
    """Create the task's MLflow run, execute the notebook under it, attach it, close the run.

    Returns the outcome and whether ``kernel`` may be reused.
    """
    from . import tracking
    from .execute import execute

    started = time.perf_counter()
    client = store_client(task.tracking_uri)
    output = Path(task.output_notebook)
    html_artifact = tags.notebook_artifact(output.with_suffix(".html").name) if task.render else ""
    run_tags = {**task.tags, **tracking.runner_tags()}
    if html_artifact:
        run_tags[tags.NOTEBOOK_HTML_ARTIFACT] = html_artifact
    if task.run_id:
        run_id = task.run_id
        for name, value in run_tags.items():
            client.set_tag(run_id, name, value)
    else:
        run_id = client.create_run(task.experiment_id, run_name=task.label, tags=run_tags).info.run_id
    try:
        for name, value in task.shown.items():
            client.log_param(run_id, name, _param_text(value))
        # The source notebook too, so that any run can be re-executed exactly (--reproduce).
        client.log_artifact(run_id, task.notebook, artifact_path=tags.SOURCE_ARTIFACT_DIR)
        env = {
            tracking.RUN_ID_ENV: run_id,
            tracking.TRACKING_URI_ENV: task.tracking_uri,
            tracking.EXPERIMENT_ENV: task.experiment_name,
        }
        execution = execute(task.notebook, output, task.parameters, env=env, timeout=task.timeout,
                            render=task.render, kernel=kernel)
        for path in (execution.output_notebook, execution.output_html):
            if path is not None and path.exists():
                client.log_artifact(run_id, str(path), artifact_path=tags.NOTEBOOK_ARTIFACT_DIR)
        ok, error, reusable = execution.ok, execution.error, execution.kernel_reusable
        if ok and task.report_html:
            _render_report(execution.output_notebook, Path(task.report_html))
            client.log_artifact(run_id, task.report_html, artifact_path=tags.REPORT_ARTIFACT_DIR)
            client.set_tag(run_id, tags.REPORT_PATH, task.report_html)
        metrics = {k: float(v) for k, v in (execution.scraps.get(tracking.METRICS_SCRAP) or {}).items()}
    except Exception as exc:  # noqa: BLE001 - boundary: the store or the kernel failed us: this grid point fails, not the pipeline
        log.exception("%s: could not run or record the notebook", task.label)
        ok, error, reusable, metrics = False, f"{type(exc).__name__}: {exc}", False, {}
    if not ok:
        client.set_tag(run_id, tags.ERROR, error[:5000])
    elif task.cache_key:
        client.set_tag(run_id, tags.CACHE_KEY, task.cache_key)
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
    # The grid point's whole cost: its MLflow bookkeeping as well as the notebook.
    outcome = TaskOutcome(run_id=run_id, ok=ok, metrics=metrics, seconds=round(time.perf_counter() - started, 3),
                          error=error, output_notebook=str(output))
    return outcome, reusable
