"""The runner's command line: parse, configure output, call ``run_pipeline``, print one summary.

Kept light on import so that ``--help`` answers at once; heavy modules load only when running.

Unattended (a scheduler, a service manager, CI): SIGTERM and SIGHUP stop the run as Ctrl-C does
(kernels stopped, open runs KILLED, summary.json ``killed``; exit 128 + the signal's number); calls
to a tracking server are bounded (``--store-timeout``); a full disk or an unreachable store is one
line, not a traceback; without a terminal, one log line per finished notebook replaces the bar.
``run_all.py gc --keep-runs N`` (or ``--keep-runs N`` after a run) removes old pipeline runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import paths
from .exceptions import PipelineError, RunLockedError, Terminated

log = logging.getLogger("powerpipe")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another pipeline run holds the outputs folder; try again later
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
# What schedulers and service managers send to stop a process (systemd, docker stop, Kubernetes,
# Airflow: SIGTERM; a closed terminal or SSH session: SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
DEFAULT_MIN_FREE_MB = 100  # a default run adds about 76 MB to outputs/ (models, notebooks, report)
GC_COMMAND = "gc"


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
                        help="seconds one notebook may run before it is stopped and failed; must be positive "
                             "(default: the config's)")
    parser.add_argument("--store-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long one call to a tracking server may keep retrying before the run stops with "
                             "'tracking server ... unreachable' (default: 60; sets MLflow's "
                             "MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _BACKOFF_JITTER and _TIMEOUT for "
                             "the runner and its kernels, except those already set in the environment)")
    parser.add_argument("--min-free-mb", type=float, default=DEFAULT_MIN_FREE_MB, metavar="MB",
                        help=f"refuse to start when the outputs folder's disk has less free space "
                             f"(default: {DEFAULT_MIN_FREE_MB}; 0: no check)")
    parser.add_argument("--keep-runs", type=int, default=None, metavar="N",
                        help="after the run, remove all but the newest N pipeline runs: their folders, MLflow runs "
                             "and artifacts (never a run behind a registered model version or one a kept run "
                             "reused); also: run_all.py gc --keep-runs N [--dry-run]")
    parser.add_argument("--fresh-kernels", action="store_true",
                        help="a new kernel for every notebook, nothing preloaded (slower; the classic papermill way)")
    parser.add_argument("--force", action="store_true",
                        help="run every grid point, even those with an earlier FINISHED run of the same inputs")
    parser.add_argument("--force-promote", action="store_true",
                        help="promote the best new run even if it does not beat the current production model")
    parser.add_argument("--reproduce", metavar="RUN_ID",
                        help="re-execute one recorded grid point from its notebook source, parameters and data, "
                             "and check that its metrics match")
    parser.add_argument("--search-storage", metavar="URL", default=None,
                        help="database of the searches' Optuna studies (default: optuna.db beside a SQLite "
                             "tracking store; required with a tracking server unless the pipeline file sets it)")
    parser.add_argument("--if-running", choices=("fail", "wait"), default="fail",
                        help="when another pipeline run holds the outputs folder: fail at once (exit 75, the "
                             "holder named) or wait for it (default: fail)")
    parser.add_argument("--dry-run", action="store_true", help="print each notebook and its parameters; run nothing")
    stagewise = parser.add_argument_group(
        "one stage at a time (an external scheduler's tasks; see docs/running-every-week.md)")
    stagewise.add_argument("--start", action="store_true",
                           help="check everything, create the run folder and parent run, take the outputs lock; "
                                "prints pipeline_run_id=ID last")
    stagewise.add_argument("--pipeline-run", metavar="ID", help="the pipeline run (from --start) to act on")
    stagewise.add_argument("--stage", choices=("process", "train", "compare", "promote", "report"),
                           help="with --pipeline-run: run this stage of it")
    stagewise.add_argument("--point", metavar="LABEL", help="with --stage train: only this grid point")
    stagewise.add_argument("--finish", action="store_true",
                           help="with --pipeline-run: record what never ran as skipped, write summary.json, end "
                                "the parent run, release the lock")
    stagewise.add_argument("--list-points", action="store_true",
                           help="print the training grid points' labels, one per line (for task mapping)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (and, without a terminal, no line per finished notebook)")
    parser.epilog = f"Remove old pipeline runs: %(prog)s {GC_COMMAND} --keep-runs N (see %(prog)s {GC_COMMAND} --help)."
    return parser


def build_gc_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"run_all.py {GC_COMMAND}",
        description="Remove old pipeline runs: all but the newest N run folders, and through MLflow their runs "
                    "and artifacts (logged models included). Never removed: a run behind a registered model "
                    "version (the production model's among them), a run a kept pipeline run reused from the "
                    "cache, a pipeline run still RUNNING. Says what it removed and how much space it freed.",
    )
    parser.add_argument("--keep-runs", type=int, required=True, metavar="N", help="pipeline runs to keep (at least 1)")
    parser.add_argument("--outputs", type=Path, default=paths.OUTPUTS_DIR,
                        help="folder of the pipeline runs (default: outputs/)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the outputs folder)")
    parser.add_argument("--store-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long one call to a tracking server may keep retrying (default: 60)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    gc_command = bool(argv) and argv[0] == GC_COMMAND
    args = build_gc_parser().parse_args(argv[1:]) if gc_command else build_parser().parse_args(argv)
    problem = check_arguments(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from . import tracking  # light: MLflow is imported inside its functions

    # Before anything imports MLflow: it reads these once, and kernels and Dask workers inherit them.
    tracking.bound_store_calls(args.store_timeout or tracking.STORE_BUDGET_SECONDS)
    if not args.debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow here and in the kernels
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # With a tracking server, MLflow prints two "View run ... at" lines per ended run to stdout.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s")
    if not args.debug:
        for noisy in ("mlflow", "alembic", "papermill", "traitlets", "urllib3", "py.warnings"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        logging.captureWarnings(True)
    try:
        with stop_signals_as_interrupts():
            if gc_command:
                return gc(args)
            if args.dry_run:
                return dry_run(args.config)
            if args.list_points or args.start or args.pipeline_run:
                return stagewise_command(args)
            if args.reproduce:
                return reproduce(args)
            return run(args)
    except RunLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated as exc:
        print(f"stopped by {exc.signal_name}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - boundary: a full disk or a lost store is one line, a bug a traceback
        message = known_failure(exc, args)
        if message is None or args.debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def check_arguments(args) -> str | None:
    """What is wrong with the arguments argparse accepted, or None."""
    def positive(value) -> bool:
        return value is not None and math.isfinite(value) and value > 0

    if getattr(args, "timeout", None) is not None and not positive(args.timeout):
        return (f"--timeout must be a positive number of seconds, got {args.timeout:g} "
                "(leave it out to use the config's timeout)")
    if args.store_timeout is not None and not positive(args.store_timeout):
        return f"--store-timeout must be a positive number of seconds, got {args.store_timeout:g}"
    min_free = getattr(args, "min_free_mb", 0)
    if not (math.isfinite(min_free) and min_free >= 0):
        return f"--min-free-mb must be 0 (no check) or a positive number of MB, got {min_free:g}"
    if args.keep_runs is not None and args.keep_runs < 1:
        return f"--keep-runs must be at least 1 (the run just made is always kept), got {args.keep_runs}"
    return None


def known_failure(exc: BaseException, args) -> str | None:
    """One line for a failure a user can act on without a traceback (a full disk, a store that stopped
    answering), or None for a bug."""
    from . import fsutil, tracking

    disk_full = fsutil.as_disk_full_error(exc, args.outputs)
    if disk_full is not None:
        return str(disk_full)
    if tracking.is_unreachable(exc) and _from_store_client(exc):
        return str(tracking.unreachable_error(tracking.tracking_uri(args.tracking_uri, args.outputs), exc))
    return None


def _from_store_client(exc: BaseException | None) -> bool:
    """Raised by MLflow's client or what it talks through (not, say, a Dask connection that dropped)."""
    from .exceptions import chain

    return any(type(link).__module__.split(".")[0] in ("mlflow", "requests", "urllib3", "sqlalchemy")
               for link in chain(exc))


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """SIGTERM and SIGHUP raise ``Terminated`` (a KeyboardInterrupt) in the main thread, as Ctrl-C does.

    The first one stops the run; any further one while it closes kernels and runs is only logged (a
    scheduler that wants it gone at once sends SIGKILL). A signal ignored when we started (``nohup``
    ignores SIGHUP) stays ignored. Outside the main thread, or when done, the handlers are as before.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if stopping:
            log.warning("%s: already stopping (stopping kernels, marking runs KILLED)", signal.Signals(signum).name)
            return
        stopping.append(signum)
        raise Terminated(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def dry_run(config_path: Path) -> int:
    from .pipeline import load_and_check, plan

    config = load_and_check(config_path)
    steps = plan(config)
    for step, parameters in steps:
        params = ", ".join(f"{k}={v!r}" for k, v in parameters.items())
        print(f"{step.stage:8} {_display_path(step.notebook)}  {params}")
    print(f"{sum(step.executions for step, _ in steps)} notebook executions planned; nothing was run.")
    return EXIT_OK


def stagewise_command(args) -> int:
    """--list-points, --start, or --pipeline-run ID with --stage [--point] or --finish."""
    from . import stagewise

    if args.list_points:
        print("\n".join(stagewise.list_points(args.config)))
        return EXIT_OK
    if args.start:
        pipeline = stagewise.start(run_options(args))
        print(f"pipeline_run_id={pipeline.run_id}")
        return EXIT_OK
    if args.finish == bool(args.stage):
        raise PipelineError("--pipeline-run needs exactly one of --stage STAGE or --finish")
    on_step = (lambda result: log.info("%s", step_line(result))) if not args.quiet else None
    if args.finish:
        summary = stagewise.finish(args.outputs, args.pipeline_run, on_step=on_step)
        print_summary(summary, Path(args.outputs).resolve() / summary["pipeline_run_id"])
        return EXIT_OK if summary["status"] == "ok" else EXIT_FAILED
    ok = stagewise.run_stage(args.outputs, args.pipeline_run, args.stage, args.point, on_step=on_step)
    return EXIT_OK if ok else EXIT_FAILED


def run_options(args):
    """RunOptions from the command line (checked: jobs, executor and scheduler, free space)."""
    from .pipeline import RunOptions

    if args.jobs < 1:
        raise PipelineError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor == "local" and args.scheduler:
        raise PipelineError("--scheduler sends notebooks to a Dask cluster: use it with --executor dask")
    executor = args.executor or ("dask" if args.scheduler else "local")
    if args.min_free_mb > 0:
        from . import fsutil

        fsutil.check_free_space(args.outputs, int(args.min_free_mb * fsutil.MB))
    return RunOptions(config=args.config, data=args.data, tracking_uri=args.tracking_uri, outputs=args.outputs,
                      jobs=args.jobs, reuse_kernels=not args.fresh_kernels, timeout=args.timeout,
                      force=args.force, force_promote=args.force_promote, progress=not args.quiet,
                      executor=executor, scheduler=args.scheduler, if_running=args.if_running,
                      search_storage=args.search_storage)


def run(args) -> int:
    from .pipeline import OK, run_pipeline

    options = run_options(args)
    display = progress_display(args.quiet)
    bar = None

    def on_start(pipeline, total: int) -> None:
        nonlocal bar
        from . import tracking

        log.info("pipeline run %s -> %s", pipeline.run_id, pipeline.run_dir)
        log.info("tracking: %s (experiment %s)", tracking.redact(pipeline.tracking_uri), pipeline.config.experiment)
        if display == "bar":
            from tqdm import tqdm

            bar = tqdm(total=total, unit="notebook", file=sys.stderr, dynamic_ncols=True)

    def on_step(result) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{result.notebook} {result.status}")
            bar.update(1)
        elif display == "lines":
            log.info("%s", step_line(result))

    try:
        summary = run_pipeline(options, on_step=on_step, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
    print_summary(summary, Path(options.outputs).resolve() / summary["pipeline_run_id"])
    code = EXIT_OK if summary["status"] == OK else EXIT_FAILED
    if args.keep_runs is not None:
        collect_garbage(args.outputs, args.tracking_uri, args.keep_runs)
    return code


def progress_display(quiet: bool) -> str:
    """"bar" on a terminal; "lines" (one per finished notebook) for a journal, a task log or CI; "none"."""
    if quiet:
        return "none"
    return "bar" if sys.stderr.isatty() else "lines"


def step_line(result) -> str:
    """``HH:MM:SS stage notebook k=v,... STATUS 12.3s`` (and the error of a failed one): a log line that
    reads well in a journal or a task log, where a progress bar's frames do not."""
    parameters = ",".join(f"{k}={v}" for k, v in (result.parameters or {}).items()) or "-"
    line = (f"{time.strftime('%H:%M:%S')} {result.stage} {result.notebook} {parameters} "
            f"{str(result.status).upper()} {float(result.seconds or 0):.1f}s")
    if getattr(result, "error", None) and result.status not in ("ok", "cached"):
        line += f" ({str(result.error).splitlines()[0]})"
    return line


