"""The raw Open Power System Data files: verified, resumable download into a cache, and the process step.

The tutorial's processed file (``data.COLUMNS``) is built from two OPSD data packages:

- Time series, version 2019-06-05, ``time_series_60min_singleindex.csv``: ``utc_timestamp``,
  ``cet_cest_timestamp`` and one column per country and quantity, of which Germany's
  ``DE_solar_generation_actual`` and ``DE_wind_generation_actual`` (MW) are kept.
- Weather Data, version 2019-04-09, a zip holding ``weather_data.csv``: ``utc_timestamp`` and one
  column per country and variable, of which ``DE_windspeed_10m``, ``DE_temperature``,
  ``DE_radiation_direct_horizontal`` and ``DE_radiation_diffuse_horizontal`` are kept.

Processing (``build_processed``): from the start date on, inner join on the hourly UTC index, drop
incomplete rows, MW -> GW (x 0.001), rename. Pure functions; nothing here knows about notebooks or MLflow.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from powerpipe.core import paths
from powerpipe.forecast.data import COLUMNS, TIME_COLUMN, file_sha256
from powerpipe.core.exceptions import DataError, TransferInterrupted
from powerpipe.core.fsutil import disk_full_guard, is_disk_full

log = logging.getLogger(__name__)

# The notebook's parameters cell repeats these defaults as literals (a test keeps them equal).
TIME_SERIES_URL = (
    "https://data.open-power-system-data.org/time_series/2019-06-05/time_series_60min_singleindex.csv"
)
WEATHER_URL = "https://data.open-power-system-data.org/weather_data/2019-04-09/opsd-weather_data-2019-04-09.zip"
WEATHER_MEMBER = "weather_data.csv"
DEFAULT_START_DATE = "2013-01-01"

# Raw column -> processed column.
TIME_SERIES_COLUMNS = {"DE_solar_generation_actual": "solar_GW", "DE_wind_generation_actual": "wind_GW"}
WEATHER_COLUMNS = {
    "DE_windspeed_10m": "windspeed",
    "DE_temperature": "temperature",
    "DE_radiation_direct_horizontal": "rad_horizontal",
    "DE_radiation_diffuse_horizontal": "rad_diffuse",
}
# Installed capacity (MW) of the time series, kept as the processed data's optional capacity columns
# (data.CAPACITY_COLUMNS, GW) when the file has both: what nRMSE and nMAE are a share of.
CAPACITY_RAW_COLUMNS = {"DE_solar_capacity": "solar_capacity_GW", "DE_wind_capacity": "wind_capacity_GW"}
# x 0.001 rather than / 1000: it is what the tutorial did, and the published file holds exactly those
# floats (7379 MW -> 7.3790000000000004 GW), so the processed CSV is reproduced byte for byte.
MW_TO_GW = 0.001

USER_AGENT = "powerpipe (+https://doi.org/10.25832/time_series/2019-06-05)"
BLOCK_SIZE = 1 << 16
# HTTP answers worth asking again: the server is busy or a proxy hiccupped, the file is still there.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 60.0
# New data: a cached file without a configured SHA-256 is checked with its server (a conditional GET)
# once it was last checked longer ago than this; a weekly run always checks, two runs an hour apart
# do not. The server's ETag and Last-Modified, and when it was last checked, are kept on the cached
# file itself (extended attributes: they move with it and add no file to the cache folder).
MAX_AGE_ENV = "POWERPIPE_OPSD_MAX_AGE"
DEFAULT_MAX_AGE_SECONDS = 3600.0
_XATTR = "user.powerpipe."  # + etag, last_modified, checked_at


# -- download ---------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    return paths.RAW_DATA_DIR


def cache_path(url: str, cache_dir: str | os.PathLike) -> Path:
    """Where ``url`` is kept in the cache: ``<cache_dir>/<host>/<url path>``.

    The whole path counts because OPSD versions differ only in a folder
    (``.../2019-06-05/time_series_60min_singleindex.csv``): keying by file name alone would let a
    cached old version stand in for a new one when no hash is configured.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError(f"not an http(s) URL: {url!r}")
    host = parts.hostname + (f"_{parts.port}" if parts.port else "")
    segments = [_safe_name(urllib.parse.unquote(s)) for s in parts.path.split("/") if s not in ("", ".", "..")]
    if not segments:
        segments = ["index"]
    if parts.query:
        segments[-1] += "-" + hashlib.sha256(parts.query.encode()).hexdigest()[:12]
    return Path(cache_dir).joinpath(_safe_name(host), *segments)


