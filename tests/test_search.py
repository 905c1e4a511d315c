"""Searches (``search:`` instead of ``grid:``): spaces checked against the notebook before anything runs;
Optuna studies whose trials are notebook executions, run for real on a tiny notebook: two at once,
failing and timing out, pruned, killed with SIGKILL and resumed, reused when finished, on Dask with
an MLflow server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import nbformat
import pytest
import yaml

from powerpipe.cli import main as cli
from powerpipe.spec import config
from powerpipe.forecast import data
from powerpipe.core import paths, tags
from powerpipe.search import study as search
from powerpipe.tracking import trials
from powerpipe.core.exceptions import ConfigError
from powerpipe.spec.steps import build_steps

from .conftest import FakeProject

# A stand-in model notebook: predicts the constant `level` (its rmse falls as `level` nears the data's
# level), and on demand fails, hangs, or reports a loss curve to its trial: trial 0's low, every later
# trial's higher, so that the median pruner stops every trial after the first.
PARAMETERS = ("data_path: str | None = None\nlevel: float = 0.0\ndepth: int = 1\nmode: str = 'ok'\n"
              "sleep: float = 0.0\nworse_later: bool = False\nlog_model: bool = False")
CELLS = (
    "import time\nimport mlflow\nfrom sklearn.dummy import DummyRegressor\n"
    "from powerpipe.core import tags\n"
    "from powerpipe.forecast import data, evaluation, modeling\n"
    "from powerpipe.tracking import store as tracking, trials",
    "df = data.load(data_path)\nX_train, X_test, y_train, y_test = modeling.split(df)\nrun = tracking.notebook_run()",
    "time.sleep(sleep)\nif mode == 'fail':\n    raise RuntimeError(f'failing on purpose at level {level}')\n"
    "if mode == 'hang':\n    time.sleep(600)\nif worse_later:\n"
    "    worse = trials.current_trial().number > 0\n"
    "    for epoch in range(3):\n        trials.report(5.0 + level if worse else 1.0, epoch)",
    "model = DummyRegressor(strategy='constant', constant=[level, level]).fit(X_train, y_train)\n"
    "mlflow.set_tag(tags.EVALUATION, evaluation.Evaluation().to_json())\n"
    "tracking.record_metrics(modeling.evaluate(y_test, model.predict(X_test)))\n"
    "if log_model:\n    tracking.log_model(model, X_train, flavor='sklearn')",
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """conftest's FakeProject with this notebook (and study storage); its configs hold a search, not a grid."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    class Project(FakeProject):
        storage = f"sqlite:///{tmp_path / 'out' / search.STORAGE_NAME}"

        def config(self, block: dict, parameters: dict | None = None, promote: bool = True,
                   timeout: float | None = None, notebook: str = "fake.ipynb", more: dict | None = None) -> Path:
            entry = {"notebook": notebook, "search": block, **({"parameters": parameters} if parameters else {})}
            stages = {"train": [entry]}
            if promote:
                stages["promote"] = {"metric": "rmse", "model_name": "FakeModel"}
            body = {"experiment": "search", "root": ".", "stages": stages, **({"timeout": timeout} if timeout else {}),
                    **(more or {})}
            path = tmp_path / "pipeline.yaml"
            path.write_text(yaml.safe_dump(body, sort_keys=False))
            return path

        def trial_runs(self, study: str, status: str | None = None):
            client = self.client()
            experiment = client.get_experiment_by_name("search")
            query = tags.equals(tags.SEARCH_STUDY, study) + (f" and attributes.status = '{status}'" if status else "")
            return client.search_runs([experiment.experiment_id], query, max_results=1000)

        def study(self, name: str):
            import optuna

            return optuna.load_study(study_name=name, storage=self.storage)

    return Project(tmp_path, "search", parameters_cell=PARAMETERS, cells=CELLS)


def trials_of(summary: dict) -> list[dict]:
    return [p for p in summary["grid_points"] if p.get("trial")]


SPACE = {"level": {"float": [0.0, 30.0]}, "depth": {"int": [1, 8], "log": True}}


# -- the space, checked before anything runs ----------------------------------------------------------

