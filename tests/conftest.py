"""Shared fixtures: tiny purpose-built notebooks, a private tracking store per test, one smoke run."""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from powerpipe.forecast import data
from powerpipe.core import paths, tags

from .xdist_groups import pytest_collection_modifyitems  # noqa: F401 - a hook: pytest finds it here

SHARED_DATA = paths.PROJECT_ROOT.parent / "shared" / "data" / "germany.csv"




def make_notebook(path: Path, parameters: str | None, *cells: str) -> Path:
    """Write a notebook with an optional cell tagged ``parameters`` followed by code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebooks(tmp_path) -> dict[str, Path]:
    """One notebook that works, one that raises, one without a parameters cell, one that hangs."""
    folder = tmp_path / "nbs"
    return {
        "works": make_notebook(
            folder / "works.ipynb",
            "x: int = 1\nlabel: str | None = None\nscale: float = 1.0",
            "import sys, scrapbook as sb\ny = x * 2 * scale\nprint('result', y)",
            "sb.glue('metrics', {'rmse': float(y), 'mae': 1.0, 'r2': 0.5}, display=False)\n"
            "sb.glue('python', sys.executable, display=False)",
        ),
        "raises": make_notebook(
            folder / "raises.ipynb",
            "x: int = 1",
            "print('before the error')",
            "raise ValueError(f'broken on purpose with x={x}')",
            "print('never reached')",
        ),
        "no_parameters": make_notebook(folder / "no_parameters.ipynb", None, "print('hello')"),
        "hangs": make_notebook(folder / "hangs.ipynb", "x: int = 1", "import time\ntime.sleep(600)"),
    }


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """Each test leaves MLflow's process-wide tracking URI as it found it. ``mlflow.set_tracking_uri`` also
    sets ``MLFLOW_TRACKING_URI`` in ``os.environ`` (MLflow 3), which a later in-process run would take as
    the user's store: one test's store would receive the next test's runs."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before_env, before_uri = os.environ.get("MLFLOW_TRACKING_URI"), tracking_utils._tracking_uri
    yield
    if tracking_utils._tracking_uri != before_uri:
        tracking_utils._tracking_uri = before_uri
        tracking_utils.reset()
    if before_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before_env


@functools.cache
def _empty_store_made_once() -> Path:
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="powerpipe-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments(max_results=1)
    return folder / "mlflow.db"


def new_empty_store(db: Path) -> str:
    """A new MLflow store at ``db`` with MLflow's tables and nothing else (its URI): a copy of one made once
    per test process. Making each cost a second of CPU (MLflow's schema migrations), in the fifty tests that
    need one; the runner's own making of a store is tested by the smoke run and the tests that pass none."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store_made_once(), db)
    return f"sqlite:///{db}"


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A tracking store of this test's own; MLFLOW_TRACKING_URI from outside never leaks in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return new_empty_store(tmp_path / "store" / "mlflow.db")


@pytest.fixture
def three_rows() -> pd.DataFrame:
    """A three-hour processed frame as the notebooks see it."""
    index = pd.date_range("2016-06-01 10:00", periods=3, freq="h", tz="UTC", name=data.TIME_COLUMN)
    return pd.DataFrame(
        {
            "solar_GW": [10.0, 12.5, 14.0],
            "wind_GW": [5.0, 4.0, 6.5],
            "windspeed": [3.1, 2.9, 3.6],
            "temperature": [18.0, 19.5, 21.0],
            "rad_horizontal": [300.0, 420.0, 500.0],
            "rad_diffuse": [120.0, 130.0, 140.0],
        },
        index=index,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke pipeline, run once for the session through the CLI into a private folder."""
    from powerpipe.cli import main as cli

    outputs = tmp_path_factory.mktemp("smoke_outputs")
    uri = f"sqlite:///{outputs / 'tracking' / 'mlflow.db'}"
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        code = cli.main(["--config", str(paths.SMOKE_CONFIG), "--data", "synthetic", "--outputs", str(outputs),
                         "--tracking-uri", uri, "--quiet"])
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    runs = [p for p in outputs.iterdir() if (p / "summary.json").exists()]
    assert len(runs) == 1, f"expected one pipeline run folder in {outputs}"
    return {"exit_code": code, "outputs": outputs, "run_dir": runs[0], "tracking_uri": uri}


