"""The dashboard: the production model's card, solar through the years, recorded vs predicted, pipeline runs.

Start it with ``powerpipe dashboard`` (or ``python dashboard/app.py``; ``--help`` for the flags) or under
a WSGI server with ``gunicorn 'powerpipe.dashboard.app:server'``. This file holds the app, its callbacks, the artifact route and the
command line; the pages are in ``layout``, and what they show comes from ``production_model``,
``windows``, ``runs`` and ``artifacts`` (on the store that ``store`` opens).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from powerpipe.tracking import store as tracking  # noqa: E402 - before MLflow is imported anywhere: it reads the budget once

# Calls to a tracking server that stopped give up within about a minute, not MLflow's default many
# minutes of retries; the page then says the store is unreachable and keeps serving the loaded model.
tracking.bound_store_calls()

import dash
import pandas as pd
from dash import Input, Output, State, dcc, html, no_update
from flask import Response, abort

from powerpipe.dashboard.artifacts import fetch_artifact
from powerpipe.dashboard.layout import empty_figure, model_card, problem_panel, production_page, runs_page, sidebar
from powerpipe.dashboard.production_model import POLL_SECONDS, ProductionModelCache, ServingModel
from powerpipe.dashboard.store import ALIAS, MODEL_NAME, open_client
from powerpipe.dashboard.windows import WindowFigure, choose_window, window_frames
from powerpipe.core.exceptions import ArtifactNotServed, PipelineError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
ASSETS = Path(__file__).resolve().parent / "assets"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".ipynb": "application/x-ipynb+json",
                 ".json": "application/json"}


# -- the app -----------------------------------------------------------------------------------------
def create_app(tracking_uri: str | None = None, model_name: str = MODEL_NAME, alias: str = ALIAS,
               poll_seconds: float = POLL_SECONDS, cache: ProductionModelCache | None = None) -> dash.Dash:
    """A dashboard on one tracking store; nothing is read from the store until a page is requested."""
    uri = tracking.tracking_uri(tracking_uri)
    cache = cache or ProductionModelCache(uri, model_name, alias, poll_seconds=poll_seconds)
    app = dash.Dash(__name__, title="powerpipe dashboard", assets_folder=str(ASSETS),
                    suppress_callback_exceptions=True)  # page components appear only with their page
    app.model_cache = cache
    seasonal_figures: dict[tuple[str, str], object] = {}
    window_figure = WindowFigure()

    def seasonal_figure(model: ServingModel):
        # Drawn once per (version, data file): the daily resampling of four years is the slow part.
        key = (model.version, str(model.shown_data.path))
        if key not in seasonal_figures:
            from powerpipe.forecast.figures import seasonal_solar_figure

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
            except Exception as exc:  # noqa: BLE001 - boundary: every failure becomes a panel, never a traceback
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
        except Exception as exc:  # noqa: BLE001 - boundary: a failed refresh shows a panel, the page stays up
            return problem_panel(exc, uri, panel_id="card-problem"), no_update
        # The version store drives the prediction figure: touch it only when the version really moved.
        return model_card(model, cache), (model.version if model.version != shown_version else no_update)

    @app.callback(Output("prediction-figure", "figure"), Output("range-message", "children"),
                  Input("date-range", "start_date"), Input("date-range", "end_date"),
                  Input("model-version", "data"))
    def update_predictions(start_date, end_date, _version):
        try:
            model = cache.get()
        except Exception as exc:  # noqa: BLE001 - boundary: no model (for any reason) becomes a panel
            return empty_figure("No model to predict with"), problem_panel(exc, uri, "range-problem")
        try:
            return prediction_view(model, window_figure, start_date, end_date)
        except Exception as exc:  # noqa: BLE001 - boundary: every failure becomes a panel, never a traceback
            return empty_figure("Nothing to show"), problem_panel(exc, uri, "range-problem")

    app.server.add_url_rule("/artifacts/<run_id>/<path:artifact_path>", "artifact",
                            lambda run_id, artifact_path: serve_artifact(uri, run_id, artifact_path))
    # Anything else under /artifacts/ is a 404 here, not the page that Dash's catch-all route would send.
    app.server.add_url_rule("/artifacts/<path:other>", "no_artifact", lambda other: abort(404))
    return app


def prediction_view(model: ServingModel, window_figure: WindowFigure, start_date: str | None,
                    end_date: str | None):
    """The recorded-vs-predicted figure for the picked dates and a message (empty when all is well)."""
    window = choose_window(start_date, end_date, model.data_start, model.data_end)
    if not window.ok:
        return empty_figure(window.problem), html.P(window.problem, className="problem-text")
    recorded, predicted, resolution = window_frames(model.frame, model.predictions, window)
    if recorded.empty:
        message = "The data has no hours in this window."
        return empty_figure(message), html.P(message, className="problem-text")
    last = window.end - pd.Timedelta(days=1)
    title = (f"{window.start:%d %b %Y} to {last:%d %b %Y} (UTC, {resolution}), "
             f"{model.name} version {model.version}")
    figure = window_figure(recorded, predicted, title)
    return figure, (html.P(window.note, className="note-text") if window.note else None)


def serve_artifact(uri: str, run_id: str, artifact_path: str) -> Response:
    """An executed notebook, report or summary of a pipeline run; 404 for anything else, 503 without a store."""
    with tempfile.TemporaryDirectory(prefix="powerpipe-artifact-") as folder:
        try:
            local = fetch_artifact(open_client(uri), run_id, artifact_path, folder)
        except ArtifactNotServed as exc:
            log.info("artifact not served: %s", exc)
            abort(404)
        except PipelineError as exc:  # no store, or one that failed on the way: not the artifact's fault
            return Response(f"tracking store unavailable: {exc}\n", status=503, mimetype="text/plain")
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
        prog="powerpipe dashboard",
        description="Dashboard on the production model: model card, solar by year, recorded vs predicted, "
                    "pipeline runs with their notebooks and reports.")
    parser.add_argument("--tracking-uri", help="MLflow tracking store (default: MLFLOW_TRACKING_URI, else "
                                               "sqlite:///outputs/mlflow.db)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this "
                                                             "machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"registered model (default {MODEL_NAME})")
    parser.add_argument("--alias", default=ALIAS, help=f"alias to serve (default {ALIAS})")
    parser.add_argument("--poll-seconds", type=float, default=POLL_SECONDS,
                        help=f"how often to check whether the alias moved (default {POLL_SECONDS:.0f})")
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
    except Exception as exc:  # noqa: BLE001 - boundary: the page explains it; the server still starts
        log.warning("no model to serve yet: %s", exc)
    log.info("dashboard on http://%s:%d/", args.host, args.port)
    dash_app.run(host=args.host, port=args.port, debug=args.debug)
    return 0


# For WSGI servers: `gunicorn 'powerpipe.dashboard.app:server'` (store from MLFLOW_TRACKING_URI or the default).
app = create_app()
server = app.server

if __name__ == "__main__":
    sys.exit(main())
