"""The runner's command line: fast help and dry run, clear errors without tracebacks, nothing logged."""

from __future__ import annotations

import subprocess
import sys

from powerpipe.core import paths
from powerpipe.spec.config import load_config
from powerpipe.run.session import plan

RUNNER = [sys.executable, str(paths.RUNNER_DIR / "run_all.py")]


def run(*args, cwd=None):
    return subprocess.run([*RUNNER, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_help():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--config", "--data", "--tracking-uri", "--outputs", "--dry-run"):
        assert flag in result.stdout


def test_dry_run_lists_every_execution_and_runs_nothing(tmp_path):
    result = run("--dry-run", "--outputs", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Every planned step is printed with its parameters; the counts come from the pipeline file itself.
    config = load_config(paths.DEFAULT_CONFIG)
    planned = plan(config)
    for step, parameters in planned:
        assert any(line.startswith(step.stage) and all(f"{k}={v!r}" in line for k, v in parameters.items())
                   for line in lines), (step.label, parameters)
    assert sum(line.startswith("train") for line in lines) == sum(s.stage == "train" for s, _ in planned) >= \
        len(config.training_points()) > 1
    assert f"{sum(step.executions for step, _ in planned)} notebook executions planned" in lines[-1]
    assert list(tmp_path.iterdir()) == []


def test_bad_grid_key_stops_before_anything_runs(tmp_path):
    config = tmp_path / "bad.yaml"
    nb = paths.NOTEBOOKS_DIR / "model_rf.ipynb"
    config.write_text(f"stages:\n  train:\n    - notebook: {nb}\n      grid:\n        n_estimator: [4]\n")
    result = run("--config", str(config), "--outputs", str(tmp_path / "out"), "--data", "synthetic")
    assert result.returncode == 2
    assert "n_estimator" in result.stderr and "did you mean 'n_estimators'" in result.stderr
    assert str(config) in result.stderr and "model_rf.ipynb" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # no run folder, no tracking store


def test_bad_data_file_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("utc_timestamp,solar_GW\n2016-01-01 00:00:00+00:00,1.0\n")
    result = run("--config", str(paths.SMOKE_CONFIG), "--data", str(bad), "--outputs", str(tmp_path / "out"))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "missing required column(s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_names_the_unattended_options_and_gc():
    result = run("--help")
    for flag in ("--timeout", "--store-timeout", "--min-free-mb", "--keep-runs", " gc --keep-runs N"):
        assert flag in result.stdout
    result = run("gc", "--help")
    assert result.returncode == 0
    for flag in ("--keep-runs", "--dry-run", "--outputs", "--tracking-uri"):
        assert flag in result.stdout


def test_timeout_zero_is_refused_before_anything_runs(tmp_path):
    result = run("--config", str(paths.SMOKE_CONFIG), "--outputs", str(tmp_path / "out"), "--timeout", "0")
    assert result.returncode == 2
    assert "--timeout must be a positive number of seconds, got 0" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