# -- a tiny project: a stand-in model notebook, small data, its own outputs and store ---------------
# The notebook predicts the constant `level` for both targets (so its rmse is known to rise with `level`
# above the data), can fail or sleep on demand, and logs like the real ones.
FAKE_PARAMETERS = "data_path: str | None = None\nlevel: float = 0.0\nfail: bool = False\nsleep: float = 0.0"
FAKE_CELLS = (
    "import time\nfrom sklearn.dummy import DummyRegressor\nfrom powerpipe.forecast import data, modeling\nfrom powerpipe.tracking import store as tracking",
    "df = data.load(data_path)\nX_train, X_test, y_train, y_test = modeling.split(df)\nrun = tracking.notebook_run()",
    "time.sleep(sleep)\nif fail:\n    raise RuntimeError(f'failing on purpose at level {level}')",
    "model = DummyRegressor(strategy='constant', constant=[level, level]).fit(X_train, y_train)\n"
    "tracking.record_metrics(modeling.evaluate(y_test, model.predict(X_test)))\n"
    "tracking.log_model(model, X_train, flavor='sklearn')",
)


class FakeProject:
    """A folder with the fake notebook, a small data file, an outputs folder and its own store.

    ``parameters_cell`` and ``cells`` make ``fake.ipynb`` another stand-in notebook (a test's own variant)."""

    def __init__(self, root: Path, experiment: str, quiet: bool = True, parameters_cell: str = FAKE_PARAMETERS,
                 cells: tuple[str, ...] = FAKE_CELLS):
        self.root, self.experiment, self.quiet = root, experiment, quiet
        make_notebook(root / "fake.ipynb", parameters_cell, *cells)
        self.data_path = data.write_processed(data.synthetic_frame("2016-06-01", "2016-06-10 23:00"),
                                              root / "small.csv")
        self.outputs = root / "out"
        self.tracking_uri = new_empty_store(root / "out" / "mlflow.db")  # where the runner keeps it (no --tracking-uri)

    def config(self, grid: dict, report: bool = False, timeout: float | None = None, name="pipeline.yaml") -> Path:
        import yaml

        stages = {"train": [{"notebook": "fake.ipynb", "grid": grid}],
                  "promote": {"metric": "rmse", "model_name": "FakeModel"}}
        if report:
            stages["report"] = {"notebook": str(paths.REPORT_TEMPLATES_DIR / "weekly_report.ipynb")}
        config = {"experiment": self.experiment, "root": ".", "stages": stages}
        if timeout:
            config["timeout"] = timeout
        path = self.root / name
        path.write_text(yaml.safe_dump(config))
        return path

    def args(self, config: Path, *extra: str, outputs: Path | None = None) -> list[str]:
        """The runner's arguments for this project. One notebook at a time unless the test passes ``--jobs``:
        on two cores that the other xdist worker keeps busy, a second kernel costs about 4 s of CPU (its
        imports, its store) and gains nothing; the tests about running at once say ``--jobs`` themselves."""
        jobs = [] if any(arg == "--jobs" or arg.startswith("--jobs=") for arg in extra) else ["--jobs", "1"]
        return ["--config", str(config), "--data", str(self.data_path), "--outputs", str(outputs or self.outputs),
                *(["--quiet"] if self.quiet else []), *jobs, *extra]

    def run(self, config: Path, *extra: str) -> tuple[int, dict]:
        from powerpipe.cli import main as cli

        code = cli.main(self.args(config, *extra))
        summaries = sorted(self.outputs.glob("*/summary.json"), key=lambda p: p.parent.name)
        return code, json.loads(summaries[-1].read_text())

    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def nothing_made(self) -> bool:
        """The outputs folder as the project began: its empty store, untouched, and nothing else."""
        return (sorted(p.name for p in self.outputs.iterdir()) == [self.db.name]
                and self.db.read_bytes() == _empty_store_made_once().read_bytes())

    def runs(self, status: str | None = None):
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        query = tags.equals(tags.STAGE, "train") + (f" and attributes.status = '{status}'" if status else "")
        return client.search_runs([experiment.experiment_id], query, max_results=1000)

    @property
    def db(self) -> Path:
        return Path(self.tracking_uri[len("sqlite:///"):])


