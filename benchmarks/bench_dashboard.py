"""How fast the dashboard's prediction callback answers for a 31-day range (target: under 100 ms median).

    .venv/bin/python benchmarks/bench_dashboard.py [--tracking-uri URI] [--calls 50] [--days 31]

Without ``--tracking-uri`` it first runs the smoke pipeline (synthetic data, about two minutes) into a
temporary folder. Each call is a real Dash request (POST /_dash-update-component through the Flask
test client: callback, figure, JSON), for a different window each time; the model is loaded and its
predictions on the whole dataset made before timing starts, as a running dashboard has them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare_store(folder: Path) -> str:
    from powerpipe.cli import main as cli
    from powerpipe.core import paths

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    print(f"running the smoke pipeline into {folder} (about two minutes)...", flush=True)
    code = cli.main(["--config", str(paths.SMOKE_CONFIG), "--data", "synthetic", "--outputs", str(folder),
                     "--tracking-uri", uri, "--quiet"])
    if code != 0:
        raise SystemExit(f"the smoke pipeline failed (exit {code}); see {folder}")
    return uri


def prediction_request(start: str, end: str, version: str) -> dict:
    outputs = [{"id": "prediction-figure", "property": "figure"}, {"id": "range-message", "property": "children"}]
    inputs = [{"id": "date-range", "property": "start_date", "value": start},
              {"id": "date-range", "property": "end_date", "value": end},
              {"id": "model-version", "property": "data", "value": version}]
    return {"output": "..prediction-figure.figure...range-message.children..", "outputs": outputs,
            "inputs": inputs, "changedPropIds": ["date-range.start_date", "date-range.end_date"], "state": []}


def bench(uri: str, calls: int, days: int, seed: int = 0) -> list[float]:
    import pandas as pd

    from powerpipe.dashboard.app import create_app

    app = create_app(uri)
    model = app.model_cache.get()  # load and predict once, outside the timing
    client = app.server.test_client()
    first_start = model.data_start.normalize()
    last_start = model.data_end.normalize() - pd.Timedelta(days=days - 1)
    span_days = (last_start - first_start).days
    rng = random.Random(seed)
    timings = []
    for i in range(calls + 1):
        start = first_start + pd.Timedelta(days=rng.randrange(span_days + 1))
        end = start + pd.Timedelta(days=days - 1)
        body = prediction_request(start.date().isoformat(), end.date().isoformat(), model.version)
        began = time.perf_counter()
        response = client.post("/_dash-update-component", json=body)
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            raise SystemExit(f"callback answered {response.status_code}: {response.get_data(as_text=True)[:500]}")
        traces = response.get_json()["response"]["prediction-figure"]["figure"]["data"]
        if len(traces[0]["x"]) != days * 24:
            raise SystemExit(f"expected {days * 24} hours in the figure, got {len(traces[0]['x'])}")
        if i:  # the first request also sets Dash up; not what a visitor waits for
            timings.append(elapsed * 1000)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="a store with a production model (default: run the smoke pipeline)")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--days", type=int, default=31)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as folder:
        uri = args.tracking_uri or prepare_store(Path(folder))
        timings = bench(uri, args.calls, args.days)
    ordered = sorted(timings)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    print(f"prediction callback, {args.days}-day range, {len(timings)} calls on {os.cpu_count()} cores: "
          f"median {statistics.median(timings):.1f} ms (min {ordered[0]:.1f}, p90 {p90:.1f}, max {ordered[-1]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
