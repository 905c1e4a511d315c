"""A pipeline run's tracking store, built in seconds without running a notebook: the dashboard's fast tests.

``build_pipeline_store`` writes what the runner would have left behind: a parent run tagged as a
pipeline run, a child run per notebook tagged as the runner tags them (with small fake executed
notebooks as artifacts), one real model (a scikit-learn LinearRegression fitted on the synthetic data
and logged with MLflow), registered and given the ``production`` alias, a weekly report and a
``summary.json``. The returned dict has the keys of conftest's ``smoke_run``, plus the summary.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from powerpipe.forecast import data, modeling
from powerpipe.core import paths, tags
from powerpipe.tracking import store as tracking
from powerpipe.spec.config import PromoteSpec

from .conftest import new_empty_store

EXPERIMENT = "predicting_wind_solar_dashboard"
PIPELINE_RUN_ID = "20240101T000000-000"
# A run whose executed notebook's HTML is not named after the run: only the tag finds it.
RENAMED_HTML = tags.notebook_artifact("model_rf__max_depth_4__second_attempt.html")
REPORT_TITLE = "Weekly solar and wind report"


@contextlib.contextmanager
def global_tracking_uri(uri: str):
    """MLflow's process-wide tracking URI (and the variable it sets) set to ``uri``, then put back as they were."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, variable = utils._tracking_uri, os.environ.get(tracking.TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop(tracking.TRACKING_URI_ENV, None)
        else:
            os.environ[tracking.TRACKING_URI_ENV] = variable


@contextlib.contextmanager
def unsynced_sqlite():
    """SQLite connections opened meanwhile skip fsync (``PRAGMA synchronous=OFF``): a throwaway test store.

    Creating MLflow's tables takes some 300 commits; on a disk each waits for fsync, seconds in all.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def no_fsync(connection, _record):
        if type(connection).__module__.startswith("sqlite3"):
            connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", no_fsync)
    try:
        yield
    finally:
        event.remove(Engine, "connect", no_fsync)


def fake_notebook_files(folder: Path, label: str, html_name: str | None = None) -> tuple[Path, Path]:
    """An executed notebook and its HTML rendering, small but of the right kinds."""
    folder.mkdir(parents=True, exist_ok=True)
    notebook = folder / f"{label}.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    html = folder / (html_name or f"{label}.html")
    html.write_text(f"<!DOCTYPE html>\n<html><body class='jp-Notebook'><h1>{label}</h1>"
                    "<pre>tracking.record_metrics(metrics)</pre></body></html>\n")
    return notebook, html


def copy_store(uri: str, db: Path) -> str:
    """A copy of an SQLite store's database at ``db`` (artifacts stay where they are), free to change."""
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    # SQLite's backup API, not a file copy: recent writes may still sit in the write-ahead log.
    with sqlite3.connect(uri[len("sqlite:///"):]) as source, sqlite3.connect(db) as target:
        source.backup(target)
    return f"sqlite:///{db}"


