"""powerpipe every week as an Airflow 3 DAG: one task per stage, one mapped task per training grid point.

    start -> process -> train[point] (mapped, one task per grid point) -> compare -> promote -> report -> finish

Each task runs the project's own interpreter (``<project>/.venv/bin/python runner/run_all.py ...``) in a
subprocess: Airflow's Python never imports powerpipe, so Airflow's pins and ours never meet. The tasks
are the runner's stage entry points (docs/running-every-week.md):

- ``start``: ``run_all.py --start``: checks everything, creates the run folder and the parent MLflow run,
  takes the outputs folder's lock; its pipeline run id goes to the other tasks through XCom, with the
  run's training grid points (``run_all.py --list-points``), over which ``train`` is mapped.
- ``process``, ``train`` (``--point LABEL``), ``compare``, ``promote``, ``report``: ``run_all.py
  --pipeline-run ID --stage S``. Retried with exponential back-off; a retried grid point that finished
  meanwhile is a cache hit. A failed grid point does not stop the others, nor compare and promote
  (they need one trained point), as in a whole run.
- ``finish``: ``run_all.py --pipeline-run ID --finish``, whatever happened before (trigger rule
  all_done): steps that never ran are recorded as skipped, summary.json is written, the parent run is
  ended and the lock released. It fails (and so does the DAG run) when any step failed.

Install: copy this file into the deployment's DAGs folder, or point ``AIRFLOW__CORE__DAGS_FOLDER`` at
``schedules/airflow`` (Airflow itself installed with Airflow's constraints, or with
``constraints-3.3.2-py3.11.txt`` beside this file; the processes and settings of a deployment:
docs/running-every-week.md, "Deploying it"). Where the project is: environment variables of the
Airflow processes, the same for all of them (the DAG's parameter defaults), or per run in the trigger
form:

- ``POWERPIPE_PROJECT_DIR``: the checkout (default: two folders above this file, if it is the project's)
- ``POWERPIPE_PYTHON``: its interpreter (default: ``<project>/.venv/bin/python``)
- ``POWERPIPE_CONFIG`` (default ``runner/pipeline.yaml``), ``POWERPIPE_DATA`` (default ``auto``),
  ``POWERPIPE_OUTPUTS`` (default ``<project>/outputs``), ``POWERPIPE_TRACKING_URI`` (default: none, the
  runner's own default: ``MLFLOW_TRACKING_URI``, else SQLite in the outputs folder)
- ``POWERPIPE_RETRY_DELAY_SECONDS``: the first retry's delay (default 120; doubled at each retry)
- ``POWERPIPE_PARALLEL_POINTS``: grid points trained at once in one DAG run (default 2)

Parsing this file does nothing expensive (Airflow parses it about every 30 s, and again at the start
of every task): no subprocess, no project import, so the machine that parses DAGs needs no project
and a broken project or config shows in the ``start`` task of a run, not as an import error. The DAG's
docs are static; a run's grid points are listed at run time, by ``start`` (its return value) and as
the names of the mapped ``train`` tasks.
"""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

DAG_ID = "powerpipe_weekly"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
RUN_ID_PREFIX = "pipeline_run_id="
# Environment of the Airflow process that must not leak into the project's interpreter.
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "PYTHONSTARTUP")
LIST_POINTS_TIMEOUT_SECONDS = 60


def _default_project_dir() -> str:
    if os.environ.get("POWERPIPE_PROJECT_DIR"):
        return os.environ["POWERPIPE_PROJECT_DIR"]
    here = Path(__file__).resolve().parent.parent.parent
    return str(here) if (here / "runner" / "run_all.py").is_file() else "/srv/powerpipe"


