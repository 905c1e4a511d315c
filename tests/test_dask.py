"""The Dask executor: a LocalCluster of 2 worker processes and an `mlflow server`, both on loopback, both
started here. Every stage of the smoke pipeline through them must match the local executor's; a worker killed
mid-notebook must lead to one retry (or one FAILED run), never a lost or duplicated grid point."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from powerpipe.cli import main as cli
from powerpipe.core import paths, tags
from powerpipe.core.exceptions import DaskExecutorError
from powerpipe.execution.dask_cluster import check_tracking_uri, is_loopback_scheduler

from .conftest import make_notebook

# -- refusals, before anything runs (no cluster needed) ---------------------------------------------

@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/x/mlruns", "/tmp/x/mlruns", "mlruns"])
def test_remote_scheduler_refuses_a_local_tracking_store(uri):
    with pytest.raises(DaskExecutorError, match="MLflow tracking server"):
        check_tracking_uri(uri, "tcp://10.0.0.7:8786")


@pytest.mark.parametrize("scheduler", [None, "tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786"])
def test_a_cluster_on_this_machine_may_use_a_local_store(scheduler):
    assert is_loopback_scheduler(scheduler)
    check_tracking_uri("sqlite:////tmp/x/mlflow.db", scheduler)  # no error


def test_remote_scheduler_accepts_a_tracking_server():
    assert not is_loopback_scheduler("tcp://scheduler.example.org:8786")
    check_tracking_uri("http://mlflow.example.org:5000", "tcp://scheduler.example.org:8786")
    check_tracking_uri("postgresql://u:p@db.example.org/mlflow", "tcp://10.0.0.7:8786")


def test_cli_refuses_sqlite_with_a_remote_scheduler_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "store" / "mlflow.db"
    code = cli.main(["--config", str(paths.SMOKE_CONFIG), "--data", "synthetic", "--outputs", str(tmp_path / "out"),
                     "--executor", "dask", "--scheduler", "tcp://192.0.2.1:8786", "--tracking-uri",
                     f"sqlite:///{db}", "--quiet"])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "is a local SQLite file" in err and "tcp://192.0.2.1:8786" in err and "--tracking-uri http://" in err
    assert not db.exists() and not (tmp_path / "out").exists()  # no store, no run folder: nothing ran


def test_cli_scheduler_needs_the_dask_executor(tmp_path, capsys):
    code = cli.main(["--config", str(paths.SMOKE_CONFIG), "--outputs", str(tmp_path), "--executor", "local",
                     "--scheduler", "tcp://127.0.0.1:8786"])
    assert code == cli.EXIT_USAGE
    assert "--executor dask" in capsys.readouterr().err


# -- waiting on a task ------------------------------------------------------------------------------

def _sleep_and_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_waiting_on_dask_tasks_that_end_as_the_poll_times_out_loses_no_result():
    """dask/distributed#8514: polling ``Future.result(timeout=...)`` raises ``UnboundLocalError`` for a task
    that succeeded when the timeout passes while its result is being fetched. A busy machine makes that
    likely (once in CI: a FINISHED grid point recorded failed); here the client's event loop is kept busy
    on purpose, which failed 3 to 110 of about 150 waits with the old loop. ``wait`` must return every result."""
    from distributed import Client, LocalCluster
    from tornado.ioloop import PeriodicCallback

    from powerpipe.execution.waiting import wait

    poll = 0.01
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.loop.add_callback(lambda: PeriodicCallback(lambda: time.sleep(0.002), 1).start())
        durations = [poll * (0.5 + i / 8) for i in range(8)] * 19  # ends spread across the poll interval
        # one at a time, so that every wait spans the end of its task
        assert [wait(client.submit(_sleep_and_return, seconds, pure=False), poll=poll)
                for seconds in durations] == durations


def test_a_task_the_stop_cancelled_ends_killed_not_failed_and_a_finished_attempt_stays(tmp_path):
    import mlflow

    from powerpipe.core.constants import INTERRUPTED
    from powerpipe.execution.dask_cluster import interrupted_outcome
    from powerpipe.execution.tasks import NotebookTask

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("stopped")

    def attempt(key: str, status: str | None) -> str:
        run_id = client.create_run(experiment_id, tags={tags.DASK_KEY: key}).info.run_id
        if status:
            client.set_terminated(run_id, status)
        return run_id

    def task(label: str) -> NotebookTask:
        return NotebookTask(notebook="n.ipynb", stage="train", label=label, output_notebook=str(tmp_path / label),
                            parameters={}, shown={}, tags={}, tracking_uri=uri, experiment_id=experiment_id,
                            experiment_name="stopped", cache_key="")

    running = attempt("notebook-a", None)
    outcome = interrupted_outcome(task("a"), "notebook-a")
    assert (outcome.ok, outcome.error, outcome.run_id) == (False, INTERRUPTED, running)
    assert client.get_run(running).info.status == "KILLED"
    assert client.get_run(running).data.tags[tags.ERROR] == INTERRUPTED
    done = attempt("notebook-b", "FINISHED")  # its worker ended it before the stop reached the runner
    interrupted_outcome(task("b"), "notebook-b")
    assert client.get_run(done).info.status == "FINISHED"


# -- a cluster, started here (the tracking server: conftest's `mlflow_server`) ----------------------------

@pytest.fixture
def cluster(monkeypatch):
    """A LocalCluster of 2 single-threaded worker processes (with nannies, which restart killed workers)."""
    from distributed import Client, LocalCluster

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None)
    client = Client(local)
    client.wait_for_workers(2, timeout=60)
    yield local, client
    client.close()
    local.close()


def _run_cli(*args: str) -> int:
    return cli.main([*args, "--quiet"])


def _summary(outputs: Path) -> dict:
    (run_dir,) = [p for p in outputs.iterdir() if (p / "summary.json").exists()]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_workers_that_cannot_see_a_path_are_named_before_anything_runs(cluster, tmp_path):
    from powerpipe.execution.dask_cluster import DaskExecutor

    local_cluster, dask_client = cluster
    executor = DaskExecutor(local_cluster.scheduler_address, jobs=2, modules=[])
    try:
        executor.check_paths([tmp_path, paths.SMOKE_CONFIG])  # seen by every worker: no error
        with pytest.raises(DaskExecutorError, match="same path on every machine") as caught:
            executor.check_paths([tmp_path, tmp_path / "only-on-the-runner"])
        message = str(caught.value)
        assert str(tmp_path / "only-on-the-runner") in message
        assert all(address in message for address in dask_client.scheduler_info(n_workers=-1)["workers"])
    finally:
        executor.close()
    assert dask_client.scheduler_info(n_workers=-1)["workers"]  # closing left the user's cluster running


# -- same results as the local executor ---------------------------------------------------------------

# The smoke pipeline's every stage, trained by two of its model notebooks: Keras and the random forest add
# nothing a worker does differently (the same task, kernel and lease code runs any notebook), and Keras would
# import TensorFlow in both workers' kernels, most of this test's CPU.
ON_DASK_NOTEBOOKS = {"model_linreg.ipynb", "model_gbr.ipynb"}


@pytest.mark.slow
def test_every_stage_of_the_smoke_pipeline_on_dask_matches_the_local_executor(smoke_run, mlflow_server, cluster,
                                                                               tmp_path):
    import mlflow
    import yaml

    local_cluster, _ = cluster
    config = yaml.safe_load(paths.SMOKE_CONFIG.read_text())
    config["stages"]["train"] = [spec for spec in config["stages"]["train"]
                                 if Path(spec["notebook"]).name in ON_DASK_NOTEBOOKS]
    config_path = tmp_path / "smoke_on_dask.yaml"  # its notebooks are found from the project root, as smoke's
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    outputs = tmp_path / "shared_outputs"  # every worker of a LocalCluster sees this folder
    code = _run_cli("--config", str(config_path), "--data", "synthetic", "--outputs", str(outputs),
                    "--tracking-uri", mlflow_server.uri, "--executor", "dask",
                    "--scheduler", local_cluster.scheduler_address)
    assert code == 0 == smoke_run["exit_code"]
    remote, local = _summary(outputs), json.loads((smoke_run["run_dir"] / "summary.json").read_text())
    assert remote["status"] == local["status"] == "ok"
    local["grid_points"] = [p for p in local["grid_points"]
                            if p["stage"] != "train" or p["notebook"] in ON_DASK_NOTEBOOKS]

    def points(summary):
        return [(p["stage"], p["notebook"], p["parameters"], p["status"], p["output_notebook"])
                for p in summary["grid_points"]]

    assert points(remote) == points(local)
    assert {p["stage"] for p in remote["grid_points"]} == {"process", "train", "compare", "promote", "report"}
    for mine, theirs in zip(remote["grid_points"], local["grid_points"]):
        assert set(mine["metrics"]) == set(theirs["metrics"])
        assert mine["metrics"] == theirs["metrics"], mine["notebook"]
        assert mine["output_notebook"] is None or (outputs / remote["pipeline_run_id"] / mine["output_notebook"]).is_file()
    assert (outputs / remote["pipeline_run_id"] / remote["report"]).is_file()

    # the promoted model: the same grid point, registered and aliased on the tracking server
    client, local_client = mlflow.MlflowClient(mlflow_server.uri), mlflow.MlflowClient(smoke_run["tracking_uri"])
    promoted, local_promoted = remote["promoted"], local["promoted"]
    assert promoted["value"] == local_promoted["value"] and promoted["metric"] == local_promoted["metric"]
    run, local_run = client.get_run(promoted["run_id"]), local_client.get_run(local_promoted["run_id"])
    for tag in (tags.NOTEBOOK, tags.PARAMETERS):
        assert run.data.tags[tag] == local_run.data.tags[tag]
    assert client.get_model_version_by_alias("BestModel", "production").run_id == promoted["run_id"]

    # MLflow holds the same: one FINISHED run per executed notebook, its notebook uploaded through the server
    experiment = client.get_experiment_by_name("predicting_wind_solar_smoke")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server stores artifacts
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{remote['mlflow_parent_run_id']}' and "
                                  + tags.equals(tags.KIND, tags.KIND_NOTEBOOK))  # not the monitoring run
    assert sorted(r.info.run_id for r in children) == sorted(p["mlflow_run_id"] for p in remote["grid_points"])
    assert {r.info.status for r in children} == {"FINISHED"}
    for point in remote["grid_points"]:
        assert client.get_run(point["mlflow_run_id"]).data.metrics.get("rmse") == point["metrics"].get("rmse")
        if point["stage"] == "train":
            names = {a.path for a in client.list_artifacts(point["mlflow_run_id"], "notebook")}
            assert {f"notebook/{Path(point['output_notebook']).name}",
                    f"notebook/{Path(point['output_notebook']).with_suffix('.html').name}"} <= names
    assert list(mlflow_server.artifacts.rglob("MLmodel"))  # model files landed in the server's artifact root


# -- a worker that dies mid-notebook ------------------------------------------------------------------

def _worker_config(tmp_path: Path, experiment: str, grid: str, seconds: float) -> Path:
    make_notebook(
        tmp_path / "nbs" / "sleepy.ipynb",
        "data_path: str | None = None\npoint: int = 0\nseconds: float = 0.0\nkill_worker: bool = False",
        "import os, signal, time\nfrom powerpipe.tracking import store as tracking\nrun = tracking.notebook_run()",
        "if kill_worker:  # the kernel's parent is the Dask worker process\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n    time.sleep(60)\ntime.sleep(seconds)",
        "tracking.record_metrics({'rmse': float(point), 'mae': 1.0, 'r2': 0.5})",
    )
    config = tmp_path / "dask_test.yaml"
    config.write_text(f"experiment: {experiment}\nroot: .\ntimeout: 300\nstages:\n  train:\n"
                      f"    - notebook: nbs/sleepy.ipynb\n      parameters: {{seconds: {seconds}}}\n"
                      f"      grid: {grid}\n")
    return config


def _runs_by_point(client, experiment: str, parent_run_id: str) -> dict[str, list]:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                              + tags.equals(tags.KIND, tags.KIND_NOTEBOOK))  # not the monitoring run
    by_point: dict[str, list] = {}
    for run in runs:
        by_point.setdefault(run.data.tags[tags.PARAMETERS], []).append(run)
    return by_point


@pytest.mark.slow
def test_worker_killed_mid_notebook_is_retried_once_elsewhere(mlflow_server, cluster, tmp_path):
    import mlflow

    local_cluster, dask_client = cluster
    experiment = "dask_worker_killed"
    config = _worker_config(tmp_path, experiment, "{point: [1, 2, 3]}", seconds=5.0)
    outputs = tmp_path / "outputs"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(code=_run_cli(
        "--config", str(config), "--data", "synthetic", "--outputs", str(outputs), "--tracking-uri",
        mlflow_server.uri, "--scheduler", local_cluster.scheduler_address)))
    runner.start()

    # Once a notebook runs on a worker, kill that worker process (SIGKILL: no clean-up of any kind).
    client = mlflow.MlflowClient(mlflow_server.uri)
    worker_pids = set(dask_client.run(os.getpid).values())
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and runner.is_alive():
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            for run in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'"):
                pid = int(run.data.tags.get(tags.RUNNER_PID, 0))
                if pid in worker_pids and run.data.tags.get(tags.KIND) == "notebook":
                    victim = run
                    break
        time.sleep(0.2)
    assert victim is not None, "no notebook was seen running on a worker"
    time.sleep(1)  # well inside the notebook's 5 s sleep
    os.kill(int(victim.data.tags[tags.RUNNER_PID]), signal.SIGKILL)
    runner.join(timeout=240)
    assert not runner.is_alive()

    assert result["code"] == 0
    summary = _summary(outputs)
    assert summary["status"] == "ok"
    assert sorted(p["parameters"]["point"] for p in summary["grid_points"]) == [1, 2, 3]  # none lost, none twice
    assert all(p["status"] == "ok" for p in summary["grid_points"])
    assert {p["metrics"]["rmse"] for p in summary["grid_points"]} == {1.0, 2.0, 3.0}

    by_point = _runs_by_point(client, experiment, summary["mlflow_parent_run_id"])
    killed_point = victim.data.tags[tags.PARAMETERS]
    for point, runs in by_point.items():
        statuses = sorted(r.info.status for r in runs)
        assert statuses == (["FINISHED", "KILLED"] if point == killed_point else ["FINISHED"]), point
    dead = next(r for r in by_point[killed_point] if r.info.status == "KILLED")
    assert dead.info.run_id == victim.info.run_id
    assert "died" in dead.data.tags[tags.ERROR]
    retried = next(r for r in by_point[killed_point] if r.info.status == "FINISHED")
    assert retried.info.run_id in {p["mlflow_run_id"] for p in summary["grid_points"]}
    assert retried.data.tags[tags.RUNNER_PID] != victim.data.tags[tags.RUNNER_PID]


@pytest.mark.slow
def test_a_notebook_whose_worker_always_dies_is_one_failed_grid_point(mlflow_server, cluster, tmp_path):
    import mlflow

    local_cluster, _ = cluster
    experiment = "dask_worker_always_dies"
    config = _worker_config(tmp_path, experiment, "{kill_worker: [false, true]}", seconds=0.0)
    outputs = tmp_path / "outputs"
    code = _run_cli("--config", str(config), "--data", "synthetic", "--outputs", str(outputs), "--tracking-uri",
                    mlflow_server.uri, "--executor", "dask", "--scheduler", local_cluster.scheduler_address)
    assert code == cli.EXIT_FAILED
    summary = _summary(outputs)
    assert summary["status"] == "failed"
    points = {p["parameters"]["kill_worker"]: p for p in summary["grid_points"]}
    assert len(summary["grid_points"]) == 2 and set(points) == {False, True}
    assert points[False]["status"] == "ok"
    assert points[True]["status"] == "failed" and "died" in points[True]["error"]

    client = mlflow.MlflowClient(mlflow_server.uri)
    by_point = _runs_by_point(client, experiment, summary["mlflow_parent_run_id"])
    assert len(by_point) == 2
    healthy, dying = (by_point[key] for key in sorted(by_point))  # '"kill_worker": false' sorts first
    assert [r.info.status for r in healthy] == ["FINISHED"]
    statuses = sorted(r.info.status for r in dying)
    assert statuses.count("FAILED") == 1 and "FINISHED" not in statuses and "RUNNING" not in statuses
    assert set(statuses) <= {"FAILED", "KILLED"} and len(dying) == 2  # the first attempt and its one retry
    failed = next(r for r in dying if r.info.status == "FAILED")
    assert failed.info.run_id == points[True]["mlflow_run_id"]
