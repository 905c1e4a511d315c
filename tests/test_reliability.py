"""Failures kept, bad input refused, hung notebooks stopped, interrupted runs resumed, unchanged work
cached, promotion gated, runs reproduced. Small purpose-built notebooks run for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import nbformat
import psutil
import pytest

from powerpipe.cli import main as cli
from powerpipe.core import tags

from .conftest import FakeProject, count_runs, runner_process

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with the fake notebook (conftest), a small data file, an outputs folder and its own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return FakeProject(tmp_path, "reliability")


def test_failing_grid_point_is_kept_and_never_promoted(project):
    code, summary = project.run(project.config({"level": [0.0, 100.0], "fail": [False, True]}), "--jobs", "2")
    assert code == 1 and summary["status"] == "failed"
    points = {(p["parameters"]["level"], p["parameters"]["fail"]): p for p in summary["grid_points"]}
    assert [points[(0.0, False)]["status"], points[(100.0, False)]["status"]] == ["ok", "ok"]
    for level in (0.0, 100.0):
        failed = points[(level, True)]
        assert failed["status"] == "failed"
        assert f"RuntimeError: failing on purpose at level {level}" in failed["error"]
        executed = project.outputs / summary["pipeline_run_id"] / failed["output_notebook"]
        nb = nbformat.read(executed, as_version=4)
        assert "An Exception was encountered" in nb.cells[0].source
        assert executed.with_suffix(".html").is_file()
        run = project.client().get_run(failed["mlflow_run_id"])
        assert run.info.status == "FAILED"
        artifacts = {a.path for a in project.client().list_artifacts(run.info.run_id, "notebook")}
        assert {f"notebook/{executed.name}", f"notebook/{executed.with_suffix('.html').name}"} <= artifacts
    assert summary["promoted"]["run_id"] == points[(0.0, False)]["mlflow_run_id"]


def test_no_successful_run_promotes_nothing_and_skips_report(project, caplog):
    code, first = project.run(project.config({"level": [100.0]}))
    assert code == 0 and first["promoted"]["version"] == "1"
    code, summary = project.run(project.config({"level": [0.0], "fail": [True]}, report=True))
    assert code == 1
    assert summary["promoted"] is None and summary["report"] is None
    report = next(p for p in summary["grid_points"] if p["stage"] == "report")
    assert report["status"] == "skipped" and "no training run succeeded" in report["error"]
    assert str(project.client().get_model_version_by_alias("FakeModel", "production").version) == "1"


def test_hung_notebook_is_stopped_and_the_pipeline_goes_on(project):
    started = time.monotonic()
    code, summary = project.run(project.config({"sleep": [0.0, 300.0]}, timeout=12), "--jobs", "2")
    assert time.monotonic() - started < 120
    assert code == 1
    hung = next(p for p in summary["grid_points"] if p["parameters"]["sleep"] == 300.0)
    quick = next(p for p in summary["grid_points"] if p["parameters"]["sleep"] == 0.0)
    assert hung["status"] == "failed" and "Timeout" in hung["error"] and "12 s" in hung["error"]
    assert quick["status"] == "ok" and summary["promoted"]["run_id"] == quick["mlflow_run_id"]
    assert project.client().get_run(hung["mlflow_run_id"]).info.status == "FAILED"


def test_second_run_is_cached_and_force_reruns(project):
    config = project.config({"level": [0.0, 100.0]})
    code, first = project.run(config)
    assert code == 0 and first["promoted"] is not None
    code, second = project.run(config)
    assert code == 0 and second["promoted"] is None  # nothing new
    train = [p for p in second["grid_points"] if p["stage"] == "train"]
    assert [p["status"] for p in train] == ["cached", "cached"]
    assert {p["mlflow_run_id"] for p in train} == {p["mlflow_run_id"] for p in first["grid_points"]}
    assert all(p["metrics"]["rmse"] > 0 for p in train)
    assert len(project.runs("FINISHED")) == 2
    code, forced = project.run(config, "--force")
    assert code == 0 and [p["status"] for p in forced["grid_points"]] == ["ok", "ok"]
    assert len(project.runs("FINISHED")) == 4


def test_training_points_start_longest_first_as_the_last_run_timed_them(tmp_path):
    from types import SimpleNamespace

    from powerpipe.run.pipeline import longest_first
    from powerpipe.run.session import last_durations

    steps = [SimpleNamespace(label=name, is_search=name == "s") for name in ("a", "b", "c", "s", "d")]
    assert longest_first(steps, {}) == [0, 1, 2, 3, 4]  # never timed: as declared
    assert longest_first(steps, {"a": 3.0, "b": 9.0, "c": 3.0, "d": 1.0}) == [3, 1, 0, 2, 4]  # a search first
    assert longest_first(steps, {"a": 3.0, "d": 9.0}) == [1, 2, 3, 4, 0]  # untimed ones first, then 9 s, 3 s
    assert last_durations(tmp_path) == {}
    for name, seconds in (("20261130-100000-000-aaaa", {"a": 5.0, "b": 2.0}), ("20261130-110000-000-bbbb", {"a": 7.0}),
                          ("20261130-120000-000-cccc", {"a": None, "b": None})):  # the newest: all from the cache
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"grid_points": [
            {"output_notebook": f"train/m/{label}.ipynb", "seconds": value} for label, value in seconds.items()]
            + [{"output_notebook": None, "seconds": None}]}))
    assert last_durations(tmp_path) == {"a": 7.0, "b": 2.0}  # each label as its newest timed run took it
    assert last_durations(tmp_path, exclude="20261130-110000-000-bbbb") == {"a": 5.0, "b": 2.0}
    (tmp_path / "20261130-130000-000-dddd").mkdir()
    (tmp_path / "20261130-130000-000-dddd" / "summary.json").write_text("{not json")
    assert last_durations(tmp_path) == {"a": 7.0, "b": 2.0}  # an unreadable one is passed over, never an error


def test_training_starts_the_longest_first_and_returns_results_in_declared_order():
    from types import SimpleNamespace

    from powerpipe.run.pipeline import Pipeline

    submitted = []
    pipeline = object.__new__(Pipeline)  # only what run_training reads
    pipeline.steps = [SimpleNamespace(label=name, stage="train", is_search=False) for name in ("quick", "slow", "mid")]
    pipeline.expected_seconds = {"quick": 1.0, "slow": 30.0, "mid": 5.0}
    pipeline.config = SimpleNamespace(promote=None)  # no champion to train
    pipeline.in_parallel = lambda calls: [call() for call in calls]  # one at a time, in the order given
    pipeline.run_step = lambda step: submitted.append(step.label) or f"result of {step.label}"
    assert pipeline.run_training() == ["result of quick", "result of slow", "result of mid"]
    assert submitted == ["slow", "mid", "quick"]


def test_promotion_gate(project):
    code, first = project.run(project.config({"level": [100.0]}))
    assert first["promoted"]["version"] == "1"
    code, worse = project.run(project.config({"level": [200.0]}))
    assert code == 0 and worse["promoted"] is None
    client = project.client()
    assert str(client.get_model_version_by_alias("FakeModel", "production").version) == "1"
    code, forced = project.run(project.config({"level": [200.0]}), "--force-promote")
    assert forced["promoted"]["version"] == "2"
    code, better = project.run(project.config({"level": [0.0]}))
    assert better["promoted"]["version"] == "3"
    version_tags = client.get_model_version("FakeModel", "3").tags
    assert version_tags[tags.PREVIOUS_VERSION] == "2"
    assert float(version_tags[tags.METRIC_VALUE]) == pytest.approx(better["promoted"]["value"])
    assert float(version_tags[tags.PREVIOUS_METRIC_VALUE]) == pytest.approx(forced["promoted"]["value"])
    assert version_tags[tags.PIPELINE_RUN_ID] == better["pipeline_run_id"]
    assert float(version_tags[tags.METRIC_VALUE]) < float(version_tags[tags.PREVIOUS_METRIC_VALUE])


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(project):
    started = time.monotonic()
    code = cli.main(project.args(project.config({"level": [0.0]}), "--tracking-uri", "http://127.0.0.1:9"))
    assert code == 2 and time.monotonic() - started < 15
    assert project.nothing_made()


def test_not_csv_and_missing_data(project, capsys):
    config = project.config({"level": [0.0]})
    (project.root / "blob.csv").write_bytes(bytes(range(256)) * 10)
    for path, message in ((project.root / "blob.csv", "is not"), (project.root / "nope.csv", "not found")):
        code = cli.main(["--config", str(config), "--data", str(path), "--outputs", str(project.outputs)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(path) in err and "Traceback" not in err
    assert project.nothing_made()


def test_reproduce_matches_and_refuses_other_data(project, capsys):
    code, summary = project.run(project.config({"level": [0.0]}))
    run_id = summary["grid_points"][0]["mlflow_run_id"]
    assert cli.main(["--reproduce", run_id, "--outputs", str(project.outputs)]) == 0
    out = capsys.readouterr().out
    assert "every metric matches exactly" in out
    new = project.client().search_runs([project.client().get_experiment_by_name("reliability").experiment_id],
                                       tags.equals(tags.REPRODUCES, run_id))
    assert len(new) == 1 and new[0].data.tags[tags.METRICS_MATCH] == "true"

    changed = project.root / "changed.csv"
    changed.write_text(project.data_path.read_text().replace("2016-06-01 00:00:00+00:00,", "2016-06-01 00:00:00+00:00,0", 1))
    assert cli.main(["--reproduce", run_id, "--outputs", str(project.outputs), "--data", str(changed)]) == 2
    assert "is not the data of run" in capsys.readouterr().err
    project.data_path.unlink()
    assert cli.main(["--reproduce", run_id, "--outputs", str(project.outputs)]) == 2
    assert "is missing" in capsys.readouterr().err


def test_many_jobs_on_sqlite_lose_no_run(project):
    code, summary = project.run(project.config({"level": [float(i) for i in range(8)]}), "--jobs", "4")
    assert code == 0
    assert [p["status"] for p in summary["grid_points"]] == ["ok"] * 8
    runs = project.runs()
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert all("rmse" in r.data.metrics for r in runs)


def _wait_for_runs(project, status: str, count: int, process: subprocess.Popen, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        if count_runs(project.db, status) >= count:
            return
        time.sleep(0.5)
    pytest.fail(f"the runner had no {status} grid point in time")


def test_sigkill_mid_grid_then_next_run_completes_only_the_missing_points(project):
    config = project.config({"level": [0.0, 1.0, 2.0, 3.0], "sleep": [2.0]})
    process = runner_process(project.args(config, "--jobs", "1"))
    _wait_for_runs(project, "FINISHED", 1, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    finished_before = {r.info.run_name for r in project.runs("FINISHED")}
    assert 1 <= len(finished_before) < 4

    code, summary = project.run(config)
    assert code == 0
    statuses = {p["parameters"]["level"]: p["status"] for p in summary["grid_points"]}
    assert sorted(statuses.values()).count("cached") == len(finished_before)
    assert set(statuses.values()) == {"cached", "ok"}
    finished = [r.info.run_name for r in project.runs("FINISHED")]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 4  # each point FINISHED once
    assert not project.runs("RUNNING")
    for run in project.runs("KILLED"):
        assert "runner stopped" in run.data.tags[tags.ERROR]


def test_ctrl_c_stops_promptly_and_kills_kernels(project):
    config = project.config({"level": [0.0, 1.0, 2.0, 3.0], "sleep": [30.0]})
    process = runner_process(project.args(config, "--jobs", "2"))
    _wait_for_runs(project, "RUNNING", 2, process)
    kernels = [c for c in psutil.Process(process.pid).children(recursive=True)
               if "ipykernel_launcher" in " ".join(c.cmdline())]
    assert kernels, "no kernel started"
    time.sleep(2)  # the notebooks are sleeping now
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    started = time.monotonic()
    output, _ = process.communicate(timeout=60)
    assert time.monotonic() - started < 20, output
    assert process.returncode == 130, output
    assert "Traceback" not in output
    time.sleep(1)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert not project.runs("RUNNING")
    summary = json.loads(next(project.outputs.glob("*/summary.json")).read_text())
    assert summary["status"] == "killed"