def test_search_entry_is_one_step_for_dry_run(project):
    cfg = config.load_config(project.config({"n_trials": 40, "seed": 0, "space": SPACE}))
    config.validate_parameters(cfg)
    (spec,) = cfg.train
    assert spec.search.n_trials == 40 and spec.search.sampler == "tpe" and cfg.training_points() == []
    (step,) = [s for s in build_steps(cfg) if s.stage == "train"]
    assert step.label == "fake__search" and step.is_search and step.executions == 40
    assert step.shown == {"search": "tpe, 40 trials: level float [0, 30], depth int [1, 8] log"}


@pytest.mark.parametrize("space, message", [
    ({"levle": {"float": [0, 1]}}, "has no parameter 'levle' (did you mean 'level'?)"),
    ({"depth": {"float": [0.5, 4.0]}}, "parameter 'depth' of notebook"),  # a float range for an int
    ({"mode": {"int": [1, 3]}}, "takes str, but the space gives it an int range"),
    ({"mode": {"categorical": ["ok", 3]}}, "parameter 'mode' of notebook"),
    ({"level": {"float": [5.0, 5.0]}}, "empty range [5.0, 5.0]"),
    ({"depth": {"int": [8, 2]}}, "empty range [8, 2]"),
    ({"level": {"float": []}}, "must be a range [low, high]"),
    ({"mode": {"categorical": []}}, "must be a non-empty list"),
    ({"depth": {"int": [1.5, 4]}}, "two integers"),
    ({"level": {"float": [0.0, 1.0], "log": True}}, "must start above 0"),
    ({"level": {"uniform": [0, 1]}}, "needs exactly one of int, float, categorical"),
    ({"data_path": {"categorical": ["a"]}}, "set by the runner"),
    ({}, "must map each searched parameter"),
])
def test_a_bad_space_is_refused_naming_file_and_key(project, space, message):
    path = project.config({"n_trials": 5, "space": space})
    with pytest.raises(ConfigError) as caught:
        config.validate_parameters(config.load_config(path))
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "stages.train[0].search" in str(caught.value)


@pytest.mark.parametrize("block, message", [
    ({"n_trials": 0, "space": SPACE}, "n_trials: must be a whole number"),
    ({"n_trials": 5, "sampler": "cmaes", "space": SPACE}, "sampler: must be one of tpe, random, grid"),
    ({"n_trials": 5, "timeout": -1, "space": SPACE}, "timeout: must be a positive number"),
    ({"n_trials": 5, "sampler": "grid", "space": SPACE}, "the grid sampler needs a step"),
    ({"n_trials": 5, "pruner": "hyperband", "space": SPACE}, "pruner: must be one of median, none"),
    ({"n_trials": 5, "space": SPACE, "n_trails": 3}, "unknown key 'n_trails'"),
    ({"n_trials": 5, "storage": "optuna.db", "space": SPACE}, "storage: must be a database URL"),
])
def test_a_bad_block_is_refused(project, block, message):
    with pytest.raises(ConfigError, match="stages.train") as caught:
        config.validate_parameters(config.load_config(project.config(block)))
    assert message in str(caught.value)


def test_fixed_and_searched_grid_and_search_are_refused(project):
    with pytest.raises(ConfigError, match="also fixed under parameters"):
        config.validate_parameters(config.load_config(project.config({"n_trials": 5, "space": SPACE},
                                                                     parameters={"level": 1.0})))
    path = project.config({"n_trials": 5, "space": SPACE})
    body = yaml.safe_load(path.read_text())
    body["stages"]["train"][0]["grid"] = {"mode": ["ok"]}
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="either a grid or a search"):
        config.load_config(path)


def test_cli_refuses_a_bad_space_with_exit_2_and_runs_nothing(project, capsys):
    path = project.config({"n_trials": 5, "space": {"depth": {"float": [0.5, 4.0]}}})
    assert cli.main(project.args(path)) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "stages.train[0].search.space.depth" in err and "Traceback" not in err
    assert project.nothing_made()


