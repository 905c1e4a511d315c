"""`--data opsd`: the process stage builds the data from raw files (served on loopback) and is cached."""

from __future__ import annotations

import hashlib
import json

import pytest

from powerpipe.cli import main as cli
from powerpipe.core import paths

from .test_opsd import TIME_SERIES_PATH, WEATHER_PATH, raw_opsd_bytes, small_processed  # noqa: F401

pytestmark = pytest.mark.slow


def test_opsd_route_builds_then_reuses_the_process_stage(tmp_path, serve, small_processed, monkeypatch):  # noqa: F811
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    time_series, weather, _ = raw_opsd_bytes(small_processed)
    server = serve({TIME_SERIES_PATH: time_series, WEATHER_PATH: weather})
    config = tmp_path / "opsd.yaml"
    config.write_text(json.dumps({
        "experiment": "opsd_route",
        # Two weeks of data: the time split tests on the second week, no backtest.
        "evaluation": {"split": "time", "test_start": "2013-10-27", "folds": 0},
        "stages": {
            "process": {"notebook": str(paths.NOTEBOOKS_DIR / "make_processed_data.ipynb"), "parameters": {
                "time_series_url": server.url(TIME_SERIES_PATH),
                "time_series_sha256": hashlib.sha256(time_series).hexdigest(),
                "weather_url": server.url(WEATHER_PATH),
                "cache_dir": str(tmp_path / "raw"),
                "start_date": "2013-10-20",
                "eda_plots": False,
            }},
            "train": [{"notebook": str(paths.NOTEBOOKS_DIR / "model_linreg.ipynb")}],
        },
    }))
    args = ["--config", str(config), "--data", "opsd", "--outputs", str(tmp_path / "out"), "--quiet", "--jobs", "1"]

    assert cli.main(args) == 0
    first = json.loads(next((tmp_path / "out").glob("*/summary.json")).read_text())
    assert [p["status"] for p in first["grid_points"]] == ["ok", "ok"]
    assert first["data"]["source"] == "opsd" and len(first["data"]["sha256"]) == 64
    downloads = len(server.requests)
    assert downloads == 2

    assert cli.main(args) == 0
    second = max((tmp_path / "out").glob("*/summary.json"), key=lambda p: p.parent.name)
    second = json.loads(second.read_text())
    assert [p["status"] for p in second["grid_points"]] == ["cached", "cached"]
    assert second["data"]["sha256"] == first["data"]["sha256"]
    assert len(server.requests) == downloads  # raw files came from the cache, not the network
