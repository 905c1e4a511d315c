"""The linear-regression notebook on the real processed data reproduces the tutorial's figures."""

from __future__ import annotations

import pytest

from powerpipe.execute import execute
from powerpipe import paths

from .conftest import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real data not present at {SHARED_DATA}"),
]


def test_linreg_matches_tutorial(tmp_path, tracking_uri):
    result = execute(paths.NOTEBOOKS_DIR / "model_linreg.ipynb", tmp_path / "linreg.ipynb",
                     {"data_path": str(SHARED_DATA)}, env={"MLFLOW_TRACKING_URI": tracking_uri}, render=False)
    assert result.ok, result.error
    metrics = result.scraps["metrics"]
    assert round(metrics["rmse"], 3) == 2.491
    assert round(metrics["r2"], 4) == 0.8365
    assert round(metrics["mae"], 3) == 1.703
