"""The MLflow Project: MLproject's entry points, python_env.yaml, and `mlflow run . -e rf` for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from powerpipe.forecast import data
from powerpipe.core import paths, tags
from powerpipe.run import project_run
from powerpipe.core.exceptions import ParameterError
from powerpipe.spec.parameterize import read_parameters

ROOT = paths.PROJECT_ROOT
VENV_BIN = Path(sys.executable).parent  # `mlflow run --env-manager local` runs the `python` first on PATH


def mlproject() -> dict:
    return yaml.safe_load((ROOT / "MLproject").read_text(encoding="utf-8"))


def test_every_model_entry_point_runs_an_existing_notebook_with_its_declared_parameters():
    entry_points = mlproject()["entry_points"]
    assert {"main", "linreg", "rf", "keras"} <= set(entry_points)
    if (paths.NOTEBOOKS_DIR / "model_gbr.ipynb").exists():
        assert "gbr" in entry_points
    assert {"n_estimators", "max_depth"} <= set(entry_points["rf"]["parameters"])
    assert {"epochs", "batch_size"} <= set(entry_points["keras"]["parameters"])
    for name, entry in entry_points.items():
        command = " ".join(entry["command"].split())
        placeholders = set(re.findall(r"\{(\w+)\}", command))
        assert placeholders == set(entry["parameters"]), name  # every parameter is used, none undeclared
        if name == "main":
            assert command.startswith("python runner/run_all.py ")
            continue
        notebook = re.search(r"powerpipe\.run\.project_run (\S+\.ipynb)", command).group(1)
        declared = read_parameters(ROOT / notebook)
        keys = re.findall(r"(\w+)=\{\1\}", command)
        for key in keys:
            assert key in declared, f"{name}: {notebook} has no parameter {key}"
        # MLflow logs each default as str(default): it must be a value the notebook takes, spelled as the
        # notebook logs it, else the notebook's own log_params would clash with it.
        defaults = [f"{key}={entry['parameters'][key]['default']}" for key in keys]
        values = project_run.parse_values(ROOT / notebook, defaults)
        project_run.check(ROOT / notebook, values, ("data_path",))
        project_run.check_logged_texts(values, {key: str(entry["parameters"][key]["default"]) for key in keys})


def test_mlproject_defaults_are_the_notebooks_own():
    """Not needed for a run to work (the default is passed explicitly), but a drift changes what `-e rf`
    without -P trains: keep MLproject in step when a notebook's defaults change."""
    for name, entry in mlproject()["entry_points"].items():
        match = re.search(r"powerpipe\.run\.project_run (\S+\.ipynb)", entry["command"])
        if not match:
            continue
        declared = read_parameters(ROOT / match.group(1))
        for key in re.findall(r"(\w+)=\{\1\}", entry["command"]):
            assert str(entry["parameters"][key]["default"]) == str(declared[key].default), f"{name}.{key}"


def test_python_env_installs_our_pins():
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text(encoding="utf-8"))
    assert env["python"] == "3.11"
    assert env["build_dependencies"] == ["pip"]
    assert env["dependencies"] == ["-r requirements.txt", "-c requirements.lock"]
    assert (ROOT / "requirements.txt").is_file() and (ROOT / "requirements.lock").is_file()


def test_values_are_read_as_the_parameters_cell_declares():
    notebook = paths.NOTEBOOKS_DIR / "model_rf.ipynb"
    values = project_run.parse_values(notebook, ["n_estimators=64", "max_depth=none", "max_features=0.5"])
    assert values == {"n_estimators": 64, "max_depth": None, "max_features": 0.5}
    assert project_run.parse_values(notebook, ["feature_set=tutorial"]) == {"feature_set": "tutorial"}
    assert project_run._label(notebook, {"n_estimators": 4, "max_depth": 2}) == "model_rf__n_estimators_4__max_depth_2"


def test_a_value_spelled_otherwise_than_the_notebook_logs_it_is_refused():
    values = {"max_depth": None, "max_features": 0.1}
    project_run.check_logged_texts(values, {"max_depth": "None", "max_features": "0.1", "data": "auto"})
    with pytest.raises(ParameterError, match="-P max_depth=none: .* write it as -P max_depth=None"):
        project_run.check_logged_texts(values, {"max_depth": "none"})
    with pytest.raises(ParameterError, match="write it as -P max_features=0.1"):
        project_run.check_logged_texts(values, {"max_features": "0.10"})


@pytest.mark.parametrize("value, message", [
    ("n_estimators=abc", "parameter 'n_estimators' of notebook .* takes int, got 'abc'"),
    ("n_estimatorz=4", "has no parameter 'n_estimatorz' \\(did you mean 'n_estimators'\\?\\)"),
    ("data_path=/x.csv", "'data_path' is set from --data"),
    ("n_estimators", "'n_estimators' is not key=value"),
])
def test_a_bad_value_exits_2_with_a_clear_message_and_runs_nothing(value, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = project_run.main(["notebooks/model_rf.ipynb", value, "--outputs", str(tmp_path / "out")])
    assert code == project_run.EXIT_USAGE
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_mlflow_run_rf_is_recorded_like_a_grid_point(tmp_path):
    csv = data.write_processed(data.synthetic_frame("2015-10-01", "2016-02-29 23:00"), tmp_path / "small.csv")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    outputs = tmp_path / "out"
    result = subprocess.run(
        [str(VENV_BIN / "mlflow"), "run", ".", "-e", "rf", "-P", "n_estimators=4", "-P", "max_depth=2",
         "-P", f"data={csv}", "-P", f"outputs={outputs}", "--env-manager", "local", "--experiment-name", "projects"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("projects")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"rmse", "r2", "mae"} <= set(run.data.metrics)
    assert run.data.params["n_estimators"] == "4" and run.data.params["max_depth"] == "2"
    run_tags = run.data.tags
    assert run_tags[tags.STAGE] == "train" and run_tags[tags.NOTEBOOK] == "model_rf.ipynb"
    assert run_tags[tags.KIND] == tags.KIND_NOTEBOOK
    assert run_tags[tags.DATA_PATH] == str(csv) and run_tags[tags.DATA_SHA256] == data.file_sha256(csv)
    assert yaml.safe_load(run_tags[tags.PARAMETERS]) == {"n_estimators": 4, "max_depth": 2}
    assert run_tags["mlflow.project.entryPoint"] == "rf"
    assert tags.CACHE_KEY not in run_tags  # never reused by a pipeline as a cached grid point

    label = "model_rf__n_estimators_4__max_depth_2"
    executed = outputs / project_run.PROJECTS_DIR_NAME / run.info.run_id / f"{label}.ipynb"
    assert executed.is_file() and run_tags[tags.OUTPUT_NOTEBOOK] == str(executed)
    notebook_artifacts = {a.path for a in client.list_artifacts(run.info.run_id, tags.NOTEBOOK_ARTIFACT_DIR)}
    assert {tags.notebook_artifact(f"{label}.ipynb"), tags.notebook_artifact(f"{label}.html")} <= notebook_artifacts
    sources = {a.path for a in client.list_artifacts(run.info.run_id, tags.SOURCE_ARTIFACT_DIR)}
    assert tags.source_artifact("model_rf.ipynb") in sources
