"""The processed dataset: its schema, loading with validation, hashing, download and a synthetic stand-in.

Pure functions on files and frames; nothing here knows about notebooks or MLflow.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from powerpipe.core import paths
from powerpipe.core.exceptions import DataError
from powerpipe.core.fsutil import as_disk_full_error, atomic_path

log = logging.getLogger(__name__)

TIME_COLUMN = "utc_timestamp"
FEATURES = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
TARGETS = ["solar_GW", "wind_GW"]
COLUMNS = TARGETS + FEATURES
# Optional columns of the processed schema: installed capacity (GW) per target, kept by the process stage
# when it builds the data from the raw OPSD time series (its DE_solar_capacity, DE_wind_capacity; see
# powerpipe.forecast.capacity). Never a model input; other data (the tutorial's file) has none.
CAPACITY_COLUMNS = {"solar_GW": "solar_capacity_GW", "wind_GW": "wind_capacity_GW"}

# The tutorial's processed file (see ../shared/data/README.md); the hash is checked after download.
PROCESSED_URL = "https://raw.githubusercontent.com/Samreay/DSGoPipeline/master/1_starting_point/germany.csv"
PROCESSED_SHA256 = "a2bf7ae29d26575b462d793ddfe91e4646d14e827ce5b78a351c55681fe11bf6"
# Overridable so that tests (and mirrors) can serve the file from elsewhere.
URL_ENV = "POWERPIPE_DATA_URL"
SHA256_ENV = "POWERPIPE_DATA_SHA256"

SOURCES = ("file", "downloaded", "synthetic", "opsd")
# `--data opsd`: the process notebook builds the processed file from the raw OPSD downloads (powerpipe.opsd).
OPSD_SPEC = "opsd"

# Plausible hourly values for Germany (inclusive bounds). A value outside is a unit or parsing error
# upstream, not weather. Generation bounds sit well above installed capacity (end of 2016: about 41 GW
# solar, 50 GW wind; the real file peaks at 26 and 34 GW) so later years pass too; radiation at the
# ground cannot exceed the solar constant (1361 W/m²); temperature and wind span Germany's records.
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str]] = {
    "solar_GW": (0.0, 60.0, "GW"),
    "wind_GW": (0.0, 70.0, "GW"),
    "windspeed": (0.0, 40.0, "m/s"),
    "temperature": (-40.0, 50.0, "°C"),
    "rad_horizontal": (0.0, 1400.0, "W/m²"),
    "rad_diffuse": (0.0, 1400.0, "W/m²"),
    # Installed capacity (optional columns): above zero, below ten times Germany's fleet of the 2020s.
    "solar_capacity_GW": (0.001, 1000.0, "GW"),
    "wind_capacity_GW": (0.001, 1000.0, "GW"),
}
REPORT_ROWS = 5  # rows named per problem in a validation report


@dataclass(frozen=True)
class DataSource:
    """A processed CSV ready for the pipeline, and how it was obtained."""

    path: Path
    sha256: str
    source: str  # one of SOURCES

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_processed(path: str | os.PathLike) -> pd.DataFrame:
    """Read a processed CSV, indexed by UTC time, and check it; DataError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty: {path}")
    try:
        frame = pd.read_csv(path)
    except UnicodeDecodeError:
        raise DataError(f"data file is not a text CSV file: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"data file is not valid CSV: {path}: {str(exc).strip()}") from None
    return validate_frame(frame, str(path))


def validate_frame(frame: pd.DataFrame, origin: str = "data") -> pd.DataFrame:
    """Check schema, numeric values and a unique parseable time index; return the frame indexed by time."""
    if frame.empty:
        raise DataError(f"{origin}: no rows")
    missing = [c for c in [TIME_COLUMN, *COLUMNS] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{origin}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns))})"
        )
    for column in COLUMNS + capacity_columns(frame):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{origin}: column {column} has non-numeric value {frame[column].iloc[row]!r} "
                f"(data row {row + 1}, {int(bad.sum())} such value(s))"
            )
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{origin}: column {column} has missing values (first at data row {row + 1})")
        frame[column] = values.astype("float64")
    times = pd.to_datetime(frame[TIME_COLUMN], utc=True, errors="coerce")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataError(
            f"{origin}: column {TIME_COLUMN} has an unparseable time {frame[TIME_COLUMN].iloc[row]!r} "
            f"(data row {row + 1})"
        )
    duplicated = times.duplicated()
    tolerated = duplicated & is_dst_fallback_hour(times)
    if tolerated.any():
        log.info("%s: %d duplicated hour(s) at the autumn clock change (as in the published OPSD-derived "
                    "file), kept: %s", origin, int(tolerated.sum()),
                    ", ".join(t.isoformat() for t in times[tolerated]))
    duplicated &= ~tolerated
    if duplicated.any():
        first = times[duplicated].iloc[0]
        raise DataError(
            f"{origin}: column {TIME_COLUMN} has duplicated times, e.g. {first.isoformat()} "
            f"({int(duplicated.sum())} duplicate(s))"
        )
    # Stable, so the two readings of a repeated hour keep the file's order.
    frame = frame.assign(**{TIME_COLUMN: times}).set_index(TIME_COLUMN).sort_index(kind="stable")
    return check_processed(frame[COLUMNS + capacity_columns(frame)], origin)


