"""The dashboard: the production model's card, solar through the years, recorded vs predicted, pipeline runs.

Start it with ``python dashboard/app.py`` (``--help`` for the flags) or under a WSGI server with
``gunicorn 'dashboard.app:server'``. What it shows comes from ``powerpipe.dashboard_data``; this file
holds only the layout, the callbacks, the artifact route and the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import dash
import pandas as pd
from dash import Input, Output, State, dcc, html, no_update
from flask import Response, abort

from powerpipe import dashboard_data as dd
from powerpipe import tracking
from powerpipe.data import TARGETS
from powerpipe.exceptions import PipelineError, TrackingError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
# How often an open page asks the model cache (which itself asks the registry every poll_seconds).
CARD_REFRESH_MS = 60_000
ASSETS = Path(__file__).resolve().parent / "assets"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".ipynb": "application/x-ipynb+json",
                 ".json": "application/json"}


def artifact_url(run_id: str, artifact_path: str) -> str:
    return f"/artifacts/{run_id}/{artifact_path}"


# -- pieces of pages ---------------------------------------------------------------------------------
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
    if isinstance(exc, dd.NoProductionModel):
        return html.Div(id=panel_id, className="panel problem", children=[
            html.H3("No production model yet"),
            html.P(f"{_sentence(str(exc))}. Run the pipeline to train a model and promote it to production:"),
            html.Pre(dd.run_command_hint(uri), className="command"),
            html.P("then reload this page."),
        ])
    if isinstance(exc, TrackingError):
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
        html.P(f"{type(exc).__name__}: {dd.first_line(exc)} (details in the dashboard's log)."),
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


def model_card(model: dd.ServingModel, cache: dd.ProductionModelCache) -> list:
    shown = model.shown_data
    promoted = model.promoted_at.replace("T", " ").replace("+00:00", " UTC") if model.promoted_at else "unknown"
    facts = {
        "model": f"models:/{model.name}@{model.alias} → version {model.version}",
        "promoted": promoted + (f" by pipeline run {model.pipeline_run_id}" if model.pipeline_run_id else ""),
        "chosen on": f"{model.promoted_metric} = {_tag_number(model.promoted_value)}"
        if model.promoted_metric and model.promoted_value else "unknown",
        "previous version": model.previous_version or "none",
        "training run": f"{model.run_name} ({model.run_id})",
    }
    card = [
        html.H3(f"{model.name} version {model.version}", id="model-card-title"),
        _key_value_table(facts, "model-facts"),
        html.P(html.A("Open the executed training notebook",
                      href=artifact_url(model.run_id, f"notebook/{model.run_name}.html"), target="_blank")),
        html.Div(className="columns", children=[
            html.Div([html.H4("Parameters"), _key_value_table(model.params, "model-params")]),
            html.Div([html.H4("Metrics (test split)"), metrics_table(model.metrics)]),
        ]),
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
    return card


def empty_figure(message: str) -> dict:
    return {"data": [], "layout": {
        "template": "plotly_white", "height": 560, "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "annotations": [{"text": message, "showarrow": False, "font": {"size": 16}, "xref": "paper",
                         "yref": "paper", "x": 0.5, "y": 0.5}]}}


def production_page(model: dd.ServingModel, seasonal_figure) -> html.Div:
    start, end = dd.default_window(model.data_start, model.data_end)
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


def runs_table(rows: list[dd.PipelineRunRow]) -> html.Table:
    header = ["started (UTC)", "pipeline run", "experiment", "status", "notebooks ok / failed", "best rmse",
              "promoted", "report", "executed notebooks"]
    body = []
    for row in rows:
        promoted = "–"
        if row.promoted_version:
            promoted = f"v{row.promoted_version}" + (" (production)" if row.is_production else "")
        report = (html.A("weekly report", href=artifact_url(row.report_run_id, dd.REPORT_ARTIFACT), target="_blank")
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
            html.Td(f"{row.notebooks_ok} / {row.notebooks_failed}"),
            html.Td(f"{row.best_value:.4g}" if row.best_value is not None else "–"),
            html.Td(promoted),
            html.Td(report),
            html.Td(notebooks),
        ]))
    return html.Table(id="runs-table", className="grid runs", children=[
        html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(body)])


def runs_page(uri: str, model_name: str, alias: str, max_results: int = 20) -> html.Div:
    try:
        rows = dd.pipeline_runs(dd.open_client(uri), model_name, alias, max_results=max_results)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a panel, never a traceback
        return html.Div([html.H1("Pipeline runs"), problem_panel(exc, uri)])
    if not rows:
        return html.Div([html.H1("Pipeline runs"), html.Div(id="problem", className="panel problem", children=[
            html.H3("No pipeline runs yet"),
            html.P(f"The tracking store {tracking.redact(uri)} has no pipeline run. Start one with:"),
            html.Pre(dd.run_command_hint(uri), className="command")])])
    return html.Div([
        html.H1("Pipeline runs"),
        html.P(f"The latest pipeline runs in the store (at most {max_results}), newest first. Links open the executed "
               "notebooks (HTML) and the weekly report.", className="muted"),
        runs_table(rows),
    ])


# -- the app -----------------------------------------------------------------------------------------
def create_app(tracking_uri: str | None = None, model_name: str = dd.MODEL_NAME, alias: str = dd.ALIAS,
               poll_seconds: float = dd.POLL_SECONDS, cache: dd.ProductionModelCache | None = None) -> dash.Dash:
    """A dashboard on one tracking store; nothing is read from the store until a page is requested."""
    uri = tracking.tracking_uri(tracking_uri)
    cache = cache or dd.ProductionModelCache(uri, model_name, alias, poll_seconds=poll_seconds)
    app = dash.Dash(__name__, title="powerpipe dashboard", assets_folder=str(ASSETS),
                    suppress_callback_exceptions=True)  # page components appear only with their page
    app.model_cache = cache
    seasonal_figures: dict[tuple[str, str], object] = {}
    window_figure = dd.WindowFigure()

    def seasonal_figure(model: dd.ServingModel):
        # Drawn once per (version, data file): the daily resampling of four years is the slow part.
        key = (model.version, str(model.shown_data.path))
        if key not in seasonal_figures:
            from powerpipe.figures import seasonal_solar_figure

            seasonal_figures.clear()
            seasonal_figures[key] = seasonal_solar_figure(model.frame)
        return seasonal_figures[key]

    app.layout = html.Div(className="layout", children=[
        dcc.Location(id="url"),
        sidebar(uri),
        html.Main(id="page", className="content"),
    ])

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def render_page(pathname):
        if pathname in (None, "", "/"):
            try:
                model = cache.get()
                return production_page(model, seasonal_figure(model))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a panel, never a traceback
                return html.Div([html.H1("Production model"), problem_panel(exc, uri)])
        if pathname == "/runs":
            return runs_page(uri, model_name, alias)
        return html.Div([html.H1("Page not found"), html.P([f"There is no page {pathname}. ",
                                                            dcc.Link("Back to the production model", href="/")])])

    @app.callback(Output("model-card", "children"), Output("model-version", "data"),
                  Input("model-poll", "n_intervals"), State("model-version", "data"))
    def refresh_model_card(_n_intervals, shown_version):
        try:
            model = cache.get()
        except Exception as exc:  # noqa: BLE001
            return problem_panel(exc, uri, panel_id="card-problem"), no_update
        # The version store drives the prediction figure: touch it only when the version really moved.
        return model_card(model, cache), (model.version if model.version != shown_version else no_update)

    @app.callback(Output("prediction-figure", "figure"), Output("range-message", "children"),
                  Input("date-range", "start_date"), Input("date-range", "end_date"),
                  Input("model-version", "data"))
    def update_predictions(start_date, end_date, _version):
        try:
            return prediction_view(cache, window_figure, start_date, end_date)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a panel, never a traceback
            return empty_figure("Nothing to show"), problem_panel(exc, uri, "range-problem")

    app.server.add_url_rule("/artifacts/<run_id>/<path:artifact_path>", "artifact",
                            lambda run_id, artifact_path: serve_artifact(uri, run_id, artifact_path))
    # Anything else under /artifacts/ is a 404 here, not the page that Dash's catch-all route would send.
    app.server.add_url_rule("/artifacts/<path:other>", "no_artifact", lambda other: abort(404))
    return app


def prediction_view(cache: dd.ProductionModelCache, window_figure: dd.WindowFigure, start_date: str | None,
                    end_date: str | None):
    """The recorded-vs-predicted figure for the picked dates and a message (empty when all is well)."""
    try:
        model = cache.get()
    except Exception as exc:  # noqa: BLE001
        return empty_figure("No model to predict with"), problem_panel(exc, cache.tracking_uri, "range-problem")
    window = dd.choose_window(start_date, end_date, model.data_start, model.data_end)
    if not window.ok:
        return empty_figure(window.problem), html.P(window.problem, className="problem-text")
    recorded, predicted, resolution = dd.window_frames(model.frame, model.predictions, window)
    if recorded.empty:
        message = "The data has no hours in this window."
        return empty_figure(message), html.P(message, className="problem-text")
    last = window.end - pd.Timedelta(days=1)
    title = (f"{window.start:%d %b %Y} to {last:%d %b %Y} (UTC, {resolution}), "
             f"{model.name} version {model.version}")
    figure = window_figure(recorded, predicted, title)
    return figure, (html.P(window.note, className="note-text") if window.note else None)


def serve_artifact(uri: str, run_id: str, artifact_path: str) -> Response:
    """An executed notebook, report or summary of a pipeline run; 404 for anything else."""
    try:
        client = dd.open_client(uri)
    except PipelineError as exc:
        return Response(f"tracking store unavailable: {exc}\n", status=503, mimetype="text/plain")
    with tempfile.TemporaryDirectory(prefix="powerpipe-artifact-") as folder:
        try:
            local = dd.fetch_artifact(client, run_id, artifact_path, folder)
        except dd.ArtifactNotServed as exc:
            log.info("artifact not served: %s", exc)
            abort(404)
        body = local.read_bytes()
    response = Response(body, content_type=CONTENT_TYPES.get(local.suffix, "application/octet-stream"))
    response.headers["X-Content-Type-Options"] = "nosniff"
    if local.suffix == ".html":
        # Notebook HTML carries scripts: run them in a sandboxed origin, apart from the dashboard's.
        response.headers["Content-Security-Policy"] = "sandbox allow-scripts allow-popups"
    else:
        response.headers["Content-Disposition"] = f'attachment; filename="{local.name}"'
    return response


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python dashboard/app.py",
        description="Dashboard on the production model: model card, solar by year, recorded vs predicted, "
                    "pipeline runs with their notebooks and reports.")
    parser.add_argument("--tracking-uri", help="MLflow tracking store (default: MLFLOW_TRACKING_URI, else "
                                               "sqlite:///outputs/mlflow.db)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this "
                                                             "machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--model-name", default=dd.MODEL_NAME, help=f"registered model (default {dd.MODEL_NAME})")
    parser.add_argument("--alias", default=dd.ALIAS, help=f"alias to serve (default {dd.ALIAS})")
    parser.add_argument("--poll-seconds", type=float, default=dd.POLL_SECONDS,
                        help=f"how often to check whether the alias moved (default {dd.POLL_SECONDS:.0f})")
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, dev tools)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model load in the log
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dash_app = create_app(args.tracking_uri, args.model_name, args.alias, args.poll_seconds)
    cache = dash_app.model_cache
    log.info("tracking store %s; serving %s", tracking.redact(cache.tracking_uri), cache.model_uri)
    try:
        cache.get()  # load before the first visitor waits for it
    except Exception as exc:  # noqa: BLE001 - the page explains it; the server still starts
        log.warning("no model to serve yet: %s", exc)
    log.info("dashboard on http://%s:%d/", args.host, args.port)
    dash_app.run(host=args.host, port=args.port, debug=args.debug)
    return 0


# For WSGI servers: `gunicorn 'dashboard.app:server'` (store from MLFLOW_TRACKING_URI or the default).
app = create_app()
server = app.server

if __name__ == "__main__":
    sys.exit(main())