def default_signal_dispositions() -> None:
    """In a child before it runs: Ctrl-C and hangup as a terminal gives them. A suite started by ``nohup`` or
    in the background of a script hands its children SIGHUP or SIGINT ignored, and the runner rightly keeps
    an ignored signal ignored: the signal tests would test the launcher, not the runner. (Runs in the forked
    child: nothing here may import or take a lock.)"""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def runner_process(argv: list[str], **kwargs) -> subprocess.Popen:
    """``runner/run_all.py`` in a process of its own (its own session: a signal reaches it alone)."""
    return subprocess.Popen([sys.executable, str(paths.RUNNER_DIR / "run_all.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_signal_dispositions, **kwargs)


@pytest.fixture
def hangup_not_ignored():
    """SIGHUP at its default for this test (see ``default_signal_dispositions``), as it was afterwards."""
    before = signal.getsignal(signal.SIGHUP)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, before)


def count_runs(db: Path, status: str, stage: str = "train") -> int:
    """Count runs in a SQLite store directly (an MLflow client could race the runner creating the schema).

    0 while the store or its tables do not exist yet; a busy store is asked again, not counted as 0."""
    if not Path(db).is_file():
        return 0
    deadline = time.monotonic() + 30
    while True:
        try:
            with sqlite3.connect(db, timeout=10) as connection:
                return connection.execute(
                    "SELECT count(*) FROM runs WHERE status = ? AND run_uuid IN "
                    "(SELECT run_uuid FROM tags WHERE key = ? AND value = ?)", (status, tags.STAGE, stage)
                ).fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            if time.monotonic() > deadline:
                raise


# -- servers on loopback -----------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MLFLOW = str(Path(sys.executable).with_name("mlflow"))


class MlflowServer:
    """`mlflow server` on loopback (SQLite backend, served artifacts) that a test can stop and start again."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.artifacts = folder / "artifacts"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        self.log = open(self.folder / "server.log", "ab")
        # Without MLflow's job runner: its nine huey pollers used half a core for as long as a server ran
        # (it runs GenAI jobs, which nothing here asks for).
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mlflow server did not start:\n{(self.folder / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server's own workers too
            self.process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        self.log.close()

    def runs(self, status: str) -> int:
        return count_runs(self.folder / "mlflow.db", status)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One `mlflow server` for the session's tests that only use one (each its own experiment); a test
    that stops its server starts its own ``MlflowServer``."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.stop()


class LoopbackFileServer:
    """Serves ``files`` (URL path -> body) on 127.0.0.1, answering as the test asks.

    - ``Range: bytes=N-`` is answered with 206 (416 past the end), unless ``If-Range`` names an older
      file or ``ignore_range`` is set: then the whole file comes with 200.
    - ETag and Last-Modified are sent, and conditional GETs answered with 304 while the file is
      unchanged; ``validators=False``: neither is sent nor honoured. ``put`` changes a file (a new
      ETag, a later Last-Modified).
    - ``cut_once[path] = offset``: the next answer for ``path`` stops at that byte of the file;
      ``cut_every_answer_after = n``: every answer stops after n bytes. Content-Length promises the
      whole, and the connection ends after each answer, so the client sees a cut.
    - An unknown path is 404.
    - ``requests`` records each request: its path, Range, If-None-Match and If-Modified-Since headers
      and the status answered.
    """

    def __init__(self, files: dict[str, bytes], validators: bool = True, *, ignore_range: bool = False,
                 cut_every_answer_after: int | None = None):
        self.files = dict(files)
        self.modified = {path: time.time() - 86400 for path in self.files}
        self.validators, self.ignore_range = validators, ignore_range
        self.cut_once: dict[str, int] = {}
        self.cut_every_answer_after = cut_every_answer_after
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                record = {name: self.headers.get(name) for name in ("Range", "If-None-Match", "If-Modified-Since")}
                record["path"] = self.path
                server.requests.append(record)
                self.close_connection = True
                server._answer(self, record)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # shutdown() waits up to one poll interval: 0.5 s by default, per server, per test
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self, path: str) -> str:
        return self.base + path

    def put(self, path: str, body: bytes) -> None:
        self.files[path], self.modified[path] = body, time.time()

    def statuses(self) -> list[int]:
        return [record["status"] for record in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, handler: http.server.BaseHTTPRequestHandler, record: dict) -> None:
        """Answer one GET, recording its status before anything is sent."""
        path, headers = handler.path, handler.headers
        if path not in self.files:
            record["status"] = 404
            handler.send_error(404)
            return
        body, modified = self.files[path], self.modified[path]
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        if self.validators and _not_modified(headers, etag, modified):
            record["status"] = 304
            handler.send_response(304)
            handler.send_header("ETag", etag)
            handler.end_headers()
            return
        start, status = 0, 200
        requested = re.fullmatch(r"bytes=(\d+)-", headers.get("Range") or "")
        if requested and not self.ignore_range and headers.get("If-Range", etag) == etag:
            start, status = int(requested.group(1)), 206
            if start >= len(body):
                record["status"] = 416
                handler.send_error(416)
                return
        record["status"] = status
        handler.send_response(status)
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        handler.send_header("Content-Length", str(len(body) - start))
        if self.validators:
            handler.send_header("ETag", etag)
            handler.send_header("Last-Modified", email.utils.formatdate(modified, usegmt=True))
        handler.end_headers()
        end = len(body)
        if path in self.cut_once:
            end = self.cut_once.pop(path)
        elif self.cut_every_answer_after is not None:
            end = start + self.cut_every_answer_after
        handler.wfile.write(body[start:max(start, end)])
        handler.wfile.flush()


def _not_modified(headers, etag: str, modified: float) -> bool:
    if headers.get("If-None-Match") is not None:  # it takes precedence (RFC 9110)
        return headers["If-None-Match"] == etag
    since = headers.get("If-Modified-Since")
    return since is not None and int(modified) <= email.utils.parsedate_to_datetime(since).timestamp()


@pytest.fixture
def serve():
    """``serve(files, validators=True, **options)`` starts a LoopbackFileServer; all are closed at teardown."""
    servers = []

    def start(files: dict[str, bytes], validators: bool = True, **options) -> LoopbackFileServer:
        servers.append(LoopbackFileServer(files, validators, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# -- a private store with a production model, and the MLflow scoring server on it -------------------------
@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private tracking store (artifacts beside it), the active run ended afterwards."""
    import mlflow

    from powerpipe.tracking import store as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    mlflow.set_tracking_uri(uri)
    experiment_id = tracking.ensure_experiment(mlflow.MlflowClient(uri), "serving_test", uri)
    yield uri, experiment_id
    mlflow.end_run()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return data.synthetic_frame("2015-09-01", "2016-03-31 23:00")


def register_production(uri: str, run_id: str, name: str = "BestModel", alias: str = "production") -> str:
    """Register the model a run logged last as a new version of ``name`` and point ``alias`` at it; its model id."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    model_id = client.get_run(run_id).outputs.model_outputs[-1].model_id
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    client.set_registered_model_alias(name, alias, version.version)
    return model_id


def wait_until_answering(url: str, server: subprocess.Popen, log: Path, what: str, seconds: float = 180) -> None:
    """Until ``url`` answers 200; fails with the end of ``log`` when ``server`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.5)


@contextlib.contextmanager
def scoring_server(tracking_uri: str, model_uri: str, folder: Path):
    """``mlflow models serve`` on 127.0.0.1 for ``model_uri``; yields a function that posts a request."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server starts `uvicorn` from PATH, as an activated venv has it
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = folder / "serve.log"
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=folder,
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, log, "scoring server", seconds=120)

        def post(request: dict, refused: bool = False) -> list | tuple[int, str]:
            """The predictions; with ``refused``, the request must fail: (HTTP status, body)."""
            message = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(request).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(message, timeout=30) as response:
                    answer = json.loads(response.read())["predictions"]
            except urllib.error.HTTPError as exc:
                if refused:
                    return exc.code, exc.read().decode()
                pytest.fail(f"scoring server answered {exc.code}: {exc.read().decode()[:2000]}")
            if refused:
                pytest.fail(f"scoring server answered a request it should refuse: {answer}")
            return answer

        yield post
    finally:
        server.terminate()
        server.wait(timeout=30)