def test_cli_refuses_a_search_without_a_storage_for_a_tracking_server(project, capsys, monkeypatch):
    monkeypatch.setattr("powerpipe.tracking.store.check_reachable", lambda uri, timeout=5.0: None)
    path = project.config({"n_trials": 5, "space": SPACE})
    assert cli.main(project.args(path, "--tracking-uri", "http://127.0.0.1:9")) == cli.EXIT_USAGE
    assert "stages.train[0].search: a search keeps its study in a database" in capsys.readouterr().err
    assert project.nothing_made()


def test_storage_defaults_beside_a_sqlite_store_else_must_be_given(tmp_path):
    spec = search.SearchSpec((search.Dimension("x", "float", 0.0, 1.0),), n_trials=3)
    assert search.storage_url(spec, f"sqlite:///{tmp_path}/store/mlflow.db") == f"sqlite:///{tmp_path}/store/optuna.db"
    with pytest.raises(ConfigError, match="--search-storage"):
        search.storage_url(spec, "http://mlflow.example.org:5000")
    given = "postgresql://u:p@db.example.org/optuna"
    assert search.storage_url(spec, "http://mlflow.example.org:5000", given) == given
    assert search.storage_url(dataclass_replace(spec, storage=given), "http://x:5000") == given


def dataclass_replace(spec, **changes):
    import dataclasses

    return dataclasses.replace(spec, **changes)


def test_a_new_study_starts_from_the_notebooks_defaults_that_lie_in_its_space(project):
    cfg = config.load_config(project.config({"n_trials": 5, "space": {
        "level": {"float": [0.0, 30.0]}, "depth": {"int": [2, 8]}, "mode": {"categorical": ["ok", "fail"]}}}))
    assert cfg.train[0].search.defaults(cfg.train[0].notebook) == {"level": 0.0, "mode": "ok"}  # depth 1: outside


def test_study_names_and_generations():
    assert search._study_name([], "fake-abc", force=False) == "fake-abc"
    assert search._study_name(["fake-abc"], "fake-abc", force=False) == "fake-abc"
    assert search._study_name(["fake-abc"], "fake-abc", force=True) == "fake-abc-2"
    assert search._study_name(["fake-abc", "fake-abc-2", "other"], "fake-abc", force=False) == "fake-abc-2"
    assert search._study_name(["fake-abc", "fake-abc-2"], "fake-abc", force=True) == "fake-abc-3"


def test_trials_a_dead_runner_left_are_run_again_only_with_all_their_parameters(tmp_path, caplog):
    """A runner SIGKILLed while it asked for a trial leaves it RUNNING with none or some of its parameters
    (Optuna stores the trial, then each parameter): it never ran, so it is neither run again with parameters
    it did not draw nor counted as a failed trial. One with all of them is asked again first."""
    import optuna

    spec = search.SearchSpec.parse({"sampler": "random", "n_trials": 4, "seed": 0, "space": SPACE}, "test")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    dead = {tags.RUNNER_HOST: socket.gethostname(), tags.RUNNER_PID: str(2**22 + 1)}  # above pid_max: gone
    study = optuna.create_study(storage=trials.open_storage(url), study_name="fake-abc")
    whole = study.ask(spec.distributions())
    half = study.ask({"level": spec.distributions()["level"]})
    bare = study.ask()
    for trial in (whole, half, bare):
        trial.set_user_attr(search.RUNNER_ATTR, dead)
    recovered = search.SearchStudy(spec, url, "fake-abc", "minimize", force=False, parallel=False)
    states = {t.number: t.state.name for t in recovered.study.trials}
    assert [states[n] for n in (whole.number, half.number, bare.number)] == ["FAIL"] * 3
    (retry,) = [t for t in recovered.study.trials if search.RETRY_ATTR in t.user_attrs]
    assert retry.user_attrs[search.RETRY_ATTR] == whole.number
    assert recovered.ask().params == whole.params  # asked again first, as it was
    assert (recovered.tally.failed, recovered.tally.cut_short) == (0, 2)
    assert f"trial {half.number} was cut short by a runner that stopped before its parameters were drawn" \
        in caplog.text


