"""The Airflow DAG (schedules/airflow/powerpipe_dag.py) run for real by `airflow dags test`.

Airflow lives in a virtualenv of its own (its pins are not ours), made once and kept in
``~/.cache/powerpipe/airflow-3.3.2`` (``POWERPIPE_AIRFLOW_VENV`` to put it elsewhere): about 40 s the
first time, nothing after. Each test gets a fresh SQLite Airflow database in a temporary AIRFLOW_HOME.
The DAG's tasks run the project's interpreter (this test's own), never Airflow's.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from powerpipe import data, paths, runlock, tags

from .conftest import make_notebook

pytestmark = pytest.mark.slow

AIRFLOW_VERSION = "3.3.2"
AIRFLOW_VENV = Path(os.environ.get("POWERPIPE_AIRFLOW_VENV")
                    or Path.home() / ".cache" / "powerpipe" / f"airflow-{AIRFLOW_VERSION}")
COMPLETE = ".powerpipe-complete"  # written once the install finished: a half-made venv is made again
DAG_ID = "powerpipe_weekly"
DAGS_FOLDER = paths.PROJECT_ROOT / "schedules" / "airflow"
# What pip says when it cannot reach the package registry (then the test is skipped, not failed).
UNREACHABLE = ("Failed to establish a new connection", "Temporary failure in name resolution",
               "Network is unreachable", "Could not fetch URL", "Max retries exceeded", "Connection refused",
               "Read timed out", "ProxyError")


def install_airflow() -> Path:
    """Airflow's own virtualenv (made once, then reused); its bin folder."""
    AIRFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(AIRFLOW_VENV.parent / f".{AIRFLOW_VENV.name}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another test session installing it at the same time waits
        if (AIRFLOW_VENV / COMPLETE).is_file() and (AIRFLOW_VENV / "bin" / "airflow").is_file():
            return AIRFLOW_VENV / "bin"
        shutil.rmtree(AIRFLOW_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(AIRFLOW_VENV)], check=True, timeout=300)
        result = subprocess.run(
            [str(AIRFLOW_VENV / "bin" / "pip"), "install", "--disable-pip-version-check", "-q",
             f"apache-airflow=={AIRFLOW_VERSION}", "apache-airflow-providers-standard"],
            capture_output=True, text=True, timeout=1500)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            shutil.rmtree(AIRFLOW_VENV, ignore_errors=True)
            if any(marker in output for marker in UNREACHABLE):
                pytest.skip(f"pip cannot reach the package registry to install apache-airflow=={AIRFLOW_VERSION}: "
                            + output.strip().splitlines()[-1])
            pytest.fail(f"installing apache-airflow=={AIRFLOW_VERSION} failed:\n{output[-4000:]}")
        (AIRFLOW_VENV / COMPLETE).write_text(f"apache-airflow=={AIRFLOW_VERSION}\n")
    return AIRFLOW_VENV / "bin"


@pytest.fixture(scope="session")
def airflow_bin() -> Path:
    return install_airflow()


class Airflow:
    """A private Airflow (its home, its SQLite database) around the project's DAG."""

    def __init__(self, bin_dir: Path, home: Path):
        self.bin, self.home = bin_dir, home
        self.db = home / "airflow.db"
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith(("AIRFLOW", "POWERPIPE_", "MLFLOW_")) and name not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "POWERPIPE_PROJECT_DIR": str(paths.PROJECT_ROOT),
            "POWERPIPE_PYTHON": sys.executable,  # the project's interpreter: the one running these tests
            "POWERPIPE_RETRY_DELAY_SECONDS": "1",
        })

    def run(self, *arguments: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "airflow"), *arguments], env={**self.env, **env}, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)

    def dags_test(self, config: Path, data_path: Path, outputs: Path) -> subprocess.CompletedProcess:
        return self.run("dags", "test", DAG_ID, POWERPIPE_CONFIG=str(config), POWERPIPE_DATA=str(data_path),
                        POWERPIPE_OUTPUTS=str(outputs))

    def task_instances(self) -> list[dict]:
        connection = sqlite3.connect(self.db)
        try:
            rows = connection.execute("SELECT task_id, map_index, try_number, state, rendered_map_index "
                                      "FROM task_instance").fetchall()
        finally:
            connection.close()
        return [dict(zip(("task_id", "map_index", "try_number", "state", "point"), row)) for row in rows]


