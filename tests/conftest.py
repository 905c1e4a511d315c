"""Shared fixtures: tiny purpose-built notebooks, a private tracking store per test, one smoke run."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from powerpipe import data, paths

SHARED_DATA = paths.PROJECT_ROOT.parent / "shared" / "data" / "germany.csv"


def make_notebook(path: Path, parameters: str | None, *cells: str) -> Path:
    """Write a notebook with an optional cell tagged ``parameters`` followed by code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebooks(tmp_path) -> dict[str, Path]:
    """One notebook that works, one that raises, one without a parameters cell, one that hangs."""
    folder = tmp_path / "nbs"
    return {
        "works": make_notebook(
            folder / "works.ipynb",
            "x: int = 1\nlabel: str | None = None\nscale: float = 1.0",
            "import sys, scrapbook as sb\ny = x * 2 * scale\nprint('result', y)",
            "sb.glue('metrics', {'rmse': float(y), 'mae': 1.0, 'r2': 0.5}, display=False)\n"
            "sb.glue('python', sys.executable, display=False)",
        ),
        "raises": make_notebook(
            folder / "raises.ipynb",
            "x: int = 1",
            "print('before the error')",
            "raise ValueError(f'broken on purpose with x={x}')",
            "print('never reached')",
        ),
        "no_parameters": make_notebook(folder / "no_parameters.ipynb", None, "print('hello')"),
        "hangs": make_notebook(folder / "hangs.ipynb", "x: int = 1", "import time\ntime.sleep(600)"),
    }


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A tracking store of this test's own; MLFLOW_TRACKING_URI from outside never leaks in."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return uri


@pytest.fixture
def three_rows() -> pd.DataFrame:
    """A three-hour processed frame as the notebooks see it."""
    index = pd.date_range("2016-06-01 10:00", periods=3, freq="h", tz="UTC", name=data.TIME_COLUMN)
    return pd.DataFrame(
        {
            "solar_GW": [10.0, 12.5, 14.0],
            "wind_GW": [5.0, 4.0, 6.5],
            "windspeed": [3.1, 2.9, 3.6],
            "temperature": [18.0, 19.5, 21.0],
            "rad_horizontal": [300.0, 420.0, 500.0],
            "rad_diffuse": [120.0, 130.0, 140.0],
        },
        index=index,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke pipeline, run once for the session through the CLI into a private folder."""
    from powerpipe import cli

    outputs = tmp_path_factory.mktemp("smoke_outputs")
    uri = f"sqlite:///{outputs / 'tracking' / 'mlflow.db'}"
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        code = cli.main(["--config", str(paths.SMOKE_CONFIG), "--data", "synthetic", "--outputs", str(outputs),
                         "--tracking-uri", uri, "--quiet"])
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    runs = [p for p in outputs.iterdir() if (p / "summary.json").exists()]
    assert len(runs) == 1, f"expected one pipeline run folder in {outputs}"
    return {"exit_code": code, "outputs": outputs, "run_dir": runs[0], "tracking_uri": uri}
