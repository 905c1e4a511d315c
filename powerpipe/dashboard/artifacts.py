"""Which artifacts of pipeline runs the dashboard links to and serves, and fetching one from the store.

Only runs the pipeline made (tag ``tags.KIND``), only executed notebooks, the weekly report and the
run summary, and only at paths the store itself lists. The Flask route that sends them is in ``app.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

from powerpipe.core import tags
from powerpipe.core.exceptions import ArtifactNotServed, StoreUnreachableError, TrackingError

from powerpipe.dashboard.store import first_line, is_store_failure, store_errors

# MLflow run ids are 32 lowercase hex digits; anything else never reaches the store.
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# The only artifacts the dashboard serves: executed notebooks, the weekly report, the run summary.
SERVED_ARTIFACT_PATTERN = re.compile("|".join([
    re.escape(tags.NOTEBOOK_ARTIFACT_DIR) + r"/[^/\\]+\.(?:html|ipynb)",
    re.escape(tags.REPORT_ARTIFACT),
    re.escape(tags.SUMMARY_ARTIFACT),
]))
REPORT_STAGE = "report"


def artifact_url(run_id: str, artifact_path: str) -> str:
    """The dashboard's URL of one served artifact (the route ``/artifacts/<run id>/<path>``)."""
    return f"/artifacts/{run_id}/{artifact_path}"


def notebook_html_artifact(run) -> str:
    """The artifact path of the page a notebook run links to: its HTML, as the runner tagged it.

    Runs from before the tag ``tags.NOTEBOOK_HTML_ARTIFACT`` follow the runner's old rule: the report
    stage's code-free weekly report, any other notebook under its run's name in ``notebook/``.
    """
    recorded = run.data.tags.get(tags.NOTEBOOK_HTML_ARTIFACT)
    if recorded:
        return recorded
    if run.data.tags.get(tags.STAGE) == REPORT_STAGE:
        return tags.REPORT_ARTIFACT
    return tags.notebook_artifact(f"{run.info.run_name}.html")


def fetch_artifact(client, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
    """A local copy of one served artifact of a pipeline's run; ArtifactNotServed for anything else.

    Only runs the pipeline made (tag ``tags.KIND``), only the artifact kinds in SERVED_ARTIFACT_PATTERN,
    and only paths the store itself lists: a path is never joined to a folder before the store has
    named it, so ``..`` and absolute paths cannot escape. A store that fails on the way raises a
    TrackingError (StoreUnreachableError when it did not answer the run query).
    """
    from mlflow.exceptions import MlflowException

    if not RUN_ID_PATTERN.fullmatch(run_id or ""):
        raise ArtifactNotServed(f"not a run id: {run_id!r}")
    if not SERVED_ARTIFACT_PATTERN.fullmatch(artifact_path or "") or any(
            part in ("", ".", "..") for part in artifact_path.split("/")):
        raise ArtifactNotServed(f"not an artifact the dashboard serves: {artifact_path!r}")
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_store_failure(exc):
            raise StoreUnreachableError(f"run {run_id} could not be read: {first_line(exc)}") from None
        raise ArtifactNotServed(f"no run {run_id}") from None
    if run.data.tags.get(tags.KIND) not in tags.PIPELINE_KINDS:
        raise ArtifactNotServed(f"run {run_id} is not a pipeline run")
    folder = artifact_path.rpartition("/")[0] or None
    try:
        listed = {f.path for f in client.list_artifacts(run_id, folder) if not f.is_dir}
        if artifact_path not in listed:
            raise ArtifactNotServed(f"run {run_id} has no artifact {artifact_path}")
        return Path(client.download_artifacts(run_id, artifact_path, str(dst_dir)))
    except store_errors() as exc:
        raise TrackingError(f"artifact {artifact_path} of run {run_id} could not be read: {first_line(exc)}") from None
