"""The runner against the original way of working, in one command on one machine.

    .venv/bin/python benchmarks/bench_pipeline.py [--data PATH] [--jobs N]

Measures and prints:
  a. the default pipeline (runner/pipeline.yaml) on the real data with the default --jobs, against the
     same notebook executions run one after another by plain papermill with fresh kernels;
  b. an unchanged re-run against the first run (everything cached). The run right after the first one
     re-executes its report: its monitoring now finds the model the first run promoted, so the report
     has something new to say. The run after that is the one measured;
  c. the median fixed cost of one grid point: a notebook that does nothing, through the whole runner
     (MLflow run, notebook, HTML, artifacts);
  d. the peak memory (RSS) of the runner and all its kernels together, during (a).
Targets on a 2-core machine: a <= 0.35, b <= 0.05, c <= 1.0 s, d <= 3 GiB.
Everything runs in a temporary folder with its own tracking stores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from powerpipe.core import paths  # noqa: E402

RUNNER = [sys.executable, str(paths.RUNNER_DIR / "run_all.py")]
SHARED_DATA = ROOT.parent / "shared" / "data" / "germany.csv"


class PeakMemory:
    """Samples the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.root, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                total = 0
                for process in processes:
                    try:
                        total += process.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_runner(args: list[str], measure_memory: bool = False) -> tuple[float, int, dict]:
    started = time.perf_counter()
    process = subprocess.Popen([*RUNNER, *args, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    memory = PeakMemory(process.pid) if measure_memory else None
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    peak = memory.stop() if memory else 0
    if process.returncode != 0:
        sys.exit(f"runner failed ({process.returncode}):\n{output[-4000:]}")
    outputs = Path(args[args.index("--outputs") + 1])
    summary = max(outputs.glob("*/summary.json"), key=lambda p: p.parent.name)
    return seconds, peak, json.loads(summary.read_text())


def plain_papermill(summary: dict, run_dir: Path, folder: Path, tracking_uri: str) -> float:
    """The same notebooks, one after another, each by papermill on a fresh kernel (the original way)."""
    import logging

    import papermill

    logging.getLogger("papermill").setLevel(logging.ERROR)  # "Passed unknown parameter" for `str | None`
    config_steps = {}  # notebook name -> source path
    for path in [*paths.NOTEBOOKS_DIR.glob("*.ipynb"), *paths.REPORT_TEMPLATES_DIR.glob("*.ipynb")]:
        config_steps[path.name] = path
    data_path = str(run_dir / "data" / paths.PROCESSED_DATA_NAME)
    env_before = dict(os.environ)
    os.environ.update({"MLFLOW_TRACKING_URI": tracking_uri, "POWERPIPE_EXPERIMENT": "plain_papermill"})
    started = time.perf_counter()
    try:
        for i, point in enumerate(summary["grid_points"]):
            parameters = dict(point["parameters"])
            if point["stage"] == "process":
                parameters.update(input_path=summary_data_path(summary, run_dir), output_path=str(folder / "p.csv"))
            elif point["stage"] == "train":
                parameters["data_path"] = data_path
            elif point["stage"] == "promote":  # the winner refit on every hour (stages.promote.refit)
                parameters.update(data_path=data_path, evaluation={"split": "none"})
            elif point["stage"] == "compare":
                parameters["parent_run_id"] = summary["mlflow_parent_run_id"]
            elif point["stage"] == "report":
                parameters.update(model_uri="models:/BestModel@production", data_path=data_path)
            papermill.execute_notebook(str(config_steps[point["notebook"]]), str(folder / f"{i}.ipynb"),
                                       parameters=parameters, progress_bar=False, cwd=str(folder),
                                       stderr_file=open(os.devnull, "w"))
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return time.perf_counter() - started


def summary_data_path(summary: dict, run_dir: Path) -> str:
    return str((run_dir / summary["data"]["path"]).resolve())


def fixed_cost(folder: Path, points: int = 12) -> float:
    """Median seconds of a grid point whose notebook does nothing, through the whole runner, one job."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("data_path: str | None = None\ni: int = 0")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("pass")]
    nbformat.write(nb, folder / "noop.ipynb")
    (folder / "noop.yaml").write_text(json.dumps({
        "experiment": "noop", "root": ".",
        "stages": {"train": [{"notebook": "noop.ipynb", "grid": {"i": list(range(points))}}]},
    }))
    csv = folder / "tiny.csv"
    from powerpipe.forecast import data

    data.write_processed(data.synthetic_frame("2016-01-01", "2016-01-02 23:00"), csv)
    _, _, summary = run_runner(["--config", str(folder / "noop.yaml"), "--data", str(csv),
                                "--outputs", str(folder / "out"), "--jobs", "1"])
    return statistics.median(p["seconds"] for p in summary["grid_points"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = SHARED_DATA if SHARED_DATA.exists() else paths.DATA_DIR / paths.PROCESSED_DATA_NAME
    parser.add_argument("--data", type=Path, default=default_data, help=f"processed CSV (default: {default_data})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data}: pass --data PATH to the processed CSV")

    with tempfile.TemporaryDirectory(prefix="powerpipe-bench-") as tmp:
        tmp = Path(tmp)
        common = ["--config", str(paths.DEFAULT_CONFIG), "--data", str(args.data), "--outputs", str(tmp / "out"),
                  "--jobs", str(args.jobs)]
        print(f"a. default pipeline, --jobs {args.jobs} ...", file=sys.stderr)
        first, peak, summary = run_runner(common, measure_memory=True)
        print(f"   {first:.1f} s, peak RSS {peak / 2**30:.2f} GiB", file=sys.stderr)
        print("b. the same again, unchanged (twice: the first re-run's report shows the new production model) ...",
              file=sys.stderr)
        _, _, warm = run_runner(common)
        rerun = [p for p in warm["grid_points"] if p["status"] != "cached"]
        assert all(p.get("stage") == "report" for p in rerun), f"re-run points besides the report: {rerun}"
        second, _, again = run_runner(common)
        print(f"   {second:.1f} s", file=sys.stderr)
        rerun = [p for p in again["grid_points"] if p["status"] != "cached"]
        assert not rerun, f"second unchanged run was not fully cached: {rerun}"
        print("a. the same notebooks by plain papermill, fresh kernels, one after another ...", file=sys.stderr)
        (tmp / "plain").mkdir()
        run_dir = tmp / "out" / summary["pipeline_run_id"]
        plain = plain_papermill(summary, run_dir, tmp / "plain", f"sqlite:///{tmp / 'out' / 'mlflow.db'}")
        print(f"   {plain:.1f} s", file=sys.stderr)
        print("c. fixed cost of a grid point ...", file=sys.stderr)
        (tmp / "noop").mkdir()
        fixed = fixed_cost(tmp / "noop")

    executions = len(summary["grid_points"])
    rows = [
        ("a", f"default pipeline ({executions} notebooks), --jobs {args.jobs}", f"{first:.1f} s",
         f"plain papermill: {plain:.1f} s", f"{first / plain:.3f}", "<= 0.35"),
        ("b", "second unchanged run (cached)", f"{second:.1f} s", f"first run: {first:.1f} s",
         f"{second / first:.3f}", "<= 0.05"),
        ("c", "fixed cost of one grid point (median)", f"{fixed:.3f} s", "", "", "<= 1.0 s"),
        ("d", "peak RSS, runner + kernels", f"{peak / 2**30:.2f} GiB", "", "", "<= 3 GiB"),
    ]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}, data {args.data.name}")
    print(f"\nmachine: {machine}\n")
    print("| | measure | value | against | ratio | target |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
