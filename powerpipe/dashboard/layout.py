"""The dashboard's pages as Dash components: sidebar, problem panels, model card, production and runs pages."""

from __future__ import annotations

import logging

from dash import dcc, html

from powerpipe.core import tags
from powerpipe.tracking import store as tracking
from powerpipe.forecast.data import TARGETS
from powerpipe.core.exceptions import NoProductionModel, PipelineError, TrackingError

from powerpipe.dashboard.alias_moves import history_section
from powerpipe.dashboard.artifacts import artifact_url
from powerpipe.dashboard.production_model import ProductionModelCache, ServingModel
from powerpipe.dashboard.runs import PipelineRunRow, pipeline_runs
from powerpipe.dashboard.store import first_line, open_client, run_command_hint
from powerpipe.dashboard.windows import default_window

log = logging.getLogger(__name__)

# How often an open page asks the model cache (which itself asks the registry every poll_seconds).
CARD_REFRESH_MS = 60_000


def sidebar(uri: str) -> html.Div:
    return html.Div(className="sidebar", children=[
        html.H2("powerpipe"),
        html.P("German solar and wind", className="subtitle"),
        html.Nav([
            dcc.Link("Production model", href="/", id="nav-production", className="nav-link"),
            dcc.Link("Pipeline runs", href="/runs", id="nav-runs", className="nav-link"),
        ]),
        html.Div(className="store", children=[html.Span("Tracking store"), html.Code(tracking.redact(uri))]),
    ])


def problem_panel(exc: Exception, uri: str, panel_id: str = "problem") -> html.Div:
    """A plain explanation of why there is nothing to show, with what to do about it."""
    store = tracking.redact(uri)
    if isinstance(exc, NoProductionModel):
        return html.Div(id=panel_id, className="panel problem", children=[
            html.H3("No production model yet"),
            html.P(f"{_sentence(str(exc))}. Run the pipeline to train a model and promote it to production:"),
            html.Pre(run_command_hint(uri), className="command"),
            html.P("then reload this page."),
        ])
    if isinstance(exc, TrackingError):  # StoreUnreachableError, or a store that answered with an error
        return html.Div(id=panel_id, className="panel problem", children=[
            html.H3("Tracking store unreachable"),
            html.P(str(exc)),
            html.P(["Check that it is running and that ", html.Code("--tracking-uri"), " or ",
                    html.Code("MLFLOW_TRACKING_URI"), f" names it (now: {store})."]),
        ])
    if isinstance(exc, PipelineError):  # data errors and the like: their message says what is wrong
        return html.Div(id=panel_id, className="panel problem", children=[
            html.H3("Cannot show this"), html.P(str(exc))])
    log.exception("dashboard: unexpected error")
    return html.Div(id=panel_id, className="panel problem", children=[
        html.H3("Something went wrong"),
        html.P(f"{type(exc).__name__}: {first_line(exc)} (details in the dashboard's log)."),
    ])


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tag_number(text: str) -> str:
    """A number kept as a tag (text), shown like the other metrics; any other text as it is."""
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _key_value_table(rows: dict, table_id: str) -> html.Table:
    return html.Table(id=table_id, className="kv", children=[
        html.Tbody([html.Tr([html.Th(k), html.Td(_number(v))]) for k, v in rows.items()])])


def metrics_table(metrics: dict[str, float]) -> html.Table:
    """rmse, mae, r2 as columns; both targets, then each target, as rows (as the notebooks show them)."""
    rows = [("both", "")] + [(target, target.removesuffix("_GW") + "_") for target in TARGETS]
    header = html.Tr([html.Th("")] + [html.Th(m) for m in ("rmse", "mae", "r2")])
    body = [html.Tr([html.Th(label)] + [html.Td(_number(metrics.get(prefix + m, "–"))) for m in ("rmse", "mae", "r2")])
            for label, prefix in rows]
    return html.Table(id="model-metrics", className="grid", children=[html.Thead(header), html.Tbody(body)])


def model_card(model: ServingModel, cache: ProductionModelCache) -> list:
    shown = model.shown_data
    promoted = model.promoted_at.replace("T", " ").replace("+00:00", " UTC") if model.promoted_at else "unknown"
    facts = {
        "model": f"models:/{model.name}@{model.alias} → version {model.version}",
        "promoted": promoted + (f" by pipeline run {model.pipeline_run_id}" if model.pipeline_run_id else ""),
        "chosen on": f"{model.promoted_metric} = {_tag_number(model.promoted_value)}"
        if model.promoted_metric and model.promoted_value else "unknown",
        "previous version": model.previous_version or "none",
        "evaluated on": model.evaluation or "not recorded (the tutorial's random split)",
        "features": model.feature_set or "the four weather columns",
        "training run": f"{model.run_name} ({model.run_id})",
    }
    if model.refit:  # registered after a refit on every hour: its scores are its evaluated run's
        facts["training run"] = (f"{model.run_name} ({model.run_id}), refit on every hour of the data; "
                                 f"scored as run {model.evaluated_run_id}")
    if model.trained_until:
        facts["trained until"] = model.trained_until.replace("T", " ").replace("+00:00", " UTC")
    card = [
        html.H3(f"{model.name} version {model.version}", id="model-card-title"),
        _key_value_table(facts, "model-facts"),
        html.P(html.A("Open the executed training notebook",
                      href=artifact_url(model.evaluated_run_id or model.run_id, model.notebook_html), target="_blank")),
        html.Div(className="columns", children=[
            html.Div([html.H4("Parameters"), _key_value_table(model.params, "model-params")]),
            html.Div([html.H4(f"Metrics ({model.evaluation or 'test split'})"), metrics_table(model.metrics)]),
        ]),
        history_section(cache.tracking_uri, model.name, model.alias),
        html.P(className="data-note", id="data-note", children=[
            "Data shown: ", html.Code(str(shown.path)), f", {shown.origin}; {len(model.frame):,} hours, "
            f"{model.data_start:%Y-%m-%d} to {model.data_end:%Y-%m-%d}.",
            " The file has changed since training." if shown.matches_training is False else "",
        ]),
        html.P(className="muted", children=(
            f"Loaded {model.loaded_at:%Y-%m-%d %H:%M:%S} UTC; the registry is asked every "
            f"{cache.poll_seconds:.0f} s whether {cache.model_uri} has moved."
            + (f" Last check failed: {cache.last_check_error}" if cache.last_check_error else ""))),
    ]
    if shown.synthetic:
        card.insert(0, html.Div("SYNTHETIC DATA: this model was trained on generated data, not measurements; "
                                "its predictions say nothing about the real German grid.",
                                className="banner", id="synthetic-banner"))
    from powerpipe.dashboard import evergreen  # the live error since promotion, and monitoring's alerts first

    alerts, live = evergreen.sections(cache.tracking_uri, model.name, model.version)
    card.insert(card.index(next(c for c in card if isinstance(c, html.Div) and c.className == "columns")), live)
    if alerts is not None:
        card.insert(0, alerts)
    return card


