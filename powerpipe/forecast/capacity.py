"""Installed solar and wind capacity in Germany, hour by hour: to express forecast errors as a share of it.

Grid operators and the forecasting literature report errors as a share of installed capacity (nRMSE,
nMAE), so that years with a larger fleet, and other countries, compare. Two sources, in this order:

1. **The data**, when it carries them: a processed file built from the raw OPSD time series
   (``--data opsd``) keeps ``DE_solar_capacity`` and ``DE_wind_capacity`` (MW, "own calculation based
   on plant-level data from BNetzA and Netztransparenz.de") as ``solar_capacity_GW`` and
   ``wind_capacity_GW`` (``data.CAPACITY_COLUMNS``; ``opsd.build_processed``).
2. **A table of year-end installed capacity** (``YEAR_END_GW``, below, with its sources), linear in
   between, for data that does not carry them (the tutorial's processed file, synthetic data).

``SOURCE_DATA`` / ``SOURCE_TABLE`` say which one a run used; the training notebooks log it as the
param ``capacity_source``. Pure functions on times and frames; nothing here knows about MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from powerpipe.forecast.data import CAPACITY_COLUMNS, TARGETS

log = logging.getLogger(__name__)

SOURCE_DATA = "opsd"  # the capacity columns of the data (the raw OPSD time series)
SOURCE_TABLE = "table"  # YEAR_END_GW

# Installed capacity at the end of each year, GW, rounded to 0.1 GW. Between two year ends the capacity
# grows linearly; before the first it is the first value, after the last the last (said in the log).
#
# Solar (photovoltaics): the Bundesnetzagentur's register of PV installations, cumulative at year end as
# it reported it: 38.23 GW at the end of 2014, 1.89 GW registered in 2014 and 3.14 GW in 2013 (pv
# magazine, 3 February 2015, "Germany added 1.89 GW of PV in 2014, stats show"); 39.69 GW at the end of
# 2015 (PHOTON, 1 February 2016); 1.52 GW registered in 2016 (strom-report.de, "Germany: Solar Power
# Factsheet", from the same register). 2012 and 2013 are the end-2014 figure less the registrations.
#
# Wind (onshore + offshore, what ``wind_GW`` measures): 34.2 GW at the end of 2013 (DEWI for BWE/VDMA, as
# reported by greenbuildinginfo.eu); 39.2 GW at the end of 2014 (GWEC, as reported by renewablesnow.com,
# 2015); 44.9 GW at the end of 2015 and 50.0 GW at the end of 2016 (Deutsche WindGuard for BWE/VDMA, as
# reported by strom-report.de); 31.3 GW at the end of 2012 (GWEC Global Wind Report 2012).
#
# These sources disagree by 1-2 % among themselves (gross or net additions, registration dates), which
# moves an nRMSE of 5 % by less than 0.1 percentage point. The OPSD columns, when present, win.
YEAR_END_GW: dict[str, dict[int, float]] = {
    "solar_GW": {2012: 33.2, 2013: 36.3, 2014: 38.2, 2015: 39.7, 2016: 41.2},
    "wind_GW": {2012: 31.3, 2013: 34.2, 2014: 39.2, 2015: 44.9, 2016: 50.0},
}


@dataclass(frozen=True)
class Capacity:
    """Installed capacity (GW) per hour and target (columns ``TARGETS``, index the hours), and its source."""

    values: pd.DataFrame
    source: str  # SOURCE_DATA or SOURCE_TABLE

    def of(self, target: str) -> np.ndarray:
        return self.values[target].to_numpy(dtype="float64")


def table_capacity(times) -> pd.DataFrame:
    """``YEAR_END_GW`` at ``times`` (UTC; naive times are read as UTC), linear between year ends."""
    index = _utc(times)
    nanoseconds = index.as_unit("ns").asi8.astype("float64")
    out = {}
    for target in TARGETS:
        years = sorted(YEAR_END_GW[target])
        # The end of year Y is the first instant of year Y + 1.
        knots = np.array([pd.Timestamp(f"{year + 1}-01-01", tz="UTC").value for year in years], dtype="float64")
        out[target] = np.interp(nanoseconds, knots, [YEAR_END_GW[target][year] for year in years])
        if len(index) and (nanoseconds.max() > knots[-1] or nanoseconds.min() < knots[0]):
            log.info("capacity of %s outside the table's years (%d-%d): the nearest year end is used", target,
                     years[0], years[-1])
    return pd.DataFrame(out, index=pd.DatetimeIndex(times))


def from_data(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The capacity columns a processed frame carries (``data.CAPACITY_COLUMNS``), as target-named GW; None
    unless it has both, complete."""
    columns = [CAPACITY_COLUMNS[target] for target in TARGETS]
    if not all(column in frame.columns for column in columns):
        return None
    values = frame[columns].astype("float64")
    if values.isna().any().any() or (values <= 0).any().any():
        return None
    return values.set_axis(TARGETS, axis=1)


def capacity(frame: pd.DataFrame, times=None) -> Capacity:
    """The installed capacity for every hour of a processed frame (indexed by time), or for ``times`` (hours
    of it, any order): its own capacity columns when it has them (``SOURCE_DATA``), else ``YEAR_END_GW``
    (``SOURCE_TABLE``)."""
    carried = from_data(frame)
    if carried is None:
        return Capacity(table_capacity(frame.index if times is None else times), SOURCE_TABLE)
    if times is None:
        return Capacity(carried, SOURCE_DATA)
    by_hour = carried[~carried.index.duplicated(keep="first")]
    wanted = pd.DatetimeIndex(times)
    if wanted.tz is None and by_hour.index.tz is not None:
        wanted = wanted.tz_localize(by_hour.index.tz)
    values = by_hour.reindex(wanted)
    if values.isna().any().any():  # hours the frame does not hold: the table for those
        values = values.fillna(table_capacity(wanted).set_axis(wanted))
    return Capacity(values.set_axis(pd.DatetimeIndex(times)), SOURCE_DATA)


def source_of(frame: pd.DataFrame) -> str:
    """Which source ``capacity(frame)`` uses: ``SOURCE_DATA`` or ``SOURCE_TABLE``."""
    return SOURCE_DATA if from_data(frame) is not None else SOURCE_TABLE


def _utc(times) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(times)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
