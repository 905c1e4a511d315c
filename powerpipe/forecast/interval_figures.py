"""Figures of forecasts with their intervals: the p10-p90 band, the reliability diagram, the scores table.

Matplotlib versions for the training notebooks (logged as PNG), plotly versions for the weekly report and
the dashboard (``figures.recorded_vs_predicted_figure`` draws the band itself when the forecast has the
quantile columns).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from powerpipe.forecast.data import TARGETS
from powerpipe.forecast.intervals import DEFAULT_LEVELS, quantile_column
from powerpipe.forecast.scores import PREFIXES, central_intervals, reliability, scored_hours

RELIABILITY_LEVELS = tuple(round(i / 20, 2) for i in range(1, 20))  # 5 %, 10 %, … 95 %
LABELS = {"solar_GW": "Solar", "wind_GW": "Wind"}
BAND_COLOUR = "rgba(245, 133, 24, 0.25)"
BAND_LEVELS = (0.1, 0.9)  # the band the report and the dashboard draw: the 80 % interval
BAND_NAME = "p10-p90 band"  # its traces' names (the lower edge fills up to the upper one)
BAND_UPPER_NAME = f"{BAND_NAME} (upper)"
POINT_COLOUR = "#F58518"
RECORDED_COLOUR = "#4C78A8"


def reliability_table(recorded: pd.DataFrame, forecast: pd.DataFrame,
                      levels: Iterable[float] = RELIABILITY_LEVELS) -> pd.DataFrame:
    """Observed frequency of ``recorded <= quantile`` per nominal level (rows) and target (columns); solar
    over daylight hours (``scores.scored_hours``)."""
    levels = [level for level in levels if all(quantile_column(t, level) in forecast.columns for t in TARGETS)]
    times = pd.DatetimeIndex(recorded.index)
    columns = {}
    for target in TARGETS:
        shown = scored_hours(target, times)
        quantiles = forecast[[quantile_column(target, level) for level in levels]].to_numpy()[shown]
        columns[target] = reliability(recorded[target].to_numpy()[shown], quantiles, levels).to_numpy()
    return pd.DataFrame(columns, index=pd.Index(levels, name="nominal level"))


def reliability_figure(recorded: pd.DataFrame, forecast: pd.DataFrame, title: str = ""):
    """Matplotlib: observed frequency against nominal quantile level, one line per target, the diagonal."""
    import matplotlib.pyplot as plt

    table = reliability_table(recorded, forecast)
    fig, ax = plt.subplots(figsize=(5.2, 5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    for target in TARGETS:
        ax.plot(table.index, table[target], marker="o", label=LABELS[target] + (" (daylight hours)"
                                                                                  if target == "solar_GW" else ""))
    ax.set(xlabel="nominal quantile level", ylabel="observed frequency of recorded ≤ quantile", xlim=(0, 1),
           ylim=(0, 1), title=title or "Reliability of the quantiles (holdout)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def reliability_plotly(table: pd.DataFrame, title: str = ""):
    """Plotly: the reliability diagram of a ``reliability_table`` (or the one a training run logged), for the
    report."""
    import plotly.graph_objects as go

    if "nominal level" in table.columns:  # read back from evaluation/reliability.csv
        table = table.set_index("nominal level")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line={"color": "grey", "dash": "dash", "width": 1}))
    for target in TARGETS:
        fig.add_trace(go.Scatter(x=list(table.index), y=table[target], mode="lines+markers",
                                 name=LABELS[target] + (" (daylight hours)" if target == "solar_GW" else "")))
    fig.update_layout(title=title or "Reliability of the quantiles", template="plotly_white", height=430, width=520,
                      xaxis={"title": "nominal quantile level", "range": [0, 1]},
                      yaxis={"title": "observed frequency of recorded ≤ quantile", "range": [0, 1]},
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


def band_figure(recorded: pd.DataFrame, forecast: pd.DataFrame, days: int = 14, title: str = "",
                lower: float = 0.1, upper: float = 0.9):
    """Matplotlib: the first ``days`` of the holdout, recorded against the forecast and its band, per target."""
    import matplotlib.pyplot as plt

    start = pd.DatetimeIndex(recorded.index).min()
    shown = np.asarray(pd.DatetimeIndex(recorded.index) < start + pd.Timedelta(days=days))
    times = pd.DatetimeIndex(recorded.index)[shown]
    fig, axes = plt.subplots(nrows=2, figsize=(12, 6), sharex=True, constrained_layout=True)
    for ax, target in zip(axes, TARGETS):
        low = forecast[quantile_column(target, lower)].to_numpy()[shown]
        high = forecast[quantile_column(target, upper)].to_numpy()[shown]
        ax.fill_between(times, low, high, color=POINT_COLOUR, alpha=0.25, lw=0,
                        label=f"p{lower * 100:.0f}-p{upper * 100:.0f} ({(upper - lower) * 100:.0f} % interval)")
        ax.plot(times, forecast[target].to_numpy()[shown], color=POINT_COLOUR, lw=1.2, label="forecast")
        ax.plot(times, recorded[target].to_numpy()[shown], color=RECORDED_COLOUR, lw=1.2, label="recorded")
        ax.set_ylabel(f"{LABELS[target]} (GW)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", ncols=3)
    fig.suptitle(title or f"The first {days} days of the holdout with the forecast's band")
    return fig


def add_band(fig, times, forecast: pd.DataFrame, target: str, row: int | None = None, lower: float = 0.1,
             upper: float = 0.9, show_legend: bool = True) -> bool:
    """Draw ``target``'s ``lower``-``upper`` band of ``forecast`` on a plotly figure (a subplot ``row``);
    False (nothing drawn) when the forecast has no such quantile columns."""
    import plotly.graph_objects as go

    low_column, high_column = quantile_column(target, lower), quantile_column(target, upper)
    if low_column not in forecast.columns or high_column not in forecast.columns:
        return False
    where = {"row": row, "col": 1} if row is not None else {}
    name = f"p{lower * 100:.0f}-p{upper * 100:.0f} band"
    fig.add_trace(go.Scatter(x=times, y=forecast[high_column], mode="lines", line={"width": 0}, hoverinfo="skip",
                             showlegend=False, legendgroup="band", name=f"{name} (upper)"), **where)
    # Drawn before the lines of the panel, so they stay on top of it.
    fig.add_trace(go.Scatter(x=times, y=forecast[low_column], mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor=BAND_COLOUR, name=name, legendgroup="band", showlegend=show_legend,
                             hovertemplate="%{y:.2f} GW"), **where)
    return True


def scores_table(metrics: dict[str, float], levels: Iterable[float] = DEFAULT_LEVELS) -> pd.DataFrame:
    """The point and interval measures per target, for display: R², RMSE, coverage and width of each central
    interval, CRPS and its skill against climatology, nRMSE and nMAE in % of installed capacity."""
    rows = {}
    for target in TARGETS:
        prefix = PREFIXES[target]
        row = {"R²": metrics.get(f"{prefix}_r2"), "RMSE (GW)": metrics.get(f"{prefix}_rmse")}
        for _, _, nominal in central_intervals(levels):
            row[f"coverage of the {nominal} % interval"] = metrics.get(f"{prefix}_coverage_{nominal}")
            row[f"mean width of the {nominal} % interval (GW)"] = metrics.get(f"{prefix}_width_{nominal}")
        row["CRPS (GW)"] = metrics.get(f"{prefix}_crps")
        row["CRPS skill vs climatology"] = metrics.get(f"{prefix}_crps_skill")
        row["nRMSE (% of capacity)"] = _percent(metrics.get(f"{prefix}_nrmse_capacity"))
        row["nMAE (% of capacity)"] = _percent(metrics.get(f"{prefix}_nmae_capacity"))
        rows[target] = row
    return pd.DataFrame(rows).T.astype("float64")


# Published error of operational German day-ahead forecasts, as a share of installed capacity, with sources.
PUBLISHED_FIGURES = (
    "Published figures for Germany, day-ahead, as a share of installed capacity: PV nRMSE 2.9 % (ZSW's "
    "operational forecast for 2014, https://www.zsw-bw.de/en/projects/systemanalyse/windsage.html); wind nRMSE "
    "3.4 % (ZSW, 2014, down from about 4.5 % with more weather models; same page) and 2.89 % (the transmission "
    "system operators' forecasts, 2014, Fraunhofer IWES Windmonitor, \"Prognosegüte\"). Those forecast from "
    "numerical weather predictions issued the day before; the models here are given the hour's own weather "
    "(reanalysis), so their errors are not directly comparable: they are the part of the error that the weather-"
    "to-power model itself adds, on national totals.")


def _percent(value):
    return None if value is None else 100.0 * value
