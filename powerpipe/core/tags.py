"""Our MLflow tag names and artifact paths, declared once (as ``mlflow/utils/mlflow_tags.py`` declares MLflow's).

Everything that writes or reads a ``powerpipe.*`` tag, an MLflow tag we rely on, or an artifact path
of ours names it from here: the runner, the notebooks' helpers, promotion, ``--reproduce``, the
dashboard and the tests.
"""

from __future__ import annotations

# -- MLflow's own tags that we set or read ---------------------------------------------------------
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_RUN_NAME = "mlflow.runName"

# -- what a run is -----------------------------------------------------------------------------------
KIND = "powerpipe.kind"
KIND_PIPELINE = "pipeline"  # the parent run of one pipeline execution
KIND_NOTEBOOK = "notebook"  # one notebook execution (a grid point or a single-notebook stage)
KIND_REPRODUCTION = "reproduction"  # --reproduce RUN_ID
PIPELINE_KINDS = (KIND_PIPELINE, KIND_NOTEBOOK)

# -- on the parent (pipeline) run ---------------------------------------------------------------------
PIPELINE_RUN_ID = "powerpipe.pipeline_run_id"  # also on every child run and on promoted model versions
CONFIG = "powerpipe.config"
DATA_SOURCE = "powerpipe.data_source"
OUTPUTS = "powerpipe.outputs"  # the pipeline run's folder
PROCESSED_DATA_SHA256 = "powerpipe.processed_data_sha256"

# -- on every notebook run ----------------------------------------------------------------------------
STAGE = "powerpipe.stage"
NOTEBOOK = "powerpipe.notebook"  # the source notebook's file name
NOTEBOOK_SHA256 = "powerpipe.notebook_sha256"
DATA_SHA256 = "powerpipe.data_sha256"
DATA_PATH = "powerpipe.data_path"
SYNTHETIC_DATA = "powerpipe.synthetic_data"  # "true" / "false"
PARAMETERS = "powerpipe.parameters"  # JSON of the parameters shown (no per-run paths)
# JSON of what was passed besides them, not the grid point's configuration (a replay week's {"figures": false})
EXTRA_PARAMETERS = "powerpipe.extra_parameters"
OUTPUT_NOTEBOOK = "powerpipe.output_notebook"  # the executed notebook's path in the run folder
NOTEBOOK_HTML_ARTIFACT = "powerpipe.notebook_html_artifact"  # artifact path of its HTML rendering
ERROR = "powerpipe.error"
CACHE_KEY = "powerpipe.cache_key"  # set only on a run that FINISHED: its result may be reused
PROCESSED_PATH = "powerpipe.processed_path"  # process stage: the CSV it wrote
PROCESSED_SHA256 = "powerpipe.processed_sha256"
REPORT_PATH = "powerpipe.report_path"  # report stage: its code-free HTML
GATE_LOST_TO = "powerpipe.gate_lost_to"  # "<model>/<version>" this run was compared with and lost to
REPRODUCES = "powerpipe.reproduces"
METRICS_MATCH = "powerpipe.metrics_match"
# Who runs it: a later pipeline tells a live run from one whose runner died.
RUNNER_HOST = "powerpipe.runner_host"
RUNNER_PID = "powerpipe.runner_pid"
RUNNER_STARTED = "powerpipe.runner_started"
# Dask: every attempt of one grid point carries its task key, and the worker that ran it.
DASK_KEY = "powerpipe.dask_key"
DASK_WORKER = "powerpipe.dask_worker"

# -- on a promoted model version ----------------------------------------------------------------------
PROMOTED_AT = "powerpipe.promoted_at"
ALIAS = "powerpipe.alias"
METRIC = "powerpipe.metric"
METRIC_VALUE = "powerpipe.metric_value"
PREVIOUS_VERSION = "powerpipe.previous_version"
PREVIOUS_METRIC_VALUE = "powerpipe.previous_metric_value"
FORCED = "powerpipe.forced"
TRAINED_UNTIL = "powerpipe.trained_until"  # ISO time of the last hour the registered model learnt
EVALUATED_RUN = "powerpipe.evaluated_run"  # the run whose holdout and backtest scores chose it
SCORES = "powerpipe.scores"  # JSON: the evaluated run's holdout and backtest metrics (rmse, backtest_r2, ...)
# -- the weekly loop: the champion's configuration retrained, the winner refit on all the data ----------
CHAMPION_OF = "powerpipe.champion_of"  # on a training run: "<model>/<version>" whose configuration it retrains
REFIT_OF = "powerpipe.refit_of"  # on a refit run: the evaluated run whose configuration it fitted on every hour
# -- on a registered model: every move of an alias, one tag per move (append-only) -----------------------
ALIAS_HISTORY = "powerpipe.alias_history"  # keys "<ALIAS_HISTORY>.<alias>.<UTC stamp>", values JSON


