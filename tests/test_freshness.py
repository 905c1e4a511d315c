"""A scheduled run notices new data: the raw OPSD files are checked with their server by conditional GET
(ETag / Last-Modified), kept when unchanged and replaced when the server's file changed, against a
loopback server whose file changes between two runs."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pytest

from powerpipe.cli import main as cli
from powerpipe.forecast import opsd
from powerpipe.core import paths

from .test_opsd import TIME_SERIES_PATH, WEATHER_PATH, raw_opsd_bytes, small_processed  # noqa: F401

URL_PATH = "/latest/time_series_60min_singleindex.csv"
OLD, NEW = b"utc_timestamp,x\n2016-01-01T00:00:00Z,1\n" * 50, b"utc_timestamp,x\n2016-01-01T00:00:00Z,2\n" * 60


# The server whose file changes is conftest's `serve` fixture (a LoopbackFileServer; `put` changes a file).

@pytest.fixture
def always_check(monkeypatch):
    monkeypatch.setenv(opsd.MAX_AGE_ENV, "0")


def test_a_download_keeps_the_servers_validators_on_the_file(tmp_path, serve):
    server = serve({URL_PATH: OLD})
    path = opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    kept = opsd.validators(path)
    assert kept["etag"] == f'"{hashlib.sha256(OLD).hexdigest()[:16]}"'
    assert kept["last_modified"].endswith("GMT") and abs(float(kept["checked_at"]) - time.time()) < 60
    assert [p.name for p in (tmp_path / "raw").rglob("*") if p.is_file()] == [path.name]  # nothing beside it


def test_within_the_max_age_the_cache_is_used_without_asking(tmp_path, serve):
    server = serve({URL_PATH: OLD})
    first = opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    server.put(URL_PATH, NEW)
    assert opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False) == first
    assert first.read_bytes() == OLD and server.statuses() == [200]


def test_unchanged_file_answers_304_and_stays(tmp_path, serve, always_check):
    server = serve({URL_PATH: OLD})
    path = opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    inode = path.stat().st_ino
    assert opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False) == path
    assert server.statuses() == [200, 304]
    assert server.requests[1]["If-None-Match"] == opsd.validators(path)["etag"]
    assert server.requests[1]["If-Modified-Since"].endswith("GMT")
    assert path.read_bytes() == OLD and path.stat().st_ino == inode


def test_changed_file_replaces_the_cached_one_whole(tmp_path, serve, always_check, caplog):
    server = serve({URL_PATH: OLD})
    path = opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    server.put(URL_PATH, NEW)
    with caplog.at_level(logging.WARNING, logger="powerpipe.forecast.opsd"):
        assert opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False) == path
    assert path.read_bytes() == NEW and server.statuses() == [200, 200]
    assert opsd.validators(path)["etag"] == f'"{hashlib.sha256(NEW).hexdigest()[:16]}"'
    assert "NEW DATA" in caplog.text and hashlib.sha256(NEW).hexdigest()[:12] in caplog.text
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .part left
    assert opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False).read_bytes() == NEW
    assert server.statuses()[-1] == 304


def test_a_server_without_validators_is_judged_by_the_files_hash(tmp_path, serve, always_check):
    server = serve({URL_PATH: OLD}, validators=False)
    path = opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    assert "etag" not in opsd.validators(path)
    inode = path.stat().st_ino
    opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    assert server.requests[1]["If-Modified-Since"] is not None  # the cached file's own time
    assert path.read_bytes() == OLD and path.stat().st_ino == inode  # same content: kept as it was
    server.put(URL_PATH, NEW)
    opsd.fetch(server.url(URL_PATH), tmp_path / "raw", progress=False)
    assert path.read_bytes() == NEW


def test_an_unreachable_server_keeps_the_cached_file(tmp_path, serve, always_check, caplog):
    server = serve({URL_PATH: OLD})
    url = server.url(URL_PATH)
    path = opsd.fetch(url, tmp_path / "raw", progress=False)
    server.close()
    with caplog.at_level(logging.WARNING, logger="powerpipe.forecast.opsd"):
        assert opsd.fetch(url, tmp_path / "raw", progress=False, timeout=5).read_bytes() == OLD
    assert "could not check" in caplog.text and str(path) in caplog.text


def test_a_pinned_sha256_is_never_checked_again(tmp_path, serve, always_check):
    server = serve({URL_PATH: OLD})
    sha256 = hashlib.sha256(OLD).hexdigest()
    opsd.fetch(server.url(URL_PATH), tmp_path / "raw", sha256=sha256, progress=False)
    server.put(URL_PATH, NEW)
    assert opsd.fetch(server.url(URL_PATH), tmp_path / "raw", sha256=sha256, progress=False).read_bytes() == OLD
    assert server.statuses() == [200]


def test_the_process_stage_fingerprint_follows_the_servers_file(tmp_path, serve, monkeypatch):
    server = serve({URL_PATH: OLD, "/weather.zip": b"weather"})
    parameters = {"time_series_url": server.url(URL_PATH), "weather_url": server.url("/weather.zip"),
                  "cache_dir": str(tmp_path / "raw")}
    opsd.fetch(parameters["time_series_url"], tmp_path / "raw", progress=False)
    opsd.fetch(parameters["weather_url"], tmp_path / "raw", progress=False)
    before = opsd.process_inputs_fingerprint(parameters)
    server.put(URL_PATH, NEW)
    assert opsd.process_inputs_fingerprint(parameters) == before  # checked within the hour: not asked
    monkeypatch.setenv(opsd.MAX_AGE_ENV, "0")  # a week later
    after = opsd.process_inputs_fingerprint(parameters)
    assert after["time_series"] == hashlib.sha256(NEW).hexdigest() and after["weather"] == before["weather"]
    assert server.statuses() == [200, 200, 200, 304]


@pytest.mark.slow
def test_a_weekly_run_processes_only_when_the_raw_files_changed(tmp_path, serve, small_processed,  # noqa: F811
                                                                 monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(opsd.MAX_AGE_ENV, "0")  # every run is "a week later"
    time_series, weather, _ = raw_opsd_bytes(small_processed)
    server = serve({TIME_SERIES_PATH: time_series, WEATHER_PATH: weather})
    config = tmp_path / "opsd.yaml"
    config.write_text(json.dumps({
        "experiment": "freshness",
        "evaluation": {"split": "random"},  # two weeks of data: no room for the default time split
        "stages": {
            "process": {"notebook": str(paths.NOTEBOOKS_DIR / "make_processed_data.ipynb"), "parameters": {
                "time_series_url": server.url(TIME_SERIES_PATH),  # no SHA-256: a "latest" file
                "weather_url": server.url(WEATHER_PATH),
                "cache_dir": str(tmp_path / "raw"),
                "start_date": "2013-10-20",
                "eda_plots": False,
            }},
            "train": [{"notebook": str(paths.NOTEBOOKS_DIR / "model_linreg.ipynb")}],
        },
    }))
    args = ["--config", str(config), "--data", "opsd", "--outputs", str(tmp_path / "out"), "--quiet", "--jobs", "1"]

    def run() -> dict:
        assert cli.main(args) == 0
        newest = max((tmp_path / "out").glob("*/summary.json"), key=lambda p: p.parent.name)
        return json.loads(newest.read_text())

    def process_status(summary: dict) -> str:
        return next(p["status"] for p in summary["grid_points"] if p["stage"] == "process")

    first = run()
    assert process_status(first) == "ok"
    asked = len(server.requests)

    second = run()  # the server's files did not change: 304s, the process stage is a cache hit
    assert process_status(second) == "cached" and second["data"]["sha256"] == first["data"]["sha256"]
    assert set(server.statuses()[asked:]) == {304}

    # A week later the server's file holds a corrected value (in the middle of the processed period).
    rows = [row.split(",") for row in time_series.decode().splitlines()]
    solar = rows[0].index("DE_solar_generation_actual")
    middle = next(i for i in range(len(rows) // 2, len(rows)) if rows[i][solar])
    rows[middle][solar] = f"{float(rows[middle][solar]) + 1000.0}"
    server.put(TIME_SERIES_PATH, ("\n".join(",".join(row) for row in rows) + "\n").encode())
    third = run()
    assert process_status(third) == "ok"  # new data: processed again
    assert third["data"]["sha256"] != first["data"]["sha256"]
    assert opsd.cache_path(server.url(TIME_SERIES_PATH), tmp_path / "raw").read_bytes() == server.files[
        TIME_SERIES_PATH]
