"""The date window of the recorded-vs-predicted figure: the picker's dates, the slice of data, the figure.

``choose_window`` turns the picker's dates into a UTC window or a message; ``window_frames`` slices the
cached frames (binary search) and hands plotly naive UTC times, which it encodes three times faster;
``WindowFigure`` fills a prebuilt figure with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import pandas as pd

from powerpipe.forecast.data import TARGETS

# Windows longer than this are drawn as daily means: hourly lines over years are unreadable and slow.
MAX_HOURLY_DAYS = 92
DEFAULT_WINDOW_DAYS = 31
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:$|T)")


@dataclass(frozen=True)
class Window:
    """A chosen window [start, end) in UTC, or the problem that stops it being drawn."""

    start: pd.Timestamp | None
    end: pd.Timestamp | None
    problem: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _day(value: str | None) -> pd.Timestamp | None:
    """A picker date (``YYYY-MM-DD``, possibly followed by a time) as UTC midnight; ValueError otherwise."""
    if not value:
        return None
    # Strict ISO dates only: pandas would read "June" as June of year 1.
    if not isinstance(value, str) or not ISO_DATE.match(value):
        raise ValueError(value)
    return pd.Timestamp(date.fromisoformat(value[:10])).tz_localize("UTC")


def default_window(data_start: pd.Timestamp, data_end: pd.Timestamp,
                   days: int = DEFAULT_WINDOW_DAYS) -> tuple[str, str]:
    """The last ``days`` whole days of the data, as the date picker's (start, end) ISO dates."""
    last = data_end.normalize()
    first = max(last - pd.Timedelta(days=days - 1), data_start.normalize())
    return first.date().isoformat(), last.date().isoformat()


def choose_window(start_date: str | None, end_date: str | None, data_start: pd.Timestamp,
                  data_end: pd.Timestamp) -> Window:
    """Turn the picker's inclusive dates into a window inside the data, or say why there is none."""
    span = f"{data_start:%Y-%m-%d} to {data_end:%Y-%m-%d}"
    try:
        start, end_day = _day(start_date), _day(end_date)
    except (ValueError, TypeError):
        return Window(None, None, problem=f"Those are not dates: {start_date!r}, {end_date!r}.")
    if start is None or end_day is None:
        return Window(None, None, problem="Pick a start and an end date.")
    if start > end_day:
        return Window(None, None, problem=f"The start date ({start:%Y-%m-%d}) is after the end date "
                                          f"({end_day:%Y-%m-%d}): pick an end on or after the start.")
    end = end_day + pd.Timedelta(days=1)
    if end <= data_start or start > data_end:
        return Window(None, None, problem=f"{start:%Y-%m-%d} to {end_day:%Y-%m-%d} is outside the data, "
                                          f"which covers {span}.")
    note = None
    if start < data_start.normalize() or end > data_end.normalize() + pd.Timedelta(days=1):
        start, end = max(start, data_start.normalize()), min(end, data_end.normalize() + pd.Timedelta(days=1))
        note = f"Cut to the data, which covers {span}."
    return Window(start, end, note=note)


def window_frames(frame: pd.DataFrame, predictions: pd.DataFrame, window: Window,
                  max_hourly_days: int = MAX_HOURLY_DAYS) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Recorded and predicted rows in the window (daily means past ``max_hourly_days``) and the resolution.

    The frames come back indexed by naive UTC times: plotly copies and encodes tz-aware timestamps one
    Python object at a time, which makes a month's figure three times slower to build and send.
    """
    # Binary search on the sorted index: a 31-day slice of four years takes microseconds.
    lo, hi = frame.index.searchsorted(window.start, "left"), frame.index.searchsorted(window.end, "left")
    recorded = frame.iloc[lo:hi][TARGETS]
    predicted = predictions.iloc[lo:hi]
    resolution = "hourly"
    if window.end - window.start > pd.Timedelta(days=max_hourly_days):
        # Daily means of the points only: a mean of hourly quantiles is no quantile of anything, so no band.
        recorded, predicted, resolution = (recorded.resample("D").mean(), predicted[TARGETS].resample("D").mean(),
                                           "daily means")
    naive = recorded.index.tz_convert("UTC").tz_localize(None)
    return recorded.set_axis(naive), predicted.set_axis(naive), resolution


class WindowFigure:
    """``figures.recorded_vs_predicted_figure`` for one window after another, fast.

    plotly builds and validates the figure once, here; each window then only puts its times, values and
    title into a copy of that figure's dict: a month takes a few milliseconds instead of tens, most of
    which plotly spends validating the same layout again.
    """

    def __init__(self):
        from powerpipe.forecast.figures import recorded_vs_predicted_figure
        from powerpipe.forecast.interval_figures import BAND_LEVELS, BAND_NAME, BAND_UPPER_NAME
        from powerpipe.forecast.intervals import quantile_column

        empty = pd.DataFrame({target: pd.Series(dtype="float64") for target in TARGETS},
                             index=pd.DatetimeIndex([]))
        # The predictions' template has the band too: a model with intervals fills it, one without leaves it empty.
        band = empty.assign(**{quantile_column(t, level): pd.Series(dtype="float64") for t in TARGETS
                               for level in BAND_LEVELS})
        self.template = recorded_vs_predicted_figure(empty, band, title="").to_plotly_json()
        # Which frame and column fills each trace: its name (recorded / predicted / band) and its panel's y axis.
        axes = ["y"] + [f"y{i}" for i in range(2, len(TARGETS) + 1)]
        self.slots = [(trace["name"], TARGETS[axes.index(trace.get("yaxis", "y"))])
                      for trace in self.template["data"]]
        names = ("predicted", "recorded", BAND_NAME, BAND_UPPER_NAME)
        if sorted(self.slots) != sorted((name, target) for name in names for target in TARGETS):
            raise ValueError(f"unexpected traces in recorded_vs_predicted_figure: {self.slots}")
        self.columns = {BAND_NAME: lambda target: quantile_column(target, BAND_LEVELS[0]),
                        BAND_UPPER_NAME: lambda target: quantile_column(target, BAND_LEVELS[1])}

    def __call__(self, recorded: pd.DataFrame, predicted: pd.DataFrame, title: str) -> dict:
        times = recorded.index.strftime("%Y-%m-%dT%H:%M:%S").tolist()
        data = []
        for trace, (name, target) in zip(self.template["data"], self.slots):
            frame = recorded if name == "recorded" else predicted
            column = self.columns[name](target) if name in self.columns else target
            if column in frame.columns:
                data.append({**trace, "x": times, "y": frame[column].to_numpy()})
            else:  # no band: a model without intervals, or daily means
                data.append({**trace, "x": [], "y": []})
        layout = {**self.template["layout"], "title": {**self.template["layout"].get("title", {}), "text": title}}
        return {"data": data, "layout": layout}
