"""The Airflow DAG (schedules/airflow/powerpipe_dag.py) under a real Airflow, deployed as an operator deploys it.

Airflow lives in a virtualenv of its own (its pins are not ours), installed as docs/running-every-week.md
says, with the constraints file shipped beside the DAG, and kept in
``~/.cache/powerpipe/airflow-3.3.2-<hash of the constraints>`` (``POWERPIPE_AIRFLOW_VENV`` to put it
elsewhere): about 40 s the first time, nothing after; other constraints make another virtualenv.

- Parsing: Airflow imports the DAG file while the project's interpreter is a recorder; nothing is run.
- One deployment for the whole module (``deployment``): ``airflow db migrate``, then a scheduler
  (LocalExecutor), a dag-processor and an api-server, in a temporary AIRFLOW_HOME with a SQLite
  database, on a loopback port picked at run time; every process it started (and theirs) is stopped
  when the module ends, passed or failed. Its ``POWERPIPE_*`` defaults are a tiny project whose one
  grid point fails once: unpausing the DAG runs the latest week on it at once (seconds). A triggered
  run goes through every stage (process, a grid, compare, promote, report) of the same tiny project: the
  DAG's work is the same as for the smoke pipeline, without minutes of model fitting (the smoke pipeline
  itself is tested in tests/test_pipeline.py). The DAG's tasks run the project's interpreter (this test's), never
  Airflow's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml

from powerpipe.forecast import data
from powerpipe.core import paths, tags
from powerpipe.run import runlock

from .conftest import free_port, make_notebook

pytestmark = pytest.mark.slow

AIRFLOW_VERSION = "3.3.2"
DAG_ID = "powerpipe_weekly"
DAGS_FOLDER = paths.PROJECT_ROOT / "schedules" / "airflow"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Shipped beside the DAG (the official one cannot be fetched here); its header says how it was made.
CONSTRAINTS = DAGS_FOLDER / f"constraints-{AIRFLOW_VERSION}-py{PYTHON_VERSION}.txt"
INSTALL = [f"apache-airflow=={AIRFLOW_VERSION}", "apache-airflow-providers-standard", "--constraint", str(CONSTRAINTS)]
# The bound on a DAG run, from its trigger to its end (it may first wait for the runs before it).
RUN_TIMEOUT_SECONDS = 1800
COMPLETE = ".powerpipe-complete"  # written once the install finished: a half-made venv is made again
# What pip says when it cannot reach the package registry (then the test is skipped, not failed).
UNREACHABLE = ("Failed to establish a new connection", "Temporary failure in name resolution",
               "Network is unreachable", "Could not fetch URL", "Max retries exceeded", "Connection refused",
               "Read timed out", "ProxyError")


def pins(lines) -> set[str]:
    """``name==version`` lines, names normalised as pip compares them."""
    found = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found.add(f"{name.strip().lower().replace('_', '-').replace('.', '-')}=={version.strip()}")
    return found


def install_airflow() -> Path:
    """Airflow's own virtualenv, installed with the shipped constraints (made once, then reused); its bin."""
    if not CONSTRAINTS.is_file():
        pytest.skip(f"no Airflow constraints shipped for Python {PYTHON_VERSION} ({CONSTRAINTS.name})")
    stamp = f"apache-airflow=={AIRFLOW_VERSION} constraints sha256 {hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()}\n"
    venv = Path(os.environ.get("POWERPIPE_AIRFLOW_VENV") or Path.home() / ".cache" / "powerpipe"
                / f"airflow-{AIRFLOW_VERSION}-{stamp.split()[-1][:12]}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another test session installing it at the same time waits
        complete = venv / COMPLETE
        if complete.is_file() and complete.read_text() == stamp and (venv / "bin" / "airflow").is_file():
            return venv / "bin"
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", *INSTALL],
                                capture_output=True, text=True, timeout=1500)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            shutil.rmtree(venv, ignore_errors=True)
            if any(marker in output for marker in UNREACHABLE):
                pytest.skip(f"pip cannot reach the package registry to install apache-airflow=={AIRFLOW_VERSION}: "
                            + output.strip().splitlines()[-1])
            pytest.fail(f"installing {' '.join(INSTALL)} failed:\n{output[-4000:]}")
        # Exactly what an operator gets: every installed package pinned by the constraints, at its pin.
        frozen = subprocess.run([str(venv / "bin" / "pip"), "freeze", "--disable-pip-version-check"],
                                capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
        unpinned = pins(frozen) - pins(CONSTRAINTS.read_text().splitlines())
        if unpinned:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"installed but not as {CONSTRAINTS.name} pins them: {sorted(unpinned)}")
        complete.write_text(stamp)
    return venv / "bin"


