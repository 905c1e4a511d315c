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

from powerpipe.core import tags
from powerpipe.core.constants import INTERRUPTED

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
    env: dict[str, str] = field(default_factory=dict)  # the kernel's environment besides its run (a search's trial)


@dataclass
class TaskOutcome:
    run_id: str
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    output_notebook: str = ""
    pruned: bool = False  # a search's trial stopped by its pruner (``trials.report``): not a failure


def store_client(uri: str):
    """One MlflowClient per tracking URI in this process (runner or worker)."""
    import mlflow

    if uri not in _clients:
        _clients[uri] = mlflow.MlflowClient(uri)
    return _clients[uri]


def run_metrics(run) -> dict[str, float]:
    """The metrics of a recorded run that the runner reports (summary.json, promotion)."""
    from powerpipe.spec.config import METRICS

    return {name: value for name, value in run.data.metrics.items() if name in METRICS}


def finished_outcome(run, output_notebook: str) -> TaskOutcome:
    """The outcome of a run that already FINISHED (a Dask attempt whose worker died after recording it)."""
    return TaskOutcome(run_id=run.info.run_id, ok=True, metrics=run_metrics(run),
                       seconds=round(((run.info.end_time or 0) - run.info.start_time) / 1000, 3),
                       output_notebook=output_notebook)


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _render_report(notebook: Path, html: Path) -> None:
    from powerpipe.core import paths
    from powerpipe.execution.engine import render_html

    render_html(notebook, html, exclude_input=True, template_file=paths.REPORT_TEMPLATES_DIR / "offline_report.html.j2",
                drop_stderr=True)  # the report goes to clients: nothing a kernel prints to stderr belongs in it
    _drop_inlined_plotlyjs(notebook, html.name)


PLOTLYJS_START = "<script>/**\n* plotly.js v"


def _drop_inlined_plotlyjs(notebook: Path, html_name: str) -> None:
    """The executed report notebook without its copy of plotly.js (about 5 MB): the offline HTML made
    from it keeps the library; the notebook is the record of what ran, and need not carry it twice."""
    import nbformat

    from powerpipe.core.fsutil import atomic_write_text

    nb = nbformat.read(notebook, as_version=4)
    dropped = False
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/html")
            if isinstance(text, str) and PLOTLYJS_START in text:
                start = text.index(PLOTLYJS_START)
                end = text.index("</script>", start) + len("</script>")
                output["data"]["text/html"] = (text[:start] + f"<!-- plotly.js: see {html_name} -->" + text[end:])
                dropped = True
    if dropped:
        atomic_write_text(notebook, nbformat.writes(nb), fsync=False)


def fatal_error(exc: BaseException, task: NotebookTask):
    """The pipeline-stopping form of ``exc`` (a full disk, a store that stopped answering), or None
    when only this notebook failed."""
    from powerpipe.core import fsutil
    from powerpipe.tracking import store as tracking

    full = fsutil.as_disk_full_error(exc, Path(task.output_notebook).parent)
    if full is not None:
        return full
    return tracking.unreachable_error(task.tracking_uri, exc) if tracking.is_unreachable(exc) else None


def run_task(task: NotebookTask, kernel) -> tuple[TaskOutcome, bool]:
    """Create the task's MLflow run, execute the notebook under it, attach it, close the run.

    Returns the outcome and whether ``kernel`` may be reused. A full disk or an unreachable store
    is raised (``DiskFullError``, ``StoreUnreachableError``): no other notebook can succeed either.
    """
    try:
        return _run_task(task, kernel)
    except Exception as exc:  # noqa: BLE001 - boundary: sorted into "stop the pipeline" or re-raised as is
        fatal = fatal_error(exc, task)
        if fatal is None:
            raise
        raise fatal from None


def _killed_by_the_stop(kernel) -> bool:
    """Its kernel was killed under it because the pipeline is stopping (Ctrl-C, SIGTERM, a fatal error): the
    run ends KILLED, as the runner marks the others, not as a FAILED grid point."""
    return bool(getattr(kernel, "stopped", False))