def test_terminal_table_lists_the_best_three_trials_and_counts_the_rest():
    def trial(number, rmse=None, status="ok"):
        return {"stage": "train", "notebook": "fake.ipynb", "parameters": {"level": float(number)}, "status": status,
                "metrics": {} if rmse is None else {"rmse": rmse}, "trial": {"study": "s", "number": number}}

    grid_point = {"stage": "train", "notebook": "lin.ipynb", "parameters": {}, "status": "ok", "metrics": {}}
    points = [grid_point] + [trial(n, rmse=100.0 - n) for n in range(200)] + [trial(200, status="failed")]
    summary = {"grid_points": points, "searches": [{"study": "s", "metric": "rmse", "goal": "minimize"}]}
    listed = search.listed_points(summary)
    assert listed[0] is grid_point
    assert [p["trial"]["number"] for p in listed[1:4]] == [197, 198, 199]
    assert listed[4] == "… 198 more trials of s (197 ok, 1 failed)" and len(listed) == 5


def test_no_trial_outside_a_search(monkeypatch):
    for name in trials.ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    assert trials.current_trial() is None and trials.pruning_callbacks() == []
    trials.report(1.0, 0)  # nothing to report to: no error


# -- searches run for real ---------------------------------------------------------------------------

@pytest.mark.slow
def test_search_runs_trials_two_at_once_promotes_the_best_and_is_reused(project):
    path = project.config({"sampler": "tpe", "n_trials": 5, "seed": 0, "space": SPACE},
                          parameters={"log_model": True, "sleep": 0.5})
    code, summary = project.run(path, "--jobs", "2")
    assert code == 0 and summary["status"] == "ok"
    (entry,) = summary["searches"]
    found = trials_of(summary)
    assert len(found) == 5 and [p["status"] for p in found] == ["ok"] * 5
    assert [p["trial"]["number"] for p in found] == list(range(5))  # in trial order
    assert entry["completed"] == 5 and entry["failed"] == entry["pruned"] == 0 and entry["ran"] == 5
    best = min(found, key=lambda p: p["metrics"]["rmse"])
    assert entry["best_run_id"] == best["mlflow_run_id"] and entry["best_value"] == best["metrics"]["rmse"]
    assert summary["promoted"]["run_id"] == best["mlflow_run_id"]  # the best trial competed like a grid point

    runs = project.trial_runs(entry["study"], "FINISHED")
    assert sorted(r.info.run_id for r in runs) == sorted(p["mlflow_run_id"] for p in found)
    for run in runs:
        run_tags = run.data.tags
        assert run_tags[tags.MLFLOW_PARENT_RUN_ID] == summary["mlflow_parent_run_id"]
        assert run_tags[tags.SEARCH_SAMPLER] == "tpe" and run_tags[tags.SEARCH_OBJECTIVE] == "minimize rmse"
        assert run.info.run_name == f"fake__trial_{run_tags[tags.SEARCH_TRIAL]}"
        assert {f"notebook/{run.info.run_name}.ipynb"} <= {a.path for a in project.client().list_artifacts(
            run.info.run_id, "notebook")}
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # two at once
    study = project.study(entry["study"])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    from powerpipe.dashboard import runs as dashboard_runs

    (row,) = dashboard_runs.pipeline_runs(project.client(), model_name="FakeModel")
    assert row.trials == 5  # the dashboard's runs page counts them
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {p["mlflow_run_id"] for p in found}

    started = time.monotonic()
    code, again = project.run(path, "--jobs", "2")  # finished and unchanged: nothing runs
    assert code == 0 and time.monotonic() - started < 15
    assert [p["status"] for p in trials_of(again)] == ["cached"] * 5 and again["searches"][0]["ran"] == 0
    assert {p["mlflow_run_id"] for p in trials_of(again)} == {p["mlflow_run_id"] for p in found}
    assert len(project.trial_runs(entry["study"])) == 5

    code, forced = project.run(path, "--force")  # a new study (one trial at a time: what ran at once is shown above)
    assert code == 0 and forced["searches"][0]["study"] == entry["study"] + "-2"
    assert [p["status"] for p in trials_of(forced)] == ["ok"] * 5