@pytest.fixture
def airflow(airflow_bin, tmp_path) -> Airflow:
    home = tmp_path / "airflow"
    home.mkdir()
    instance = Airflow(airflow_bin, home)
    migrated = instance.run("db", "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return instance


def list_points(config: Path) -> list[str]:
    result = subprocess.run([sys.executable, str(paths.RUNNER_DIR / "run_all.py"), "--list-points", "--config",
                             str(config)], capture_output=True, text=True, timeout=120, cwd=paths.PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def the_run(outputs: Path) -> tuple[Path, dict]:
    runs = [p for p in outputs.iterdir() if (p / tags.SUMMARY_ARTIFACT).is_file()]
    assert len(runs) == 1, f"expected one pipeline run folder in {outputs}: {runs}"
    return runs[0], json.loads((runs[0] / tags.SUMMARY_ARTIFACT).read_text())


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"


def test_the_dag_is_weekly_one_run_at_a_time_with_retries(airflow_bin, tmp_path):
    airflow = Airflow(airflow_bin, tmp_path)  # parsing needs no database
    script = f"""
import json, runpy
module = runpy.run_path({str(DAGS_FOLDER / 'powerpipe_dag.py')!r})
dag = module["weekly"]
print(json.dumps({{
    "schedule": str(dag.schedule), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
    "params": sorted(dag.params.keys()),
    "tasks": {{t.task_id: {{"retries": t.retries, "backoff": t.retry_exponential_backoff,
                           "parallel": getattr(t, "max_active_tis_per_dagrun", None),
                           "trigger_rule": str(t.trigger_rule), "upstream": sorted(t.upstream_task_ids)}}
              for t in dag.tasks}},
}}))
"""
    result = subprocess.run([str(airflow.bin / "python"), "-c", script], env=airflow.env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, explain(result)
    shape = json.loads(result.stdout.strip().splitlines()[-1])
    assert shape["schedule"] == "@weekly" and shape["catchup"] is False and shape["max_active_runs"] == 1
    assert {"project_dir", "python", "config", "data", "outputs"} <= set(shape["params"])
    tasks = shape["tasks"]
    assert list(tasks) == ["start", "process", "train", "compare", "promote", "report", "finish"]
    for name in ("process", "train", "compare", "promote", "report"):
        assert tasks[name]["retries"] == 2 and tasks[name]["backoff"], name
    assert tasks["train"]["upstream"] == ["process", "start"] and tasks["train"]["parallel"] == 2
    assert tasks["finish"]["trigger_rule"].lower().endswith("all_done") and tasks["finish"]["upstream"] == ["report"]


def test_airflow_runs_the_smoke_pipeline_one_task_per_grid_point(airflow, tmp_path):
    csv = data.write_processed(data.synthetic_frame(), tmp_path / "germany.csv")
    outputs = tmp_path / "outputs"
    result = airflow.dags_test(paths.SMOKE_CONFIG, csv, outputs)
    assert result.returncode == 0, explain(result)

    points = list_points(paths.SMOKE_CONFIG)
    run_dir, summary = the_run(outputs)
    assert summary["status"] == "ok", json.dumps(summary, indent=2)
    trained = [p for p in summary["grid_points"] if p["stage"] == "train"]
    assert len(trained) == len(points) and all(p["status"] == "ok" for p in trained)
    assert {p["stage"] for p in summary["grid_points"]} == {"process", "train", "compare", "report"}
    assert (run_dir / tags.REPORT_ARTIFACT_DIR / tags.REPORT_HTML_NAME).is_file()
    assert not (outputs / runlock.LOCK_NAME).exists(), "finish released the outputs lock"

    client = mlflow.MlflowClient(paths.default_tracking_uri(outputs))
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{tags.MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}' and "
                                  + tags.equals(tags.STAGE, "train"))
    assert len(children) == len(points) and all(c.info.status == "FINISHED" for c in children)
    production = client.get_model_version_by_alias("BestModel", "production")
    assert production.run_id in {c.info.run_id for c in children}
    assert summary["promoted"]["version"] == str(production.version)

    instances = airflow.task_instances()
    assert all(ti["state"] == "success" for ti in instances), instances
    assert sorted(ti["point"] for ti in instances if ti["task_id"] == "train") == sorted(points)


FLAKY_PARAMETERS = "data_path: str | None = None\nlevel: float = 0.0\nmarker: str = ''"
FLAKY_CELLS = (
    "import os\nfrom sklearn.dummy import DummyRegressor\nfrom powerpipe import data, modeling, tracking",
    "df = data.load(data_path)\nX_train, X_test, y_train, y_test = modeling.split(df)\nrun = tracking.notebook_run()",
    # the grid point with level 1.0 fails the first time it runs, and works the next
    "if level == 1.0 and not os.path.exists(marker):\n"
    "    open(marker, 'w').close()\n"
    "    raise RuntimeError('failing on purpose, the first time only')",
    "model = DummyRegressor(strategy='constant', constant=[level, level]).fit(X_train, y_train)\n"
    "tracking.record_metrics(modeling.evaluate(y_test, model.predict(X_test)))\n"
    "tracking.log_model(model, X_train, flavor='sklearn')",
)


def test_a_grid_point_that_fails_once_is_retried_and_the_run_ends_ok(airflow, tmp_path):
    make_notebook(tmp_path / "flaky.ipynb", FLAKY_PARAMETERS, *FLAKY_CELLS)
    marker = tmp_path / "failed-once"
    config = tmp_path / "flaky.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "airflow_retry", "root": ".",
        "stages": {"train": [{"notebook": "flaky.ipynb", "parameters": {"marker": str(marker)},
                              "grid": {"level": [0.0, 1.0]}}],
                   "promote": {"metric": "rmse", "model_name": "FlakyModel"}}}))
    csv = data.write_processed(data.synthetic_frame("2016-06-01", "2016-06-10 23:00"), tmp_path / "small.csv")
    outputs = tmp_path / "outputs"
    result = airflow.dags_test(config, csv, outputs)
    assert result.returncode == 0, explain(result)
    assert marker.exists()

    steady, flaky = list_points(config)
    trains = {ti["point"]: ti for ti in airflow.task_instances() if ti["task_id"] == "train"}
    assert trains[flaky]["try_number"] == 2 and trains[flaky]["state"] == "success"  # failed once, retried
    assert trains[steady]["try_number"] == 1 and trains[steady]["state"] == "success"

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
