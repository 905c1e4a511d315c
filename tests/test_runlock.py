"""One run at a time per outputs folder: the lock file (powerpipe.runlock), raced, left stale, waited for."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from powerpipe.run import runlock
from powerpipe.core.exceptions import PipelineError, RunLockedError
from powerpipe.run.runlock import RunLock


def _race(outputs: str, name: str, barrier, results, done) -> None:
    """Child process: wait for the others, try the lock once, report, keep holding until told."""
    lock = RunLock(outputs)
    barrier.wait()
    try:
        lock.acquire(name)
        results.put((name, "acquired", ""))
    except RunLockedError as exc:
        results.put((name, "refused", str(exc)))
    done.wait(30)


def test_processes_racing_for_a_free_folder_one_wins(tmp_path):
    context = multiprocessing.get_context("fork")
    contenders = 6
    barrier, results, done = context.Barrier(contenders), context.Queue(), context.Event()
    processes = [context.Process(target=_race, args=(str(tmp_path), f"run-{n}", barrier, results, done))
                 for n in range(contenders)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=30) for _ in processes]
        holder = RunLock(tmp_path).holder()
    finally:
        done.set()
        for process in processes:
            process.join(30)
    winners = [name for name, outcome, _ in outcomes if outcome == "acquired"]
    assert len(winners) == 1, outcomes
    assert holder["pipeline_run_id"] == winners[0] and holder["host"] == socket.gethostname()
    assert holder["scheduled"] is False
    for name, outcome, message in outcomes:
        if outcome == "refused":
            assert f"in use by pipeline run {winners[0]}" in message and f"pid {holder['pid']}" in message


def test_a_second_runner_is_refused_naming_the_holder_and_the_first_can_release(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire("first")
    with pytest.raises(RunLockedError) as refused:
        second.acquire("second")
    assert isinstance(refused.value, PipelineError)
    message = str(refused.value)
    assert str(tmp_path) in message and "pipeline run first" in message
    assert f"host {socket.gethostname()}" in message and f"pid {os.getpid()}" in message and "since " in message
    assert refused.value.holder["pipeline_run_id"] == "first"

    second.release("second")  # not its lock: nothing happens
    assert first.holder()["pipeline_run_id"] == "first"
    first.acquire("first")  # the same run again: fine
    first.release("first")
    assert first.holder() is None and not (tmp_path / runlock.LOCK_NAME).exists()
    second.acquire("second")
    assert first.holder()["pipeline_run_id"] == "second"


def test_a_lock_left_by_a_dead_runner_is_taken_over_with_a_warning(tmp_path, caplog):
    script = f"from powerpipe.run.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire('dead-run')"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    left = json.loads((tmp_path / runlock.LOCK_NAME).read_text())
    assert left["pipeline_run_id"] == "dead-run" and left["pid"] != os.getpid()

    with caplog.at_level(logging.WARNING, logger="powerpipe.run.runlock"):
        RunLock(tmp_path).acquire("next-run")
    assert RunLock(tmp_path).holder()["pipeline_run_id"] == "next-run"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "taking over the lock of pipeline run dead-run" in warning
    assert f"pid {left['pid']}" in warning and "no longer running" in warning


def test_a_reused_pid_does_not_keep_a_dead_lock_alive(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire("old")
    holder = lock.holder()
    holder["process_started"] -= 3600  # same pid as a live process, but it started later than the holder
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps(holder))
    assert "another process now" in lock.is_stale(holder)
    RunLock(tmp_path).acquire("new")
    assert lock.holder()["pipeline_run_id"] == "new"


def test_a_lock_of_another_host_is_never_presumed_dead(tmp_path):
    holder = {"pipeline_run_id": "elsewhere", "host": "some-other-host", "pid": 1, "process_started": 0.0,
              "since": "2026-11-30T06:00:00+00:00", "since_epoch": 0.0, "scheduled": False}
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(RunLockedError, match="another host.*remove"):
        RunLock(tmp_path).acquire("here")


def test_an_unreadable_lock_file_is_stale(tmp_path, caplog):
    (tmp_path / runlock.LOCK_NAME).write_text('{"pipeline_run_id": "half')
    with caplog.at_level(logging.WARNING, logger="powerpipe.run.runlock"):
        RunLock(tmp_path).acquire("next")
    assert "unreadable" in caplog.text


def test_a_scheduled_lock_outlives_its_process_until_finish_or_max_age(tmp_path, monkeypatch, caplog):
    script = (f"from powerpipe.run.runlock import RunLock; "
              f"RunLock({str(tmp_path)!r}).acquire('scheduled-run', scheduled=True)")
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0  # --start, then exits
    lock = RunLock(tmp_path)
    with pytest.raises(RunLockedError, match="scheduled.*--pipeline-run scheduled-run --finish"):
        lock.acquire("whole-run")  # its process is gone, but the pipeline run is not over

    (tmp_path / "scheduled-run").mkdir()
    (tmp_path / "scheduled-run" / "summary.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="powerpipe.run.runlock"):
        lock.acquire("whole-run")  # it finished without releasing: stale
    assert "scheduled-run has finished" in caplog.text
    lock.release("whole-run")

    lock.acquire("another-scheduled", scheduled=True)
    with pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire("whole-run")
    monkeypatch.setattr(runlock, "SCHEDULED_MAX_AGE", 0.0)
    RunLock(tmp_path).acquire("whole-run")  # abandoned for longer than any run takes
    assert lock.holder()["pipeline_run_id"] == "whole-run"


def test_finish_releases_a_scheduled_lock(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire("scheduled-run", scheduled=True)
    assert lock.holder()["scheduled"] is True
    RunLock(tmp_path).release("scheduled-run")  # --finish, in another process of the same id
    assert lock.holder() is None
    RunLock(tmp_path).acquire("next")


def test_waiting_takes_the_lock_once_the_holder_releases_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "POLL_SECONDS", 0.05)
    holder = RunLock(tmp_path)
    holder.acquire("first")
    timer = threading.Timer(0.5, holder.release, args=("first",))
    started = time.monotonic()
    timer.start()
    try:
        RunLock(tmp_path).acquire("second", wait=True, wait_timeout=20)
    finally:
        timer.cancel()
    assert 0.4 < time.monotonic() - started < 10
    assert holder.holder()["pipeline_run_id"] == "second"


def test_waiting_gives_up_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "POLL_SECONDS", 0.05)
    RunLock(tmp_path).acquire("first")
    started = time.monotonic()
    with pytest.raises(RunLockedError, match="still held after waiting 0.3 s"):
        RunLock(tmp_path).acquire("second", wait=True, wait_timeout=0.3)
    assert time.monotonic() - started < 5


def test_waiting_runner_takes_over_when_the_holder_dies(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "POLL_SECONDS", 0.05)
    script = (f"import time; from powerpipe.run.runlock import RunLock; "
              f"RunLock({str(tmp_path)!r}).acquire('short'); print('held', flush=True); time.sleep(1)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        RunLock(tmp_path).acquire("waiter", wait=True, wait_timeout=30)
    finally:
        child.wait(30)
    assert RunLock(tmp_path).holder()["pipeline_run_id"] == "waiter"


def test_no_lock_file_means_free_and_reading_creates_nothing(tmp_path):
    assert RunLock(tmp_path / "not-yet").holder() is None
    assert not (tmp_path / "not-yet").exists()
    RunLock(tmp_path / "not-yet").acquire("first")  # creates the outputs folder
    assert (tmp_path / "not-yet" / runlock.LOCK_NAME).is_file()


# -- two real runners on one outputs folder -------------------------------------------------------------

@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """conftest's FakeProject as a one-notebook pipeline that sleeps a few seconds (so two runs would overlap)."""
    from powerpipe.core import paths

    from .conftest import FakeProject

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = FakeProject(tmp_path, "locking")
    config = project.config({"sleep": [5.0]})

    def start(*extra: str) -> subprocess.Popen:
        command = [sys.executable, str(paths.RUNNER_DIR / "run_all.py"), *project.args(config, "--jobs", "1", *extra)]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def versions() -> list[str]:
        return sorted(str(v.version) for v in project.client().search_model_versions("name = 'FakeModel'"))

    return type("TinyProject", (), {"start": staticmethod(start), "outputs": project.outputs,
                                    "versions": staticmethod(versions)})


