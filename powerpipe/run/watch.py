"""The data a pipeline run sees, settled once before training: ``--as-of``, the relative test window, monitoring.

- ``cut_source`` (before anything runs): with ``--as-of DATE``, a CSV or synthetic input is cut to the
  hours before DATE into the run folder (``data/<name>_before_<DATE>.csv``); every stage reads that file.
- ``settle`` (once the processed data exists: after the process stage, or at once without one): data
  built by the process stage from the raw OPSD files is cut there too; the data's period is noted; a
  relative test window (``evaluation.test_period``) is resolved against the data and passed, resolved,
  to every notebook (so it enters their cache keys); the production model is monitored
  (``powerpipe.tracking.monitoring``) and alerts are raised. All of it lands in ``<run>/monitoring.json``
  (which the report reads), in summary.json (``as_of``, ``data_period``, ``monitoring``, ``alerts``) and
  on the parent run's tags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from powerpipe.core import tags
from powerpipe.core.constants import FAILED
from powerpipe.core.exceptions import DataError
from powerpipe.core.fsutil import atomic_write_text
from powerpipe.forecast import data as data_module
from powerpipe.forecast import windows

log = logging.getLogger(__name__)

MONITORING_FILE = "monitoring.json"  # in the run folder: what settle found (the report's monitoring_path)


def as_of_text(as_of: str | None) -> str | None:
    """``--as-of`` as canonical UTC text (``2016-07-04`` or ``2016-07-04 06:00``); None without one."""
    return windows.time_text(windows.parse_time(as_of)) if as_of else None


def cut_file(path: Path, as_of: str, folder: Path, origin: str | None = None) -> Path:
    """The hours of the processed CSV ``path`` before ``as_of``, written to ``folder`` (a new file)."""
    frame = data_module.load_processed(path)
    kept = windows.cut(frame, as_of, origin or str(path))
    stamp = as_of_text(as_of).replace(" ", "T").replace(":", "")
    target = folder / f"{Path(path).stem}_before_{stamp}.csv"
    data_module.write_processed(kept, target)
    log.info("--as-of %s: %s cut to %d of its %d hours (%s to %s) in %s", as_of_text(as_of), Path(path).name,
             len(kept), len(frame), f"{kept.index.min():%Y-%m-%d %H:%M}", f"{kept.index.max():%Y-%m-%d %H:%M}",
             target)
    return target


def cut_source(source: data_module.DataSource, as_of: str | None, run_dir: Path) -> data_module.DataSource:
    """The run's input cut at ``as_of`` into the run folder (the same kind of source); as it is without
    ``as_of`` or for ``opsd`` (built by the process stage, cut in ``settle``). DataError if no hour is left."""
    if not as_of or source.source == data_module.OPSD_SPEC:
        return source
    path = cut_file(source.path, as_of, run_dir / "data")
    return data_module.DataSource(path.resolve(), data_module.file_sha256(path), source.source)


def settle(pipeline) -> bool:
    """Settle the data this run's models see and watch the production model (see the module); once per run.

    False when the data cannot be used (built data with no hour before ``--as-of``): training is skipped.
    """
    if pipeline.watch is not None:
        return True
    options, recorder = pipeline.options, pipeline.recorder
    as_of = as_of_text(getattr(options, "as_of", None))
    path = Path(pipeline.runtime.data_path)
    frame = data_module.load_processed(path)
    if as_of and frame.index.max() >= windows.utc(as_of):  # built by the process stage: cut it now
        try:
            path = cut_file(path, as_of, recorder.run_dir / "data")
        except DataError as exc:
            log.error("%s", exc)
            for result in recorder.results:
                if result.stage == "process":
                    result.status, result.error = FAILED, str(exc)
                    recorder.update(result)
            return False
        frame = data_module.load_processed(path)
        pipeline.data_sha256 = data_module.file_sha256(path)
        recorder.tag_run(recorder.parent_run_id, {tags.PROCESSED_DATA_SHA256: pipeline.data_sha256})
    period = windows.period(frame)
    runtime = dataclasses.replace(pipeline.runtime, data_path=str(path))
    evaluation = _resolved_evaluation(pipeline.config.evaluation, frame)
    if evaluation is not None:
        runtime = dataclasses.replace(runtime, evaluation=evaluation)
    recorder.tag_run(recorder.parent_run_id, {tags.AS_OF: as_of or "", tags.DATA_START: period["start"],
                                              tags.DATA_END: period["end"]})
    context = {"as_of": as_of, "data_period": period}
    monitoring, alerts = watch_production(pipeline, frame, context)
    for alert in alerts:
        log.warning("ALERT: %s", alert)
    recorder.tag_run(recorder.parent_run_id, {tags.ALERTS: str(len(alerts))})
    watched = {**context, "monitoring": monitoring, "alerts": alerts}
    target = recorder.run_dir / MONITORING_FILE
    atomic_write_text(target, json.dumps(watched, indent=2) + "\n", fsync=False)
    pipeline.runtime = dataclasses.replace(runtime, monitoring_path=str(target))
    pipeline.watch = watched
    pipeline.on_change(pipeline)
    return True


def _resolved_evaluation(declared: dict | None, frame) -> dict | None:
    """The pipeline's evaluation with a relative test period resolved against ``frame``; None if fixed."""
    if declared is None:
        return None
    from powerpipe.forecast.evaluation import Evaluation

    spec = Evaluation.from_dict(declared)
    if not spec.is_relative:
        return None
    resolved = spec.against(frame)
    log.info("evaluation: %s (training on every hour before it)", resolved.describe())
    return resolved.as_dict()


def watch_production(pipeline, frame, context: dict) -> tuple[dict, list[str]]:
    """Monitoring of the production model on ``frame`` (a run of its own under the parent run), and alerts."""
    from powerpipe.tracking.monitoring import NO_MODEL, empty_monitoring, monitor, public

    config, recorder = pipeline.config, pipeline.recorder
    if config.promote is None:
        return empty_monitoring(NO_MODEL, "this pipeline promotes no model (no stages.promote): nothing to "
                                          "monitor"), []
    monitoring, alerts = monitor(recorder.client, config.promote.model_name, config.promote.alias, frame,
                                 experiment_id=recorder.experiment_id, parent_run_id=recorder.parent_run_id,
                                 pipeline_run_id=recorder.run_id, thresholds=config.monitor, context=context)
    log.info("monitoring: %s", monitoring["message"])
    return public(monitoring), alerts


def fingerprint(watched: dict | None) -> str:
    """What the report shows of monitoring, as a hash for its cache key (its MLflow run id left out)."""
    if not watched:
        return ""
    shown = {**watched, "monitoring": {k: v for k, v in (watched.get("monitoring") or {}).items()
                                       if k != "mlflow_run_id"}}
    return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()


def summary_keys(pipeline) -> dict:
    """summary.json's ``as_of``, ``data_period``, ``monitoring`` and ``alerts`` (also when the data was never
    settled: a failed process stage)."""
    if pipeline.watch is not None:
        return dict(pipeline.watch)
    from powerpipe.tracking.monitoring import empty_monitoring

    period = None
    path = Path(pipeline.runtime.data_path)
    if path.is_file() and pipeline.source.source != data_module.OPSD_SPEC:  # opsd: built by the stage that failed
        try:
            period = windows.period(data_module.load_processed(path))
        except DataError:
            period = None
    return {"as_of": as_of_text(getattr(pipeline.options, "as_of", None)), "data_period": period,
            "monitoring": empty_monitoring("not_run", "not monitored: the data was never ready (the process stage "
                                                      "failed or the run stopped before it)"),
            "alerts": []}
