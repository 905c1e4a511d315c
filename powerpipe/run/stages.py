"""The stages that are more than "run the notebook": process (its output file), promote, report (the
pinned model). Each takes the running ``Pipeline``; the checks and set-up before a run are ``session``'s."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from powerpipe.core import paths, tags
from powerpipe.forecast import data as data_module
from powerpipe.run.recorder import DONE, FAILED, OK, StepResult
from powerpipe.spec.steps import Step

log = logging.getLogger(__name__)


def run_process(pipeline, step: Step) -> Path | None:
    """The process notebook writes the run's processed CSV; returns it, or None if it failed."""
    source, recorder = pipeline.source, pipeline.recorder
    processed = recorder.run_dir / "data" / paths.PROCESSED_DATA_NAME
    if source.source == "opsd":  # built from the raw OPSD files: their hashes (once downloaded) are its identity
        from powerpipe.forecast import opsd

        runtime = dataclasses.replace(pipeline.runtime, input_path=None, output_path=str(processed))
        fingerprint = opsd.process_inputs_fingerprint(step.parameters(runtime))
        inputs = json.dumps(fingerprint, sort_keys=True) if fingerprint else ""
    else:
        runtime = dataclasses.replace(pipeline.runtime, input_path=str(source.path), output_path=str(processed))
        inputs = source.sha256
    result = pipeline.runner.run_with_output(step, runtime, inputs, tags.PROCESSED_PATH, processed,
                                             sha256_tag=tags.PROCESSED_SHA256, data=(source.path, source.sha256))
    if result.status not in DONE:
        return None
    if not processed.is_file():
        result.status, result.error = FAILED, f"the process notebook wrote no file at {processed}"
        recorder.update(result)
        log.error("%s", result.error)
        return None
    if result.status == OK:
        run_tags = {tags.PROCESSED_PATH: str(processed), tags.PROCESSED_SHA256: data_module.file_sha256(processed)}
        if inputs == "":  # raw files downloaded just now: their hashes make the cache key
            from powerpipe.forecast import opsd

            fingerprint = opsd.process_inputs_fingerprint(step.parameters(runtime))
            if fingerprint:
                run_tags[tags.CACHE_KEY] = pipeline.runner.cache_key(step, runtime, json.dumps(fingerprint,
                                                                                             sort_keys=True))
        recorder.tag_run(result.mlflow_run_id, run_tags)
    return processed


def run_promote(pipeline, trained: list[StepResult]):
    """The gate (the holder's configuration retrained on the same split), the winner's refit, the registry:
    ``refit.run_promote``."""
    from powerpipe.run.refit import run_promote as promote_stage

    return promote_stage(pipeline, trained)


def run_report(pipeline, step: Step) -> str | None:
    """The weekly report on the model the alias points at now, pinned by version (the report and its
    cache key name the same model). Returns the HTML's path in the run folder, or None."""
    from powerpipe.tracking.promotion import alias_holder

    recorder, spec = pipeline.recorder, pipeline.config.promote
    alias_uri = f"models:/{spec.model_name}@{spec.alias}"
    holder = alias_holder(recorder.client, spec)  # an unreachable store stops the run (never "no model")
    if holder is None:
        log.warning("report skipped: no model holds %s", alias_uri)
        recorder.skip(step, f"no model holds {alias_uri}")
        return None
    runtime = dataclasses.replace(pipeline.runtime, model_uri=f"models:/{spec.model_name}/{holder.version}")
    html = recorder.run_dir / tags.REPORT_ARTIFACT_DIR / tags.REPORT_HTML_NAME
    from powerpipe.run.watch import fingerprint

    # What monitoring found is part of the report (its first section): a cached report is reused only
    # with the same data, model and monitoring.
    inputs = f"{pipeline.data_sha256}+monitoring:{fingerprint(pipeline.watch)}" if pipeline.watch else pipeline.data_sha256
    from powerpipe.tracking.alias_history import last_move

    inputs += f"+aliases:{last_move(recorder.client, spec.model_name, spec.alias)}"  # its history table: after a rollback too
    result = pipeline.runner.run_with_output(step, runtime, inputs, tags.REPORT_PATH, html,
                                             data=(Path(runtime.data_path), pipeline.data_sha256), render=False,
                                             report_html=html)
    if result.status not in DONE:
        return None
    recorder.client.log_artifact(recorder.parent_run_id, str(html), artifact_path=tags.REPORT_ARTIFACT_DIR)
    return recorder.relative(html)