def build_pipeline_store(outputs: Path, empty_store: str | None = None) -> dict:
    """The store and run folder of one finished pipeline run (see the module's docstring).

    ``empty_store``: a store with MLflow's tables to start from (copied), which spares their creation.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    db = outputs / "tracking" / paths.TRACKING_DB_NAME
    db.parent.mkdir(parents=True)
    uri = copy_store(empty_store, db) if empty_store else f"sqlite:///{db}"
    run_dir = outputs / PIPELINE_RUN_ID
    processed = data.write_processed(data.synthetic_frame(), run_dir / "data" / paths.PROCESSED_DATA_NAME)
    sha256 = data.file_sha256(processed)
    client = mlflow.MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(client, EXPERIMENT, uri)
    parent = client.create_run(experiment_id, run_name=PIPELINE_RUN_ID, tags={
        tags.KIND: tags.KIND_PIPELINE, tags.PIPELINE_RUN_ID: PIPELINE_RUN_ID,
        tags.CONFIG: str(paths.SMOKE_CONFIG), tags.DATA_SOURCE: "synthetic", tags.DATA_SHA256: sha256,
        tags.SYNTHETIC_DATA: tags.flag(True), tags.OUTPUTS: str(run_dir),
    }).info.run_id
    points: list[dict] = []

    def notebook_run(stage: str, notebook: str, label: str, parameters: dict, *, ok: bool = True,
                     html_name: str | None = None, tag_html: bool = True) -> str:
        folder = run_dir / stage
        ipynb, html = fake_notebook_files(folder, label, html_name)
        run_tags = {
            tags.MLFLOW_PARENT_RUN_ID: parent, tags.KIND: tags.KIND_NOTEBOOK, tags.STAGE: stage,
            tags.NOTEBOOK: notebook, tags.NOTEBOOK_SHA256: "0" * 64, tags.PIPELINE_RUN_ID: PIPELINE_RUN_ID,
            tags.DATA_SHA256: sha256, tags.DATA_PATH: str(processed), tags.SYNTHETIC_DATA: tags.flag(True),
            tags.PARAMETERS: json.dumps(parameters, sort_keys=True), tags.OUTPUT_NOTEBOOK: str(ipynb),
        }
        if tag_html:  # what the runner records; older runs lack it
            run_tags[tags.NOTEBOOK_HTML_ARTIFACT] = tags.notebook_artifact(html.name)
        if not ok:
            run_tags[tags.ERROR] = "ValueError: broken on purpose"
        run_id = client.create_run(experiment_id, run_name=label, tags=run_tags).info.run_id
        for key, value in parameters.items():
            client.log_param(run_id, key, str(value))
        for path in (ipynb, html):
            client.log_artifact(run_id, str(path), artifact_path=tags.NOTEBOOK_ARTIFACT_DIR)
        points.append({"stage": stage, "notebook": notebook, "parameters": parameters,
                       "status": "ok" if ok else "failed", "metrics": {}, "mlflow_run_id": run_id,
                       "output_notebook": os.path.relpath(ipynb, run_dir), "seconds": 0.1,
                       "error": None if ok else run_tags[tags.ERROR]})
        return run_id

    def finish(run_id: str, metrics: dict[str, float] | None = None, ok: bool = True) -> None:
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value)
        points[-1]["metrics"] = dict(metrics or {})
        client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    finish(notebook_run("process", "make_processed_data.ipynb", "make_processed_data", {"start_date": "2013-01-01"}))

    # The one real model: fitted and logged as the model notebooks do.
    frame = data.load_processed(processed)
    X_train, X_test, y_train, y_test = modeling.split(frame)
    model = LinearRegression().fit(X_train, y_train)
    metrics = modeling.evaluate(y_test, model.predict(X_test))
    best = notebook_run("train", "model_linreg.ipynb", "model_linreg__fit_intercept_True", {"fit_intercept": True})
    example = X_test.head(5)
    with global_tracking_uri(uri), mlflow.start_run(run_id=best):
        mlflow.sklearn.log_model(
            model, name=tracking.MODEL_ARTIFACT, input_example=example,
            signature=infer_signature(example, modeling.predictions_frame(model.predict(example))),
            pip_requirements=[f"mlflow=={mlflow.__version__}", "scikit-learn", "pandas"],
            # cloudpickle, not the notebooks' skops: importing skops alone takes seconds (the slow tests
            # load the pipeline's own skops models).
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
    finish(best, metrics)
    # Worse grid points: one tagged with an HTML path not named after its run, one from before the tag.
    renamed = RENAMED_HTML.rpartition("/")[2]
    finish(notebook_run("train", "model_rf.ipynb", "model_rf__max_depth_4", {"n_estimators": 2, "max_depth": 4},
                        html_name=renamed), {**metrics, "rmse": metrics["rmse"] + 1.0})
    finish(notebook_run("train", "model_rf.ipynb", "model_rf__max_depth_2", {"n_estimators": 2, "max_depth": 2},
                        tag_html=False), {**metrics, "rmse": metrics["rmse"] + 2.0})
    finish(notebook_run("train", "model_keras.ipynb", "model_keras__batch_size_512", {"batch_size": 512}, ok=False),
           ok=False)
    finish(notebook_run("compare", "compare_runs.ipynb", "compare_runs", {"metric": "rmse", "goal": "minimize"}))

    spec = PromoteSpec()
    version = _register_and_promote(client, uri, best, spec, metrics[spec.metric])

    # The report stage: rendered without code into report/ (no notebook HTML, so no HTML tag).
    report = run_dir / tags.REPORT_ARTIFACT
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"<!DOCTYPE html>\n<html><body><h1>{REPORT_TITLE}</h1></body></html>\n")
    report_run = notebook_run("report", "weekly_report.ipynb", "weekly_report",
                              {"model_uri": f"models:/{spec.model_name}/{version}"}, tag_html=False)
    client.log_artifact(report_run, str(report), artifact_path=tags.REPORT_ARTIFACT_DIR)
    client.set_tag(report_run, tags.REPORT_PATH, str(report))
    finish(report_run)
    client.log_artifact(parent, str(report), artifact_path=tags.REPORT_ARTIFACT_DIR)

    summary = {
        "pipeline_run_id": PIPELINE_RUN_ID, "mlflow_parent_run_id": parent, "status": "ok",
        "data": {"path": os.path.relpath(processed, run_dir), "sha256": sha256, "source": "synthetic"},
        "grid_points": points,
        "promoted": {"name": spec.model_name, "version": version, "run_id": best, "metric": spec.metric,
                     "value": metrics[spec.metric]},
        "report": str(report),
    }
    (run_dir / tags.SUMMARY_ARTIFACT).write_text(json.dumps(summary, indent=2) + "\n")
    client.log_artifact(parent, str(run_dir / tags.SUMMARY_ARTIFACT))
    client.set_terminated(parent, "FINISHED")
    return {"exit_code": 0, "outputs": outputs, "run_dir": run_dir, "tracking_uri": uri, "summary": summary}


def _register_and_promote(client, uri: str, run_id: str, spec: PromoteSpec, value: float) -> str:
    """The run's logged model as a new version of ``spec.model_name``, holding ``spec.alias``, tagged as promote does."""
    outputs = client.get_run(run_id).outputs
    model_id = sorted(outputs.model_outputs, key=lambda o: o.step)[-1].model_id
    client.create_registered_model(spec.model_name)
    with global_tracking_uri(uri):  # MLflow's registry resolves models:/<model id> through the global URI
        version = str(client.create_model_version(spec.model_name, source=f"models:/{model_id}", run_id=run_id,
                                                  model_id=model_id).version)
    client.set_registered_model_alias(spec.model_name, spec.alias, version)
    version_tags = {
        tags.PROMOTED_AT: datetime.now(timezone.utc).isoformat(timespec="seconds"), tags.ALIAS: spec.alias,
        tags.METRIC: spec.metric, tags.METRIC_VALUE: repr(value), tags.PIPELINE_RUN_ID: PIPELINE_RUN_ID,
        tags.PREVIOUS_VERSION: "", tags.PREVIOUS_METRIC_VALUE: "", tags.FORCED: tags.flag(False),
    }
    for key, tag in version_tags.items():
        client.set_model_version_tag(spec.model_name, version, key, tag)
    return version


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> str:
    """A store with MLflow's tables and nothing else (read-only in the tests)."""
    return new_empty_store(tmp_path_factory.mktemp("empty_store") / paths.TRACKING_DB_NAME)


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory, empty_store) -> dict:
    """One pipeline run's store for the module, built without running a notebook (a few seconds)."""
    saved = os.environ.pop(tracking.TRACKING_URI_ENV, None)
    try:
        with unsynced_sqlite():
            return build_pipeline_store(tmp_path_factory.mktemp("dashboard_store"), empty_store)
    finally:
        if saved is not None:
            os.environ[tracking.TRACKING_URI_ENV] = saved