@pytest.mark.slow
def test_two_runners_started_together_one_runs_and_one_refuses(tiny_project):
    # A lock left behind by a runner that died: taken over by whichever runner comes first.
    dead = subprocess.run([sys.executable, "-c", f"from powerpipe.run.runlock import RunLock; "
                           f"RunLock({str(tiny_project.outputs)!r}).acquire('dead-runner')"], timeout=60)
    assert dead.returncode == 0
    runners = [tiny_project.start("--if-running", "fail") for _ in range(2)]
    results = [(runner.wait(300), *runner.communicate()) for runner in runners]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 75], results
    _, _, refused = next(r for r in results if r[0] == 75)
    assert "is in use by pipeline run" in refused and "pid " in refused
    _, out, err = next(r for r in results if r[0] == 0)
    assert "dead-runner" in err and "taking over" in err  # the stale lock was recognised
    assert len(list(tiny_project.outputs.glob("*/summary.json"))) == 1
    assert tiny_project.versions() == ["1"]  # promoted once
    assert not (tiny_project.outputs / runlock.LOCK_NAME).exists()


@pytest.mark.slow
def test_a_waiting_runner_runs_after_the_first_and_reuses_its_work(tiny_project):
    first = tiny_project.start("--if-running", "wait")
    second = tiny_project.start("--if-running", "wait")
    results = [(runner.wait(300), *runner.communicate()) for runner in (first, second)]
    assert [code for code, _, _ in results] == [0, 0], results
    summaries = sorted((json.loads(p.read_text()) for p in tiny_project.outputs.glob("*/summary.json")),
                       key=lambda s: s["started"])
    assert len(summaries) == 2
    assert summaries[1]["started"] >= summaries[0]["finished"]  # one after the other, never side by side
    assert [p["status"] for p in summaries[1]["grid_points"]] == ["cached"]
    assert tiny_project.versions() == ["1"]
