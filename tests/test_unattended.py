"""Unattended operation: what a scheduler or the machine brings, injected, and what the user then needs.

SIGTERM/SIGHUP stop a run as Ctrl-C does; calls to a tracking server are bounded and an unreachable
one is one clear line; files are written whole or not at all and a full disk is one clear error; a
corrupt or foreign store is refused untouched; bad --timeout values are refused; old pipeline runs
are removed (never what is still in use); without a terminal, one log line per finished notebook.
Fast tests inject the faults in-process; the ``slow`` ones run the runner for real.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from powerpipe.cli import main as cli
from powerpipe.forecast import data
from powerpipe.core import fsutil, paths, tags
from powerpipe.tracking import retention, store as tracking
from powerpipe.core.exceptions import DiskFullError, StoreUnreachableError, Terminated, TrackingError

from .conftest import FakeProject, MlflowServer, count_runs, runner_process


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The fake notebook project of conftest, with the runner's output as a user sees it (no --quiet)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return FakeProject(tmp_path, "unattended", quiet=False)


# == 5. --timeout =====================================================================================

@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_timeout_zero_negative_or_nan_is_refused(project, value, capsys):
    code = cli.main(project.args(project.config({"level": [0.0]}), f"--timeout={value}"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "--timeout must be a positive number of seconds" in err and "Traceback" not in err
    assert project.nothing_made()


@pytest.mark.parametrize("flag", ["--store-timeout=0", "--keep-runs=0", "--min-free-mb=-1"])
def test_other_bad_numbers_are_refused(project, flag, capsys):
    assert cli.main(project.args(project.config({"level": [0.0]}), flag)) == cli.EXIT_USAGE
    assert flag.split("=")[0] in capsys.readouterr().err
    assert project.nothing_made()


# == 1. signals (fast: in-process) ======================================================================

def test_sighup_in_the_main_thread_becomes_terminated(hangup_not_ignored):
    before = signal.getsignal(signal.SIGHUP)
    with pytest.raises(Terminated) as caught:
        with cli.stop_signals_as_interrupts():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)  # the handler raises in this thread at once
    assert caught.value.signum == signal.SIGHUP and caught.value.exit_code == 129
    assert isinstance(caught.value, KeyboardInterrupt)  # every Ctrl-C path handles it
    assert signal.getsignal(signal.SIGHUP) is before  # handlers restored afterwards


def test_signal_ignored_by_nohup_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli.stop_signals_as_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # nothing happens
            assert callable(signal.getsignal(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_cli_exits_128_plus_signal_and_names_it(project, monkeypatch, capsys, signum, code, hangup_not_ignored):
    def run(args):
        os.kill(os.getpid(), signum)
        time.sleep(5)
        pytest.fail("the signal did not stop the run")

    monkeypatch.setattr(cli, "run_pipeline_command", run)
    assert cli.main(project.args(project.config({"level": [0.0]}))) == code
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err


def test_second_signal_while_stopping_is_only_logged(caplog):
    with pytest.raises(Terminated):
        with cli.stop_signals_as_interrupts():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Terminated:
                os.kill(os.getpid(), signal.SIGTERM)  # while "cleaning up": must not raise again
                time.sleep(0.2)
                raise
    assert any("already stopping" in m for m in caplog.messages)


# == 2. tracking-store budget (fast) ======================================================================

def test_store_budget_settings_stay_within_the_budget():
    for budget in (5, 10, 30, 60, 120, 600):
        settings = tracking.store_call_settings(budget)
        retries = int(settings[tracking.HTTP_RETRIES_ENV])
        timeout = int(settings[tracking.HTTP_TIMEOUT_ENV])
        backoff = int(settings[tracking.HTTP_BACKOFF_ENV])
        jitter = float(settings[tracking.HTTP_JITTER_ENV])
        sleeping = sum(backoff * 2 ** (k - 1) + jitter for k in range(2, retries + 1))
        assert (retries + 1) * timeout + sleeping <= budget, (budget, settings)
        assert timeout >= 1
    assert int(tracking.store_call_settings(60)[tracking.HTTP_TIMEOUT_ENV]) >= 10  # slow answers still fit


def test_bound_store_calls_keeps_what_the_user_set():
    environ = {tracking.HTTP_TIMEOUT_ENV: "300"}
    applied = tracking.bound_store_calls(60, environ)
    assert environ[tracking.HTTP_TIMEOUT_ENV] == "300" and tracking.HTTP_TIMEOUT_ENV not in applied
    assert environ[tracking.HTTP_RETRIES_ENV] == applied[tracking.HTTP_RETRIES_ENV]


def test_mlflow_reads_the_variables_we_set():
    """The names are MLflow's own (a rename upstream would silently drop the budget)."""
    from mlflow import environment_variables as mlflow_env

    for name in (tracking.HTTP_RETRIES_ENV, tracking.HTTP_BACKOFF_ENV, tracking.HTTP_JITTER_ENV,
                 tracking.HTTP_TIMEOUT_ENV):
        assert getattr(mlflow_env, name).name == name