def alias_history_key(alias: str, stamp: str) -> str:
    return f"{ALIAS_HISTORY}.{alias}.{stamp}"


# -- the data a pipeline run saw, and the production model watched (powerpipe.tracking.monitoring) -------
AS_OF = "powerpipe.as_of"  # on the parent run: --as-of, the run saw only hours before it ("" without)
DATA_START = "powerpipe.data_start"  # on the parent run: first and last hour of the data its models read
DATA_END = "powerpipe.data_end"
ALERTS = "powerpipe.alerts"  # on the parent and the monitoring run: how many monitoring alerts it raised
KIND_MONITORING = "monitoring"  # a run's kind: the production model scored on the hours it never learnt
MONITORED_MODEL = "powerpipe.monitored_model"  # on a monitoring run: "<model>/<version>" it scored
MONITORING_STATUS = "powerpipe.monitoring_status"  # on a monitoring run: ok, no_new_hours, ...
MONITORING_ARTIFACT_DIR = "monitoring"
MONITORING_ARTIFACT = f"{MONITORING_ARTIFACT_DIR}/monitoring.json"  # what summary.json says of it
MONITORING_HISTORY_ARTIFACT = f"{MONITORING_ARTIFACT_DIR}/history.csv"  # one row per week, every metric

# -- a replay (powerpipe.run.replay): the weekly loop as of each Monday of a year, one week after another --
KIND_REPLAY = "replay"  # a run's kind: the replay's own run, which holds the replay report
REPLAY = "powerpipe.replay"  # on each week's parent run and the replay's run: the replay's name (its folder)
REPLAY_WEEK = "powerpipe.replay_week"  # on each week's parent run: the Monday it ran as of
REPLAY_WEEKS = "powerpipe.replay_weeks"  # on the replay's run: how many weeks it replayed
REPLAY_REPORT_HTML_NAME = "replay_report.html"

# -- artifact paths ---------------------------------------------------------------------------------
MODEL_ARTIFACT = "model"
SOURCE_ARTIFACT_DIR = "source"  # the source notebook, so that any run can be re-executed
NOTEBOOK_ARTIFACT_DIR = "notebook"  # the executed notebook (.ipynb and .html)
REPORT_ARTIFACT_DIR = "report"
REPORT_HTML_NAME = "weekly_report.html"
REPORT_ARTIFACT = f"{REPORT_ARTIFACT_DIR}/{REPORT_HTML_NAME}"
SUMMARY_ARTIFACT = "summary.json"


def source_artifact(notebook_name: str) -> str:
    return f"{SOURCE_ARTIFACT_DIR}/{notebook_name}"


def notebook_artifact(file_name: str) -> str:
    return f"{NOTEBOOK_ARTIFACT_DIR}/{file_name}"


def flag(value: bool) -> str:
    """How a boolean tag is written."""
    return str(bool(value)).lower()


def equals(tag: str, value: str) -> str:
    """An MLflow search filter clause: ``tag`` equals ``value``."""
    return f"tags.`{tag}` = '{value}'"

# -- how a training run was scored (powerpipe.evaluation, powerpipe.features) -------------------------
EVALUATION = "powerpipe.evaluation"  # the evaluation contract, JSON of Evaluation.as_dict()
FEATURE_SET = "powerpipe.feature_set"  # "tutorial" or "weather_calendar"

# -- a search's trials (powerpipe.search): on each trial's notebook run ------------------------------
SEARCH_STUDY = "powerpipe.search.study"  # the Optuna study's name
SEARCH_TRIAL = "powerpipe.search.trial"  # the trial's number in its study
SEARCH_SAMPLER = "powerpipe.search.sampler"  # "tpe", "random" or "grid"
SEARCH_SPACE = "powerpipe.search.space"  # JSON: parameter -> its Optuna distribution (as JSON)
SEARCH_OBJECTIVE = "powerpipe.search.objective"  # "<goal> <metric>", e.g. "minimize rmse"
SEARCH_PRUNED = "powerpipe.search.pruned"  # "true" on a trial the pruner stopped
