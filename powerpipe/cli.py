"""The runner's command line: parse, configure output, call ``run_pipeline``, print one summary.

Kept light on import so that ``--help`` answers at once; heavy modules load only when running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import paths
from .exceptions import PipelineError

log = logging.getLogger("powerpipe")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description="Execute the pipeline's notebooks with papermill over their grids, track every "
                    "execution in MLflow, promote the best model and render the weekly report.",
    )
    parser.add_argument("--config", type=Path, default=paths.DEFAULT_CONFIG,
                        help="pipeline YAML (default: runner/pipeline.yaml; runner/smoke.yaml is a tiny one)")
    parser.add_argument("--data", default="auto",
                        help="processed CSV path, 'synthetic', 'opsd' (the process stage builds it from the raw "
                             "Open Power System Data files), or 'auto': data/germany.csv, else download the "
                             "tutorial's file, else synthetic data (default: auto)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the outputs folder)")
    parser.add_argument("--outputs", type=Path, default=paths.OUTPUTS_DIR,
                        help="folder for pipeline runs and the default tracking store (default: outputs/)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="notebooks run at once, each on its own kernel (default: the number of CPU cores)")
    parser.add_argument("--executor", choices=("local", "dask"), default=None,
                        help="where notebooks run: 'local' (warm kernels on this machine) or 'dask' (a Dask "
                             "cluster; see --scheduler). Default: dask when --scheduler is given, else local")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                        help="Dask scheduler to send notebooks to (with --executor dask; without it, a local "
                             "cluster of --jobs worker processes is started). Workers need the project installed "
                             "and the outputs folder at the same path; a remote one needs an MLflow server "
                             "(--tracking-uri http://...)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds one notebook may run before it is stopped and failed (default: the config's)")
    parser.add_argument("--fresh-kernels", action="store_true",
                        help="a new kernel for every notebook, nothing preloaded (slower; the classic papermill way)")
    parser.add_argument("--force", action="store_true",
                        help="run every grid point, even those with an earlier FINISHED run of the same inputs")
    parser.add_argument("--force-promote", action="store_true",
                        help="promote the best new run even if it does not beat the current production model")
    parser.add_argument("--reproduce", metavar="RUN_ID",
                        help="re-execute one recorded grid point from its notebook source, parameters and data, "
                             "and check that its metrics match")
    parser.add_argument("--dry-run", action="store_true", help="print each notebook and its parameters; run nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow here and in the kernels
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s")
    if not args.debug:
        for noisy in ("mlflow", "alembic", "papermill", "traitlets", "urllib3", "py.warnings"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        logging.captureWarnings(True)
    try:
        if args.dry_run:
            return dry_run(args.config)
        if args.reproduce:
            return reproduce(args)
        return run(args)
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def dry_run(config_path: Path) -> int:
    from .pipeline import load_and_check, plan

    config = load_and_check(config_path)
    steps = plan(config)
    for step in steps:
        params = ", ".join(f"{k}={v!r}" for k, v in step.parameters.items())
        print(f"{step.stage:8} {_display_path(step.notebook)}  {params}")
    print(f"{len(steps)} notebook executions planned; nothing was run.")
    return EXIT_OK


def run(args) -> int:
    from .pipeline import OK, RunOptions, run_pipeline

    if args.jobs < 1:
        raise PipelineError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor == "local" and args.scheduler:
        raise PipelineError("--scheduler sends notebooks to a Dask cluster: use it with --executor dask")
    executor = args.executor or ("dask" if args.scheduler else "local")
    options = RunOptions(config=args.config, data=args.data, tracking_uri=args.tracking_uri, outputs=args.outputs,
                         jobs=args.jobs, reuse_kernels=not args.fresh_kernels, timeout=args.timeout,
                         force=args.force, force_promote=args.force_promote, progress=not args.quiet,
                         executor=executor, scheduler=args.scheduler)
    bar = None

    def on_start(pipeline, total: int) -> None:
        nonlocal bar
        from . import tracking

        log.info("pipeline run %s -> %s", pipeline.run_id, pipeline.run_dir)
        log.info("tracking: %s (experiment %s)", tracking.redact(pipeline.tracking_uri), pipeline.config.experiment)
        if options.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="notebook", file=sys.stderr, dynamic_ncols=True)

    def on_step(result) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{result.notebook} {result.status}")
            bar.update(1)

    try:
        summary = run_pipeline(options, on_step=on_step, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
    print_summary(summary, Path(options.outputs).resolve() / summary["pipeline_run_id"])
    return EXIT_OK if summary["status"] == OK else EXIT_FAILED


def reproduce(args) -> int:
    from .reproduce import reproduce_run

    outcome = reproduce_run(args.reproduce, tracking_uri=args.tracking_uri, outputs=args.outputs,
                            data_path=None if args.data == "auto" else args.data, timeout=args.timeout)
    print(outcome.report())
    return EXIT_OK if outcome.matches else EXIT_FAILED


def print_summary(summary: dict, run_dir: Path) -> None:
    rows = []
    for point in summary["grid_points"]:
        params = ", ".join(f"{k}={v}" for k, v in point["parameters"].items()) or "-"
        metrics = point["metrics"]
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("rmse", "mae", "r2") if k in metrics) or "-"
        where = point["output_notebook"] or point.get("error") or "-"
        if point["status"] == "cached":
            where = f"reused run {point['mlflow_run_id']}"
        rows.append((point["stage"], point["notebook"], params, point["status"], shown, where))
    headers = ("stage", "notebook", "parameters", "status", "metrics", "output")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print()
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print()
    for point in summary["grid_points"]:
        if point["status"] == "failed":
            print(f"FAILED {point['notebook']} {json.dumps(point['parameters'])}: {point['error']}")
            print(f"       executed notebook: {run_dir / point['output_notebook']}")
    if summary["data"]["source"] == "synthetic":
        print("NOTE: this run used SYNTHETIC data (generated, not measured).")
    promoted = summary["promoted"]
    if promoted:
        print(f"promoted: {promoted['name']} version {promoted['version']} "
              f"({promoted['metric']}={promoted['value']:.4g}, run {promoted['run_id']})")
    else:
        print("promoted: nothing")
    if summary["report"]:
        print(f"report:   {run_dir / summary['report']}")
    print(f"summary:  {run_dir / 'summary.json'}")
    print(f"status:   {summary['status']}")


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)