def _refusing_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections are refused


def test_unreachable_server_is_told_apart_and_bounded(monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    for name, value in tracking.store_call_settings(4).items():
        monkeypatch.setenv(name, value)
    uri = f"http://user:secret@127.0.0.1:{_refusing_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError) as caught:
        with tracking.store_guard(uri):
            mlflow.MlflowClient(uri).search_experiments()
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert message.startswith("tracking server http://user:***@127.0.0.1:") and "unreachable" in message
    assert "Connection refused" in message and "secret" not in message
    # An answer that refuses is not "unreachable": it passes through unchanged.
    assert not tracking.is_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: Run 'x' not found"))
    with pytest.raises(ValueError):
        with tracking.store_guard(uri):
            raise ValueError("a bug")


@pytest.mark.slow  # waits out a real timeout (seconds)
def test_server_that_accepts_but_never_answers_times_out_within_the_budget(monkeypatch):
    import threading

    import mlflow

    for name, value in tracking.store_call_settings(6).items():
        monkeypatch.setenv(name, value)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept_and_hold():
        try:
            while True:
                held.append(server.accept())
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=accept_and_hold, daemon=True).start()
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnreachableError, match="unreachable: no answer in time"):
            with tracking.store_guard(uri):
                mlflow.MlflowClient(uri).search_experiments()
    finally:
        server.close()
    assert time.monotonic() - started < 12


def test_cli_sets_the_budget_before_mlflow_runs(project, monkeypatch):
    for name in (tracking.HTTP_RETRIES_ENV, tracking.HTTP_BACKOFF_ENV, tracking.HTTP_JITTER_ENV,
                 tracking.HTTP_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    seen = {}
    monkeypatch.setattr(cli, "run_pipeline_command", lambda args: seen.update(os.environ) or 0)
    assert cli.main(project.args(project.config({"level": [0.0]}), "--store-timeout", "20")) == 0
    assert seen[tracking.HTTP_TIMEOUT_ENV] == tracking.store_call_settings(20)[tracking.HTTP_TIMEOUT_ENV]


def test_cli_turns_an_unreachable_store_mid_run_into_one_line(project, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    def run(args):
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/update failed with "
                                  "exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded "
                                  "(Caused by NewConnectionError(': Failed to establish a new connection: "
                                  "[Errno 111] Connection refused'))")

    monkeypatch.setattr(cli, "run_pipeline_command", run)
    code = cli.main(project.args(project.config({"level": [0.0]}), "--tracking-uri", "http://127.0.0.1:1"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.strip() == "error: tracking server http://127.0.0.1:1 unreachable: Connection refused"


# == 3. atomic writes and a full disk (fast: ENOSPC injected) =============================================

def _enospc_after(monkeypatch, budget: int):
    """os.write-level injection: the file system accepts ``budget`` more bytes, then says ENOSPC."""
    import builtins
    import io

    real_open = builtins.open
    left = {"bytes": budget}

    class FullFile(io.FileIO):
        def write(self, payload):
            if len(payload) > left["bytes"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            left["bytes"] -= len(payload)
            return super().write(payload)

    def fake_open(file, mode="r", *args, **kwargs):
        if not any(m in mode for m in "wax+") or kwargs.get("opener") or isinstance(file, int):
            return real_open(file, mode, *args, **kwargs)
        raw = FullFile(file, mode.replace("b", "").replace("t", "").replace("+", "") or "w")
        if "b" in mode:
            return raw
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=kwargs.get("encoding") or "utf-8",
                                newline=kwargs.get("newline"))

    monkeypatch.setattr(builtins, "open", fake_open)


def test_full_disk_mid_write_leaves_the_whole_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"status": "ok"}\n')
    _enospc_after(monkeypatch, budget=10)
    with pytest.raises(DiskFullError) as caught:
        fsutil.atomic_write_text(target, json.dumps({"status": "failed", "grid_points": list(range(1000))}))
    monkeypatch.undo()
    assert target.read_text() == '{"status": "ok"}\n'  # the whole previous file, not 0 bytes
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # the temporary file removed
    message = str(caught.value)
    assert re.fullmatch(r"no space left on /\S* \(\d+(\.\d)? MB free\) while writing \S+", message), message
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)


def test_write_processed_on_a_full_disk_keeps_the_previous_csv(tmp_path, monkeypatch, three_rows):
    path = data.write_processed(three_rows, tmp_path / "germany.csv")
    before = path.read_bytes()
    bigger = data.synthetic_frame("2016-01-01", "2016-01-31 23:00")
    _enospc_after(monkeypatch, budget=100)
    with pytest.raises(DiskFullError):
        data.write_processed(bigger, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["germany.csv"]


def test_check_free_space_message_names_mount_free_and_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 12 * fsutil.MB)
    with pytest.raises(DiskFullError) as caught:
        fsutil.check_free_space(tmp_path / "not" / "yet", 100 * fsutil.MB)
    assert str(caught.value) == f"no space left on {fsutil.mount_point(tmp_path)} (12 MB free, about 100 MB needed)"
    assert fsutil.check_free_space(tmp_path, 1) == 12 * fsutil.MB


def test_free_bytes_of_a_folder_not_yet_created():
    assert fsutil.free_bytes("/nonexistent/deeper/still") == fsutil.free_bytes("/")


def test_disk_full_is_recognised_through_wrappers():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("API request failed") from inner
    except RuntimeError as outer:
        assert fsutil.is_disk_full(outer)
    assert fsutil.is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not fsutil.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_cli_refuses_to_start_on_an_obviously_full_disk(project, monkeypatch, capsys):
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 7 * fsutil.MB)
    code = cli.main(project.args(project.config({"level": [0.0]})))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert f"no space left on {fsutil.mount_point(project.root)} (7.0 MB free, about 100 MB needed)" in err
    assert "Traceback" not in err and project.nothing_made()


