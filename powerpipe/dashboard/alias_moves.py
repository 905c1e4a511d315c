"""The production alias's history on the model card: every promotion, refresh and rollback, newest first.

Read from the registered model's tags (``powerpipe.tracking.alias_history``) each time the card is drawn,
so a rollback made with ``powerpipe rollback`` shows at the next refresh.
"""

from __future__ import annotations

import logging

from dash import html

from powerpipe.dashboard.store import first_line, open_client
from powerpipe.tracking import alias_history

log = logging.getLogger(__name__)

SHOWN_MOVES = 12


def history_section(uri: str, name: str, alias: str, limit: int = SHOWN_MOVES) -> html.Div:
    """A small table of the alias's moves (at most ``limit``), or a line saying why there is none."""
    heading = html.H4(f"History of @{alias}")
    try:
        moves = alias_history.history(open_client(uri), name, alias)
    except Exception as exc:  # noqa: BLE001 - boundary: the card stays up without its history
        log.warning("alias history of %s@%s not readable: %s", name, alias, exc)
        return html.Div(id="alias-history", className="alias-history", children=[
            heading, html.P(f"Not readable: {first_line(exc)}", className="muted")])
    rows = alias_history.history_rows(moves)[:limit]
    if not rows:
        return html.Div(id="alias-history", className="alias-history", children=[
            heading, html.P("No move recorded (promoted before the history was kept).", className="muted")])
    columns = list(rows[0])
    return html.Div(id="alias-history", className="alias-history", children=[
        heading,
        html.Table(id="alias-history-table", className="grid", children=[
            html.Thead(html.Tr([html.Th(c) for c in columns])),
            html.Tbody([html.Tr([html.Td(row[c]) for c in columns]) for row in rows]),
        ]),
        html.P(f"{len(moves) - limit} older moves not shown." if len(moves) > limit else "", className="muted"),
    ])
