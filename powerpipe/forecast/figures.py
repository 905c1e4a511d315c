"""Interactive figures shared by the weekly report and the dashboard, and predictions for a time window."""

from __future__ import annotations

import pandas as pd

from powerpipe.forecast.data import TARGETS

YEAR_COLOURS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def report_window(frame: pd.DataFrame, week_start: str | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The report's current week start and the end of the next week (14 days in all).

    Without ``week_start``: the last two full weeks (Monday to Sunday) in the data.
    """
    if week_start:
        start = pd.Timestamp(week_start)
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    else:
        last_day = frame.index.max().normalize()
        # The last Monday that still leaves two whole weeks of data.
        start = last_day - pd.Timedelta(days=13)
        start = start + pd.Timedelta(days=(7 - start.weekday()) % 7)
        if start + pd.Timedelta(days=14) > last_day + pd.Timedelta(days=1):
            start -= pd.Timedelta(days=7)
    return start, start + pd.Timedelta(days=14)


def seasonal_solar_figure(frame: pd.DataFrame, window_days: int = 7):
    """Solar generation through the year, one line per year, as a rolling mean with a range slider."""
    import plotly.graph_objects as go

    daily = frame["solar_GW"].resample("D").mean()
    smooth = daily.rolling(window_days, min_periods=1).mean()
    fig = go.Figure()
    for i, (year, values) in enumerate(smooth.groupby(smooth.index.year)):
        # Every year drawn on one calendar (2000 is a leap year, so 29 February has a place).
        x = pd.to_datetime({"year": 2000, "month": values.index.month, "day": values.index.day})
        fig.add_trace(go.Scatter(x=x, y=values.to_numpy(), mode="lines", name=str(year),
                                 line={"color": YEAR_COLOURS[i % len(YEAR_COLOURS)], "width": 1.6}))
    fig.update_layout(
        title=f"Solar generation, {window_days}-day rolling mean of daily averages",
        yaxis_title="Solar (GW)",
        xaxis={"tickformat": "%b", "rangeslider": {"visible": True}, "type": "date"},
        legend_title="Year",
        margin={"l": 50, "r": 20, "t": 50, "b": 20},
        template="plotly_white",
    )
    return fig


def recorded_vs_predicted_figure(recorded: pd.DataFrame, predicted: pd.DataFrame, title: str = "",
                                 split_at: pd.Timestamp | None = None):
    """Recorded and predicted solar and wind over a window, one panel per target; the forecast's p10-p90 band
    under them when ``predicted`` has the quantile columns (a model with intervals)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from powerpipe.forecast.interval_figures import add_band

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Solar (GW)", "Wind (GW)"))
    for row, target in enumerate(TARGETS, start=1):
        add_band(fig, predicted.index, predicted, target, row=row, show_legend=row == 1)
        fig.add_trace(go.Scatter(x=recorded.index, y=recorded[target], name="recorded", mode="lines",
                                 line={"color": "#4C78A8"}, legendgroup="recorded", showlegend=row == 1), row=row, col=1)
        fig.add_trace(go.Scatter(x=predicted.index, y=predicted[target], name="predicted", mode="lines",
                                 line={"color": "#F58518", "dash": "dot"}, legendgroup="predicted",
                                 showlegend=row == 1), row=row, col=1)
    if split_at is not None:
        fig.add_vline(x=split_at, line_width=1, line_dash="dash", line_color="grey")
    fig.update_layout(title=title, height=560, template="plotly_white", margin={"l": 50, "r": 20, "t": 70, "b": 30})
    return fig


def show(fig, include_plotlyjs: bool) -> None:
    """Display a figure as self-contained HTML (plotly.js inline once per page, no CDN)."""
    from IPython.display import HTML, display

    display(HTML(fig.to_html(include_plotlyjs=include_plotlyjs, full_html=False,
                             config={"displaylogo": False, "responsive": True})))