@pytest.mark.slow
def test_failed_and_timed_out_trials_are_fail_and_the_search_goes_on(project):
    block = {"sampler": "grid", "n_trials": 3, "seed": 0,
             "space": {"mode": {"categorical": ["ok", "fail", "hang"]}}}
    code, summary = project.run(project.config(block, promote=False, timeout=15), "--jobs", "2")
    assert code == 1 and summary["status"] == "failed"
    by_mode = {p["parameters"]["mode"]: p for p in trials_of(summary)}
    assert {mode: p["status"] for mode, p in by_mode.items()} == {"ok": "ok", "fail": "failed", "hang": "failed"}
    assert "RuntimeError: failing on purpose" in by_mode["fail"]["error"] and "Timeout" in by_mode["hang"]["error"]
    (entry,) = summary["searches"]
    assert (entry["completed"], entry["failed"], entry["best_run_id"]) == (1, 2, by_mode["ok"]["mlflow_run_id"])
    study = project.study(entry["study"])
    states = {t.params["mode"]: t.state.name for t in study.trials}
    assert states == {"ok": "COMPLETE", "fail": "FAIL", "hang": "FAIL"}
    for mode in ("fail", "hang"):
        run = project.client().get_run(by_mode[mode]["mlflow_run_id"])
        assert run.info.status == "FAILED" and tags.CACHE_KEY not in run.data.tags
        assert (project.outputs / summary["pipeline_run_id"] / by_mode[mode]["output_notebook"]).is_file()


@pytest.mark.slow
def test_a_pruned_trial_is_pruned_in_optuna_mlflow_and_summary_with_its_notebook(project):
    block = {"sampler": "grid", "n_trials": 3, "seed": 0, "pruner": {"name": "median", "n_startup_trials": 1},
             "space": {"level": {"categorical": [1.0, 5.0, 9.0]}}}
    code, summary = project.run(project.config(block, parameters={"worse_later": True}, promote=False), "--jobs", "1")
    assert code == 0 and summary["status"] == "ok"  # pruning is no failure
    statuses = sorted(p["status"] for p in trials_of(summary))
    assert statuses == ["ok", "pruned", "pruned"]
    (entry,) = summary["searches"]
    assert (entry["completed"], entry["pruned"], entry["failed"]) == (1, 2, 0)
    assert sorted(t.state.name for t in project.study(entry["study"]).trials) == ["COMPLETE", "PRUNED", "PRUNED"]
    for point in trials_of(summary):
        if point["status"] == "pruned":
            run = project.client().get_run(point["mlflow_run_id"])
            assert run.info.status == "FINISHED" and run.data.tags[tags.SEARCH_PRUNED] == "true"
            assert tags.CACHE_KEY not in run.data.tags and not point["metrics"]  # never reused as a result
            executed = nbformat.read(project.outputs / summary["pipeline_run_id"] / point["output_notebook"], 4)
            assert "TrialPruned" in json.dumps([cell.get("outputs", []) for cell in executed.cells])
    code, again = project.run(project.config(block, parameters={"worse_later": True}, promote=False))
    assert code == 0 and sorted(p["status"] for p in trials_of(again)) == ["cached", "pruned", "pruned"]


@pytest.mark.slow
def test_sigkill_mid_search_then_resume_to_exactly_n_trials(project):
    import optuna

    path = project.config({"sampler": "random", "n_trials": 6, "seed": 0, "space": SPACE},
                          parameters={"sleep": 2.0}, promote=False)
    command = [sys.executable, "-c", "import sys; from powerpipe.cli.main import main; sys.exit(main(sys.argv[1:]))",
               *project.args(path), "--jobs", "2"]
    log = project.root / "runner.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=paths.PROJECT_ROOT, start_new_session=True,
                                   stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    states: list = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)  # kill it once two trials are done and more are running
            states = _trial_states(project)
            if states.count(optuna.trial.TrialState.COMPLETE) >= 2 and optuna.trial.TrialState.RUNNING in states:
                break
        else:
            pytest.fail(f"the search did not get going (exit {process.poll()}, trials {states}):\n"
                        + log.read_text(errors="replace")[-3000:])
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already when it failed early
            os.killpg(process.pid, signal.SIGKILL)  # the runner and its kernels, mid-search
        process.wait()
    (name,) = [s.study_name for s in _study_summaries(project.storage)]
    interrupted = [t.number for t in project.study(name).trials if t.state == optuna.trial.TrialState.RUNNING]
    assert interrupted

    code, summary = project.run(path, "--jobs", "2")
    assert code == 0 and summary["status"] == "ok"
    study = project.study(name)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and summary["searches"][0]["completed"] == 6  # exactly n_trials
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(t.number for t in failed) == sorted(interrupted)
    retries = {t.user_attrs.get("retry_of"): t for t in study.trials if "retry_of" in t.user_attrs}
    for number in interrupted:  # asked again with the same parameters (unless killed before it drew them all)
        if set(study.trials[number].params) == set(SPACE):
            assert retries[number].params == study.trials[number].params
        else:
            assert number not in retries
    assert retries and summary["searches"][0]["failed"] == 0  # cut short is not failed
    assert sorted(p["status"] for p in trials_of(summary)).count("cached") >= 2
    assert {p["mlflow_run_id"] for p in trials_of(summary)} == {t.user_attrs["mlflow_run_id"] for t in complete}
    assert not project.trial_runs(name, "RUNNING")  # the killed runner's runs were marked KILLED