@pytest.fixture(scope="session")
def airflow_bin() -> Path:
    return install_airflow()


def airflow_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of Airflow's processes: this one less any Airflow, powerpipe or MLflow setting."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AIRFLOW", "POWERPIPE_", "MLFLOW_")) and name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",  # loopback only, never a proxy
    })
    env.update(settings)
    return env


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"


class Deployment:
    """Airflow as an operator runs it on one machine (docs/running-every-week.md, "Deploying it"): a
    scheduler with the LocalExecutor, a dag-processor and an api-server sharing one AIRFLOW_HOME."""

    def __init__(self, bin_dir: Path, home: Path, defaults: dict[str, str]):
        self.bin, self.home, self.db = bin_dir, home, home / "airflow.db"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.mark = uuid.uuid4().hex  # in the environment of every process it starts, and of theirs
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = airflow_env(home, **{
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # The LocalExecutor starts this many worker processes up front (default 32); a few more than
            # the grid points trained at once (POWERPIPE_PARALLEL_POINTS, 2) are plenty.
            "AIRFLOW__CORE__PARALLELISM": "4",
            # The api-server on loopback, on a port of its own, and the task SDK told where its execution
            # API is (the default, http://localhost:8080/execution/, is another server's port here).
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": self.url.rsplit(":", 1)[1],
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # The DAGs folder does not change during the test: the dag-processor parses the file once when
            # it starts (a new file goes first), not again every 30 s nor looks for new files every 300 s.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "POWERPIPE_PROJECT_DIR": str(paths.PROJECT_ROOT),
            "POWERPIPE_PYTHON": sys.executable,  # the project's interpreter: the one running these tests
            "POWERPIPE_RETRY_DELAY_SECONDS": "1",
            "POWERPIPE_AIRFLOW_TEST_MARK": self.mark,
            **defaults,
        })

    def airflow(self, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "airflow"), *arguments], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, timeout: float = 180) -> None:
        """``airflow db migrate``, then the three processes; back once the DAG is parsed and the API answers."""
        migrated = self.airflow("db", "migrate")
        assert migrated.returncode == 0, explain(migrated)
        # --skip-serve-logs: the scheduler's log server (port 8793) listens on every interface and has no
        # host setting; on one machine the api-server reads the task logs from the logs folder itself.
        for name, *arguments in (("scheduler", "--skip-serve-logs"), ("dag-processor",), ("api-server",)):
            with open(self.home / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen([str(self.bin / "airflow"), name, *arguments],
                                                        env=self.env, cwd=self.home, stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", DAG_ID) and self.answers()):
            self.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"Airflow not ready after {timeout:.0f} s (DAG parsed, API answering)\n" + self.logs())
            time.sleep(0.5)

    def answers(self) -> bool:
        try:
            return self.api("/api/v2/monitor/health", token=False) is not None
        except OSError:
            return False

    def api(self, path: str, body: dict | None = None, token: bool = True):
        """A request to the api-server (never through a proxy); the JSON answer."""
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(self.url + path, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def token(self) -> str:
        """A token for the simple auth manager's ``admin``, whose password the api-server generated."""
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        return self.api("/auth/token", {"username": "admin", "password": passwords["admin"]},
                        token=False)["access_token"]

    def query(self, sql: str, *arguments) -> list[tuple]:
        connection = sqlite3.connect(self.db, timeout=30)
        try:
            return connection.execute(sql, arguments).fetchall()
        finally:
            connection.close()

    def runs(self) -> list[dict]:
        rows = self.query("SELECT run_id, run_type, state, run_after FROM dag_run WHERE dag_id = ?", DAG_ID)
        return [dict(zip(("run_id", "run_type", "state", "run_after"), row)) for row in rows]

    def task_instances(self, run_id: str) -> list[dict]:
        rows = self.query("SELECT task_id, map_index, try_number, state, rendered_map_index FROM task_instance "
                          "WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
        return [dict(zip(("task_id", "map_index", "try_number", "state", "point"), row)) for row in rows]

    def wait_for(self, run_id: str, timeout: float) -> str:
        """The DAG run's final state, ``success`` or ``failed``; the test fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            states = [run["state"] for run in self.runs() if run["run_id"] == run_id]
            if states and states[0] in ("success", "failed"):
                return states[0]
            self.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"DAG run {run_id} not done after {timeout:.0f} s\n" + self.explain(run_id))
            time.sleep(1)

    def explain(self, run_id: str) -> str:
        """The run's task instances and the end of the log of every task that did not succeed."""
        instances = self.task_instances(run_id)
        failed = {ti["task_id"] for ti in instances if ti["state"] != "success"}
        lines = [json.dumps(instances, indent=1)]
        for log in sorted((self.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log")):
            if any(part.split("=", 1)[-1] in failed for part in log.parts if part.startswith("task_id=")):
                lines.append(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(lines) + "\n" + self.logs()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"airflow {name} exited with {process.returncode}\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log\n" + (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                         for name in self.processes)

    def stop(self) -> None:
        stop_all(list(self.processes.values()), self.mark)


def family(started: list[subprocess.Popen], mark: str) -> list[psutil.Process]:
    """The processes started, their descendants, and any other process whose environment carries ``mark``
    (Airflow's task processes run in process groups of their own, kernels in sessions of their own, and
    either outlives a parent that died)."""
    found: dict[int, psutil.Process] = {}
    for popen in started:
        with suppress(psutil.Error):
            leader = psutil.Process(popen.pid)
            found.update((p.pid, p) for p in (leader, *leader.children(recursive=True)))
    for process in psutil.process_iter():
        with suppress(psutil.Error):
            if process.pid not in found and process.environ().get("POWERPIPE_AIRFLOW_TEST_MARK") == mark:
                found[process.pid] = process
    return list(found.values())


def stop_all(started: list[subprocess.Popen], mark: str) -> None:
    """SIGTERM to all of them (the runner stops its kernels), SIGKILL to whatever is left 10 s later (with
    30 s, the deployment's stop once took all 30: a process that never ends on SIGTERM only costs the wait)."""
    members = family(started, mark)
    for popen in started:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGTERM)
    for process in members:
        with suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(members, timeout=10)
    for process in alive + family(started, mark):  # and any started meanwhile
        with suppress(psutil.Error):
            process.kill()
    for popen in started:
        with suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=10)


class FlakyProject:
    """A tiny project: one model notebook, two grid points, the one with ``level`` 1.0 failing once."""

    def __init__(self, root: Path):
        make_notebook(root / "flaky.ipynb", FLAKY_PARAMETERS, *FLAKY_CELLS)
        self.marker = root / "failed-once"
        self.config = root / "flaky.yaml"
        self.config.write_text(yaml.safe_dump({
            "experiment": "airflow_retry", "root": ".",
            "stages": {"train": [{"notebook": "flaky.ipynb", "parameters": {"marker": str(self.marker)},
                                  "grid": {"level": [0.0, 1.0]}}],
                       "promote": {"metric": "rmse", "model_name": "FlakyModel"}}}))
        self.data = data.write_processed(data.synthetic_frame("2016-06-01", "2016-06-10 23:00"), root / "small.csv")
        self.outputs = root / "outputs"
        # Every stage, as the smoke pipeline has them, around the same notebook (levels that never fail).
        self.every_stage = root / "every_stage.yaml"
        self.every_stage.write_text(yaml.safe_dump({
            "experiment": "airflow_every_stage", "root": ".",
            "stages": {
                "process": {"notebook": str(paths.NOTEBOOKS_DIR / "make_processed_data.ipynb"),
                            "parameters": {"start_date": "2016-06-01", "eda_plots": False}},
                "train": [{"notebook": "flaky.ipynb", "grid": {"level": [0.0, 2.0]}}],
                "compare": {"notebook": str(paths.NOTEBOOKS_DIR / "compare_runs.ipynb")},
                "promote": {"metric": "rmse", "model_name": "EveryStageModel", "alias": "production"},
                "report": {"notebook": str(paths.REPORT_TEMPLATES_DIR / "weekly_report.ipynb")}}}))


@pytest.fixture(scope="module")
def flaky(tmp_path_factory) -> FlakyProject:
    return FlakyProject(tmp_path_factory.mktemp("flaky"))


@pytest.fixture(scope="module")
def deployment(airflow_bin, flaky, tmp_path_factory):
    """One Airflow deployment for the module, its DAG unpaused; every process stopped at the end."""
    instance = Deployment(airflow_bin, tmp_path_factory.mktemp("airflow"), {
        "POWERPIPE_CONFIG": str(flaky.config), "POWERPIPE_DATA": str(flaky.data),
        "POWERPIPE_OUTPUTS": str(flaky.outputs)})
    try:
        instance.start()
        unpaused = instance.airflow("dags", "unpause", DAG_ID)
        assert unpaused.returncode == 0, explain(unpaused)
        yield instance
    finally:
        instance.stop()


def list_points(config: Path) -> list[str]:
    result = subprocess.run([sys.executable, str(paths.RUNNER_DIR / "run_all.py"), "--list-points", "--config",
                             str(config)], capture_output=True, text=True, timeout=120, cwd=paths.PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def the_run(outputs: Path) -> tuple[Path, dict]:
    runs = [p for p in outputs.iterdir() if (p / tags.SUMMARY_ARTIFACT).is_file()]
    assert len(runs) == 1, f"expected one pipeline run folder in {outputs}: {runs}"
    return runs[0], json.loads((runs[0] / tags.SUMMARY_ARTIFACT).read_text())


# Run by Airflow's interpreter: the DAG file parsed as the dag-processor parses it (a DagBag), every
# subprocess recorded, the parse timed (Airflow imported before the clock starts); then the project's
# interpreter run once on purpose, to show that the recorder records.
PARSE = r"""
import json, os, subprocess, sys, time

import airflow.sdk
from airflow.dag_processing.dagbag import DagBag

calls = []
popen_init = subprocess.Popen.__init__

def recording_init(self, args, *rest, **kwargs):
    calls.append(str(args))
    popen_init(self, args, *rest, **kwargs)

subprocess.Popen.__init__ = recording_init
started = time.monotonic()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.monotonic() - started
dag = bag.dags.get("powerpipe_weekly")
shape = dag and {
    "schedule": str(dag.schedule), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
    "params": sorted(dag.params.keys()), "doc": dag.doc_md,
    "tasks": {t.task_id: {"retries": t.retries, "backoff": t.retry_exponential_backoff,
                          "parallel": getattr(t, "max_active_tis_per_dagrun", None),
                          "trigger_rule": str(t.trigger_rule), "upstream": sorted(t.upstream_task_ids)}
              for t in dag.tasks},
}
parse_calls = list(calls)
subprocess.run([os.environ["POWERPIPE_PYTHON"], "--probe"])
print(json.dumps({"seconds": seconds, "errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "calls": parse_calls, "probe_calls": calls[len(parse_calls):], "shape": shape,
                  "powerpipe_modules": sorted(m for m in sys.modules if m.split(".")[0] == "powerpipe")}))
"""


@pytest.fixture(scope="module")
def parsed(airflow_bin, tmp_path_factory) -> dict:
    """The DAG file parsed by Airflow while the project's interpreter is a recorder (and no project)."""
    root = tmp_path_factory.mktemp("parse")
    record = root / "calls"
    recorder = root / "python"
    recorder.write_text(f'#!/bin/sh\necho "$0 $*" >> "{record}"\nexit 3\n')
    recorder.chmod(0o755)
    env = airflow_env(root / "home", POWERPIPE_PYTHON=str(recorder), POWERPIPE_PROJECT_DIR=str(root / "no-project"))
    result = subprocess.run([str(airflow_bin / "python"), "-c", PARSE, str(DAGS_FOLDER)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, explain(result)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    outcome["recorded"] = record.read_text().splitlines() if record.exists() else []
    return outcome


def test_parsing_the_dag_file_runs_nothing(parsed):
    assert parsed["errors"] == {}, parsed["errors"]
    # The recorder works (the probe after the parse is recorded) and the parse itself called nothing.
    assert parsed["calls"] == [] and len(parsed["probe_calls"]) == 1, parsed
    assert len(parsed["recorded"]) == 1 and parsed["recorded"][0].endswith(" --probe"), parsed["recorded"]
    assert parsed["powerpipe_modules"] == []
    assert parsed["seconds"] < 2, f"parsing took {parsed['seconds']:.2f} s"
    # The docs are static: the default pipeline, and where a run's grid points are shown
    assert "`start` task" in parsed["shape"]["doc"] and "no-project" in parsed["shape"]["doc"]


def test_the_dag_is_weekly_one_run_at_a_time_with_retries(parsed):
    shape = parsed["shape"]
    assert shape["schedule"] == "@weekly" and shape["catchup"] is False and shape["max_active_runs"] == 1
    assert {"project_dir", "python", "config", "data", "outputs"} <= set(shape["params"])
    tasks = shape["tasks"]
    assert list(tasks) == ["start", "process", "train", "compare", "promote", "report", "finish"]
    for name in ("process", "train", "compare", "promote", "report"):
        assert tasks[name]["retries"] == 2 and tasks[name]["backoff"], name
    assert tasks["train"]["upstream"] == ["process", "start"] and tasks["train"]["parallel"] == 2
    assert tasks["finish"]["trigger_rule"].lower().endswith("all_done") and tasks["finish"]["upstream"] == ["report"]


FLAKY_PARAMETERS = "data_path: str | None = None\nlevel: float = 0.0\nmarker: str = ''"
FLAKY_CELLS = (
    "import os\nfrom sklearn.dummy import DummyRegressor\nfrom powerpipe.forecast import data, modeling\nfrom powerpipe.tracking import store as tracking",
    "df = data.load(data_path)\nX_train, X_test, y_train, y_test = modeling.split(df)\nrun = tracking.notebook_run()",
    # the grid point with level 1.0 fails the first time it runs, and works the next
    "if level == 1.0 and not os.path.exists(marker):\n"
    "    open(marker, 'w').close()\n"
    "    raise RuntimeError('failing on purpose, the first time only')",
    "model = DummyRegressor(strategy='constant', constant=[level, level]).fit(X_train, y_train)\n"
    "tracking.record_metrics(modeling.evaluate(y_test, model.predict(X_test)))\n"
    "tracking.log_model(model, X_train, flavor='sklearn')",
)


def test_unpausing_runs_the_latest_week_once_and_a_point_failing_once_is_retried(deployment, flaky):
    # Unpausing (the deployment fixture did) made one run at once, on the deployment's defaults: for the
    # latest Sunday 00:00 UTC already past (catchup=False: not one per week since the start date).
    deadline = time.monotonic() + 60
    while not (scheduled := [run for run in deployment.runs() if run["run_type"] == "scheduled"]):
        assert time.monotonic() < deadline, f"no scheduled run after unpausing: {deployment.runs()}"
        time.sleep(0.5)
    run_id = scheduled[0]["run_id"]
    state = deployment.wait_for(run_id, timeout=RUN_TIMEOUT_SECONDS)
    assert state == "success", deployment.explain(run_id)
    assert len([run for run in deployment.runs() if run["run_type"] == "scheduled"]) == 1, deployment.runs()
    week = datetime.fromisoformat(scheduled[0]["run_after"]).replace(tzinfo=timezone.utc)
    now = datetime.now(timezone.utc)
    assert (week.weekday(), week.hour, week.minute) == (6, 0, 0) and now - timedelta(days=7) < week <= now, week

    config, outputs, marker = flaky.config, flaky.outputs, flaky.marker
    assert marker.exists()
    steady_point, flaky_point = list_points(config)
    trains = {ti["point"]: ti for ti in deployment.task_instances(run_id) if ti["task_id"] == "train"}
    assert trains[flaky_point]["try_number"] == 2 and trains[flaky_point]["state"] == "success"  # retried
    assert trains[steady_point]["try_number"] == 1 and trains[steady_point]["state"] == "success"

    _, summary = the_run(outputs)
    assert summary["status"] == "ok", json.dumps(summary, indent=2)
    entries = {json.dumps(p["parameters"]["level"]): p for p in summary["grid_points"]}
    assert entries["1.0"]["status"] == "ok" and entries["0.0"]["status"] == "ok"
    client = mlflow.MlflowClient(paths.default_tracking_uri(outputs))
    experiment = client.get_experiment_by_name("airflow_retry")
    attempts = client.search_runs([experiment.experiment_id],
                                  tags.equals(tags.STAGE, "train") + " and "
                                  + tags.equals(tags.PIPELINE_RUN_ID, summary["pipeline_run_id"]))
    statuses = sorted((json.loads(r.data.tags[tags.PARAMETERS])["level"], r.info.status) for r in attempts)
    assert statuses == [(0.0, "FINISHED"), (1.0, "FAILED"), (1.0, "FINISHED")]
    assert entries["1.0"]["mlflow_run_id"] in {r.info.run_id for r in attempts if r.info.status == "FINISHED"}
    assert summary["promoted"]["run_id"] in {entries["0.0"]["mlflow_run_id"], entries["1.0"]["mlflow_run_id"]}


def test_a_broken_config_fails_the_start_task_at_once_not_the_dag_import(deployment, tmp_path):
    # What parsing used to report as the DAG's import error fails the run's start task, at once (bad
    # input is not retried); the rest of the run is skipped and finish fails the run, saying why.
    outputs = tmp_path / "outputs"
    conf = {"config": str(tmp_path / "missing.yaml"), "outputs": str(outputs)}
    triggered = deployment.airflow("dags", "trigger", DAG_ID, "--run-id", "broken", "--conf", json.dumps(conf))
    assert triggered.returncode == 0, explain(triggered)
    assert deployment.wait_for("broken", timeout=RUN_TIMEOUT_SECONDS) == "failed"
    states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in deployment.task_instances("broken")}
    assert states["start"] == ("failed", 1) and states["finish"] == ("failed", 1), states
    assert states["process"][0] == "upstream_failed", states
    assert {states[name][0] for name in ("compare", "promote", "report")} == {"skipped"}, states
    start_log = "".join(path.read_text() for path in (deployment.home / "logs").rglob("*.log")
                        if "run_id=broken" in str(path) and "task_id=start" in str(path))
    assert "pipeline config not found" in start_log and "exited 2" in start_log
    assert not outputs.exists()  # no pipeline run was started
    assert deployment.query("SELECT count(*) FROM import_error") == [(0,)]


def test_a_triggered_run_runs_every_stage_one_task_per_grid_point(deployment, flaky, tmp_path):
    # As docs/running-every-week.md tries it (there with the smoke pipeline): a run triggered with its
    # own config, data and outputs, through every stage.
    outputs = tmp_path / "outputs"
    conf = {"config": str(flaky.every_stage), "data": str(flaky.data), "outputs": str(outputs)}
    triggered = deployment.airflow("dags", "trigger", DAG_ID, "--run-id", "triggered", "--conf", json.dumps(conf))
    assert triggered.returncode == 0, explain(triggered)
    # Queued behind the run unpausing made (max_active_runs=1), if that one is still going.
    state = deployment.wait_for("triggered", timeout=RUN_TIMEOUT_SECONDS)
    assert state == "success", deployment.explain("triggered")

    points = list_points(flaky.every_stage)
    run_dir, summary = the_run(outputs)
    assert summary["status"] == "ok", json.dumps(summary, indent=2)
    trained = [p for p in summary["grid_points"] if p["stage"] == "train"]
    assert len(trained) == len(points) == 2 and all(p["status"] == "ok" for p in trained)
    assert {"process", "train", "compare", "report"} <= {p["stage"] for p in summary["grid_points"]}
    report = run_dir / tags.REPORT_ARTIFACT_DIR / tags.REPORT_HTML_NAME
    assert report.is_file()
    assert not (outputs / runlock.LOCK_NAME).exists(), "finish released the outputs lock"

    client = mlflow.MlflowClient(paths.default_tracking_uri(outputs))
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{tags.MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}' and "
                                  + tags.equals(tags.STAGE, "train"))
    assert len(children) == len(points) and all(c.info.status == "FINISHED" for c in children)
    production = client.get_model_version_by_alias("EveryStageModel", "production")
    assert summary["promoted"]["version"] == str(production.version)
    assert production.run_id == summary["promoted"]["run_id"]

    instances = deployment.task_instances("triggered")
    assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in instances), instances
    assert sorted(ti["point"] for ti in instances if ti["task_id"] == "train") == sorted(points)
    # Every task parsed the DAG file again when it started: a fraction of a second (it took seconds when
    # parsing listed the grid points with the project's interpreter).
    parses = [json.loads(line)["dag_file_parse_ms"]
              for log in (deployment.home / "logs" / f"dag_id={DAG_ID}" / "run_id=triggered").rglob("*.log")
              for line in log.read_text().splitlines() if "Worker startup parse complete" in line]
    assert len(parses) == len(instances) and max(parses) < 2000, parses

    # What an operator sees through the api-server: the run, and the finish task's log naming the
    # run's summary.json and report (docs/running-every-week.md).
    assert deployment.api(f"/api/v2/dags/{DAG_ID}/dagRuns/triggered")["state"] == "success"
    log = deployment.api(f"/api/v2/dags/{DAG_ID}/dagRuns/triggered/taskInstances/finish/logs/1")
    text = json.dumps(log)
    assert f"summary:  {run_dir / tags.SUMMARY_ARTIFACT}" in text and f"report:   {report}" in text, text[-3000:]