def gc(args) -> int:
    """``run_all.py gc --keep-runs N``: remove old pipeline runs, or with --dry-run say which."""
    collect_garbage(args.outputs, args.tracking_uri, args.keep_runs, dry_run=args.dry_run)
    return EXIT_OK


def collect_garbage(outputs: Path, tracking_uri: str | None, keep_runs: int, dry_run: bool = False) -> None:
    from . import retention, tracking

    uri = tracking.tracking_uri(tracking_uri, outputs)
    report = retention.collect_garbage(outputs, uri, keep_runs, dry_run=dry_run)
    print(report.describe())


def reproduce(args) -> int:
    from .reproduce import reproduce_run

    outcome = reproduce_run(args.reproduce, tracking_uri=args.tracking_uri, outputs=args.outputs,
                            data_path=None if args.data == "auto" else args.data, timeout=args.timeout)
    print(outcome.report())
    return EXIT_OK if outcome.matches else EXIT_FAILED


def print_summary(summary: dict, run_dir: Path) -> None:
    from .search import listed_points, search_lines

    rows = []
    for point in listed_points(summary):  # of a search's trials, the best few
        if isinstance(point, str):  # "… N more trials of <study>"
            rows.append(point)
            continue
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) and point.get("trial") else f"{k}={v}"
                           for k, v in point["parameters"].items()) or "-"
        metrics = point["metrics"]
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("rmse", "mae", "r2") if k in metrics) or "-"
        where = point["output_notebook"] or point.get("error") or "-"
        if point["status"] == "cached":
            where = f"reused run {point['mlflow_run_id']}"
        rows.append((point["stage"], point["notebook"], params, point["status"], shown, where))
    headers = ("stage", "notebook", "parameters", "status", "metrics", "output")
    widths = [max(len(str(r[i])) for r in [headers, *rows] if not isinstance(r, str)) for i in range(len(headers))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print()
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(row if isinstance(row, str) else line.format(*row))
    print()
    for text in search_lines(summary, run_dir):  # each search's outcome, and its failed trials in one line
        print(text)
    for point in summary["grid_points"]:
        if point["status"] == "failed" and not point.get("trial"):
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
