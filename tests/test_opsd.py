"""The raw OPSD route: download from a loopback server (resume, hashes, cuts), the raw layouts, the
process step reproducing the published file, the full check of processed data, and the notebook itself."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from powerpipe.forecast import data, opsd
from powerpipe.spec import parameterize
from powerpipe.core import paths
from powerpipe.core.exceptions import DataError

from .conftest import SHARED_DATA

TIME_SERIES_PATH = "/time_series/2019-06-05/time_series_60min_singleindex.csv"
WEATHER_PATH = "/weather_data/2019-04-09/opsd-weather_data-2019-04-09.zip"
PROCESS_NOTEBOOK = paths.NOTEBOOKS_DIR / "make_processed_data.ipynb"


# Files are served on loopback by conftest's `serve` fixture (a LoopbackFileServer).

def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# -- raw OPSD files derived from a processed frame ---------------------------------------------------

def raw_opsd_bytes(processed: pd.DataFrame, seed: int = 0,
                   wind_capacity_mw=None) -> tuple[bytes, bytes, pd.DatetimeIndex]:
    """(time series CSV, weather zip, hours that must be dropped) in the raw OPSD layouts, such that
    processing them from the frame's first day on gives back ``processed`` exactly.

    ``wind_capacity_mw`` (a function of the file's hours giving one value per hour, NaN allowed): the file
    has ``DE_wind_capacity`` too, so processing keeps both capacity columns (without it:
    ``DE_solar_capacity`` alone, which is not kept).

    GW back to MW, the original column names, other countries and columns, 48 complete hours before
    the start, hours after the weather ends, and each hour missing from ``processed`` made
    incomplete in one of four ways. A repeated hour keeps one generation row and both weather readings.
    """
    rng = np.random.default_rng(seed)
    index = processed.index
    hours = pd.date_range(index[0] - pd.Timedelta(hours=48), index[-1] + pd.Timedelta(hours=30), freq="h",
                          tz="UTC", name=data.TIME_COLUMN)
    before = hours[hours < index[0]]
    after = hours[hours > index[-1]]
    gaps = hours[(hours >= index[0]) & (hours <= index[-1])].difference(index)

    megawatts = np.round(processed[data.TARGETS].to_numpy() * 1000)
    assert (megawatts * 0.001 == processed[data.TARGETS].to_numpy()).all(), "GW values are not whole MW"
    generation = pd.DataFrame(megawatts, index=index, columns=list(opsd.TIME_SERIES_COLUMNS))
    generation = generation[~generation.index.duplicated()].reindex(hours)
    plausible = {"DE_solar_generation_actual": 1500.0, "DE_wind_generation_actual": 9000.0}
    for hour in before:
        generation.loc[hour] = list(plausible.values())
    generation.loc[after] = list(plausible.values())  # no weather for these: the inner join drops them

    weather = pd.DataFrame(processed[data.FEATURES].to_numpy(), index=index, columns=list(opsd.WEATHER_COLUMNS))
    weather_before = pd.DataFrame([[3.0, 5.0, 0.0, 0.0]] * len(before), index=before, columns=weather.columns)
    gap_rows = []
    for number, hour in enumerate(gaps):
        kind = number % 4
        if kind == 0:  # no wind generation
            generation.loc[hour, "DE_wind_generation_actual"] = np.nan
            gap_rows.append([4.0, 10.0, 50.0, 20.0])
        elif kind == 1:  # no weather row at all
            generation.loc[hour] = list(plausible.values())
        elif kind == 2:  # one weather value missing
            generation.loc[hour] = list(plausible.values())
            gap_rows.append([4.0, 10.0, 50.0, np.nan])
        else:  # no solar generation
            generation.loc[hour, "DE_solar_generation_actual"] = np.nan
            gap_rows.append([4.0, 10.0, 50.0, 20.0])
    gap_hours = [h for n, h in enumerate(gaps) if n % 4 != 1]
    weather_gaps = pd.DataFrame(gap_rows, index=pd.DatetimeIndex(gap_hours, name=data.TIME_COLUMN),
                                columns=weather.columns)
    weather = pd.concat([weather_before, weather, weather_gaps]).sort_index(kind="stable")

    utc = generation.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    time_series = pd.DataFrame({
        "utc_timestamp": utc,
        "cet_cest_timestamp": generation.index.tz_convert("Europe/Berlin").strftime("%Y-%m-%dT%H:%M:%S%z"),
        "AT_load_actual_entsoe_transparency": rng.uniform(5000, 9000, len(hours)).round(1),
        "DE_load_actual_entsoe_transparency": rng.uniform(40000, 70000, len(hours)).round(1),
        "DE_solar_capacity": 38000.0,
        "DE_solar_generation_actual": generation["DE_solar_generation_actual"].to_numpy(),
        "DE_solar_profile": rng.uniform(0, 0.6, len(hours)).round(4),
        "DE_wind_generation_actual": generation["DE_wind_generation_actual"].to_numpy(),
        "DE_wind_offshore_generation_actual": np.where(rng.random(len(hours)) < 0.1, np.nan, 800.0),
        "FR_solar_generation_actual": rng.uniform(0, 5000, len(hours)).round(0),
        "GB_UKM_wind_generation_actual": rng.uniform(0, 9000, len(hours)).round(0),
    })
    if wind_capacity_mw is not None:
        time_series.insert(time_series.columns.get_loc("DE_wind_generation_actual"), "DE_wind_capacity",
                           np.asarray(wind_capacity_mw(generation.index), dtype="float64"))
    weather_csv = pd.DataFrame({"utc_timestamp": weather.index.strftime("%Y-%m-%dT%H:%M:%SZ")})
    for country in ("AT", "BE", "DE", "FR"):
        for column in ("windspeed_10m", "temperature", "radiation_direct_horizontal",
                       "radiation_diffuse_horizontal"):
            name = f"{country}_{column}"
            weather_csv[name] = (weather[name].to_numpy() if country == "DE"
                                 else rng.uniform(0, 30, len(weather)).round(3))

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("opsd-weather_data-2019-04-09/README.md", "# Weather Data\n")
        zipped.writestr("opsd-weather_data-2019-04-09/datapackage.json", "{}\n")
        zipped.writestr("opsd-weather_data-2019-04-09/weather_data.csv", weather_csv.to_csv(index=False))
    dropped = before.append(after).append(gaps)
    return time_series.to_csv(index=False).encode(), archive.getvalue(), dropped


@pytest.fixture(scope="module")
def small_processed() -> pd.DataFrame:
    """Two weeks around the 2013 autumn clock change in the processed schema: whole MW, both readings of
    the repeated hour, a few hours missing."""
    frame = data.synthetic_frame("2013-10-20", "2013-11-02 23:00")
    frame[data.TARGETS] = np.round(frame[data.TARGETS].to_numpy() * 1000) * 0.001
    frame = frame.drop(pd.DatetimeIndex(["2013-10-22 05:00", "2013-10-22 06:00", "2013-10-29 13:00",
                                         "2013-10-30 02:00", "2013-10-31 20:00"], tz="UTC"))
    repeated = pd.Timestamp("2013-10-27 01:00", tz="UTC")
    second_reading = frame.loc[[repeated]].assign(windspeed=lambda f: f["windspeed"] + 0.25,
                                                   temperature=lambda f: f["temperature"] - 0.2)
    position = frame.index.get_loc(repeated) + 1
    return pd.concat([frame.iloc[:position], second_reading, frame.iloc[position:]])


@pytest.fixture(scope="module")
def small_raw(small_processed, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("raw")
    time_series, weather, _ = raw_opsd_bytes(small_processed)
    (folder / "time_series_60min_singleindex.csv").write_bytes(time_series)
    (folder / "opsd-weather_data-2019-04-09.zip").write_bytes(weather)
    return folder / "time_series_60min_singleindex.csv", folder / "opsd-weather_data-2019-04-09.zip"


# -- download ----------------------------------------------------------------------------------------

BODY = bytes(range(256)) * 1200  # 300 KiB: several blocks
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


def test_fetch_downloads_then_reuses_the_cache(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY})
    url = server.url(TIME_SERIES_PATH)
    path = opsd.fetch(url, tmp_path / "raw", sha256=BODY_SHA256.upper(), backoff=0)
    assert path.read_bytes() == BODY
    port = server.httpd.server_address[1]
    assert path == tmp_path / "raw" / f"127.0.0.1_{port}" / TIME_SERIES_PATH.lstrip("/")
    assert files_in(tmp_path / "raw") == [path]  # no .part left beside it
    assert opsd.fetch(url, tmp_path / "raw", sha256=BODY_SHA256) == path
    assert opsd.fetch(url, tmp_path / "raw") == path
    assert len(server.requests) == 1  # both reuses without network


def test_progress_bar_shows_the_download(tmp_path, serve, capsys):
    server = serve({TIME_SERIES_PATH: BODY})
    opsd.fetch(server.url(TIME_SERIES_PATH), tmp_path / "raw", progress=True)
    assert "time_series_60min_singleindex.csv" in capsys.readouterr().err
    opsd.fetch(server.url(TIME_SERIES_PATH), tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""


def test_hash_mismatch_is_named_and_nothing_is_cached(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY})
    url = server.url(TIME_SERIES_PATH)
    with pytest.raises(DataError) as error:
        opsd.fetch(url, tmp_path / "raw", sha256="ab" * 32, backoff=0)
    message = str(error.value)
    assert url in message and "ab" * 32 in message and BODY_SHA256 in message
    assert files_in(tmp_path / "raw") == []
    assert len(server.requests) == 1  # a wrong hash is not retried


def test_cached_file_with_the_wrong_hash_is_downloaded_again(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY})
    url = server.url(TIME_SERIES_PATH)
    stale = opsd.cache_path(url, tmp_path / "raw")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(BODY[:1000])
    assert opsd.fetch(url, tmp_path / "raw", sha256=BODY_SHA256, backoff=0).read_bytes() == BODY
    assert len(server.requests) == 1


def test_cut_mid_file_is_resumed_with_a_range_request(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY})
    server.cut_once[TIME_SERIES_PATH] = 100_000
    path = opsd.fetch(server.url(TIME_SERIES_PATH), tmp_path / "raw", sha256=BODY_SHA256, backoff=0)
    assert path.read_bytes() == BODY
    assert [(r["path"], r["Range"]) for r in server.requests] == [(TIME_SERIES_PATH, None),
                                                                   (TIME_SERIES_PATH, "bytes=100000-")]
    assert files_in(tmp_path / "raw") == [path]


def test_cut_mid_file_restarts_when_the_server_ignores_ranges(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY})
    server.cut_once[TIME_SERIES_PATH] = 100_000
    server.ignore_range = True
    path = opsd.fetch(server.url(TIME_SERIES_PATH), tmp_path / "raw", backoff=0)  # no hash: length alone
    assert path.read_bytes() == BODY
    assert len(server.requests) == 2


def test_connection_cut_every_time_fails_and_leaves_nothing(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY})
    server.cut_every_answer_after = 1000
    with pytest.raises(DataError, match=r"after 3 attempt\(s\): received 3000 of 307200 bytes"):
        opsd.fetch(server.url(TIME_SERIES_PATH), tmp_path / "raw", retries=2, backoff=0)
    assert len(server.requests) == 3
    assert files_in(tmp_path / "raw") == []  # never a truncated file where the cache would find it


def test_missing_file_is_not_retried(tmp_path, serve):
    server = serve({})
    with pytest.raises(DataError, match="HTTP 404"):
        opsd.fetch(server.url("/nothing.csv"), tmp_path / "raw", retries=3, backoff=0)
    assert len(server.requests) == 1


def test_refused_connection_is_retried_then_reported(tmp_path):
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:9/x\.csv after 2 attempt"):
        opsd.fetch("http://127.0.0.1:9/x.csv", tmp_path / "raw", retries=1, backoff=0)  # discard port
    assert files_in(tmp_path / "raw") == []


def test_cache_path_keeps_versions_apart(tmp_path):
    old = opsd.cache_path("https://example.org/time_series/2019-06-05/ts.csv", tmp_path)
    new = opsd.cache_path("https://example.org/time_series/2020-10-06/ts.csv", tmp_path)
    assert old != new and old.name == new.name == "ts.csv"
    assert opsd.cache_path("https://example.org/../../etc/passwd", tmp_path).is_relative_to(tmp_path)
    with pytest.raises(DataError, match="not an http"):
        opsd.cache_path("ftp://example.org/ts.csv", tmp_path)


# -- the raw layouts and the process step -------------------------------------------------------------

def test_build_processed_from_raw_layouts(small_processed, small_raw):
    built = opsd.build_processed(*small_raw, start_date="2013-10-20")
    pd.testing.assert_frame_equal(built, small_processed, check_freq=False)
    assert built.index.duplicated().sum() == 1
    assert data.check_processed(built) is built


def test_weather_may_be_the_plain_csv(small_processed, small_raw, tmp_path):
    with zipfile.ZipFile(small_raw[1]) as archive:
        csv = tmp_path / "weather_data.csv"
        csv.write_bytes(archive.read("opsd-weather_data-2019-04-09/weather_data.csv"))
    pd.testing.assert_frame_equal(opsd.build_processed(small_raw[0], csv, "2013-10-20"), small_processed,
                                  check_freq=False)


def test_start_date_keeps_later_hours_only(small_raw):
    built = opsd.build_processed(*small_raw, start_date="2013-10-25 12:00")
    assert built.index[0] == pd.Timestamp("2013-10-25 12:00", tz="UTC")


def test_raw_files_with_a_missing_column_are_named(tmp_path, small_raw):
    frame = pd.read_csv(small_raw[0]).drop(columns="DE_wind_generation_actual")
    broken = tmp_path / "ts.csv"
    frame.to_csv(broken, index=False)
    with pytest.raises(DataError, match=r"ts\.csv: missing column\(s\) DE_wind_generation_actual"):
        opsd.build_processed(broken, small_raw[1])
    empty_zip = tmp_path / "w.zip"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("README.md", "nothing here")
    with pytest.raises(DataError, match=r"no weather_data\.csv in the zip \(it holds: README\.md\)"):
        opsd.build_processed(small_raw[0], empty_zip)


def test_repeated_generation_hour_is_refused(tmp_path, small_raw):
    frame = pd.read_csv(small_raw[0])
    broken = tmp_path / "ts.csv"
    pd.concat([frame.iloc[:50], frame.iloc[49:]]).to_csv(broken, index=False)
    with pytest.raises(DataError, match=r"utc_timestamp repeats \(2 rows, e\.g\. 2013-10-20T01:00:00\+00:00\)"):
        opsd.build_processed(broken, small_raw[1])


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real data not present at {SHARED_DATA}")
def test_round_trip_reproduces_the_published_file(tmp_path):
    published = data.load_processed(SHARED_DATA)
    time_series, weather, dropped = raw_opsd_bytes(published)
    assert len(dropped) == 48 + 30 + 52  # before the start, after the weather ends, the file's own gaps
    (tmp_path / "ts.csv").write_bytes(time_series)
    (tmp_path / "weather.zip").write_bytes(weather)

    built = opsd.build_processed(tmp_path / "ts.csv", tmp_path / "weather.zip", start_date="2013-01-01")

    pd.testing.assert_frame_equal(built, published, check_exact=True)
    data.write_processed(built, tmp_path / "germany.csv")
    assert (tmp_path / "germany.csv").read_bytes() == SHARED_DATA.read_bytes()  # byte for byte


# -- the full check of processed data ----------------------------------------------------------------

def test_check_processed_reports_every_problem_with_rows_and_columns(three_rows):
    frame = pd.concat([three_rows] * 3)
    frame.index = pd.date_range("2016-06-01", periods=9, freq="h", tz="UTC", name=data.TIME_COLUMN)
    frame.loc[frame.index[1], "solar_GW"] = -1.0
    frame["temperature"] = [20.0, 85.0, 20.0, 20.0, 20.0, 20.0, 20.0, np.inf, 20.0]
    frame.loc[frame.index[4], "wind_GW"] = np.nan
    frame.index = frame.index[:5].append(pd.DatetimeIndex(["2016-06-01 04:00", "2016-06-01 06:30",
                                                           "2016-06-01 07:00", "2016-06-01 08:00"], tz="UTC"))
    with pytest.raises(DataError) as error:
        data.check_processed(frame, "built")
    message = str(error.value)
    assert message.startswith("built: 5 problem(s) in the processed data:")
    assert "column solar_GW: value(s) outside 0..60 GW: 1 row(s), at 2016-06-01T01:00:00+00:00 (-1.0)" in message
    assert ("column temperature: value(s) outside -40..50 °C: 2 row(s), at 2016-06-01T01:00:00+00:00 (85.0), "
            "2016-06-01T07:00:00+00:00 (inf)") in message
    assert "column wind_GW: missing value(s): 1 row(s), at 2016-06-01T04:00:00+00:00" in message
    assert "index: duplicated time(s): 1 row(s), at 2016-06-01T04:00:00+00:00" in message
    assert "index: time(s) not on the hour: 1 row(s), at 2016-06-01T06:30:00+00:00" in message


def test_check_processed_schema_and_order(three_rows):
    with pytest.raises(DataError, match=r"missing column\(s\) rad_diffuse"):
        data.check_processed(three_rows.drop(columns="rad_diffuse"))
    with pytest.raises(DataError, match="column windspeed: dtype int64, expected float64"):
        data.check_processed(three_rows.assign(windspeed=[3, 2, 3]))
    with pytest.raises(DataError, match="index: expected UTC times"):
        data.check_processed(three_rows.reset_index(drop=True))
    with pytest.raises(DataError, match=r"not ascending\): 1 row\(s\), at 2016-06-01T10:00:00"):
        data.check_processed(three_rows.iloc[[1, 0, 2]])


def test_check_processed_names_the_first_rows_and_counts_all(three_rows):
    frame = data.synthetic_frame("2014-07-01", "2014-07-02 23:00")
    frame["rad_horizontal"] = frame["rad_horizontal"] + 2000
    with pytest.raises(DataError) as error:
        data.check_processed(frame)
    assert "column rad_horizontal: value(s) outside 0..1400 W/m²: 48 row(s), at 2014-07-01T00:00:00+00:00" in str(
        error.value)
    assert "(first 5 shown)" in str(error.value)


def test_autumn_hour_may_repeat_once_only(three_rows):
    frame = three_rows.copy()
    frame.index = pd.DatetimeIndex(["2014-10-26 01:00"] * 3, tz="UTC", name=data.TIME_COLUMN)
    with pytest.raises(DataError, match=r"duplicated time\(s\): 1 row\(s\), at 2014-10-26T01:00:00"):
        data.check_processed(frame)
    assert len(data.check_processed(frame.iloc[:2])) == 2


def test_load_processed_checks_ranges_naming_the_file(tmp_path, three_rows):
    path = tmp_path / "hot.csv"
    three_rows.assign(temperature=[18.0, 190.0, 21.0]).to_csv(path)
    with pytest.raises(DataError) as error:
        data.load_processed(path)
    assert str(path) in str(error.value)
    assert "column temperature: value(s) outside -40..50 °C: 1 row(s), at 2016-06-01T11:00:00+00:00 (190.0)" in str(
        error.value)


# -- the runner's hooks ------------------------------------------------------------------------------

def test_resolve_opsd_points_at_the_processed_output(tmp_path):
    source = data.resolve("opsd", data_dir=tmp_path)
    assert source.source == "opsd" and source.sha256 == "" and not source.synthetic
    assert source.path == (tmp_path / "processed" / "germany.csv").resolve()
    assert not source.path.exists()  # nothing is built by resolve


def test_process_inputs_fingerprint(tmp_path, serve):
    server = serve({TIME_SERIES_PATH: BODY, WEATHER_PATH: BODY[::-1]})
    parameters = {"time_series_url": server.url(TIME_SERIES_PATH), "weather_url": server.url(WEATHER_PATH),
                  "cache_dir": str(tmp_path / "raw"), "start_date": "2013-01-01"}
    assert opsd.process_inputs_fingerprint(parameters) is None
    opsd.fetch(parameters["time_series_url"], tmp_path / "raw", progress=False)
    assert opsd.process_inputs_fingerprint(parameters) is None  # the weather file is still missing
    opsd.fetch(parameters["weather_url"], tmp_path / "raw", progress=False)
    reversed_sha256 = hashlib.sha256(BODY[::-1]).hexdigest()
    assert opsd.process_inputs_fingerprint(parameters) == {"time_series": BODY_SHA256, "weather": reversed_sha256}
    assert opsd.process_inputs_fingerprint({**parameters, "weather_sha256": reversed_sha256}) is not None
    # A cached file that does not match its configured hash would be downloaded again: not an input yet.
    assert opsd.process_inputs_fingerprint({**parameters, "weather_sha256": BODY_SHA256}) is None
    assert len(server.requests) == 2


def test_notebook_defaults_are_the_module_defaults():
    declared = parameterize.read_parameters(PROCESS_NOTEBOOK)
    assert declared["time_series_url"].default == opsd.TIME_SERIES_URL
    assert declared["weather_url"].default == opsd.WEATHER_URL
    assert declared["start_date"].default == opsd.DEFAULT_START_DATE
    assert {"input_path", "output_path"} <= set(declared)  # what the runner sets
    for name in ("time_series_sha256", "weather_sha256", "cache_dir", "input_path", "output_path"):
        assert declared[name].default is None and declared[name].accepts("x") and declared[name].accepts(None)


def test_notebook_is_committed_clean():
    nb = nbformat.read(PROCESS_NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert [c.id for c in nb.cells] == [f"cell-{n:02d}" for n in range(len(nb.cells))]
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


# -- the notebook, executed for real -----------------------------------------------------------------

@pytest.mark.slow
def test_notebook_builds_the_data_from_a_loopback_server(tmp_path, serve, small_processed, small_raw):
    from powerpipe.execution.engine import execute

    files = {TIME_SERIES_PATH: small_raw[0].read_bytes(), WEATHER_PATH: small_raw[1].read_bytes()}
    server = serve(files)
    server.cut_once[WEATHER_PATH] = len(files[WEATHER_PATH]) // 2
    output = tmp_path / "out" / "germany.csv"
    parameters = {
        "time_series_url": server.url(TIME_SERIES_PATH),
        "time_series_sha256": hashlib.sha256(files[TIME_SERIES_PATH]).hexdigest(),
        "weather_url": server.url(WEATHER_PATH),
        "cache_dir": str(tmp_path / "raw"),
        "start_date": "2013-10-20",
        "output_path": str(output),
    }
    result = execute(PROCESS_NOTEBOOK, tmp_path / "process.ipynb", parameters, render=False)
    assert result.ok, result.error

    pd.testing.assert_frame_equal(data.load_processed(output), small_processed, check_freq=False)
    assert result.scraps["processed"] == {"path": str(output), "rows": len(small_processed),
                                          "sha256": data.file_sha256(output)}
    raw = result.scraps["raw"]
    for role, path in (("time_series", TIME_SERIES_PATH), ("weather", WEATHER_PATH)):
        assert raw[role]["url"] == server.url(path)
        assert Path(raw[role]["path"]).read_bytes() == files[path]
        assert raw[role]["sha256"] == hashlib.sha256(files[path]).hexdigest()
    resumed = (WEATHER_PATH, f"bytes={len(files[WEATHER_PATH]) // 2}-")
    assert resumed in [(r["path"], r["Range"]) for r in server.requests]
    assert opsd.process_inputs_fingerprint(parameters) == {r: raw[r]["sha256"] for r in raw}
    executed = nbformat.read(tmp_path / "process.ipynb", as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the EDA plots


@pytest.mark.slow
def test_notebook_stops_on_implausible_data_with_a_report(tmp_path, serve, small_processed):
    from powerpipe.execution.engine import execute

    broken = small_processed.copy()
    broken.iloc[10, broken.columns.get_loc("rad_diffuse")] = 5000.0
    time_series, weather, _ = raw_opsd_bytes(broken)
    server = serve({TIME_SERIES_PATH: time_series, WEATHER_PATH: weather})
    output = tmp_path / "out" / "germany.csv"
    parameters = {"time_series_url": server.url(TIME_SERIES_PATH), "weather_url": server.url(WEATHER_PATH),
                  "cache_dir": str(tmp_path / "raw"), "start_date": "2013-10-20", "output_path": str(output),
                  "eda_plots": False}
    result = execute(PROCESS_NOTEBOOK, tmp_path / "process.ipynb", parameters, render=False)
    assert not result.ok
    assert "DataError: processed data: 1 problem(s) in the processed data:" in result.error
    executed = nbformat.read(tmp_path / "process.ipynb", as_version=4)
    text = "".join(str(o) for c in executed.cells for o in c.get("outputs", []))
    assert f"column rad_diffuse: value(s) outside 0..1400 W/m²: 1 row(s), at {broken.index[10].isoformat()}" in text
    assert not output.exists()


def test_full_disk_is_not_retried_and_leaves_nothing(tmp_path, serve, monkeypatch):
    """ENOSPC while writing the download is the disk, not the connection: one DiskFullError, no retry."""
    import builtins
    import errno

    from powerpipe.core.exceptions import DiskFullError

    class Full(io.FileIO):
        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".part") and mode in ("ab", "wb"):
            return Full(file, mode[0])
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(opsd, "open", fake_open, raising=False)  # opsd's own writes only
    server = serve({TIME_SERIES_PATH: BODY})
    with pytest.raises(DiskFullError, match=r"^no space left on /\S* \(.* MB free\) while writing "):
        opsd.fetch(server.url(TIME_SERIES_PATH), tmp_path / "raw", retries=3, backoff=0)
    assert len(server.requests) == 1
    assert files_in(tmp_path / "raw") == []