def _safe_name(segment: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", segment).lstrip(".") or "_"


def fetch(
    url: str,
    cache_dir: str | os.PathLike,
    sha256: str | None = None,
    retries: int = 4,
    progress: bool = True,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """The file at ``url``, from the cache when there (and matching ``sha256`` if given), else downloaded.

    Streams into a hidden ``.part`` file beside the target with a progress bar; a connection cut
    mid-file is resumed with an HTTP Range request (or restarted when the server ignores ranges or the
    file changed), up to ``retries`` times with exponential backoff. The file gets its cache name only
    once complete and, when ``sha256`` is given, verified; on any failure nothing is left behind.
    A full disk is not retried: ``DiskFullError`` names the mount point and the space free.

    Without ``sha256``, a cached file last checked more than ``max_age()`` seconds ago is first
    checked with the server (``revalidate``): replaced if the server's file changed, kept if not.
    """
    expected = sha256.lower() if sha256 else None
    target = cache_path(url, cache_dir)
    if target.is_file():
        if expected is None:
            if needs_check(target):
                return revalidate(url, cache_dir, progress=progress, timeout=timeout)
            log.info("using cached %s (no SHA-256 configured; checked with its server %s)", target,
                     _checked_text(target))
            return target
        actual = file_sha256(target)
        if actual == expected:
            log.info("using cached %s (SHA-256 verified)", target)
            return target
        log.warning("cached %s has SHA-256 %s, expected %s: downloading it again", target, actual, expected)
        target.unlink()

    with disk_full_guard(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique name: two processes fetching the same URL never write into one file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
    part = Path(tmp)
    try:
        with disk_full_guard(target.parent, writing=target):
            transfer = _download_with_retries(url, part, retries, progress, timeout, backoff)
        actual = file_sha256(part)
        if expected and actual != expected:
            raise DataError(
                f"download of {url} has SHA-256 {actual}, expected {expected}; not kept in the cache"
            )
        _store_validators(part, transfer.etag, transfer.last_modified)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    log.info("downloaded %s to %s (%d bytes)", url, target, target.stat().st_size)
    return target


@dataclass
class _Transfer:
    url: str
    part: Path
    timeout: float
    validator: str | None = None  # ETag or Last-Modified of the first answer, for If-Range on resume
    etag: str | None = None  # the whole file's validators, kept on the cached file (revalidate)
    last_modified: str | None = None


def _download_with_retries(url: str, part: Path, retries: int, progress: bool, timeout: float,
                           backoff: float) -> _Transfer:
    from tqdm import tqdm

    transfer = _Transfer(url, part, timeout)
    # mininterval: an executed notebook keeps every update of the bar in its output.
    with tqdm(desc=Path(urllib.parse.urlsplit(url).path).name or url, unit="B", unit_scale=True,
              unit_divisor=1024, disable=not progress, mininterval=1.0) as bar:
        for attempt in range(retries + 1):
            try:
                _transfer_once(transfer, bar)
                return transfer
            except TransferInterrupted as exc:
                if attempt == retries:
                    raise DataError(f"could not download {url} after {retries + 1} attempt(s): {exc}") from None
                delay = min(backoff * 2**attempt, MAX_BACKOFF_SECONDS)
                log.warning("download of %s interrupted (%s); retry %d of %d in %.1f s from byte %d",
                            url, exc, attempt + 1, retries, delay, part.stat().st_size)
                time.sleep(delay)


def _transfer_once(transfer: _Transfer, bar: Any) -> None:
    """Append the rest of the file to ``transfer.part``; raise TransferInterrupted if it stops early."""
    have = transfer.part.stat().st_size
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if transfer.validator:
            headers["If-Range"] = transfer.validator  # a changed file comes back whole, not spliced
    request = urllib.request.Request(transfer.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=transfer.timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            transfer.part.write_bytes(b"")  # our partial file does not fit the server's: start over
            raise TransferInterrupted("server refused to resume (HTTP 416)") from None
        if exc.code in RETRY_STATUS:
            raise TransferInterrupted(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(f"could not download {transfer.url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise TransferInterrupted(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None

    with response:
        total: int | None
        if have and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != have:
                transfer.part.write_bytes(b"")
                raise TransferInterrupted(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:
            if have:
                log.info("%s: server sent the whole file again; restarting", transfer.url)
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            transfer.validator = _validator(response.headers)
            transfer.etag, transfer.last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        bar.reset(total=total)
        bar.update(have)
        with open(transfer.part, mode) as out:
            try:
                for block in iter(lambda: response.read(BLOCK_SIZE), b""):
                    out.write(block)
                    have += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, OSError) as exc:
                if is_disk_full(exc):  # not the connection: retrying would fill the disk again
                    raise
                raise TransferInterrupted(f"connection lost after {have} bytes: {type(exc).__name__}") from None
    if total is not None and have != total:
        if have > total:
            transfer.part.write_bytes(b"")
        raise TransferInterrupted(f"received {have} of {total} bytes")


def _content_range(header: str) -> tuple[int, int | None]:
    """(first byte, total size or None) from ``bytes 100-999/1000``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", header)
    if not match:
        return -1, None
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _validator(headers: Any) -> str | None:
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range takes strong validators only
        return etag
    return headers.get("Last-Modified")


# -- new data: has the server's file changed since it was cached? -----------------------------------

def max_age() -> float:
    """Seconds after which a cached file is checked with its server again (``POWERPIPE_OPSD_MAX_AGE``)."""
    value = os.environ.get(MAX_AGE_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_MAX_AGE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %g", MAX_AGE_ENV, value, DEFAULT_MAX_AGE_SECONDS)
        return DEFAULT_MAX_AGE_SECONDS


def validators(path: str | os.PathLike) -> dict[str, str]:
    """What is kept on a cached file: ``etag``, ``last_modified`` (the server's), ``checked_at`` (epoch)."""
    found = {}
    for name in ("etag", "last_modified", "checked_at"):
        try:
            found[name] = os.getxattr(path, _XATTR + name).decode("utf-8")
        except (OSError, AttributeError, UnicodeDecodeError):  # none kept, or no xattrs on this file system
            pass
    return found


def _store_validators(path: Path, etag: str | None, last_modified: str | None) -> None:
    """Keep the server's validators and the time of this check on the file (best effort)."""
    values = {"etag": etag, "last_modified": last_modified, "checked_at": repr(time.time())}
    for name, value in values.items():
        try:
            if value:
                os.setxattr(path, _XATTR + name, value.encode("utf-8"))
            else:
                os.removexattr(path, _XATTR + name)
        except (OSError, AttributeError) as exc:  # ENODATA on remove; ENOTSUP: checks fall back on mtime
            if value:
                log.debug("cannot keep %s on %s: %s", name, path, exc)


def _last_checked(path: Path) -> float:
    """When the cached file was last known to be the server's (its download time if nothing was kept)."""
    try:
        return float(validators(path)["checked_at"])
    except (KeyError, ValueError):
        return path.stat().st_mtime


def needs_check(path: Path) -> bool:
    return time.time() - _last_checked(path) >= max_age()


def _checked_text(path: Path) -> str:
    seconds = max(0.0, time.time() - _last_checked(path))
    return f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.0f} h ago"


def revalidate(url: str, cache_dir: str | os.PathLike, progress: bool = False, timeout: float = 60.0) -> Path:
    """The cached file of ``url``, first checked with the server by a conditional GET.

    Sends the kept ``ETag`` (``If-None-Match``) and ``Last-Modified`` (``If-Modified-Since``; without
    either, the cached file's time). "304 Not Modified" keeps the file. A whole answer replaces it,
    atomically, when its content differs (so its SHA-256, and the process stage's cache key, change),
    and keeps it when the content is the same (a server that ignores conditional requests). A server
    that cannot be reached, or a transfer cut short, keeps the cached file with a warning: the next run
    checks again. A file not cached yet is downloaded (``fetch``).
    """
    target = cache_path(url, cache_dir)
    if not target.is_file():
        return fetch(url, cache_dir, progress=progress, timeout=timeout)
    kept = validators(target)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if kept.get("etag"):
        headers["If-None-Match"] = kept["etag"]
    if kept.get("last_modified"):
        headers["If-Modified-Since"] = kept["last_modified"]
    elif not kept.get("etag"):
        headers["If-Modified-Since"] = email.utils.formatdate(target.stat().st_mtime, usegmt=True)
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            _store_validators(target, exc.headers.get("ETag") or kept.get("etag"),
                              exc.headers.get("Last-Modified") or kept.get("last_modified"))
            log.info("%s has not changed on the server: using cached %s", url, target)
            return target
        log.warning("could not check %s for a newer file (HTTP %s %s): using cached %s", url, exc.code,
                    exc.reason, target)
        return target
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        log.warning("could not check %s for a newer file (%s): using cached %s", url,
                    getattr(exc, "reason", exc), target)
        return target

    with disk_full_guard(target.parent):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    part = Path(tmp)
    try:
        with response, os.fdopen(fd, "wb") as out, disk_full_guard(target.parent, writing=target):
            length = response.headers.get("Content-Length")
            received = 0
            try:
                for block in iter(lambda: response.read(BLOCK_SIZE), b""):
                    out.write(block)
                    received += len(block)
            except (http.client.IncompleteRead, OSError) as exc:
                if is_disk_full(exc):
                    raise
                log.warning("checking %s for a newer file: connection lost after %d bytes; using cached %s",
                            url, received, target)
                return target
            etag, last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if length and length.isdigit() and received != int(length):
            log.warning("checking %s for a newer file: received %d of %s bytes; using cached %s", url, received,
                        length, target)
            return target
        before, after = file_sha256(target), file_sha256(part)
        if after == before:
            _store_validators(target, etag, last_modified)
            log.info("%s has not changed (same SHA-256): using cached %s", url, target)
            return target
        _store_validators(part, etag, last_modified)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    log.warning("NEW DATA: %s changed on the server; cached %s replaced (SHA-256 %s -> %s, %d bytes)", url,
                target, before[:12], after[:12], received)
    return target


# -- the raw layouts --------------------------------------------------------------------------------

@contextlib.contextmanager
def _open_csv(path: Path, member: str | None) -> Iterator[IO[bytes]]:
    """The CSV itself, or, for a zip, its member whose file name is ``member`` (at any depth)."""
    if member and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == member]
            if not names:
                raise DataError(f"{path}: no {member} in the zip (it holds: {', '.join(archive.namelist())})")
            with archive.open(names[0]) as handle:
                yield handle
    else:
        with open(path, "rb") as handle:
            yield handle


def _read_raw(path: str | os.PathLike, wanted: list[str], member: str | None = None,
              optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """``wanted`` columns of a raw OPSD CSV (as float64, file order kept), indexed by UTC time; and those of
    ``optional`` the file has."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"raw data file not found: {path}")
    origin = f"{path}" + (f" ({member})" if member and zipfile.is_zipfile(path) else "")
    try:
        with _open_csv(path, member) as handle:
            header = list(pd.read_csv(handle, nrows=0).columns)
        missing = [c for c in [TIME_COLUMN, *wanted] if c not in header]
        if missing:
            shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
            raise DataError(f"{origin}: missing column(s) {', '.join(missing)} ({len(header)} columns: {shown})")
        wanted = [*wanted, *(c for c in optional if c in header)]
        with _open_csv(path, member) as handle:
            # round_trip: the values must come out as the very floats the file spells.
            frame = pd.read_csv(handle, usecols=[TIME_COLUMN, *wanted], dtype={c: "float64" for c in wanted},
                                float_precision="round_trip")
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, pd.errors.ParserError) as exc:
        raise DataError(f"{origin}: not a readable OPSD CSV: {str(exc).strip().splitlines()[0]}") from None
    times = pd.to_datetime(frame[TIME_COLUMN], utc=True, format="ISO8601", errors="coerce")
    if times.isna().any():
        row = int(times.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{origin}: unparseable {TIME_COLUMN} {frame[TIME_COLUMN].iloc[row]!r} (data row {row + 1})")
    frame.index = pd.DatetimeIndex(times, name=TIME_COLUMN)
    return frame[wanted]


def read_time_series(path: str | os.PathLike) -> pd.DataFrame:
    """Germany's solar and wind generation (MW, raw column names) from ``time_series_60min_singleindex.csv``,
    with its installed capacity (``CAPACITY_RAW_COLUMNS``) where the file has it."""
    return _read_raw(path, list(TIME_SERIES_COLUMNS), optional=tuple(CAPACITY_RAW_COLUMNS))


def read_weather(path: str | os.PathLike) -> pd.DataFrame:
    """Germany's four weather columns (raw names) from the weather zip, or from ``weather_data.csv`` itself."""
    return _read_raw(path, list(WEATHER_COLUMNS), member=WEATHER_MEMBER)


def start_timestamp(start_date: str) -> pd.Timestamp:
    """``start_date`` as a UTC time (a date without zone is read as UTC)."""
    try:
        start = pd.Timestamp(start_date)
    except ValueError:
        raise DataError(f"start_date {start_date!r} is not a date") from None
    return start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")


def build_processed(time_series_path: str | os.PathLike, weather_path: str | os.PathLike,
                    start_date: str = DEFAULT_START_DATE) -> pd.DataFrame:
    """The processed frame (``data.COLUMNS``, indexed by UTC hour) from the two raw OPSD files.

    The weather data holds two readings for 01:00 UTC on the last Sunday of October (upstream, it
    was kept in local time, whose clock repeats that hour) and the time series one: the inner join
    pairs both readings with the one generation row, so that hour appears twice, as in the published
    file. The rows stay in time order, the two readings in the weather file's order.
    """
    start = start_timestamp(start_date)
    generation = read_time_series(time_series_path)
    repeated = generation.index.duplicated(keep=False)
    if repeated.any():
        shown = ", ".join(t.isoformat() for t in generation.index[repeated].unique()[:5])
        raise DataError(f"{time_series_path}: {TIME_COLUMN} repeats ({int(repeated.sum())} rows, e.g. {shown})")
    generation = (generation * MW_TO_GW).rename(columns={**TIME_SERIES_COLUMNS, **CAPACITY_RAW_COLUMNS})
    weather = read_weather(weather_path).rename(columns=WEATHER_COLUMNS)

    generation = generation[generation.index >= start]
    weather = weather[weather.index >= start]
    # merge keeps the left (weather) order, duplicates included; the stable sort then only orders by time.
    joined = weather.reset_index().merge(generation.reset_index(), on=TIME_COLUMN, how="inner", sort=False)
    joined = joined.sort_values(TIME_COLUMN, kind="stable").set_index(TIME_COLUMN)[COLUMNS]
    processed = joined.dropna()
    log.info("joined %d hours from %s on; %d complete, %d dropped as incomplete",
             len(joined), start.isoformat(), len(processed), len(joined) - len(processed))
    if processed.empty:
        raise DataError(f"no complete hours from {start.isoformat()} on in {time_series_path} and {weather_path}")
    return _with_capacity(processed, generation)


def _with_capacity(processed: pd.DataFrame, generation: pd.DataFrame) -> pd.DataFrame:
    """``processed`` with the time series' installed capacity (GW) for each of its hours, when the file has
    both capacity columns and they cover every hour (carried forward over a gap, backward at the start)."""
    columns = list(CAPACITY_RAW_COLUMNS.values())
    if not all(column in generation.columns for column in columns):
        return processed
    carried = generation[columns].ffill().bfill().reindex(processed.index)
    if carried.isna().any().any() or (carried <= 0).any().any():
        log.warning("the time series' capacity columns do not cover every hour: not kept (nRMSE and nMAE will "
                    "use the documented table of installed capacity)")
        return processed
    return pd.concat([processed, carried], axis=1)


def select_from(frame: pd.DataFrame, start_date: str) -> pd.DataFrame:
    """The rows of a processed frame from ``start_date`` on."""
    return frame[frame.index >= start_timestamp(start_date)]


# -- for the runner's process-stage cache -----------------------------------------------------------

def raw_sources(parameters: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """{"time_series" | "weather": (url, sha256 or None)} from the process notebook's parameters."""
    return {
        "time_series": (parameters.get("time_series_url") or TIME_SERIES_URL, parameters.get("time_series_sha256")),
        "weather": (parameters.get("weather_url") or WEATHER_URL, parameters.get("weather_sha256")),
    }


def process_inputs_fingerprint(parameters: dict[str, Any]) -> dict[str, str] | None:
    """SHA-256 of each raw file the process notebook would use, as already cached; None if any is missing.

    ``parameters`` are the notebook's (``time_series_url``, ``weather_url``, their ``*_sha256``,
    ``cache_dir``; defaults as in the notebook). A cached file that does not match its configured
    hash counts as missing, since the notebook would download it again. A cached file without a
    configured hash is first checked with its server when due (``needs_check``): a changed file is
    downloaded now, so the new data changes the fingerprint and the process stage runs.
    """
    cache_dir = parameters.get("cache_dir") or default_cache_dir()
    fingerprint = {}
    for role, (url, sha256) in raw_sources(parameters).items():
        path = cache_path(url, cache_dir)
        if not path.is_file():
            return None
        if not sha256 and needs_check(path):
            revalidate(url, cache_dir)
        actual = file_sha256(path)
        if sha256 and actual != sha256.lower():
            return None
        fingerprint[role] = actual
    return fingerprint