def _run_task(task: NotebookTask, kernel) -> tuple[TaskOutcome, bool]:
    from powerpipe.tracking import store as tracking, trials
    from powerpipe.execution.engine import execute

    started = time.perf_counter()
    client = store_client(task.tracking_uri)
    output = Path(task.output_notebook)
    run_tags = {**task.tags, **tracking.runner_tags()}
    if task.render:  # the page its run links to
        run_tags[tags.NOTEBOOK_HTML_ARTIFACT] = tags.notebook_artifact(output.with_suffix(".html").name)
    elif not task.report_html:  # none rendered (a replay's week without reports): the executed notebook itself,
        # so that no link points at a file that was never logged (a report's run links to its report)
        run_tags[tags.NOTEBOOK_HTML_ARTIFACT] = tags.notebook_artifact(output.name)
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
            # A warm kernel keeps its environment: a notebook that is no trial must not see the last trial's.
            **{name: "" for name in trials.ENV_NAMES},
            **task.env,
        }
        execution = execute(task.notebook, output, task.parameters, env=env, timeout=task.timeout,
                            render=task.render, kernel=kernel)
        # Read now, before the stop can come during the bookkeeping of a notebook that failed on its own.
        interrupted = not execution.ok and _killed_by_the_stop(kernel)
        for path in (execution.output_notebook, execution.output_html):
            if path is not None and path.exists():
                client.log_artifact(run_id, str(path), artifact_path=tags.NOTEBOOK_ARTIFACT_DIR)
        ok, error, reusable = execution.ok, execution.error, execution.kernel_reusable
        pruned = bool(execution.scraps.get(trials.PRUNED_SCRAP))
        if pruned and not ok:  # stopped on purpose by TrialPruned: the kernel is sound, reset it for the next
            reusable = _reset(kernel)
        if ok and task.report_html:
            _render_report(execution.output_notebook, Path(task.report_html))
            client.log_artifact(run_id, task.report_html, artifact_path=tags.REPORT_ARTIFACT_DIR)
            client.set_tag(run_id, tags.REPORT_PATH, task.report_html)
        metrics = {k: float(v) for k, v in (execution.scraps.get(tracking.METRICS_SCRAP) or {}).items()}
    except Exception as exc:  # noqa: BLE001 - boundary: the store or the kernel failed us: this grid point fails, not the pipeline
        fatal = fatal_error(exc, task)
        if fatal is not None:  # nothing else can succeed: say so once, mark this run if the store still answers
            _fail_quietly(client, run_id, str(fatal))
            raise fatal from None
        log.exception("%s: could not run or record the notebook", task.label)
        ok, error, reusable, metrics, pruned = False, f"{type(exc).__name__}: {exc}", False, {}, False
        interrupted = _killed_by_the_stop(kernel)
    interrupted = interrupted and not pruned
    if pruned:  # FINISHED (it ended as meant to), never cached: its result is a partial one
        client.set_tag(run_id, tags.SEARCH_PRUNED, tags.flag(True))
        ok, error = False, error or "pruned"
    elif interrupted:
        error = f"{INTERRUPTED} ({error})" if error else INTERRUPTED
        client.set_tag(run_id, tags.ERROR, error[:5000])
    elif not ok:
        client.set_tag(run_id, tags.ERROR, error[:5000])
    elif task.cache_key:
        client.set_tag(run_id, tags.CACHE_KEY, task.cache_key)
    client.set_terminated(run_id, "FINISHED" if ok or pruned else "KILLED" if interrupted else "FAILED")
    # The grid point's whole cost: its MLflow bookkeeping as well as the notebook.
    outcome = TaskOutcome(run_id=run_id, ok=ok, metrics=metrics, seconds=round(time.perf_counter() - started, 3),
                          error=error, output_notebook=str(output), pruned=pruned)
    return outcome, reusable


def _reset(kernel) -> bool:
    """Make a warm kernel whose notebook stopped on purpose fit for the next one; False if it is not."""
    from powerpipe.execution.kernels import RESET_CODE, KernelError

    if kernel is None or not kernel.alive():
        return False
    try:
        kernel.run(RESET_CODE)
        return True
    except KernelError:
        return False


def _fail_quietly(client, run_id: str, error: str) -> None:
    """End the run FAILED if the store still answers (a full disk elsewhere); never raise."""
    try:
        client.set_tag(run_id, tags.ERROR, error[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - boundary: best effort; a later run marks it KILLED otherwise
        log.debug("could not mark run %s FAILED", run_id)
