"""What the weekly report and the dashboard show of monitoring: alerts, a few sentences, a table, a figure.

Pure functions on the monitoring a pipeline run wrote (``<run>/monitoring.json``, the ``monitoring`` and
``alerts`` of summary.json, ``monitoring/monitoring.json`` on its MLflow run): a dict with ``as_of``,
``data_period``, ``monitoring`` and ``alerts``. Nothing here reads a store.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

BASELINE_TEXT = {"persistence": "persistence (the same hour a day earlier)",
                 "climatology": "climatology (the mean by month and hour of day over its training data)"}


def alerts_html(alerts: list[str]) -> str:
    """A red box listing every alert ("" without any): what a reader must see first."""
    if not alerts:
        return ""
    items = "".join(f"<li>{html.escape(alert)}</li>" for alert in alerts)
    return ('<div class="monitoring-alerts" style="background:#b00020;color:white;padding:12px 16px;'
            'font-size:1.1em"><b>MONITORING ALERT' + ("S" if len(alerts) > 1 else "")
            + f"</b><ul style=\"margin:6px 0 0 0\">{items}</ul></div>")


def as_of_sentence(watched: dict[str, Any]) -> str:
    """"As of 2016-07-04: …" when the run was cut at --as-of, else ""."""
    as_of = watched.get("as_of")
    if not as_of:
        return ""
    period = watched.get("data_period") or {}
    shown = f" (data {period['start'][:10]} to {period['end'][:10]})" if period else ""
    return f"**As of {as_of}**: this run saw only the hours before {as_of} UTC{shown}."


def _fmt(value, digits: str = ".3g") -> str:
    return "–" if value is None else format(value, digits)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def summary_markdown(watched: dict[str, Any]) -> str:
    """A few sentences: which model, which hours, its live error next to its holdout error, its skill."""
    monitoring = watched.get("monitoring") or {}
    status = monitoring.get("status")
    if status != "ok":
        return f"Nothing scored live: {monitoring.get('message') or 'monitoring did not run'}."
    model, live, holdout = monitoring["model"], monitoring["live"], monitoring.get("holdout") or {}
    lines = [
        f"**{model['name']} version {model['version']}**, the production model when this run started, on "
        f"the **{monitoring['hours']:,} hours it never learnt** ({monitoring['period']['start'][:16].replace('T', ' ')} "
        f"to {monitoring['period']['end'][:16].replace('T', ' ')} UTC; it learnt every hour up to "
        f"{monitoring['trained_until'][:16].replace('T', ' ')}, from {monitoring['trained_until_from']}).",
        "",
        f"- live: RMSE **{_fmt(live['rmse'])} GW**, MAE {_fmt(live['mae'])} GW, bias {_fmt(live['bias'], '+.3g')} GW, "
        f"R² **{_fmt(live['r2'], '.3f')}** (solar {_fmt(live['solar_r2'], '.3f')}, wind {_fmt(live['wind_r2'], '.3f')})",
    ]
    if holdout:
        ratio = monitoring.get("rmse_vs_holdout")
        lines.append(f"- holdout (what it was promoted with): RMSE {_fmt(holdout.get('rmse'))} GW, R² "
                     f"{_fmt(holdout.get('r2'), '.3f')}" + (f"; live RMSE is {ratio:.2f} times that" if ratio else ""))
    if live.get("solar_coverage_80") is not None or live.get("wind_coverage_80") is not None:
        promised = [f"{target} {_percent(holdout.get(f'{target}_coverage_80'))}" for target in ("solar", "wind")
                    if holdout.get(f"{target}_coverage_80") is not None]
        lines.append(f"- p10–p90 interval (80 % nominal): covered **{_percent(live.get('solar_coverage_80'))}** of "
                     f"the solar daylight hours and **{_percent(live.get('wind_coverage_80'))}** of the wind hours"
                     + (f"; on the holdout {', '.join(promised)}" if promised else ""))
    for name in ("persistence", "climatology"):
        scored = monitoring.get(name) or {}
        lines.append(f"- {BASELINE_TEXT[name]}: RMSE {_fmt(scored.get('rmse'))} GW; skill of the model against it "
                     f"**{_fmt(scored.get('skill'), '.3f')}** (solar {_fmt(scored.get('solar_skill'), '.3f')}, wind "
                     f"{_fmt(scored.get('wind_skill'), '.3f')})")
    lines += ["", "Skill is 1 − RMSE / RMSE of the baseline: 0 is no better than the baseline, 1 a perfect forecast."]
    return "\n".join(lines)


def weeks_table(watched: dict[str, Any]) -> pd.DataFrame:
    """One row per week of the live hours: hours, the model's RMSE, R² and bias, the baselines' RMSE, skills."""
    weeks = (watched.get("monitoring") or {}).get("weeks") or []
    columns = {"hours": "hours", "rmse": "RMSE GW", "r2": "R²", "bias": "bias GW", "persistence_rmse":
               "persistence RMSE", "climatology_rmse": "climatology RMSE", "persistence_skill": "skill vs persistence",
               "climatology_skill": "skill vs climatology"}
    if not weeks:
        return pd.DataFrame(columns=["week", *columns.values()]).set_index("week")
    frame = pd.DataFrame(weeks)
    for key, name in (("solar_coverage_80", "solar p10–p90 coverage"), ("wind_coverage_80", "wind p10–p90 coverage")):
        if key in frame.columns:  # a model with intervals
            columns[key] = name
    table = frame.set_index("week")[list(columns)].rename(columns=columns)
    table.index.name = "week"
    return table


def live_error_figure(watched: dict[str, Any], title: str = "Live error week by week", height: int = 360):
    """RMSE per week of the model and both baselines, the holdout RMSE as a dashed reference (plotly)."""
    import plotly.graph_objects as go

    monitoring = watched.get("monitoring") or {}
    weeks = monitoring.get("weeks") or []
    fig = go.Figure()
    if weeks:
        x = [week["week"] for week in weeks]
        model = monitoring.get("model") or {}
        fig.add_trace(go.Scatter(x=x, y=[w["rmse"] for w in weeks], mode="lines+markers",
                                 name=f"version {model.get('version', '?')}", line={"width": 3}))
        for name, colour in (("persistence", "#999999"), ("climatology", "#c49a00")):
            fig.add_trace(go.Scatter(x=x, y=[w[f"{name}_rmse"] for w in weeks], mode="lines+markers", name=name,
                                     line={"color": colour, "dash": "dot"}))
        holdout = (monitoring.get("holdout") or {}).get("rmse")
        if holdout:
            fig.add_hline(y=holdout, line={"dash": "dash", "color": "black"},
                          annotation_text=f"holdout RMSE {holdout:.3g} GW", annotation_position="top left")
    fig.update_layout(title=title, yaxis_title="RMSE (GW), both targets", xaxis_title="week (Monday, UTC)",
                      template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 60, "b": 40})
    return fig