def capacity_columns(frame: pd.DataFrame) -> list[str]:
    """The optional capacity columns (``CAPACITY_COLUMNS``) a frame has, in schema order."""
    return [column for column in CAPACITY_COLUMNS.values() if column in frame.columns]


def check_processed(frame: pd.DataFrame, origin: str = "processed data") -> pd.DataFrame:
    """Check a processed frame fully before any model uses it; return it unchanged.

    Columns (``COLUMNS``, float64), index (UTC times on the hour, ascending, no repeats except one
    repeat of the autumn clock-change hour, see ``is_dst_fallback_hour``), no missing values, values
    within ``PLAUSIBLE_RANGES``. Every problem found goes into one DataError: which column or the
    index, how many rows, and the first few rows' times (and values).
    """
    problems: list[str] = []
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or str(index.tz) != "UTC":
        problems.append(f"index: expected UTC times, found {index.dtype}")
    elif len(index):
        off_hour = np.asarray(index != index.floor("h"))
        if off_hour.any():
            problems.append(_report_rows("index: time(s) not on the hour", index, off_hour))
        backwards = np.concatenate([[False], np.asarray(index[1:] < index[:-1])])
        if backwards.any():
            problems.append(_report_rows("index: time(s) earlier than the row before (not ascending)", index,
                                         backwards))
        times = pd.Series(index)
        occurrence = times.groupby(index).cumcount().to_numpy()
        unexpected = (occurrence >= 1) & ~((occurrence == 1) & is_dst_fallback_hour(times).to_numpy())
        if unexpected.any():
            problems.append(_report_rows("index: duplicated time(s)", index, unexpected))
    for column in (c for c in COLUMNS + capacity_columns(frame) if c in frame.columns):
        values = frame[column]
        if values.dtype != np.float64:
            problems.append(f"column {column}: dtype {values.dtype}, expected float64")
            continue
        absent = values.isna().to_numpy()
        if absent.any():
            problems.append(_report_rows(f"column {column}: missing value(s)", index, absent))
        low, high, unit = PLAUSIBLE_RANGES[column]
        outside = ~absent & ~values.between(low, high).to_numpy()
        if outside.any():
            problems.append(_report_rows(f"column {column}: value(s) outside {low:g}..{high:g} {unit}", index,
                                         outside, values))
    if problems:
        raise DataError(f"{origin}: {len(problems)} problem(s) in the processed data:\n  - "
                        + "\n  - ".join(problems))
    return frame


