"""A replay of the weekly loop: how long it takes, and what the warm kernels save.

    .venv/bin/python benchmarks/bench_replay.py [--weeks N] [--config FILE] [--data PATH] [--jobs N]
        [--keep-runs N [--keep-versions N]]

Runs ``powerpipe replay --start 2016-01-04 --weeks N`` (default: 4 weeks of runner/smoke.yaml on the
real data) in a temporary folder with its own store, then the same command again (served from its
state). Prints each week's seconds, the first week (cold kernels) apart from the others (warm), the
extrapolation to 52 weeks (first week + 51 warm weeks + the report), and the machine's load average
before and after, since a loaded machine slows every number; then the soak's end state: every week's
summary ``ok``, nothing RUNNING in the store, and the sizes of the replay folder and its store (bounded
by ``--keep-runs``). Target: 52 weeks in at most 15 minutes on 2 cores (``--weeks 52`` measures it whole).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from powerpipe.core import paths  # noqa: E402
from powerpipe.run.replay import folder_name  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data" / "germany.csv"
START = "2016-01-04"
TARGET_SECONDS = 15 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--config", default=str(paths.SMOKE_CONFIG))
    parser.add_argument("--data", default=str(SHARED_DATA) if SHARED_DATA.is_file() else "synthetic")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--outputs", default=None, help="keep the replay here (default: a temporary folder)")
    parser.add_argument("--keep-runs", type=int, default=None, help="passed to the replay (retention)")
    parser.add_argument("--keep-versions", type=int, default=None, help="passed to the replay (with --keep-runs)")
    args = parser.parse_args()
    outputs = Path(args.outputs or tempfile.mkdtemp(prefix="bench-replay-"))
    command = [sys.executable, str(paths.RUNNER_DIR / "run_all.py"), "replay", "--config", args.config,
               "--data", args.data, "--outputs", str(outputs), "--start", START, "--weeks", str(args.weeks),
               "--jobs", str(args.jobs), "--quiet"] + (["--keep-runs", str(args.keep_runs)] if args.keep_runs else []) \
        + (["--keep-versions", str(args.keep_versions)] if args.keep_versions else [])
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    load_before = os.getloadavg()
    started = time.perf_counter()
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    total = time.perf_counter() - started
    again_started = time.perf_counter()
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    again_seconds = time.perf_counter() - again_started
    load_after = os.getloadavg()
    state_file = outputs / folder_name(START, args.weeks) / "replay.json"
    if not state_file.is_file():
        print(first.stdout[-4000:], first.stderr[-4000:])
        return 1
    state = json.loads(state_file.read_text())
    rows = sorted(state["weeks"].values(), key=lambda r: r["index"])
    seconds = [r["seconds"] for r in rows]
    weeks_total = sum(seconds)
    other = total - weeks_total  # start-up, the replay report, the end
    warm = statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0]
    projected = seconds[0] + 51 * warm + other
    print(f"replay of {args.weeks} weeks of {Path(args.config).name} on {args.data}, --jobs {args.jobs}, "
          f"{os.cpu_count()} cores")
    print(f"load average before: {', '.join(f'{x:.1f}' for x in load_before)}; "
          f"after: {', '.join(f'{x:.1f}' for x in load_after)}")
    for row in rows:
        print(f"  week {row['index'] + 1} as of {row['week']}: {row['seconds']:.1f} s ({row['status']})")
    print(f"total {total:.0f} s: weeks {weeks_total:.0f} s, the rest (start-up, report) {other:.0f} s")
    print(f"first week (cold kernels) {seconds[0]:.1f} s; the others (warm) {warm:.1f} s on average")
    print(f"52 weeks, extrapolated: {projected:.0f} s ({projected / 60:.1f} min; target {TARGET_SECONDS / 60:.0f} min: "
          f"{'met' if projected <= TARGET_SECONDS else 'NOT met'} on this machine, at this load)")
    print(f"run again (served from its state): {again_seconds:.1f} s, exit {again.returncode}")
    print(soak(state_file.parent, rows))
    if first.returncode != 0:
        print(f"the replay exited {first.returncode}: weeks not ok are timed all the same; see {state_file.parent}")
    return first.returncode


def soak(folder: Path, rows: list[dict]) -> str:
    """The end state of the soak: weeks ok, nothing RUNNING, and what the folder and its store weigh."""
    import mlflow

    client = mlflow.MlflowClient(paths.default_tracking_uri(folder))
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'") if experiments else []
    summaries = [json.loads(p.read_text())["status"] for p in folder.glob("*/summary.json")]

    def size(path: Path) -> float:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return sum(f.stat().st_size for f in files) / 2**20

    store = size(paths.tracking_db(folder)) + size(folder / "mlartifacts")
    versions = sum(len(client.search_model_versions(f"name='{m.name}'")) for m in client.search_registered_models())
    return (f"soak: {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} weeks ok; {len(running)} runs RUNNING; "
            f"{len(summaries)} run folders kept ({summaries.count('ok')} ok); {versions} model versions registered\n"
            f"sizes: replay folder {size(folder):.0f} MiB in all, of which the store (mlflow.db + mlartifacts) "
            f"{store:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
