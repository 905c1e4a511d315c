"""The production model watched: scored on the hours that arrived after it last learnt, against baselines.

Every pipeline run, before training, ``monitor`` loads the model holding the alias (one load), predicts
the hours of the run's data after its ``trained_until`` (one predict) and scores it, and the two
baselines of ``powerpipe.forecast.baselines`` (persistence, climatology), on the same hours: RMSE,
MAE, bias and R² per target, over all those hours and week by week, and the skill against each
baseline. It records that as a monitoring run (a child of the pipeline's parent run: overall metrics,
the weekly ones stepped by week, the weekly table ``monitoring/history.csv`` and ``monitoring/
monitoring.json``), and returns it for summary.json, the report and the dashboard. ``alerts`` turns
it into sentences when it breaks the pipeline file's ``monitor:`` limits.

``trained_until`` (the last hour the model learnt) is the model version's ``powerpipe.trained_until``
tag; a version registered before that tag existed falls back to the end of the training window of its
source run (the hour before its evaluation's ``test_start``). No production model, no new hours, or a
model whose training end is unknown (a random split of hours): monitoring says so; it is no error.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from powerpipe.core import tags
from powerpipe.core.exceptions import StoreUnreachableError

log = logging.getLogger(__name__)

# What a monitoring says of itself (``status``).
OK, NO_MODEL, NO_NEW_HOURS, UNKNOWN_END, FAILED = "ok", "no_model", "no_new_hours", "unknown_training_end", "failed"
CONTEXT_HOURS = 24  # hours before the first new one that the model also sees (its weather lags need them)
WEEKLY_KEYS = ("rmse", "mae", "bias", "r2", "solar_rmse", "solar_r2", "wind_rmse", "wind_r2")
COVERAGE_KEYS = ("solar_coverage_80", "wind_coverage_80")  # a model with intervals only
HOLDOUT_KEYS = ("rmse", "mae", "r2", "solar_rmse", "solar_r2", "wind_rmse", "wind_r2", "backtest_r2",
                "backtest_rmse", *COVERAGE_KEYS)


def empty_monitoring(status: str, message: str, **extra) -> dict[str, Any]:
    """A monitoring that scored nothing, saying why (every key present, so readers need no checks)."""
    return {"status": status, "message": message, "model": None, "trained_until": None, "trained_until_from": None,
            "period": None, "hours": 0, "holdout": {}, "live": None, "persistence": None, "climatology": None,
            "best_baseline": None, "skill_vs_best": None, "rmse_vs_holdout": None, "weeks": [],
            "mlflow_run_id": None, **extra}


# -- what the registry says of the model ---------------------------------------------------------------
def trained_until(client, version) -> tuple[Any, str]:
    """The last hour ``version`` learnt (a UTC Timestamp) and where that comes from, or (None, why not)."""
    import pandas as pd

    from powerpipe.forecast.evaluation import from_tag

    from powerpipe.forecast.windows import utc

    recorded = (version.tags or {}).get(tags.TRAINED_UNTIL)
    if recorded:
        try:
            return utc(pd.Timestamp(recorded)), f"the model version's {tags.TRAINED_UNTIL} tag"
        except ValueError:
            log.warning("model version %s/%s: unreadable %s %r", version.name, version.version, tags.TRAINED_UNTIL,
                        recorded)
    run_id = version.run_id
    spec = from_tag(client.get_run(run_id).data.tags.get(tags.EVALUATION)) if run_id else None
    if spec is not None and spec.split == "time" and spec.test_start is not None:
        return spec.start - pd.Timedelta(hours=1), (f"the end of its training window (its run {run_id} was tested "
                                                    f"from {spec.test_start}; the version was registered before "
                                                    f"{tags.TRAINED_UNTIL} was recorded)")
    why = ("its run was scored on a random split of hours" if spec is not None and spec.split == "random"
           else "its run records no time split")
    return None, f"{why}, and the version has no {tags.TRAINED_UNTIL} tag: which hours it never learnt is unknown"


def holdout_scores(client, version) -> dict[str, float]:
    """The holdout (and backtest) metrics the version was promoted with: the version's ``powerpipe.scores``
    tag, else the metrics of its evaluated run (``powerpipe.evaluated_run``), else of its own run."""
    version_tags = version.tags or {}
    scores: dict[str, float] = {}
    if version_tags.get(tags.SCORES):
        try:
            scores = {k: float(v) for k, v in json.loads(version_tags[tags.SCORES]).items()
                      if isinstance(v, (int, float))}
        except (ValueError, AttributeError):
            scores = {}
    if not scores or not all(key in scores for key in COVERAGE_KEYS):
        # No scores tag, or one written before coverage was kept in it: the evaluated run's own metrics.
        run_id = version_tags.get(tags.EVALUATED_RUN) or version.run_id
        if run_id:
            scores = {**client.get_run(run_id).data.metrics, **scores}
    return {key: scores[key] for key in HOLDOUT_KEYS if key in scores and math.isfinite(scores[key])}


# -- monitoring --------------------------------------------------------------------------------------------
def monitor(client, model_name: str, alias: str, frame, *, experiment_id: str, parent_run_id: str,
            pipeline_run_id: str, thresholds=None, context: dict | None = None) -> tuple[dict, list[str]]:
    """Score the model holding ``model_name@alias`` on the hours of ``frame`` it never learnt; record a
    monitoring run under ``parent_run_id``. Returns (monitoring, alerts).

    ``frame``: the run's data, indexed by UTC time. ``thresholds``: a ``MonitorSpec`` (or None: no alert).
    ``context``: written beside the monitoring into its ``monitoring.json`` (as_of, data_period).
    A model that cannot be loaded or scored is a ``failed`` monitoring, never a failed run; a store that
    does not answer stops the run as everywhere else.
    """
    from powerpipe.tracking.promotion import alias_holder
    from powerpipe.tracking.store import is_unreachable
    from powerpipe.spec.config import PromoteSpec

    holder = alias_holder(client, PromoteSpec(model_name=model_name, alias=alias))
    run_id = _start_run(client, experiment_id, parent_run_id, pipeline_run_id,
                        f"{model_name}/{holder.version}" if holder else "")
    try:
        if holder is None:
            monitoring = empty_monitoring(NO_MODEL, f"no production model yet: nothing holds "
                                                    f"models:/{model_name}@{alias}")
        else:
            monitoring = score_version(client, holder, frame)
        monitoring["mlflow_run_id"] = run_id
        found = alerts(monitoring, thresholds)
        _record(client, run_id, monitoring, found, thresholds, context or {})
    except Exception as exc:  # noqa: BLE001 - boundary: monitoring must never stop the weekly run
        if isinstance(exc, StoreUnreachableError) or is_unreachable(exc):
            client_end(client, run_id, "FAILED")
            raise
        log.exception("monitoring failed")
        monitoring = empty_monitoring(FAILED, f"monitoring failed: {type(exc).__name__}: {exc}",
                                      mlflow_run_id=run_id)
        found = []
        try:
            client.set_tag(run_id, tags.MONITORING_STATUS, FAILED)
            client.set_tag(run_id, tags.ERROR, monitoring["message"][:5000])
        finally:
            client_end(client, run_id, "FAILED")
        return monitoring, found
    client_end(client, run_id, "FINISHED")
    return monitoring, found


def score_version(client, version, frame) -> dict[str, Any]:
    """The monitoring of one registered version on ``frame`` (no MLflow run: see ``monitor``)."""
    import pandas as pd

    from powerpipe.forecast.baselines import live_scores
    from powerpipe.forecast.quantile_model import forecast_frame
    from powerpipe.tracking.promotion import load_version

    model = {"name": version.name, "version": str(version.version), "run_id": version.run_id,
             "uri": f"models:/{version.name}/{version.version}"}
    until, source = trained_until(client, version)
    holdout = holdout_scores(client, version)
    if until is None:
        return empty_monitoring(UNKNOWN_END, f"{version.name} version {version.version} is not monitored: {source}",
                                model=model, holdout=holdout)
    new = frame[frame.index > until]
    base = {"model": model, "trained_until": until.isoformat(), "trained_until_from": source, "holdout": holdout}
    if new.empty:
        return empty_monitoring(NO_NEW_HOURS, f"no new hours: the data ends {frame.index.max():%Y-%m-%d %H:%M} UTC, "
                                              f"and {version.name} version {version.version} learnt every hour up "
                                              f"to {until:%Y-%m-%d %H:%M} UTC", **base)
    loaded = load_version(client, version.name, str(version.version))
    window = frame[frame.index > until - pd.Timedelta(hours=CONTEXT_HOURS)]
    predicted = forecast_frame(loaded, window)  # the points, and the quantiles of a model with intervals
    scored = live_scores(frame, predicted, until)
    if not scored.hours:
        return empty_monitoring(NO_NEW_HOURS, f"no new hour could be scored ({scored.dropped} without a recorded "
                                              "hour a day earlier)", **base)
    best = scored.best_baseline
    live = scored.overall["model"]
    holdout_rmse = holdout.get("rmse")
    monitoring = {
        "status": OK,
        "message": (f"{version.name} version {version.version} on {scored.hours} hours it never learnt "
                    f"({scored.start:%Y-%m-%d %H:%M} to {scored.end:%Y-%m-%d %H:%M} UTC)"),
        **base,
        "period": {"start": scored.start.isoformat(), "end": scored.end.isoformat()},
        "hours": scored.hours,
        "dropped_hours": scored.dropped,
        "live": _clean(live),
        "persistence": _clean(scored.overall["persistence"]),
        "climatology": _clean(scored.overall["climatology"]),
        "best_baseline": best,
        "skill_vs_best": _number(scored.overall[best]["skill"]) if best else None,
        "rmse_vs_holdout": _number(live["rmse"] / holdout_rmse) if holdout_rmse else None,
        "weeks": [_week(row) for row in scored.weekly.to_dict("records")],
    }
    monitoring["history"] = scored.weekly  # the full weekly table (every metric): recorded, not summarised
    return monitoring


def _week(row: dict) -> dict[str, Any]:
    week = {"week": f"{row['week']:%Y-%m-%d}", "hours": int(row["hours"])}
    week.update({key: _number(row[f"model_{key}"]) for key in WEEKLY_KEYS})
    week.update({key: _number(row[f"model_{key}"]) for key in COVERAGE_KEYS if f"model_{key}" in row})
    for name in ("persistence", "climatology"):
        week[f"{name}_rmse"] = _number(row[f"{name}_rmse"])
        week[f"{name}_skill"] = _number(row[f"{name}_skill"])
    return week


def alerts(monitoring: dict, thresholds) -> list[str]:
    """Plain sentences, with the numbers, for every limit of ``thresholds`` (a ``MonitorSpec``) the
    monitoring breaks; [] without thresholds or without a scored monitoring."""
    if thresholds is None or monitoring.get("status") != OK:
        return []
    found = []
    model = monitoring["model"]
    who = f"{model['name']} version {model['version']}"
    start, end = (monitoring["period"][key][:10] for key in ("start", "end"))
    hours = f"{monitoring['hours']} new hours ({start} to {end})"
    live = monitoring["live"]
    ratio, limit = monitoring.get("rmse_vs_holdout"), thresholds.max_rmse_vs_holdout
    if limit is not None and ratio is not None and ratio > limit:
        found.append(f"live RMSE of {who} is {live['rmse']:.3g} GW on {hours}, {ratio:.2f} times the holdout RMSE "
                     f"{monitoring['holdout']['rmse']:.3g} GW it was promoted with (limit: {limit:g} times)")
    best, skill, minimum = monitoring.get("best_baseline"), monitoring.get("skill_vs_best"), thresholds.min_skill
    if minimum is not None and best and skill is not None and skill < minimum:
        found.append(f"skill of {who} against {best} (the better baseline) is {skill:.3f} on {hours}, below the "
                     f"minimum {minimum:g} (RMSE {live['rmse']:.3g} GW against {monitoring[best]['rmse']:.3g} GW "
                     f"for {best})")
    return found


# -- the monitoring run ---------------------------------------------------------------------------------------
def _start_run(client, experiment_id: str, parent_run_id: str, pipeline_run_id: str, monitored: str) -> str:
    run = client.create_run(experiment_id, run_name=f"monitoring {monitored or '(no model)'}", tags={
        tags.MLFLOW_PARENT_RUN_ID: parent_run_id,
        tags.KIND: tags.KIND_MONITORING,
        tags.PIPELINE_RUN_ID: pipeline_run_id,
        tags.MONITORED_MODEL: monitored,
    })
    return run.info.run_id


def client_end(client, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status)


def _record(client, run_id: str, monitoring: dict, found: list[str], thresholds, context: dict) -> None:
    """Tags, params, metrics (overall; weekly stepped by week), history.csv and monitoring.json."""
    from mlflow.entities import Metric, Param

    client.set_tag(run_id, tags.MONITORING_STATUS, monitoring["status"])
    client.set_tag(run_id, tags.ALERTS, str(len(found)))
    params = {"status": monitoring["status"], "trained_until": monitoring.get("trained_until") or "",
              **{f"monitor.{k}": v for k, v in (thresholds.as_dict() if thresholds else {}).items()}}
    if monitoring.get("model"):
        params.update(model_name=monitoring["model"]["name"], model_version=monitoring["model"]["version"])
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    metrics = []
    if monitoring["status"] == OK:
        overall = {"hours": monitoring["hours"], "rmse_vs_holdout": monitoring["rmse_vs_holdout"],
                   "skill_vs_best": monitoring["skill_vs_best"],
                   **{f"holdout_{k}": v for k, v in monitoring["holdout"].items()},
                   **{f"model_{k}": v for k, v in monitoring["live"].items()},
                   **{f"{name}_{k}": v for name in ("persistence", "climatology")
                      for k, v in monitoring[name].items()}}
        metrics += [Metric(key, float(value), now, 0) for key, value in overall.items() if _finite(value)]
        history = monitoring["history"]
        for step, row in enumerate(history.to_dict("records"), start=1):
            stamp = int(row["week"].timestamp() * 1000)
            metrics += [Metric(f"week_{key}", float(value), stamp, step) for key, value in row.items()
                        if key != "week" and _finite(value)]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start:start + 1000],
                         params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [])
    if not metrics:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory(prefix="powerpipe-monitoring-") as folder:
        if monitoring["status"] == OK:
            path = Path(folder) / Path(tags.MONITORING_HISTORY_ARTIFACT).name
            monitoring["history"].to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S+00:00")
            client.log_artifact(run_id, str(path), artifact_path=tags.MONITORING_ARTIFACT_DIR)
        path = Path(folder) / Path(tags.MONITORING_ARTIFACT).name
        path.write_text(json.dumps({**context, "monitoring": public(monitoring), "alerts": found}, indent=2) + "\n")
        client.log_artifact(run_id, str(path), artifact_path=tags.MONITORING_ARTIFACT_DIR)


def public(monitoring: dict) -> dict:
    """The monitoring as summary.json holds it (JSON-ready: the full weekly table left out)."""
    return {key: value for key, value in monitoring.items() if key != "history"}


# -- reading it back (the dashboard) ------------------------------------------------------------------------
def latest_monitoring(client, model_name: str, version: str | None = None) -> dict | None:
    """The newest monitoring.json of ``model_name`` version ``version`` (any version when None, or when
    that version was never monitored: then the newest of the model's), with ``monitored_version``;
    None when there is none."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    kind = tags.equals(tags.KIND, tags.KIND_MONITORING)
    queries = [f"{kind} and {tags.equals(tags.MONITORED_MODEL, f'{model_name}/{version}')}"] if version else []
    queries.append(f"{kind} and tags.`{tags.MONITORED_MODEL}` LIKE '{model_name}/%'")
    for query in queries:
        runs = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            run = runs[0]
            with tempfile.TemporaryDirectory(prefix="powerpipe-monitoring-") as folder:
                try:
                    path = client.download_artifacts(run.info.run_id, tags.MONITORING_ARTIFACT, folder)
                except Exception:  # noqa: BLE001 - a run whose artifact is gone: as if never monitored
                    log.debug("no %s in run %s", tags.MONITORING_ARTIFACT, run.info.run_id, exc_info=True)
                    return None
                found = json.loads(Path(path).read_text(encoding="utf-8"))
            found["monitored_version"] = run.data.tags.get(tags.MONITORED_MODEL, "").rpartition("/")[2]
            found["run_id"] = run.info.run_id
            return found
    return None


# -- helpers -------------------------------------------------------------------------------------------------
def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _number(value) -> float | None:
    """A float fit for JSON (NaN and infinities: None)."""
    return float(value) if _finite(value) else None


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {key: _number(value) for key, value in metrics.items()}