def _study_summaries(storage: str):
    import optuna

    return optuna.get_all_study_summaries(storage)


def _trial_states(project) -> list:
    if not (project.outputs / search.STORAGE_NAME).exists():
        return []
    try:
        return [t.state for s in _study_summaries(project.storage) for t in project.study(s.study_name).trials]
    except Exception:  # noqa: BLE001 - the runner is still creating the storage's tables
        return []


@pytest.mark.slow
def test_stage_wise_search_is_one_point(project):
    from powerpipe.run import stagewise
    from powerpipe.run.options import RunOptions

    path = project.config({"sampler": "random", "n_trials": 3, "seed": 1, "space": SPACE})
    assert stagewise.list_points(path) == ["fake__search"]
    options = RunOptions(config=path, data=str(project.data_path), outputs=project.outputs, jobs=2, progress=False)
    started = stagewise.start(options)
    assert stagewise.run_stage(project.outputs, started.run_id, "train", point="fake__search")
    summary = stagewise.finish(project.outputs, started.run_id)
    assert summary["status"] == "ok" and [p["status"] for p in trials_of(summary)] == ["ok"] * 3
    assert summary["searches"][0]["completed"] == 3
    assert not [p for p in summary["grid_points"] if p["status"] == "skipped"]


@pytest.mark.slow
def test_keras_pruning_callback_reports_to_the_trial(tmp_path, monkeypatch):
    """The callback a Keras fit gets: it reports val_loss per epoch and stops a hopeless trial."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="keras", pruner=trials.make_pruner(
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}))
    first = study.ask()
    for epoch, loss in enumerate([1.0, 0.5, 0.4]):
        first.report(loss, epoch)
    study.tell(first, 0.4)
    second = study.ask()
    for name, value in trials.environment(storage, "keras", second.number, {"name": "median",
                                                                             "n_startup_trials": 1}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("scrapbook.glue", lambda *args, **kwargs: None)
    (callback,) = trials.pruning_callbacks()
    callback.on_epoch_end(0, {"val_loss": 0.9})  # better than the first trial: goes on
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(1, {"val_loss": 3.0})
    assert study.trials[1].intermediate_values == {0: 0.9, 1: 3.0}


@pytest.mark.slow
def test_compare_notebook_and_weekly_report_show_the_search(project):
    path = project.config({"sampler": "random", "n_trials": 3, "seed": 0, "space": SPACE},
                          parameters={"log_model": True})
    body = yaml.safe_load(path.read_text())
    body["stages"]["compare"] = {"notebook": str(paths.NOTEBOOKS_DIR / "compare_runs.ipynb")}
    body["stages"]["report"] = {"notebook": str(paths.REPORT_TEMPLATES_DIR / "weekly_report.ipynb")}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    code, summary = project.run(path, "--jobs", "2")
    assert code == 0 and summary["status"] == "ok", summary
    run_dir = project.outputs / summary["pipeline_run_id"]
    study = summary["searches"][0]["study"]
    compare = next(p for p in summary["grid_points"] if p["stage"] == "compare")
    html = (run_dir / compare["output_notebook"]).with_suffix(".html").read_text()
    assert f"Search <code>{study}</code>" in html and "Optimisation history" in html and "Parameter importances" in html
    artifacts = {a.path for a in project.client().list_artifacts(compare["mlflow_run_id"])}
    assert f"search_{study}_history.html" in artifacts
    report = (run_dir / summary["report"]).read_text()
    assert "How this model was found" in report and "Optimisation history" in report
    assert not re.search(r"<script[^>]+src=[\"']https?:", report)  # offline: plotly.js inline, nothing fetched


@pytest.mark.slow
def test_the_keras_notebook_reports_val_loss_and_a_hopeless_trial_is_pruned(project):
    """The real Keras notebook, 3 epochs on small synthetic data: the second trial (learning rate 1e-9)
    is worse than the first after its first epoch and is pruned there; the first reported every epoch."""
    csv = data.write_processed(data.synthetic_frame("2015-09-01", "2016-02-29 23:00"), project.root / "keras.csv")
    project.data_path = csv
    block = {"sampler": "grid", "n_trials": 2, "seed": 1, "pruner": {"name": "median", "n_startup_trials": 1},
             "space": {"learning_rate": {"categorical": [0.01, 1e-9]}}}  # seed 1 orders the grid 0.01 first
    path = project.config(block, parameters={"epochs": 3, "batch_size": 256}, promote=False,
                          notebook=str(paths.NOTEBOOKS_DIR / "model_keras.ipynb"),
                          more={"evaluation": {"split": "time", "test_start": "2016-02-01", "folds": 0}})
    code, summary = project.run(path, "--jobs", "1")
    assert code == 0 and summary["status"] == "ok", summary
    by_rate = {p["parameters"]["learning_rate"]: p for p in trials_of(summary)}
    assert by_rate[0.01]["status"] == "ok" and by_rate[1e-9]["status"] == "pruned"
    study = {t.params["learning_rate"]: t for t in project.study(summary["searches"][0]["study"]).trials}
    assert sorted(study[0.01].intermediate_values) == [0, 1, 2]  # val_loss after each epoch
    assert study[1e-9].state.name == "PRUNED" and list(study[1e-9].intermediate_values) == [0]
    run = project.client().get_run(by_rate[1e-9]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[tags.SEARCH_PRUNED] == "true"


# -- on a Dask cluster with an MLflow tracking server ------------------------------------------------

@pytest.mark.slow
def test_search_on_dask_with_an_mlflow_server(project, mlflow_server):
    path = project.config({"sampler": "tpe", "n_trials": 4, "seed": 0, "space": SPACE,
                           "storage": project.storage}, promote=False)
    code, summary = project.run(path, "--executor", "dask", "--jobs", "2", "--tracking-uri", mlflow_server.uri)
    assert code == 0 and summary["status"] == "ok"
    found = trials_of(summary)
    assert [p["status"] for p in found] == ["ok"] * 4 and summary["searches"][0]["completed"] == 4
    client = mlflow.MlflowClient(mlflow_server.uri)
    for point in found:
        run = client.get_run(point["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags[tags.DASK_KEY].endswith(f"fake__trial_"
                                                                                       f"{point['trial']['number']}")
        assert run.data.tags[tags.SEARCH_STUDY] == summary["searches"][0]["study"]


def test_a_storage_another_process_is_creating_is_opened_again(tmp_path, monkeypatch):
    """Two processes creating one new study storage at once: the second fails to stamp its schema version
    (seen as "UNIQUE constraint failed: alembic_version.version_num" when a poller opened it mid-creation);
    it opens the storage again instead of failing the search."""
    import optuna
    import sqlalchemy.exc

    from powerpipe.tracking import trials

    url = f"sqlite:///{tmp_path / 'search.db'}"
    optuna.storages.RDBStorage(url)  # the other process got there first
    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(*args, **kwargs)

    def locked(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(trials, "_storages", {})
    storage = trials.open_storage(url)
    monkeypatch.setattr(optuna.storages, "RDBStorage", real)
    assert calls == [url, url] and isinstance(storage, real) and optuna.get_all_study_names(storage) == []
    monkeypatch.setattr(trials, "_storages", {})
    monkeypatch.setattr(optuna.storages, "RDBStorage", locked)
    with pytest.raises(sqlalchemy.exc.OperationalError):  # one that never opens still says why, after its attempts
        trials.open_storage(url, attempts=2)
