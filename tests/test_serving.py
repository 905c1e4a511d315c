"""`mlflow models serve` answers the tutorial's request with the production model, on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The tutorial's request, in the JSON format current MLflow expects (as the README shows it).
REQUEST = {"dataframe_split": {"columns": ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"],
                               "data": [[2, 20, 100, 100]]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scoring_server_answers_tutorial_request(smoke_run, tmp_path):
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server starts `uvicorn` from PATH, as an activated venv has it
    env = {**os.environ, "MLFLOW_TRACKING_URI": smoke_run["tracking_uri"],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = bin_dir / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", "models:/BestModel@production", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("scoring server did not start:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(REQUEST).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    predictions = answer["predictions"]
    assert len(predictions) == 1
    row = predictions[0]
    values = list(row.values()) if isinstance(row, dict) else row
    assert len(values) == 2 and all(isinstance(v, float) for v in values)