def _report_rows(what: str, index: pd.Index, mask: np.ndarray, values: pd.Series | None = None) -> str:
    """``what: N row(s), at t1 (v1), t2 (v2), ... (first 5 shown)``."""
    positions = np.flatnonzero(mask)
    shown = []
    for position in positions[:REPORT_ROWS]:
        label = index[position]
        where = label.isoformat() if isinstance(label, pd.Timestamp) else f"row {position + 1}"
        shown.append(where + (f" ({float(values.iloc[position])!r})" if values is not None else ""))
    more = f" (first {REPORT_ROWS} shown)" if len(positions) > REPORT_ROWS else ""
    return f"{what}: {len(positions)} row(s), at {', '.join(shown)}{more}"


def is_dst_fallback_hour(times: pd.Series) -> pd.Series:
    """True for 01:00 UTC on the last Sunday of October: the hour central European clocks repeat.

    The tutorial's processed file holds that hour twice each year (the weather data, kept in local
    time upstream, has two readings for it). Those duplicates are the published data and the
    tutorial's figures include them, so they are accepted; any other duplicated time is an error.
    """
    last_sunday = (times.dt.month == 10) & (times.dt.day >= 25) & (times.dt.dayofweek == 6)
    return last_sunday & (times.dt.hour == 1) & (times.dt.minute == 0)


