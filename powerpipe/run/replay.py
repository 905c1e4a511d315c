"""Replay: the weekly loop as of each Monday of a stretch of weeks, one week after another, and a report
that compares retraining policies (``powerpipe replay --start 2016-01-04 --weeks 52``).

- **Its own folder and store.** Everything goes to ``<outputs>/replay-<start>-<weeks>w/``: each week's
  pipeline run folder, the state file, the report, and (unless ``--tracking-uri`` names another) its own
  SQLite store; never the user's production store by default (``MLFLOW_TRACKING_URI`` is not read).
- **Each week a real pipeline run** (``session.prepare`` + ``Pipeline.run``, ``RunOptions.as_of`` = that
  Monday): its own summary.json and MLflow parent run, tagged ``powerpipe.replay`` and
  ``powerpipe.replay_week``. Monitoring, the gate, the refit and the alias history are the weekly loop's own.
- **Warm kernels across weeks.** One executor (``SharedExecutor``) serves every week: a week's end closes
  nothing, so its kernels run the next week's notebooks already warm. The compare and report stages run
  only every ``report_every`` weeks (never, without it); the replay report always, at the end.
- **Resumable.** ``replay.json`` in the folder lists the finished weeks (with what the report needs of
  each), rewritten atomically after each week. Started again with the same arguments, a replay goes on from
  the first unfinished week (a week stopped half-way runs again; its finished notebooks come from the
  cache). All weeks finished and the report made from the same rows: nothing runs at all.
- **The report** (``report_templates/replay_report.ipynb``, rendered offline as the weekly report is) shows,
  week by week, on the hours of the week before each Monday: the live error of the model in production
  (that week's monitoring), of the first model registered and never replaced (scored with
  ``tracking.monitoring.score_version``), of the two baselines, and the best challenger's holdout score;
  promotions and rollbacks (the alias history), alerts, cumulative skill. It is held by the replay's own
  MLflow run (kind ``replay``), with the weekly numbers as its metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

from powerpipe.core import paths, tags
from powerpipe.core.constants import DONE, OK
from powerpipe.core.exceptions import ReplayError
from powerpipe.core.fsutil import atomic_write_text
from powerpipe.execution.tasks import NotebookTask, TaskOutcome
from powerpipe.forecast import windows
from powerpipe.run.options import RunOptions

log = logging.getLogger(__name__)

STATE_FILE = "replay.json"  # in the replay folder: arguments, finished weeks, the report made
REPORT_DIR = "report"  # in the replay folder: the report's input, executed notebook and HTML
REPORT_INPUT = "replay_weeks.json"
REPORT_NOTEBOOK = paths.REPORT_TEMPLATES_DIR / "replay_report.ipynb"
WEEKLY_ONLY = ("compare", "report")  # stages run only every ``report_every`` weeks
POLICIES = ("production", "first_model", "persistence", "climatology")  # live errors compared, in the report


def folder_name(start: str, weeks: int) -> str:
    return f"replay-{start}-{weeks}w"


def mondays(start: str, weeks: int) -> list[str]:
    """The Mondays the replay runs as of (``start`` must be one), as ``YYYY-MM-DD``."""
    try:
        first = windows.parse_time(start, "--start")
    except Exception as exc:  # noqa: BLE001 - ConfigError or a parse error: one message either way
        raise ReplayError(f"--start {start!r}: {exc}") from None
    if first.weekday() != 0 or first.time() != first.time().min:
        raise ReplayError(f"--start must be a Monday at midnight (the weekly loop's day), got {start!r} "
                          f"({first:%A})")
    if weeks < 1:
        raise ReplayError(f"--weeks must be at least 1, got {weeks}")
    return [f"{first + timedelta(weeks=i):%Y-%m-%d}" for i in range(weeks)]


class SharedExecutor:
    """One executor for all the weeks of a replay, started with the first notebook that needs it.

    A week's pipeline ``close``s it at its end: nothing happens, its kernels stay warm for the next week.
    ``kill`` (Ctrl-C, a crash) stops it now; ``shutdown`` at the replay's end.
    """

    def __init__(self, factory: Callable[[], object]):
        self._factory, self._inner, self._lock, self._killed = factory, None, threading.Lock(), False

    def run(self, task: NotebookTask) -> TaskOutcome:
        with self._lock:
            if self._killed:
                return TaskOutcome(run_id="", ok=False, error="the replay was stopped",
                                   output_notebook=task.output_notebook)
            if self._inner is None:
                self._inner = self._factory()
            inner = self._inner
        return inner.run(task)

    def close(self) -> None:
        """A week ended: keep the kernels for the next one."""

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.kill()

    def shutdown(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()


# -- the state file -------------------------------------------------------------------------------------------
def _arguments(options: RunOptions, start: str, weeks: int, uri: str) -> dict:
    """What makes a replay the same replay: a folder holds one, and goes on only with these."""
    return {"start": start, "weeks": weeks, "config": str(Path(options.config).resolve()), "data": str(options.data),
            "tracking_uri": uri}


def load_state(folder: Path) -> dict | None:
    path = folder / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def save_state(folder: Path, state: dict) -> None:
    atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n")


# -- the replay -----------------------------------------------------------------------------------------------
def run_replay(options: RunOptions, start: str, weeks: int, *, report_every: int | None = None,
               keep_runs: int | None = None, keep_versions: int | None = None, on_step=None,
               on_week: Callable[[dict], None] | None = None) -> dict:
    """Run (or go on with) the replay; returns its state (``replay.json``): weeks, report, folder.

    ``options``: the weeks' run options (config, data, outputs, jobs, executor, ...); ``as_of`` is each
    Monday's. ``on_week(row)``: called once a week is finished and recorded (the command's progress line).
    """
    import mlflow

    from powerpipe.run.session import load_and_check
    from powerpipe.tracking import store as tracking

    days = mondays(start, weeks)
    start = days[0]
    if report_every is not None and report_every < 1:
        raise ReplayError(f"--report-every must be at least 1, got {report_every}")
    config = load_and_check(options.config)
    if config.promote is None:
        raise ReplayError(f"{config.path} has no stages.promote: a replay compares what the weekly loop promotes")
    folder = Path(options.outputs).resolve() / folder_name(start, weeks)
    folder.mkdir(parents=True, exist_ok=True)
    uri = options.tracking_uri or paths.default_tracking_uri(folder)  # never $MLFLOW_TRACKING_URI by default
    arguments = _arguments(options, start, weeks, uri)
    state = load_state(folder) or {"replay": folder.name, "arguments": arguments, "weeks": {}, "first_model": None,
                                   "report": None}
    if state["arguments"] != arguments:
        raise ReplayError(f"{folder} holds a replay of other arguments ({json.dumps(state['arguments'])}); remove "
                          "it, or replay into another --outputs folder")
    state["folder"] = str(folder)
    save_state(folder, state)
    weekly = dataclasses.replace(options, outputs=folder, tracking_uri=uri, progress=False)
    todo = [(i, day) for i, day in enumerate(days) if day not in state["weeks"]]
    if todo:
        log.info("replay %s: %d of %d weeks to run (from %s)", folder.name, len(todo), weeks, todo[0][1])
    executor = SharedExecutor(lambda: _make_executor(weekly, config, uri, folder))
    try:
        for index, day in todo:
            started = time.perf_counter()
            with_reports = bool(report_every) and (index + 1) % report_every == 0
            # Weeks without reports: the executed notebooks as .ipynb only, not also as HTML (nbconvert costs
            # about a second each), and no figures in the training notebooks (about 2.5 s each); metrics stay.
            week_options = dataclasses.replace(weekly, as_of=day, render_notebooks=with_reports, figures=with_reports)
            summary, pipeline = _run_week(week_options, executor, folder.name, day, with_reports, on_step)
            client = mlflow.MlflowClient(uri)
            row = week_row(client, config, state, index, day, summary, pipeline)
            row["seconds"] = round(time.perf_counter() - started, 1)
            state["weeks"][day] = row
            if state["first_model"] is None and row["promoted"]:
                state["first_model"] = {"name": config.promote.model_name, "version": row["promoted"]["version"],
                                        "week": day}
            save_state(folder, state)  # the week is finished only now
            if collection_due(len(state["weeks"]), keep_runs, last=day == days[-1]):
                from powerpipe.tracking import retention

                first = state["first_model"]  # scored every week: never let go
                retention.collect_garbage(folder, uri, keep_runs, keep_versions=keep_versions, also_keep=frozenset(
                    [(first["name"], str(first["version"]))] if first else []))
            if on_week:
                on_week(row)
        tracking.check_reachable(uri)
        state = make_report(weekly, config, state, folder, uri, executor)
    except BaseException:
        executor.kill()
        raise
    executor.shutdown()
    return state


def collection_due(finished_weeks: int, keep_runs: int | None, last: bool) -> bool:
    """Retention runs every ``keep_runs`` finished weeks and after the last, not after each: a collection
    costs about 3 s (`mlflow gc` is a process), and the folder still holds at most 2 * keep_runs - 1
    pipeline runs besides those behind registered model versions."""
    return keep_runs is not None and (finished_weeks % keep_runs == 0 or last)


def _make_executor(options: RunOptions, config, uri: str, folder: Path):
    from powerpipe.execution.executor import make_executor

    notebooks = [spec.notebook for spec in config.notebook_specs()] + [REPORT_NOTEBOOK]
    data = Path(options.data)
    shared = [folder, *notebooks] + ([data.resolve()] if data.is_file() else [])
    return make_executor(options.executor, jobs=options.jobs, notebooks=notebooks, tracking_uri=uri,
                         reuse_kernels=options.reuse_kernels, scheduler=options.scheduler, shared_paths=shared)


def _run_week(options: RunOptions, executor: SharedExecutor, replay: str, day: str, with_reports: bool, on_step):
    """One week: a pipeline run as of ``day`` on the shared executor (``session.run_pipeline``'s steps)."""
    from powerpipe.run.session import prepare

    pipeline = prepare(options, on_step, executor=executor)
    try:
        if not with_reports:  # the compare and report notebooks only every --report-every weeks
            pipeline.steps = [step for step in pipeline.steps if step.stage not in WEEKLY_ONLY]
        pipeline.recorder.tag_run(pipeline.recorder.parent_run_id, {tags.REPLAY: replay, tags.REPLAY_WEEK: day})
        log.info("replay %s: week as of %s -> %s", replay, day, pipeline.run_dir)
        summary = pipeline.run()
    finally:
        pipeline.lock.release(pipeline.run_id)
    return summary, pipeline


# -- what the report needs of each week ------------------------------------------------------------------------
def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def _week_of(monitoring: dict | None, week: str) -> dict | None:
    """The row of a monitoring's weekly table for the week starting ``week`` (None if not scored)."""
    if not monitoring or monitoring.get("status") != "ok":
        return None
    return next((row for row in monitoring.get("weeks") or [] if row.get("week") == week), None)


def week_row(client, config, state: dict, index: int, day: str, summary: dict, pipeline) -> dict:
    """What the report shows of one week: live errors on the week before ``day``, the best challenger, the
    promotion, alerts (all from the week's summary and runs; the first model scored here)."""
    from powerpipe.run.refit import CHAMPION_INFIX

    spec = config.promote
    scored_week = f"{windows.parse_time(day) - timedelta(weeks=1):%Y-%m-%d}"
    monitoring = summary.get("monitoring") or {}
    production = _week_of(monitoring, scored_week)
    model = monitoring.get("model") or {}
    challengers = [r for r in pipeline.recorder.results if r.stage == "train" and r.status in DONE
                   and CHAMPION_INFIX not in r.label and _number(r.metrics.get(spec.metric)) is not None]
    pick = max if spec.goal == "maximize" else min
    best = pick(challengers, key=lambda r: r.metrics[spec.metric]) if challengers else None
    champion = next((r for r in pipeline.recorder.results if CHAMPION_INFIX in r.label and r.status in DONE), None)
    first = _first_model_week(client, state.get("first_model"), scored_week, model, production, pipeline)
    promoted = summary.get("promoted")
    return {
        "index": index, "week": day, "scored_week": scored_week, "status": summary["status"],
        "pipeline_run_id": summary["pipeline_run_id"], "mlflow_parent_run_id": summary["mlflow_parent_run_id"],
        "monitoring_status": monitoring.get("status"), "monitoring_run_id": monitoring.get("mlflow_run_id"),
        "production_version": model.get("version"),
        "production": _errors(production), "first_model": first,
        "persistence": {"rmse": _number(production.get("persistence_rmse"))} if production else None,
        "climatology": {"rmse": _number(production.get("climatology_rmse"))} if production else None,
        "challenger": ({"label": best.label, "notebook": best.notebook, "metric": spec.metric,
                        "value": best.metrics[spec.metric], "run_id": best.mlflow_run_id} if best else None),
        "champion_retrained": ({"label": champion.label, "value": _number(champion.metrics.get(spec.metric))}
                               if champion else None),
        "promoted": ({"version": str(promoted["version"]), "action": promoted.get("action"),
                      "value": promoted.get("value")} if promoted else None),
        "alerts": summary.get("alerts") or [],
    }


def _errors(row: dict | None) -> dict | None:
    if not row:
        return None
    return {"rmse": _number(row.get("rmse")), "mae": _number(row.get("mae")), "r2": _number(row.get("r2")),
            "hours": row.get("hours")}


def _first_model_week(client, first: dict | None, scored_week: str, model: dict, production: dict | None,
                      pipeline) -> dict | None:
    """The first registered model's error on the week before this Monday: production's, when it still holds
    the alias; else scored on the week's data (``tracking.monitoring.score_version``)."""
    if first is None:
        return None
    if str(model.get("version")) == str(first["version"]) and production is not None:
        return {**_errors(production), "version": first["version"]}
    from powerpipe.forecast import data as data_module
    from powerpipe.tracking.monitoring import score_version

    from powerpipe.core.exceptions import StoreUnreachableError

    frame = data_module.load_processed(Path(pipeline.runtime.data_path))
    try:  # the version may be gone (a `gc --keep-versions` run by hand on the replay's store): no score
        version = client.get_model_version(first["name"], str(first["version"]))
        scored = _week_of(score_version(client, version, frame), scored_week)
    except StoreUnreachableError:
        raise
    except Exception as exc:  # noqa: BLE001 - boundary: one week's comparison must not stop the replay
        log.warning("the first model (version %s) could not be scored as of %s: %s", first["version"], scored_week,
                    exc)
        return None
    return {**_errors(scored), "version": first["version"]} if scored else None


# -- the policies compared ------------------------------------------------------------------------------------
def policy_table(rows: list[dict]) -> dict:
    """Cumulative live RMSE of each policy over the weeks where all of them were scored, and the cumulative
    skill of the model policies against each baseline (1 - RMSE / the baseline's RMSE, as monitoring's)."""
    common = [r for r in rows if all(r.get(p) and r[p].get("rmse") is not None for p in POLICIES)]
    if not common:
        return {"weeks": 0, "rmse": {}, "skill": {}, "weekly_skill": []}
    hours = [max(1, int((r.get("production") or {}).get("hours") or 1)) for r in common]

    def cumulative(policy: str) -> float:  # RMSE over all those hours: weeks weighted by their hours
        return math.sqrt(sum(r[policy]["rmse"] ** 2 * h for r, h in zip(common, hours)) / sum(hours))

    rmse = {p: cumulative(p) for p in POLICIES}
    skill = {f"{model}_vs_{base}": 1 - rmse[model] / rmse[base] for model in ("production", "first_model")
             for base in ("persistence", "climatology") if rmse[base] > 0}
    running, weekly = {p: 0.0 for p in POLICIES}, []
    total = 0
    for r, h in zip(common, hours):  # cumulative skill week by week (the report's curve)
        total += h
        for p in POLICIES:
            running[p] += r[p]["rmse"] ** 2 * h
        best = min(running["persistence"], running["climatology"])
        weekly.append({"week": r["week"], **{f"{m}_skill": 1 - math.sqrt(running[m] / best) if best > 0 else None
                                             for m in ("production", "first_model")}})
    return {"weeks": len(common), "rmse": rmse, "skill": skill, "weekly_skill": weekly}


def report_input(client, config, state: dict) -> dict:
    """The report's input (``report/replay_weeks.json``): the weeks in order, the alias moves (each placed
    in the week whose pipeline run made it), the policies' cumulative numbers."""
    from powerpipe.tracking.alias_history import history

    rows = sorted(state["weeks"].values(), key=lambda r: r["index"])
    week_of_run = {r["pipeline_run_id"]: r["week"] for r in rows}
    first_run = rows[0]["pipeline_run_id"] if rows else ""
    moves = []
    for move in history(client, config.promote.model_name, config.promote.alias):
        if move.pipeline_run_id and move.pipeline_run_id < first_run:
            continue  # from before this replay (a store named with --tracking-uri)
        moves.append({**move.as_dict(), "week": week_of_run.get(move.pipeline_run_id, "")})
    return {"replay": state["replay"], "arguments": state["arguments"], "first_model": state["first_model"],
            "model_name": config.promote.model_name, "alias": config.promote.alias, "metric": config.promote.metric,
            "weeks": rows, "moves": moves, "policies": policy_table(rows)}


def make_report(options: RunOptions, config, state: dict, folder: Path, uri: str, executor: SharedExecutor) -> dict:
    """The replay report, unless the one made last time came from the same rows and notebook; held by the
    replay's own MLflow run (the weekly numbers its metrics)."""
    import mlflow

    from powerpipe.spec.parameterize import notebook_hash
    from powerpipe.tracking import store as tracking

    client = mlflow.MlflowClient(uri)
    content = json.dumps(report_input(client, config, state), indent=1, sort_keys=True, default=str)
    fingerprint = hashlib.sha256((content + notebook_hash(REPORT_NOTEBOOK)).encode()).hexdigest()
    made = state.get("report") or {}
    html = folder / REPORT_DIR / tags.REPLAY_REPORT_HTML_NAME
    if made.get("fingerprint") == fingerprint and made.get("status") == OK and html.is_file():
        log.info("replay %s: every week finished and its report is up to date: %s", folder.name, html)
        state["report"] = {**made, "cached": True}
        save_state(folder, state)
        return state
    (folder / REPORT_DIR).mkdir(exist_ok=True)
    source = folder / REPORT_DIR / REPORT_INPUT
    atomic_write_text(source, content + "\n", fsync=False)
    tracking.enable_sqlite_wal(uri)
    experiment_id = tracking.ensure_experiment(client, config.experiment, uri)
    run_tags = {tags.KIND: tags.KIND_REPLAY, tags.REPLAY: folder.name, tags.REPLAY_WEEKS: str(len(state["weeks"])),
                tags.OUTPUTS: str(folder), tags.CONFIG: str(config.path)}
    run = client.create_run(experiment_id, run_name=f"replay {folder.name}", tags=run_tags)
    run_id = run.info.run_id
    _log_weekly_metrics(client, run_id, json.loads(content))
    client.log_artifact(run_id, str(source), artifact_path=REPORT_DIR)
    output = folder / REPORT_DIR / REPORT_NOTEBOOK.name
    task = NotebookTask(
        notebook=str(REPORT_NOTEBOOK), stage="report", label="replay_report", output_notebook=str(output),
        parameters={"replay_path": str(source)}, shown={"replay": folder.name}, tags=run_tags, tracking_uri=uri,
        experiment_id=experiment_id, experiment_name=config.experiment, cache_key="", timeout=options.timeout,
        render=False, report_html=str(html), run_id=run_id)
    outcome = executor.run(task)
    if not outcome.ok:
        log.error("replay report failed: %s\n  executed notebook: %s", outcome.error, output)
    state["report"] = {"status": OK if outcome.ok else "failed", "html": str(html) if outcome.ok else None,
                       "notebook": str(output), "mlflow_run_id": run_id, "fingerprint": fingerprint,
                       "error": outcome.error, "cached": False}
    save_state(folder, state)
    return state


def _log_weekly_metrics(client, run_id: str, content: dict) -> None:
    """Each policy's weekly RMSE stepped by week (step: the week's number from 1), and the cumulative ones."""
    from mlflow.entities import Metric

    metrics = []
    for row in content["weeks"]:
        stamp = int(windows.utc(row["week"]).timestamp() * 1000)
        for policy in POLICIES:
            value = (row.get(policy) or {}).get("rmse")
            if value is not None:
                metrics.append(Metric(f"{policy}_rmse", float(value), stamp, row["index"] + 1))
        if row.get("challenger"):
            metrics.append(Metric("challenger_holdout", float(row["challenger"]["value"]), stamp, row["index"] + 1))
        metrics.append(Metric("alerts", float(len(row["alerts"])), stamp, row["index"] + 1))
    policies = content["policies"]
    now = int(time.time() * 1000)
    metrics += [Metric(f"cumulative_{policy}_rmse", float(v), now, 0) for policy, v in policies["rmse"].items()]
    metrics += [Metric(f"cumulative_skill_{name}", float(v), now, 0) for name, v in policies["skill"].items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
