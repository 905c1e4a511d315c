"""The model card's "evergreen" panel: how the production model does on the hours that arrived after it learnt.

Read from the newest monitoring run of the production version (``powerpipe.tracking.monitoring``; each
pipeline run scores the model holding the alias before it trains). A version promoted by the latest run
has not been scored live yet: the panel then shows the newest monitoring of the model's previous
version, and says so. Alerts of that monitoring come first, in red. Looked up at most every
``TTL_SECONDS`` per version: the card refreshes every minute.
"""

from __future__ import annotations

import logging
import threading
import time

from dash import dcc, html

from powerpipe.dashboard.store import first_line, open_client
from powerpipe.forecast import watching

log = logging.getLogger(__name__)

TTL_SECONDS = 60.0
_cache: dict[tuple[str, str, str], tuple[float, dict | None]] = {}
_lock = threading.Lock()


def latest(uri: str, model_name: str, version: str, clock=time.monotonic) -> dict | None:
    """The newest monitoring of ``model_name`` version ``version`` (else of the model), cached briefly."""
    from powerpipe.tracking.monitoring import latest_monitoring

    key = (uri, model_name, str(version))
    now = clock()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < TTL_SECONDS:
            return hit[1]
    found = latest_monitoring(open_client(uri), model_name, str(version))
    with _lock:
        _cache[key] = (now, found)
    return found


def alerts_box(watched: dict | None) -> html.Div | None:
    alerts = (watched or {}).get("alerts") or []
    if not alerts:
        return None
    version = watched.get("monitored_version")
    return html.Div(id="monitoring-alerts", className="banner alert", children=[
        html.Strong(f"MONITORING ALERT{'S' if len(alerts) > 1 else ''}"
                    + (f" (version {version})" if version else "")),
        html.Ul([html.Li(alert) for alert in alerts]),
    ])


def panel(watched: dict | None, version: str) -> html.Div:
    """The evergreen panel for the serving ``version`` from its newest monitoring (None: never monitored)."""
    title = html.H4("Live since promotion (evergreen)")
    if watched is None:
        return html.Div(id="evergreen", className="evergreen", children=[title, html.P(
            "Not scored live yet: the next pipeline run scores this model on the hours that arrive after the "
            "last hour it learnt, against persistence and climatology.", className="muted")])
    monitored = watched.get("monitored_version") or ""
    note = None
    if monitored and monitored != str(version):
        note = html.P(f"Version {version} has not been scored live yet (it was promoted by the latest run); shown: "
                      f"version {monitored}, the production model before it, on the hours that arrived after it "
                      "learnt.", className="muted", id="evergreen-note")
    children = [title, note, dcc.Markdown(watching.summary_markdown(watched), id="evergreen-summary")]
    if (watched.get("monitoring") or {}).get("weeks"):
        children.append(dcc.Graph(id="evergreen-figure", figure=watching.live_error_figure(watched, title="", height=300),
                                  config={"displaylogo": False}))
        table = watching.weeks_table(watched).round(3).tail(12)
        children.append(html.Table(id="evergreen-weeks", className="grid", children=[
            html.Thead(html.Tr([html.Th("week")] + [html.Th(c) for c in table.columns])),
            html.Tbody([html.Tr([html.Td(str(week))] + [html.Td("–" if value != value else f"{value:g}")
                                                        for value in row])
                        for week, row in zip(table.index, table.itertuples(index=False))]),
        ]))
    as_of = watched.get("as_of")
    period = watched.get("data_period") or {}
    children.append(html.P(className="muted", children=(
        f"From monitoring run {watched.get('run_id', '')}"
        + (f" of data up to {period['end'][:16].replace('T', ' ')} UTC" if period else "")
        + (f" (as of {as_of})" if as_of else "") + ".")))
    return html.Div(id="evergreen", className="evergreen", children=[c for c in children if c is not None])


def sections(uri: str, model_name: str, version: str) -> tuple[html.Div | None, html.Div]:
    """(alerts box or None, evergreen panel) for the card; a store that fails says so in the panel."""
    try:
        watched = latest(uri, model_name, version)
    except Exception as exc:  # noqa: BLE001 - boundary: the card must show even when monitoring cannot be read
        log.warning("could not read monitoring of %s version %s: %s", model_name, version, exc)
        return None, html.Div(id="evergreen", className="evergreen", children=[
            html.H4("Live since promotion (evergreen)"),
            html.P(f"Monitoring could not be read: {first_line(exc)}", className="muted")])
    return alerts_box(watched), panel(watched, version)