def write_processed(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a processed frame in the tutorial's CSV layout, atomically (a full disk: ``DiskFullError``,
    and the previous file, if any, stays whole)."""
    path = Path(path)
    out = frame[COLUMNS + capacity_columns(frame)].copy()
    out.index = out.index.tz_convert("UTC")
    out.index.name = TIME_COLUMN
    with atomic_path(path) as temporary:
        out.to_csv(temporary, date_format="%Y-%m-%d %H:%M:%S+00:00")
    return path


def synthetic_frame(start: str = "2013-01-01", end: str = "2016-12-31 23:00", seed: int = 0) -> pd.DataFrame:
    """Deterministic, physically plausible hourly data in the processed schema.

    Radiation follows the sun's elevation over Germany (51°N, 10°E) dimmed by a slowly varying cloud
    cover; solar output follows radiation; wind output rises with the cube of windspeed up to rated
    power. Installed capacity grows over the years as it did.
    """
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, end, freq="h", tz="UTC", name=TIME_COLUMN)
    n = len(index)
    day = index.dayofyear.to_numpy()
    solar_hour = index.hour.to_numpy() + 40 / 60  # local solar time at 10°E
    years = (index.year.to_numpy() - 2013) + day / 365.0

    latitude = np.radians(51.0)
    declination = np.radians(23.44) * np.sin(2 * np.pi * (284 + day) / 365.0)
    hour_angle = np.radians(15.0 * (solar_hour - 12.0))
    sin_elevation = np.sin(latitude) * np.sin(declination) + np.cos(latitude) * np.cos(declination) * np.cos(
        hour_angle
    )
    sun = np.clip(sin_elevation, 0.0, None)

    def ar1(phi: float, scale: float) -> np.ndarray:
        noise = rng.normal(0.0, scale, n)
        out = np.empty(n)
        out[0] = noise[0]
        for i in range(1, n):
            out[i] = phi * out[i - 1] + noise[i]
        return out

    cloud = 1.0 / (1.0 + np.exp(-ar1(0.97, 0.35)))  # in (0, 1), weather systems lasting days
    clear_sky = 900.0 * sun**1.15
    rad_horizontal = clear_sky * (1.0 - 0.85 * cloud)
    rad_diffuse = clear_sky * (0.12 + 0.25 * cloud)

    season = np.sin(2 * np.pi * (day - 110) / 365.0)
    temperature = 9.5 + 9.0 * season + 5.0 * sun * (1.0 - 0.6 * cloud) + ar1(0.98, 0.45)

    windspeed = np.clip(3.6 + 0.9 * np.cos(2 * np.pi * day / 365.0) + ar1(0.985, 0.22) + 0.8 * cloud, 0.3, None)

    solar_capacity = 36.0 + 1.3 * years  # GW
    efficiency = 1.0 - 0.004 * (temperature - 25.0)
    solar = solar_capacity * (rad_horizontal + rad_diffuse) / 1000.0 * 0.8 * efficiency
    solar = np.clip(solar + rng.normal(0.0, 0.15, n) * (sun > 0), 0.0, None)
    solar[sun <= 0] = 0.0

    wind_capacity = 32.0 + 4.5 * years  # GW
    load_factor = np.clip((windspeed - 1.2) / (7.5 - 1.2), 0.0, 1.0) ** 3
    wind = wind_capacity * (0.02 + 0.8 * load_factor) * np.exp(rng.normal(0.0, 0.08, n))

    frame = pd.DataFrame(
        {
            "solar_GW": np.round(solar, 3),
            "wind_GW": np.round(wind, 3),
            "windspeed": np.round(windspeed, 4),
            "temperature": np.round(temperature, 3),
            "rad_horizontal": np.round(rad_horizontal, 4),
            "rad_diffuse": np.round(rad_diffuse, 4),
        },
        index=index,
    )
    return frame[COLUMNS]


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 10.0) -> Path:
    """Stream ``url`` into ``dest``; the file appears only complete and, if a hash is given, verified.

    A failed download is a ``DataError``; a full disk is a ``DiskFullError`` (not worth a fallback).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            received = 0
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
        if expected is not None and received != int(expected):
            raise DataError(f"download of {url} was cut short: {received} of {expected} bytes")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise DataError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()}; not kept"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        full = as_disk_full_error(exc, dest.parent)
        if full is not None:
            raise full from None
        raise DataError(f"could not download {url}: {getattr(exc, 'reason', exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def resolve(spec: str = "auto", data_dir: str | os.PathLike = paths.DATA_DIR,
            generated_dir: str | os.PathLike | None = None) -> DataSource:
    """Turn ``--data`` (a path, ``synthetic``, ``auto`` or ``opsd``) into a processed CSV on disk.

    ``auto``: ``data/germany.csv`` if present; else download the tutorial's file and verify its hash;
    else (offline) generate synthetic data. ``opsd``: nothing is read or built here; the source says
    where the process notebook writes the file it builds from the raw OPSD downloads
    (``data/processed/germany.csv``), with an empty hash until it is built. Synthetic data is written
    to ``generated_dir`` (a run passes its outputs folder: generated files stay out of ``data/``),
    else to ``data_dir``.
    """
    data_dir = Path(data_dir)
    generated = Path(generated_dir) if generated_dir is not None else data_dir
    if spec == OPSD_SPEC:
        return DataSource((data_dir / paths.PROCESSED_DATA_DIR.name / paths.PROCESSED_DATA_NAME).resolve(), "", "opsd")
    if spec == "synthetic":
        return _synthetic_source(generated)
    if spec != "auto":
        path = Path(spec).expanduser().resolve()
        load_processed(path)  # validate before anything runs
        return DataSource(path, file_sha256(path), "file")

    local = data_dir / paths.PROCESSED_DATA_NAME
    if local.is_file():
        load_processed(local)
        return DataSource(local.resolve(), file_sha256(local), "file")
    url = os.environ.get(URL_ENV, PROCESSED_URL)
    sha256 = os.environ.get(SHA256_ENV, PROCESSED_SHA256)
    log.info("no %s; downloading the tutorial's processed data from %s", local, url)
    try:
        download(url, local, sha256=sha256)
    except DataError as exc:
        log.warning("%s", exc)
        log.warning("offline: falling back to SYNTHETIC data")
        return _synthetic_source(generated)
    load_processed(local)
    return DataSource(local.resolve(), file_sha256(local), "downloaded")


def _synthetic_source(data_dir: Path) -> DataSource:
    # Regenerated every time (well under a second), so a stale file can never stand in for it.
    path = write_processed(synthetic_frame(), data_dir / paths.SYNTHETIC_DATA_NAME)
    return DataSource(path.resolve(), file_sha256(path), "synthetic")


def load(data_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """What a notebook calls: the given processed CSV, or the project's default (as ``--data auto``)."""
    return load_processed(data_path if data_path else resolve("auto").path)
