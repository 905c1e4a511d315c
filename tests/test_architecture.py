"""The package's shape: layers kept by import-linter, the cache key following imports through subpackages,
models logged before the subpackages still loading, and the command line's flags and exit codes documented."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest

from powerpipe.cli import main as cli
from powerpipe.core import paths
from powerpipe.tracking import cache

from .conftest import FakeProject, make_notebook

ROOT = paths.PROJECT_ROOT
COMMAND_LINE_DOC = ROOT / "docs" / "command-line.md"


def test_import_contracts_are_kept():
    """pyproject.toml's contracts: the layers read top-down, and forecast imports nothing of the runner."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_every_subpackage_is_in_a_layer():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(contract["layers"] for contract in config if contract["type"] == "layers")
    layered = {name.strip() for layer in layers for name in layer.split("|")}
    subpackages = {f"powerpipe.{path.parent.name}" for path in (ROOT / "powerpipe").glob("*/__init__.py")}
    assert subpackages == layered, f"subpackages outside the layers contract: {subpackages ^ layered}"


# -- the cache key ------------------------------------------------------------------------------------------
@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the package whose files the code hash reads (the kernels still import the real one)."""
    copy = tmp_path / "package" / "powerpipe"
    shutil.copytree(ROOT / "powerpipe", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_DIR", copy)
    cache.notebook_code_sha256.cache_clear()
    yield copy
    cache.notebook_code_sha256.cache_clear()


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited by a test\n")
    cache.notebook_code_sha256.cache_clear()


def test_code_hash_follows_imports_into_nested_packages(package_copy, tmp_path):
    notebook = make_notebook(tmp_path / "nb.ipynb", "x: int = 1", "from powerpipe.forecast import modeling")
    before = cache.notebook_code_sha256(notebook)
    # modeling imports features (another module of forecast), which imports core: two levels down
    for unrelated in ("dashboard/app.py", "run/pipeline.py", "cli/main.py", "search/study.py"):
        _edit(package_copy / unrelated)
        assert cache.notebook_code_sha256(notebook) == before, f"{unrelated} is not run by the notebook"
    for module in ("forecast/features.py", "core/exceptions.py", "forecast/__init__.py", "__init__.py"):
        _edit(package_copy / module)
        after = cache.notebook_code_sha256(notebook)
        assert after != before, f"editing {module} left the notebook's code hash unchanged"
        before = after


@pytest.mark.slow
def test_editing_a_module_two_levels_down_reruns_the_point(package_copy, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = FakeProject(tmp_path / "project", "architecture")
    config = project.config({"level": [0.0]})
    code, first = project.run(config)
    assert code == 0 and [p["status"] for p in first["grid_points"]] == ["ok"]
    code, second = project.run(config)
    assert [p["status"] for p in second["grid_points"]] == ["cached"]
    # the fake notebook imports powerpipe.forecast.modeling, which imports powerpipe.forecast.features
    _edit(package_copy / "forecast" / "features.py")
    code, third = project.run(config)
    assert code == 0 and [p["status"] for p in third["grid_points"]] == ["ok"]


# -- models logged in the flat layout -------------------------------------------------------------------------
LOG_IN_OLD_LAYOUT = textwrap.dedent("""
    import sys
    import mlflow
    from powerpipe.forecast import data, evaluation, features, modeling, serving
    # The flat layout's module path, as a model logged before the subpackages pickled it.
    sys.modules["powerpipe.features"] = features
    features.FeatureBuilder.__module__ = "powerpipe.features"
    frame = data.synthetic_frame("2016-01-01", "2016-02-29 23:00")
    X_train, _, y_train, _ = evaluation.holdout(frame, {"test_start": "2016-02-15"})
    model = modeling.make_model(modeling.gradient_boosting(max_iter=10), "weather_calendar").fit(X_train, y_train)
    mlflow.set_tracking_uri(sys.argv[1])
    with mlflow.start_run() as run:
        serving.log_model(model, X_train, flavor="sklearn")
    model_id = mlflow.MlflowClient().get_run(run.info.run_id).outputs.model_outputs[-1].model_id
    print(f"models:/{model_id}")
""")
LOAD_AND_PREDICT = textwrap.dedent("""
    import sys
    import mlflow
    from powerpipe.forecast import data, features
    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model(sys.argv[2])
    frame = data.synthetic_frame("2016-03-01", "2016-03-01 23:00")
    rows = frame.reset_index()[features.RAW_COLUMNS]
    rows["utc_timestamp"] = rows["utc_timestamp"].dt.tz_localize(None)  # naive UTC: what every version takes
    predictions = model.predict(rows)
    assert len(predictions) == 24, predictions
    print("served", len(predictions))
""")


@pytest.mark.slow
def test_a_model_logged_in_the_flat_layout_still_loads_and_serves(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = subprocess.run([sys.executable, "-c", LOG_IN_OLD_LAYOUT, uri], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert logged.returncode == 0, logged.stderr[-3000:]
    model_uri = logged.stdout.strip().splitlines()[-1]
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and "model" in str(path)
                      and path.suffix in (".skops", ".pkl", ".yaml", ""))
    assert b"powerpipe.features" in stored, "the test model does not name the flat layout's module"
    served = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, uri, model_uri], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert served.returncode == 0 and "served 24" in served.stdout, served.stderr[-3000:]


# -- the command line is documented ------------------------------------------------------------------------------
def _flags(command: click.Command) -> set[str]:
    return {flag for param in command.params if isinstance(param, click.Option) for flag in param.opts
            if flag.startswith("--")}


def test_every_flag_of_every_command_is_in_the_docs():
    text = COMMAND_LINE_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"--[a-z][a-z-]*", text))
    missing = {f"{name} {flag}" for name, command in cli.cli.commands.items() for flag in _flags(command)
               if flag not in documented}
    assert not missing, f"flags missing from docs/command-line.md: {sorted(missing)}"
    commands = set(re.findall(r"`powerpipe ([a-z-]+)", text)) | set(re.findall(r"^\| `([a-z-]+)", text, re.M))
    assert set(cli.cli.commands) <= commands, f"commands missing: {set(cli.cli.commands) - commands}"


def test_every_exit_code_is_documented():
    text = COMMAND_LINE_DOC.read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", text, re.M))
    assert {int(code) for code in table} == {int(code) for code in cli.ExitCode}


def test_run_all_is_powerpipe_run(capsys):
    assert cli.main(["--help"], prog=cli.RUN_ALL) == 0
    run_all_help = capsys.readouterr().out
    assert run_all_help.startswith("Usage: run_all.py run [OPTIONS]")
    assert _flags(cli.cli.commands["run"]) - {"--reproduce", "--start", "--pipeline-run", "--stage", "--point",
                                              "--finish", "--list-points"} <= set(re.findall(r"--[a-z-]+", run_all_help))
    assert cli.main(["--help"]) == 0
    group_help = capsys.readouterr().out
    assert all(name in group_help for name in cli.cli.commands)


def test_an_unknown_command_or_flag_is_a_usage_error(capsys):
    assert cli.main(["nonsense"]) == cli.ExitCode.USAGE
    assert "No such command 'nonsense'" in capsys.readouterr().err
    assert cli.main(["run", "--no-such-flag"]) == cli.ExitCode.USAGE
    assert cli.main(["stage", "train"]) == cli.ExitCode.USAGE  # --pipeline-run is required
    assert "--pipeline-run" in capsys.readouterr().err