def empty_figure(message: str) -> dict:
    return {"data": [], "layout": {
        "template": "plotly_white", "height": 560, "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "annotations": [{"text": message, "showarrow": False, "font": {"size": 16}, "xref": "paper",
                         "yref": "paper", "x": 0.5, "y": 0.5}]}}


def production_page(model: ServingModel, seasonal_figure) -> html.Div:
    start, end = default_window(model.data_start, model.data_end)
    return html.Div([
        html.H1("Production model"),
        html.Div(id="model-card", className="panel card"),
        dcc.Store(id="model-version", data=model.version),
        dcc.Interval(id="model-poll", interval=CARD_REFRESH_MS),
        html.H2("Solar generation through the year"),
        html.P("One line per year, 7-day rolling mean of daily averages; drag the slider to zoom.", className="muted"),
        dcc.Graph(id="seasonal-figure", figure=seasonal_figure, config={"displaylogo": False}),
        html.H2("Recorded and predicted"),
        html.Div(className="range-row", children=[
            dcc.DatePickerRange(
                id="date-range", start_date=start, end_date=end, display_format="YYYY-MM-DD",
                min_date_allowed=f"{model.data_start:%Y-%m-%d}", max_date_allowed=f"{model.data_end:%Y-%m-%d}",
                initial_visible_month=end, first_day_of_week=1, clearable=True,
                start_date_id="date-range-start", end_date_id="date-range-end",
            ),
            html.Span(f"data: {model.data_start:%Y-%m-%d} to {model.data_end:%Y-%m-%d} (UTC)", className="muted"),
        ]),
        html.Div(id="range-message", className="range-message"),
        dcc.Loading(dcc.Graph(id="prediction-figure", config={"displaylogo": False}), delay_show=300),
    ])


def runs_table(rows: list[PipelineRunRow]) -> html.Table:
    header = ["started (UTC)", "pipeline run", "experiment", "status", "notebooks ok / failed", "best rmse",
              "promoted", "report", "executed notebooks"]
    body = []
    for row in rows:
        promoted = "–"
        if row.promoted_version:
            promoted = f"v{row.promoted_version}" + (" (production)" if row.is_production else "")
        report = (html.A("weekly report", href=artifact_url(row.report_run_id, tags.REPORT_ARTIFACT), target="_blank")
                  if row.report_run_id else "–")
        notebooks = html.Details([
            html.Summary(f"{len(row.notebooks)} notebooks"),
            html.Ul([html.Li([html.A(link.label, href=artifact_url(link.run_id, link.html_path), target="_blank"),
                              html.Span(f" {link.stage}, {link.status.lower()}", className="muted")])
                     for link in row.notebooks]),
        ]) if row.notebooks else "–"
        body.append(html.Tr(className=f"status-{row.status.lower()}", children=[
            html.Td(f"{row.started:%Y-%m-%d %H:%M}" if row.started else "–"),
            html.Td([row.pipeline_run_id or row.run_id, html.Span("synthetic", className="tag") if row.synthetic else ""]),
            html.Td(row.experiment),
            html.Td(row.status.lower()),
            html.Td(f"{row.notebooks_ok} / {row.notebooks_failed}" + (f", {row.trials} trials" if row.trials else "")),
            html.Td(f"{row.best_value:.4g}" if row.best_value is not None else "–"),
            html.Td(promoted),
            html.Td(report),
            html.Td(notebooks),
        ]))
    return html.Table(id="runs-table", className="grid runs", children=[
        html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(body)])


def runs_page(uri: str, model_name: str, alias: str, max_results: int = 20) -> html.Div:
    try:
        rows = pipeline_runs(open_client(uri), model_name, alias, max_results=max_results)
    except Exception as exc:  # noqa: BLE001 - boundary: the page's callback turns every failure into a panel
        return html.Div([html.H1("Pipeline runs"), problem_panel(exc, uri)])
    if not rows:
        return html.Div([html.H1("Pipeline runs"), html.Div(id="problem", className="panel problem", children=[
            html.H3("No pipeline runs yet"),
            html.P(f"The tracking store {tracking.redact(uri)} has no pipeline run. Start one with:"),
            html.Pre(run_command_hint(uri), className="command")])])
    return html.Div([
        html.H1("Pipeline runs"),
        html.P(f"The latest pipeline runs in the store (at most {max_results}), newest first. Links open the executed "
               "notebooks (HTML) and the weekly report.", className="muted"),
        runs_table(rows),
    ])