def test_cli_turns_enospc_mid_run_into_one_line(project, monkeypatch, capsys):
    def run(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(project.outputs / "x" / "summary.json"))

    monkeypatch.setattr(cli, "run_pipeline_command", run)
    code = cli.main(project.args(project.config({"level": [0.0]}), "--min-free-mb", "0"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and err.startswith("error: no space left on ") and "MB free" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_papermill_saves_are_atomic(tmp_path, monkeypatch):
    """papermill's own writes of the executed notebook go through our handler (temporary file + rename)."""
    from papermill.iorw import papermill_io

    from powerpipe.execution import engine as execute

    target = tmp_path / "executed.ipynb"
    handler = papermill_io.get_handler(str(target), [".ipynb"])
    assert isinstance(handler, execute.AtomicLocalHandler)
    handler.write('{"cells": []}', str(target))
    _enospc_after(monkeypatch, budget=5)
    with pytest.raises(DiskFullError):
        handler.write('{"cells": ["a much longer notebook than before"]}', str(target))
    monkeypatch.undo()
    assert target.read_text() == '{"cells": []}' and [p.name for p in tmp_path.iterdir()] == ["executed.ipynb"]


def test_render_html_on_a_full_disk_keeps_the_previous_html(tmp_path, notebooks, monkeypatch):
    import nbformat

    from powerpipe.execution import engine as execute

    html = tmp_path / "works.html"
    html.write_text("<html>whole</html>")
    _enospc_after(monkeypatch, budget=100)
    with pytest.raises(DiskFullError):
        execute.render_html(notebooks["works"], html)
    monkeypatch.undo()
    assert html.read_text() == "<html>whole</html>"
    assert nbformat.read(notebooks["works"], as_version=4)  # the source untouched


# == 4. a corrupt or foreign store ==========================================================================

def _sqlite_with(path: Path, *tables: str) -> Path:
    with sqlite3.connect(path) as connection:
        for table in tables:
            connection.execute(f"CREATE TABLE {table} (x)")
    return path


@pytest.mark.parametrize("kind", ["not sqlite", "corrupt", "foreign database"])
def test_corrupt_or_foreign_store_is_refused_untouched(project, capsys, kind):
    store = project.root / "store.db"
    if kind == "not sqlite":
        store.write_bytes(b"id,name\n1,not a database\n" * 50)
        expected = "not an SQLite database"
    elif kind == "corrupt":
        _sqlite_with(store, "experiments", "runs", "alembic_version")
        payload = bytearray(store.read_bytes())
        payload[100:] = b"\xff" * (len(payload) - 100)
        store.write_bytes(bytes(payload))
        expected = "unreadable or corrupt"
    else:
        _sqlite_with(store, "customers", "orders")
        expected = "without MLflow's tables (it holds: customers, orders)"
    before = store.read_bytes()
    code = cli.main(project.args(project.config({"level": [0.0]}), "--tracking-uri", f"sqlite:///{store}"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert f"{store} is not an MLflow store" in err and expected in err and "Traceback" not in err
    assert store.read_bytes() == before
    assert sorted(p.name for p in project.root.iterdir() if p.name.startswith("store.db")) == ["store.db"]
    assert project.nothing_made()


def test_empty_file_and_empty_sqlite_and_real_store_are_accepted(tmp_path):
    import mlflow

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    tracking.check_sqlite_store(empty)  # 0 bytes: MLflow creates its tables in it
    tracking.check_sqlite_store(_sqlite_with(tmp_path / "blank.db"))
    tracking.check_sqlite_store(tmp_path / "missing.db")
    real = tmp_path / "real.db"
    mlflow.MlflowClient(f"sqlite:///{real}").search_experiments()
    tracking.check_sqlite_store(real)
    with pytest.raises(TrackingError, match="it is not a file"):
        tracking.check_sqlite_store(tmp_path)


# == 7. logs without a terminal ==============================================================================

def test_step_line_reads_well_in_a_journal():
    ok = SimpleNamespace(stage="train", notebook="model_rf.ipynb", parameters={"n_estimators": 64, "max_depth": 10},
                         status="ok", seconds=12.34, error=None)
    line = cli.step_line(ok)
    assert re.fullmatch(r"\d\d:\d\d:\d\d train model_rf\.ipynb n_estimators=64,max_depth=10 OK 12\.3s", line), line
    failed = SimpleNamespace(stage="train", notebook="fake.ipynb", parameters={}, status="failed", seconds=1.0,
                             error="RuntimeError: failing on purpose\nmore")
    assert cli.step_line(failed).endswith("fake.ipynb - FAILED 1.0s (RuntimeError: failing on purpose)")


def test_progress_display_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert cli.progress_display(quiet=False) == "lines"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.progress_display(quiet=False) == "bar"
    assert cli.progress_display(quiet=True) == "none"


# == 6. retention (fast: runs made with MlflowClient, folders in tmp_path) ===================================

def _fake_pipeline(client, experiment_id: str, outputs: Path, run_id: str, children: int = 2,
                   cached_from: list[str] = (), status: str = "FINISHED", runner: dict | None = None) -> dict:
    """A pipeline run as the runner leaves it: a folder with summary.json and notebooks, a parent run,
    child runs with artifacts and a logged model each."""
    folder = outputs / run_id
    (folder / "train").mkdir(parents=True)
    parent = client.create_run(experiment_id, run_name=f"pipeline {run_id}",
                               tags={tags.KIND: tags.KIND_PIPELINE, tags.PIPELINE_RUN_ID: run_id, **(runner or {})})
    made = []
    for i in range(children):
        child = client.create_run(experiment_id, run_name=f"fake level={i}",
                                  tags={tags.KIND: tags.KIND_NOTEBOOK, tags.PIPELINE_RUN_ID: run_id,
                                        tags.MLFLOW_PARENT_RUN_ID: parent.info.run_id, tags.STAGE: "train"})
        notebook = folder / "train" / f"fake_{i}.ipynb"
        notebook.write_bytes(os.urandom(40_000))
        client.log_artifact(child.info.run_id, str(notebook), artifact_path="notebook")
        model = client.create_logged_model(experiment_id, name="model", source_run_id=child.info.run_id)
        model_dir = folder / f"model_{i}"
        model_dir.mkdir()
        (model_dir / "model.skops").write_bytes(os.urandom(60_000))
        client.log_model_artifacts(model.model_id, str(model_dir))
        shutil.rmtree(model_dir)
        client.set_terminated(child.info.run_id, "FINISHED")
        made.append({"run": child.info.run_id, "model": model.model_id})
    points = [{"stage": "train", "notebook": "fake.ipynb", "parameters": {"level": i}, "status": "ok",
               "mlflow_run_id": m["run"]} for i, m in enumerate(made)]
    points += [{"stage": "train", "notebook": "fake.ipynb", "parameters": {}, "status": "cached",
                "mlflow_run_id": run} for run in cached_from]
    (folder / "summary.json").write_text(json.dumps({"pipeline_run_id": run_id, "grid_points": points}))
    if status != "RUNNING":
        client.set_terminated(parent.info.run_id, status)
    return {"id": run_id, "folder": folder, "parent": parent.info.run_id, "children": made}


@pytest.fixture
def history(tmp_path, monkeypatch):
    """Six pipeline runs, oldest first: p0 RUNNING (live runner), p1 holding the production model, p2 whose
    run p5 reused from the cache, p3 plain, p4 and p5 the newest."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = tmp_path / "outputs"
    uri = paths.default_tracking_uri(outputs)
    client = mlflow.MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(client, "unattended", uri)
    ids = [f"2026010{d}-120000-000-00a{d}" for d in range(6)]
    runner = {tags.RUNNER_HOST: socket.gethostname(), **{k: v for k, v in tracking.runner_tags().items()}}
    p = [_fake_pipeline(client, experiment_id, outputs, ids[0], status="RUNNING", runner=runner)]
    p += [_fake_pipeline(client, experiment_id, outputs, run_id) for run_id in ids[1:5]]
    p.append(_fake_pipeline(client, experiment_id, outputs, ids[5], cached_from=[p[2]["children"][0]["run"]]))
    production = p[1]["children"][1]
    client.create_registered_model("FakeModel")
    source = client.get_logged_model(production["model"]).artifact_location  # models:/ needs the global URI
    version = client.create_model_version("FakeModel", source, run_id=production["run"], model_id=production["model"])
    client.set_registered_model_alias("FakeModel", "production", version.version)
    (outputs / "not-a-run").mkdir()  # anything else in outputs/ is left alone
    return SimpleNamespace(outputs=outputs, uri=uri, client=client, p=p, production=production,
                           reused=p[2]["children"][0])


def _exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _artifact_dir(client, run_id: str) -> Path:
    return Path(urllib.request.url2pathname(client.get_run(run_id).info.artifact_uri.removeprefix("file://")))


@pytest.mark.slow  # runs `mlflow gc` in a subprocess (seconds)
def test_retention_keeps_newest_and_everything_in_use(history):
    h, p = history, history.p
    artifacts = {run["run"]: _artifact_dir(h.client, run["run"]) for pipe in p for run in pipe["children"]}
    models = {run["model"]: Path(urllib.request.url2pathname(
        h.client.get_logged_model(run["model"]).artifact_location.removeprefix("file://")))
        for pipe in p for run in pipe["children"]}
    p3_bytes = fsutil.tree_bytes(p[3]["folder"]) + sum(
        fsutil.tree_bytes(artifacts[r["run"]]) + fsutil.tree_bytes(models[r["model"]]) for r in p[3]["children"])

    dry = retention.collect_garbage(h.outputs, h.uri, keep_runs=2, dry_run=True)
    assert dry.removed == [p[3]["id"]] and all(pipe["folder"].is_dir() for pipe in p)
    assert all(_exists(h.client, r["run"]) for pipe in p for r in pipe["children"])
    assert "would remove pipeline run " + p[3]["id"] in dry.describe()

    report = retention.collect_garbage(h.outputs, h.uri, keep_runs=2)
    assert report.kept[:2] == [p[5]["id"], p[4]["id"]] and p[0]["id"] in report.kept  # RUNNING: kept
    assert report.removed == [p[3]["id"]]
    assert set(report.pinned) == {p[1]["id"], p[2]["id"]}
    # p3: folder, parent, children, their artifacts and logged models gone for good
    assert not p[3]["folder"].exists() and not _exists(h.client, p[3]["parent"])
    for run in p[3]["children"]:
        assert not _exists(h.client, run["run"]) and not artifacts[run["run"]].exists()
        assert not models[run["model"]].exists()
    # pinned: the production model's run and the reused run, their folders and parents, stay whole
    for pipe, run in ((p[1], h.production), (p[2], h.reused)):
        assert pipe["folder"].is_dir() and _exists(h.client, pipe["parent"]) and _exists(h.client, run["run"])
        assert artifacts[run["run"]].is_dir() and models[run["model"]].is_dir()
    # their other runs go
    assert not _exists(h.client, p[1]["children"][0]["run"]) and not _exists(h.client, p[2]["children"][1]["run"])
    # newest two and the RUNNING one untouched
    for pipe in (p[0], p[4], p[5]):
        assert pipe["folder"].is_dir() and all(_exists(h.client, r["run"]) for r in pipe["children"])
    assert (h.outputs / "not-a-run").is_dir()
    import mlflow

    assert mlflow.MlflowClient(h.uri).get_model_version_by_alias("FakeModel", "production").run_id == \
        h.production["run"]
    assert report.bytes_freed >= p3_bytes > 0
    assert report.bytes_freed == dry.bytes_freed
    text = report.describe()
    assert f"removed pipeline run {p[3]['id']}" in text and "freed" in text and "MB" in text
    assert "is behind model FakeModel version 1" in text and f"was reused by kept pipeline run {p[5]['id']}" in text

    again = retention.collect_garbage(h.outputs, h.uri, keep_runs=2)
    assert again.removed == [] and again.deleted_runs == [] and again.bytes_freed == 0


@pytest.mark.slow  # runs `mlflow gc` in a subprocess (seconds)
def test_keep_versions_lets_old_registered_versions_go_and_then_their_runs(history, capsys):
    """A pipeline registering every week pins a run every week: --keep-versions bounds that. Version 1 holds
    production, version 2 (on p3) is old, version 3 (on p2, reused anyway) the newest."""
    from mlflow.exceptions import MlflowException

    h, p = history, history.p
    for pipe in (p[3], p[2]):
        run = pipe["children"][1]
        h.client.create_model_version("FakeModel", h.client.get_logged_model(run["model"]).artifact_location,
                                      run_id=run["run"], model_id=run["model"])
    assert p[3]["id"] in retention.collect_garbage(h.outputs, h.uri, keep_runs=2, dry_run=True).pinned
    spared = retention.collect_garbage(h.outputs, h.uri, keep_runs=2, dry_run=True, keep_versions=1,
                                       also_keep=frozenset({("FakeModel", "2")}))  # a replay's first model
    assert spared.deleted_versions == [] and p[3]["id"] in spared.pinned
    dry = retention.collect_garbage(h.outputs, h.uri, keep_runs=2, dry_run=True, keep_versions=1)
    assert dry.deleted_versions == ["FakeModel/2"] and dry.removed == [p[3]["id"]]  # what the real run does
    assert h.client.get_model_version("FakeModel", "2")  # a dry run deletes nothing
    h.client.set_model_version_tag("FakeModel", "1", tags.PREVIOUS_VERSION, "2")  # what rollback goes back to
    assert retention.collect_garbage(h.outputs, h.uri, keep_runs=2, dry_run=True, keep_versions=1).deleted_versions == []
    h.client.delete_model_version_tag("FakeModel", "1", tags.PREVIOUS_VERSION)
    # Another project's model in the same store: not made by these pipeline runs, never touched.
    other = h.client.create_run(h.client.get_experiment_by_name("unattended").experiment_id).info.run_id
    h.client.create_registered_model("OtherModel")
    for _ in range(3):
        h.client.create_model_version("OtherModel", f"runs:/{other}/model", run_id=other)

    code = cli.main(["gc", "--keep-runs", "2", "--keep-versions", "1", "--outputs", str(h.outputs),
                     "--tracking-uri", h.uri])
    out = capsys.readouterr().out
    assert code == 0 and "removed registered model version(s) FakeModel/2" in out
    assert f"removed pipeline run {p[3]['id']}" in out and not p[3]["folder"].exists()
    with pytest.raises(MlflowException):
        h.client.get_model_version("FakeModel", "2")
    assert str(h.client.get_model_version_by_alias("FakeModel", "production").version) == "1"  # an alias: kept
    assert h.client.get_model_version("FakeModel", "3").run_id == p[2]["children"][1]["run"]  # the newest: kept
    assert p[1]["folder"].is_dir() and _exists(h.client, h.production["run"])
    assert len(h.client.search_model_versions("name = 'OtherModel'")) == 3
    assert cli.main(["run", "--keep-versions", "1", "--outputs", str(h.outputs)]) == cli.EXIT_USAGE
    assert "--keep-versions goes with --keep-runs" in capsys.readouterr().err


@pytest.mark.slow  # runs `mlflow gc` in a subprocess (seconds)
def test_gc_command_through_the_cli(history, capsys):
    code = cli.main(["gc", "--keep-runs", "4", "--outputs", str(history.outputs), "--tracking-uri", history.uri])
    out = capsys.readouterr().out
    assert code == 0
    assert f"removed pipeline run {history.p[1]['id']}" not in out  # pinned by the production model
    assert "kept folder and parent run of " + history.p[1]["id"] in out and "freed" in out
    assert cli.main(["gc", "--keep-runs", "0", "--outputs", str(history.outputs)]) == cli.EXIT_USAGE
    assert "--keep-runs must be at least 1" in capsys.readouterr().err


def test_gc_without_a_store_removes_only_folders(tmp_path):
    for name in ("20260101-000000-000-aaaa", "20260102-000000-000-bbbb"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{}")
    report = retention.collect_garbage(tmp_path, paths.default_tracking_uri(tmp_path), keep_runs=1)
    assert report.removed == ["20260101-000000-000-aaaa"] and report.bytes_freed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260102-000000-000-bbbb"]  # no store created


# == slow: the faults injected into a real runner ===============================================================

@pytest.mark.slow
def test_sigterm_mid_grid_stops_like_ctrl_c(project):
    import psutil

    config = project.config({"level": [0.0, 1.0, 2.0, 3.0], "sleep": [30.0]})
    process = runner_process(project.args(config, "--jobs", "2"))
    db = project.outputs / "mlflow.db"
    deadline = time.monotonic() + 180
    while count_runs(db, "RUNNING") < 2:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no grid point started in time"
        time.sleep(0.5)
    kernels = [c for c in psutil.Process(process.pid).children(recursive=True)
               if "ipykernel_launcher" in " ".join(c.cmdline())]
    assert kernels, "no kernel started"
    time.sleep(2)  # the notebooks are sleeping now
    os.kill(process.pid, signal.SIGTERM)  # what docker stop, Kubernetes and Airflow send (to the runner only)
    started = time.monotonic()
    output, _ = process.communicate(timeout=60)
    assert time.monotonic() - started < 20, output
    assert process.returncode == 143, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    time.sleep(1)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert count_runs(db, "RUNNING") == 0 and count_runs(db, "KILLED") >= 2
    summary = json.loads(next(project.outputs.glob("*/summary.json")).read_text())
    assert summary["status"] == "killed"


@pytest.mark.slow
def test_without_a_terminal_one_line_per_finished_notebook(project):
    config = project.config({"level": [0.0, 1.0], "fail": [False, True]})
    result = subprocess.run([sys.executable, str(paths.RUNNER_DIR / "run_all.py"), *project.args(config, "--jobs", "2")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d train ", line)]
    assert len(lines) == 4, result.stderr
    for line in lines:
        assert re.fullmatch(r"\d\d:\d\d:\d\d train fake\.ipynb \S*level=\d\.0\S* (OK|FAILED) \d+\.\ds"
                            r"( \(RuntimeError: failing on purpose at level \d\.0.*\))?", line), line
    assert sum(" FAILED " in line for line in lines) == 2
    assert "\r" not in result.stderr and "notebook/s" not in result.stderr  # no progress-bar frames


@pytest.fixture
def stoppable_server(tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    server = MlflowServer(folder)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_tracking_server_stopping_mid_run_is_one_clear_error_and_the_next_run_resumes(project, stoppable_server):
    """Needs the pipeline to turn an unreachable store into StoreUnreachableError (tracking.store_guard),
    write summary.json with the reason and promote nothing."""
    # Three points one at a time, each a few seconds: the server stops while the second or third runs.
    config = project.config({"level": [0.0, 1.0, 2.0], "sleep": [3.0]})
    argv = project.args(config, "--jobs", "1", "--tracking-uri", stoppable_server.uri, "--store-timeout", "10")
    process = runner_process(argv)
    deadline = time.monotonic() + 180
    while stoppable_server.runs("FINISHED") < 1:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no grid point finished in time"
        time.sleep(0.5)
    stoppable_server.stop()
    stopped = time.monotonic()
    output, _ = process.communicate(timeout=240)
    assert time.monotonic() - stopped < 90, output
    assert process.returncode in (cli.EXIT_FAILED, cli.EXIT_USAGE), output
    assert "unreachable" in output and stoppable_server.uri in output, output
    assert "Traceback" not in output, output
    summaries = list(project.outputs.glob("*/summary.json"))
    assert len(summaries) == 1, output
    summary = json.loads(summaries[0].read_text())
    assert summary["promoted"] is None and summary["status"] != "ok"
    assert "unreachable" in json.dumps(summary)

    stoppable_server.start()
    code = cli.main([*argv, "--quiet"])
    assert code == cli.EXIT_OK
    latest = json.loads(sorted(project.outputs.glob("*/summary.json"), key=lambda p: p.parent.name)[-1].read_text())
    statuses = [point["status"] for point in latest["grid_points"] if point["stage"] == "train"]
    assert statuses.count("cached") >= 1 and set(statuses) <= {"cached", "ok"}
    assert stoppable_server.runs("RUNNING") == 0


def _mount_tmpfs(folder: Path, megabytes: int) -> None:
    folder.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    _mount_tmpfs(folder, 20)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_small_disk_is_refused_before_the_run(project, small_disk):
    outputs = small_disk / "outputs"
    result = subprocess.run([sys.executable, str(paths.RUNNER_DIR / "run_all.py"),
                             *project.args(project.config({"level": [0.0]}), outputs=outputs)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert re.search(rf"no space left on {re.escape(str(small_disk))} \(\d+ MB free, about 100 MB needed\)",
                     result.stderr), result.stderr
    assert "Traceback" not in result.stderr and not outputs.exists()


@pytest.mark.slow
def test_disk_filling_up_mid_run_is_one_clear_error_and_the_next_run_completes(project, small_disk):
    """Run folders on a 20 MB tmpfs nearly filled; the store beside the project. Needs the pipeline to
    let DiskFullError (or an ENOSPC) end the run and write summary.json atomically."""
    outputs = small_disk / "outputs"
    store = project.root / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * (fsutil.free_bytes(small_disk) - 600_000))  # room for a notebook or two
    config = project.config({"level": [0.0, 1.0, 2.0, 3.0]})
    argv = project.args(config, "--jobs", "1", "--tracking-uri", uri, "--min-free-mb", "0.1", outputs=outputs)
    result = subprocess.run([sys.executable, str(paths.RUNNER_DIR / "run_all.py"), *argv],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stderr
    assert "no space left on " + str(small_disk) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for path in outputs.rglob("*"):
        if path.is_file():
            assert not path.name.endswith(".tmp"), path  # no temporary file left behind
            if path.suffix in (".json", ".ipynb", ".csv"):
                assert path.stat().st_size > 0, path  # nothing that was whole is left empty
                if path.suffix != ".csv":
                    json.loads(path.read_text())
    assert count_runs(store / "mlflow.db", "RUNNING") == 0

    ballast.unlink()
    code = cli.main([*argv, "--quiet"])
    assert code == cli.EXIT_OK
    assert count_runs(store / "mlflow.db", "RUNNING") == 0


@pytest.mark.slow
def test_keep_runs_after_a_run_removes_old_runs_but_not_the_production_model(project, capsys):
    import mlflow

    runs = []
    for level in (100.0, 200.0, 300.0):
        extra = ["--keep-runs", "1"] if level == 300.0 else []
        assert cli.main(project.args(project.config({"level": [level]}), "--quiet", *extra)) == cli.EXIT_OK
        runs.append(sorted(p.parent for p in project.outputs.glob("*/summary.json"))[-1])
    out = capsys.readouterr().out
    first, second, third = runs
    assert f"removed pipeline run {second.name}" in out and "freed" in out
    assert not second.exists() and first.is_dir() and third.is_dir()  # the first holds the production model
    client = mlflow.MlflowClient(project.tracking_uri)
    production = client.get_model_version_by_alias("FakeModel", "production")
    assert client.get_run(production.run_id).info.status == "FINISHED"
    second_summary_runs = [r for r in client.search_runs(
        [client.get_experiment_by_name("unattended").experiment_id],
        tags.equals(tags.PIPELINE_RUN_ID, second.name))]
    assert second_summary_runs == []