PROJECT_DIR = _default_project_dir()
PYTHON = os.environ.get("POWERPIPE_PYTHON") or str(Path(PROJECT_DIR) / ".venv" / "bin" / "python")
CONFIG = os.environ.get("POWERPIPE_CONFIG") or "runner/pipeline.yaml"
DATA = os.environ.get("POWERPIPE_DATA") or "auto"
OUTPUTS = os.environ.get("POWERPIPE_OUTPUTS") or str(Path(PROJECT_DIR) / "outputs")
TRACKING_URI = os.environ.get("POWERPIPE_TRACKING_URI") or ""
RETRY_DELAY = timedelta(seconds=float(os.environ.get("POWERPIPE_RETRY_DELAY_SECONDS") or 120))
# Grid points trained at once (each is a process with its own kernel; on one worker, about its cores).
PARALLEL_POINTS = int(os.environ.get("POWERPIPE_PARALLEL_POINTS") or 2)
RETRIES = 2


def project_env(tracking_uri: str = "") -> dict[str, str]:
    """The environment of a project command: Airflow's, less its Python settings; the store if given."""
    env = {name: value for name, value in os.environ.items() if name not in FOREIGN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri  # in the environment, never on a command line (credentials)
    return env


def list_points(python: str, project_dir: str, config: str) -> list[str]:
    """The training grid point labels of ``config``, in pipeline order, from the project's interpreter.

    Run by the ``start`` task, never at parse time. A bad config (exit 2, or no grid point) fails the
    task for good; anything else (the interpreter missing, a crash, a timeout) fails it to be retried.
    """
    command = [python, "runner/run_all.py", "--list-points", "--config", config]
    try:
        done = subprocess.run(command, cwd=project_dir, env=project_env(), capture_output=True, text=True,
                              timeout=LIST_POINTS_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"powerpipe: cannot run {' '.join(command)} in {project_dir}: {exc}") from None
    if done.returncode != 0:
        failure = AirflowFailException if done.returncode == EXIT_USAGE else RuntimeError
        raise failure(f"powerpipe: {' '.join(command)} (in {project_dir}) exited {done.returncode}:\n"
                      f"{done.stderr.strip()[-2000:]}")
    points = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if not points:
        raise AirflowFailException(f"powerpipe: {config} has no training grid point")
    return points


def run_project(params: dict, *arguments: str, what: str, retry_on_failure: bool = True) -> str:
    """Run ``run_all.py ARGUMENTS`` with the project's interpreter, its output in the task log.

    Returns the last line of its output. Exit 2 (bad input) fails the task for good; exit 1 (a notebook
    failed) and anything else (killed, crashed) fail it so that Airflow retries it, unless
    ``retry_on_failure`` is False.
    """
    command = [params["python"], "runner/run_all.py", *arguments, "--outputs", params["outputs"]]
    log.info("powerpipe %s: %s (in %s)", what, " ".join(command), params["project_dir"])
    last = ""
    with subprocess.Popen(command, cwd=params["project_dir"], env=project_env(params.get("tracking_uri") or ""),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            line = line.rstrip("\n")
            log.info("%s", line)
            if line.strip():
                last = line.strip()
        code = process.wait()
    if code == EXIT_OK:
        return last
    if code == EXIT_USAGE:
        raise AirflowFailException(f"powerpipe {what}: bad input (exit 2): {last}")
    if code == EXIT_FAILED and not retry_on_failure:
        raise AirflowFailException(f"powerpipe {what}: exit 1: {last}")
    if code == EXIT_LOCKED:
        raise RuntimeError(f"powerpipe {what}: the outputs folder is held by another run (exit 75): {last}")
    raise RuntimeError(f"powerpipe {what}: exit {code}: {last}")


def started_run_id(ti) -> str:
    """The pipeline run id the start task pushed; the task is skipped when no run was started."""
    run_id = ti.xcom_pull(task_ids="start", key="pipeline_run_id")
    if not run_id:
        raise AirflowSkipException("no pipeline run was started (the start task failed): nothing to do")
    return run_id


# Static: parsing lists no grid point (that would run the project's interpreter at every parse).
DOC = ((__doc__ or "").split("\n\n")[0] + "\n\n"
       f"Default pipeline: `{CONFIG}` in `{PROJECT_DIR}`, run by `{PYTHON}`, into `{OUTPUTS}`. Each run "
       "lists its own training grid points in its `start` task (its return value), and names every mapped "
       "`train` task by its grid point.")

RETRYING = {"retries": RETRIES, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(hours=1)}


@dag(
    dag_id=DAG_ID,
    schedule="@weekly",
    start_date=datetime(2026, 1, 5, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["powerpipe"],
    default_args={"owner": "powerpipe"},
    params={
        "project_dir": Param(PROJECT_DIR, type="string", description="the powerpipe checkout"),
        "python": Param(PYTHON, type="string", description="the project's interpreter (its virtualenv)"),
        "config": Param(CONFIG, type="string", description="pipeline YAML, relative to the project"),
        "data": Param(DATA, type="string", description="run_all.py --data: auto, synthetic, opsd or a CSV path"),
        "outputs": Param(OUTPUTS, type="string", description="run folders and the default tracking store"),
        "tracking_uri": Param(TRACKING_URI, type="string",
                              description="MLflow store (empty: MLFLOW_TRACKING_URI, else SQLite in outputs)"),
    },
)
def powerpipe_weekly():
    @task(**RETRYING)
    def start(params=None, ti=None) -> list[str]:
        # The grid of this run's own config (a run triggered with another config maps its own points);
        # listed first, so that nothing can fail after the pipeline run has started.
        points = list_points(params["python"], params["project_dir"], params["config"])
        last = run_project(params, "--start", "--config", params["config"], "--data", params["data"], what="start")
        if not last.startswith(RUN_ID_PREFIX):
            raise AirflowFailException(f"powerpipe start printed no {RUN_ID_PREFIX}<id> line (last line: {last!r})")
        run_id = last[len(RUN_ID_PREFIX):].strip()
        log.info("pipeline run %s: %d training grid point(s)", run_id, len(points))
        ti.xcom_push(key="pipeline_run_id", value=run_id)
        return points  # train is mapped over these

    def stage_task(stage: str):
        @task(task_id=stage, **RETRYING)
        def run_stage(params=None, ti=None) -> None:
            run_project(params, "--pipeline-run", started_run_id(ti), "--stage", stage, what=stage)

        return run_stage

    @task(task_id="train", map_index_template="{{ point }}", max_active_tis_per_dagrun=PARALLEL_POINTS,
          **RETRYING)
    def train(point: str, params=None, ti=None) -> None:
        from airflow.sdk import get_current_context

        get_current_context()["point"] = point  # names the mapped task instance by its grid point
        run_project(params, "--pipeline-run", started_run_id(ti), "--stage", "train", "--point", point,
                    what=f"train {point}")

    @task(trigger_rule=TriggerRule.ALL_DONE, **RETRYING)
    def finish(params=None, ti=None) -> None:
        run_id = ti.xcom_pull(task_ids="start", key="pipeline_run_id")
        if not run_id:  # the DAG run must fail, not end "successfully skipped"
            raise AirflowFailException("no pipeline run was started: the start task failed (see its log)")
        run_project(params, "--pipeline-run", run_id, "--finish", what="finish", retry_on_failure=False)

    started = start()
    processed = stage_task("process")()
    trained = train.expand(point=started)
    # After training, the runner decides from the run's state what can run (compare and promote need
    # one trained grid point, not all; the report needs a model behind the alias), as in a whole run:
    # a failed grid point never stops them. Whatever happened, finish writes summary.json.
    compared = stage_task("compare").override(trigger_rule=TriggerRule.ALL_DONE)()
    promoted = stage_task("promote").override(trigger_rule=TriggerRule.ALL_DONE)()
    reported = stage_task("report").override(trigger_rule=TriggerRule.ALL_DONE)()
    started >> processed >> trained >> compared >> promoted >> reported >> finish()


weekly = powerpipe_weekly()
