"""Time windows that move with the data: a test period counted back from the data's end, and ``--as-of``.

``evaluation: {split: time, test_period: "52w"}`` means "test on the last 52 weeks of the data": the
test period starts ``period`` before the hour after the data's last hour. ``--as-of DATE`` shows a
run only the hours before DATE (``cut``): a past week re-run exactly.

Parsing needs only the standard library (checking a pipeline file stays fast); the frame functions
import pandas.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from powerpipe.core.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

PERIOD_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
_PERIOD = re.compile(r"^\s*(\d+)\s*([hdw])\s*$", re.IGNORECASE)
HOUR = dt.timedelta(hours=1)


def parse_period(value: Any, what: str = "evaluation.test_period") -> dt.timedelta:
    """``"52w"``, ``"12w"``, ``"90d"``, ``"72h"`` as a timedelta; ConfigError for anything else."""
    match = _PERIOD.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"{what} must be a positive number of weeks, days or hours such as '52w', '12w' or "
                          f"'90d', got {value!r}")
    return dt.timedelta(**{PERIOD_UNITS[match.group(2).lower()]: int(match.group(1))})


def period_text(value: str) -> str:
    """The canonical text of a period (``"52W "`` -> ``"52w"``)."""
    match = _PERIOD.match(value)
    return f"{int(match.group(1))}{match.group(2).lower()}" if match else value


def describe_period(value: str) -> str:
    """``"52w"`` -> ``"52 weeks"``."""
    match = _PERIOD.match(value)
    if not match:
        return value
    count, unit = int(match.group(1)), PERIOD_UNITS[match.group(2).lower()]
    return f"{count} {unit[:-1] if count == 1 else unit}"


def parse_time(value: Any, what: str = "--as-of", example: str = "2016-07-04") -> dt.datetime:
    """A time in UTC (naive) from ISO text (``2016-07-04``, ``2016-07-04 06:00``; no offset: UTC) or a date."""
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, dt.date):
        stamp = dt.datetime.combine(value, dt.time())
    elif isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(f"{what} is not a date: {value!r} (expected e.g. '{example}' or "
                              f"'{example} 06:00', UTC)") from None
    else:
        raise ConfigError(f"{what} must be a date such as '{example}', got {value!r}")
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return stamp


def time_text(stamp: dt.datetime) -> str:
    """Canonical text of a UTC time: ``YYYY-MM-DD`` at midnight, else ``YYYY-MM-DD HH:MM``."""
    return f"{stamp:%Y-%m-%d}" if stamp.time() == dt.time() else f"{stamp:%Y-%m-%d %H:%M}"


def relative_start(last_hour: dt.datetime, period: str) -> dt.datetime:
    """First hour of the test period: ``period`` before the hour after ``last_hour`` (the data's last)."""
    if last_hour.tzinfo is not None:
        last_hour = last_hour.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return last_hour.replace(minute=0, second=0, microsecond=0) + HOUR - parse_period(period)


# -- frames ---------------------------------------------------------------------------------------------
def utc(stamp: Any) -> "pd.Timestamp":
    """Text, a datetime or a Timestamp as a UTC Timestamp (naive: UTC)."""
    import pandas as pd

    stamp = pd.Timestamp(parse_time(stamp) if isinstance(stamp, str) else stamp)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def cut(frame: "pd.DataFrame", as_of: Any, origin: str = "data") -> "pd.DataFrame":
    """The hours of ``frame`` (indexed by UTC time) before ``as_of``; DataError if none is left."""
    limit = utc(as_of)
    kept = frame[frame.index < limit]
    if kept.empty:
        raise DataError(f"{origin}: no hour before --as-of {limit:%Y-%m-%d %H:%M} UTC (the data starts "
                        f"{frame.index.min():%Y-%m-%d %H:%M})")
    return kept


def period(frame: "pd.DataFrame") -> dict[str, str]:
    """``{"start", "end"}``: the first and last hour of a frame indexed by time, ISO text in UTC."""
    return {"start": _iso(frame.index.min()), "end": _iso(frame.index.max())}


def _iso(stamp) -> str:
    return utc(stamp).isoformat()
