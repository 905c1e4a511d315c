"""The one command line: ``powerpipe`` (a click group), one subcommand per action.

``powerpipe run`` executes the pipeline (``runner/run_all.py`` is the same command, its flags unchanged);
``gc``, ``reproduce``, ``start``/``stage``/``finish``/``list-points`` (one stage at a time, for a
scheduler's tasks) and ``dashboard`` are the others. Every command configures output here and only here,
then calls the library, and prints one summary. Kept light on import so that ``--help`` answers at once;
heavy modules load only when running.

Unattended (a scheduler, a service manager, CI): SIGTERM and SIGHUP stop the run as Ctrl-C does
(kernels stopped, open runs KILLED, summary.json ``killed``; exit 128 + the signal's number); calls
to a tracking server are bounded (``--store-timeout``); a full disk or an unreachable store is one
line, not a traceback; without a terminal, one log line per finished notebook replaces the bar.
``powerpipe gc --keep-runs N`` (or ``--keep-runs N`` after a run) removes old pipeline runs.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from powerpipe.core.constants import CACHED, DONE, OK
from types import SimpleNamespace

import click

from powerpipe import __version__
from powerpipe.core import paths
from powerpipe.core.constants import MODEL_NAME, PRODUCTION_ALIAS, STAGES
from powerpipe.core.exceptions import PipelineError, RunLockedError, Terminated

log = logging.getLogger("powerpipe")


class ExitCode(enum.IntEnum):
    """Every exit status the command can return (docs/index.md lists them; a test checks it)."""

    OK = 0
    FAILED = 1  # a notebook or stage failed; the rest ran and summary.json says which
    USAGE = 2  # a problem found before anything ran (config, flags, data, store), or a full disk / lost store
    ALERT = 3  # --fail-on-alert: the run succeeded but monitoring raised an alert
    LOCKED = 75  # EX_TEMPFAIL: another pipeline run holds the outputs folder; try again later
    HANGUP = 128 + signal.SIGHUP  # 129: stopped by SIGHUP (a closed terminal)
    INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
    TERMINATED = 128 + signal.SIGTERM  # 143: stopped by SIGTERM (systemd, Airflow, docker stop)


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.LOCKED
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
# What schedulers and service managers send to stop a process (systemd, docker stop, Kubernetes,
# Airflow: SIGTERM; a closed terminal or SSH session: SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
DEFAULT_MIN_FREE_MB = 100  # a default run adds about 76 MB to outputs/ (models, notebooks, report)
RUN_ALL = "run_all.py"


# -- the command line ------------------------------------------------------------------------------------
# Options shared by several commands, declared once.

def _config_option(f):
    return click.option("--config", type=click.Path(path_type=Path), default=paths.DEFAULT_CONFIG,
                        show_default="runner/pipeline.yaml",
                        help="pipeline YAML (runner/smoke.yaml is a tiny one)")(f)


def _store_options(f):
    f = click.option("--store-timeout", type=float, default=None, metavar="SECONDS",
                     help="how long one call to a tracking server may keep retrying before the command stops "
                          "with 'tracking server ... unreachable' (default: 60; sets MLflow's "
                          "MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _BACKOFF_JITTER and _TIMEOUT for "
                          "the runner and its kernels, except those already set in the environment)")(f)
    f = click.option("--outputs", type=click.Path(path_type=Path), default=paths.OUTPUTS_DIR,
                     show_default="outputs/", help="folder for pipeline runs and the default tracking store")(f)
    f = click.option("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the outputs folder)")(f)
    return f


def _debug_option(f):
    return click.option("--debug", is_flag=True, help="show tracebacks and debug logging")(f)


def _execution_options(f):
    """Where and how notebooks run: ``run``, ``start`` and ``replay`` take the same."""
    for decorate in reversed([
        click.option("--jobs", type=int, default=os.cpu_count() or 1, show_default="the number of CPU cores",
                     help="notebooks run at once, each on its own kernel"),
        click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
                     help="where notebooks run: 'local' (warm kernels on this machine) or 'dask' (a Dask cluster; "
                          "see --scheduler). Default: dask when --scheduler is given, else local"),
        click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
                     help="Dask scheduler to send notebooks to (with --executor dask; without it, a local cluster "
                          "of --jobs worker processes is started). Workers need the project installed and the "
                          "outputs folder at the same path; a remote one needs an MLflow server"),
        click.option("--timeout", type=float, default=None,
                     help="seconds one notebook may run before it is stopped and failed; must be positive "
                          "(default: the config's)"),
        click.option("--fresh-kernels", is_flag=True,
                     help="a new kernel for every notebook, nothing preloaded (slower; the classic papermill way)"),
    ]):
        f = decorate(f)
    return f


def _run_options(f):
    """The flags of a pipeline run (``run``, and ``start``, which sets one up for a scheduler)."""
    for decorate in reversed([
        _config_option,
        click.option("--data", default="auto", show_default=True,
                     help="processed CSV path, 'synthetic', 'opsd' (the process stage builds it from the raw Open "
                          "Power System Data files), or 'auto': data/germany.csv, else download the tutorial's "
                          "file, else synthetic data"),
        _store_options,
        _execution_options,
        click.option("--min-free-mb", type=float, default=DEFAULT_MIN_FREE_MB, show_default=True, metavar="MB",
                     help="refuse to start when the outputs folder's disk has less free space (0: no check)"),
        click.option("--force", is_flag=True,
                     help="run every grid point, even those with an earlier FINISHED run of the same inputs"),
        click.option("--force-promote", is_flag=True,
                     help="promote the best new run even if it does not beat the current production model"),
        click.option("--search-storage", metavar="URL", default=None,
                     help="database of the searches' Optuna studies (default: optuna.db beside a SQLite tracking "
                          "store; required with a tracking server unless the pipeline file sets it)"),
        click.option("--if-running", type=click.Choice(["fail", "wait"]), default="fail", show_default=True,
                     help="when another pipeline run holds the outputs folder: fail at once (exit 75, the holder "
                          "named) or wait for it"),
        click.option("--as-of", metavar="DATE", default=None,
                     help="the run sees only the hours before DATE (UTC; '2016-07-04' or '2016-07-04 06:00'): "
                          "the data, however resolved, is cut there into the run folder and every stage reads "
                          "that file. Re-runs a past week exactly"),
        click.option("--fail-on-alert", is_flag=True,
                     help="exit 3 when monitoring raised an alert (the pipeline file's monitor: limits), so that a "
                          "scheduler marks the run; without it an alert is printed and the exit code is as usual"),
        click.option("--quiet", is_flag=True,
                     help="no progress bar (and, without a terminal, no line per finished notebook)"),
        _debug_option,
    ]):
        f = decorate(f)
    return f


class _Group(click.Group):
    """Lists commands in the order they are declared (the order a user meets them), not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="powerpipe")
def cli():
    """Execute the pipeline's notebooks with papermill over their grids and searches, track every execution
    in MLflow, promote the best model and render the weekly report; serve it on a dashboard."""


_RUN_EPILOG = """\b
Other commands (COMMAND --help for each):
  gc --keep-runs N          remove old pipeline runs
  reproduce RUN_ID          re-execute one recorded grid point, check its metrics
  start / stage / finish    one stage at a time, for a scheduler's tasks
  list-points               the training grid points' labels
  rollback [--to VERSION]   move the production alias back (default: to its previous holder)
  replay --start MONDAY     the weekly loop replayed week by week; a report comparing policies
  dashboard                 serve the dashboard on the production model

\b
runner/run_all.py [FLAGS] is `powerpipe run [FLAGS]`; it also still takes the older
flag forms: --reproduce RUN_ID, --start, --pipeline-run ID --stage S [--point L],
--pipeline-run ID --finish, --list-points."""


@cli.command(epilog=_RUN_EPILOG)
@_run_options
@click.option("--keep-runs", type=int, default=None, metavar="N",
              help="after the run, remove all but the newest N pipeline runs: their folders, MLflow runs and "
                   "artifacts (never a run behind a registered model version or one a kept run reused)")
@click.option("--keep-versions", type=int, default=None, metavar="N",
              help="with --keep-runs: of each registered model keep only the newest N versions besides those an "
                   "alias points at; the others leave the registry, and their runs go as any other")
@click.option("--dry-run", is_flag=True, help="print each notebook and its parameters; run nothing")
# The flag forms of other commands, from before subcommands: schedules written for run_all.py use them.
@click.option("--reproduce", metavar="RUN_ID", hidden=True)
@click.option("--start", is_flag=True, hidden=True)
@click.option("--pipeline-run", metavar="ID", hidden=True)
@click.option("--stage", type=click.Choice(STAGES), hidden=True)
@click.option("--point", metavar="LABEL", hidden=True)
@click.option("--finish", is_flag=True, hidden=True)
@click.option("--list-points", is_flag=True, hidden=True)
def run(**params):
    """Run the pipeline: process, train (grids and searches), compare, promote, report."""
    args = _invocation(params)
    if args.dry_run:
        return dry_run(args.config)
    if args.list_points or args.start or args.pipeline_run:
        return stagewise_command(args)
    if args.reproduce:
        return reproduce(args)
    return run_pipeline_command(args)


@cli.command()
@click.option("--keep-runs", type=int, required=True, metavar="N", help="pipeline runs to keep (at least 1)")
@click.option("--keep-versions", type=int, default=None, metavar="N",
              help="of each registered model keep only the newest N versions besides those an alias points at; "
                   "the others leave the registry, and their runs go as any other")
@_store_options
@click.option("--dry-run", is_flag=True, help="say what would be removed; remove nothing")
@_debug_option
def gc(**params):
    """Remove old pipeline runs: all but the newest N run folders, and through MLflow their runs and
    artifacts (logged models included). Never removed: a run behind a registered model version (the
    production model's among them; with --keep-versions, only the versions kept), a run a kept pipeline
    run reused from the cache, a pipeline run still RUNNING. Says what it removed and how much space it
    freed."""
    args = _invocation(params)
    collect_garbage(args.outputs, args.tracking_uri, args.keep_runs, dry_run=args.dry_run,
                    keep_versions=args.keep_versions)
    return EXIT_OK


@cli.command("reproduce")
@click.argument("run_id")
@click.option("--data", default="auto", show_default=True,
              help="the data to re-run on (default: the recorded file, checked against its SHA-256)")
@_store_options
@click.option("--timeout", type=float, default=None, help="seconds the notebook may run (default: none)")
@_debug_option
def reproduce_command(run_id, **params):
    """Re-execute one recorded grid point from its notebook source, parameters and data, and check that its
    metrics match."""
    args = _invocation(params, reproduce=run_id)
    return reproduce(args)


@cli.command()
@_run_options
def start(**params):
    """Check everything, create the run folder and parent run, take the outputs lock; prints
    pipeline_run_id=ID last (the first task of a scheduler's DAG; see docs/running-every-week.md)."""
    return stagewise_command(_invocation(params, start=True))


@cli.command()
@click.argument("stage_name", metavar="STAGE", type=click.Choice(STAGES))
@click.option("--pipeline-run", metavar="ID", required=True, help="the pipeline run (from start) to act on")
@click.option("--point", metavar="LABEL", help="with the train stage: only this grid point")
@_store_options
@click.option("--quiet", is_flag=True, help="no line per finished notebook")
@_debug_option
def stage(stage_name, **params):
    """Run one stage of a pipeline run made by start (a scheduler's task)."""
    return stagewise_command(_invocation(params, stage=stage_name))


@cli.command()
@click.option("--pipeline-run", metavar="ID", required=True, help="the pipeline run (from start) to finish")
@_store_options
@click.option("--quiet", is_flag=True, help="no line per notebook recorded as skipped")
@_debug_option
def finish(**params):
    """Record what never ran as skipped, write summary.json, end the parent run, release the lock."""
    return stagewise_command(_invocation(params, finish=True))


@cli.command("list-points")
@_config_option
@_debug_option
def list_points(**params):
    """Print the training grid points' labels, one per line (for a scheduler's task mapping)."""
    return stagewise_command(_invocation(params, list_points=True))


@cli.command()
@click.option("--to", "to_version", metavar="VERSION", default=None,
              help="the version to give the alias back to (default: the version that held it before the current one)")
@_config_option
@_store_options
@_debug_option
def rollback(to_version, **params):
    """Move the production alias (the pipeline file's stages.promote model and alias) back to an earlier
    version, and record the move in the alias history. Takes the outputs folder's lock as a run does
    (exit 75 while a run holds it); an unknown version is refused (exit 2)."""
    args = _invocation(params)
    from powerpipe.run.rollback import rollback as roll_back

    name, alias, move = roll_back(args.config, to_version, tracking_uri=args.tracking_uri, outputs=args.outputs)
    if move is None:
        print(f"nothing to roll back: models:/{name}@{alias} is already version {to_version}")
    else:
        print(f"rolled back: models:/{name}@{alias} version {move.from_version} -> version {move.to_version}")
    return EXIT_OK


@cli.command()
@_config_option
@click.option("--start", "start_date", metavar="DATE", required=True,
              help="the first Monday to run as of (e.g. 2016-01-04)")
@click.option("--weeks", type=int, default=52, show_default=True, help="how many weeks, one Monday after another")
@click.option("--data", default="auto", show_default=True, help="the data, as for run (every week cuts it at its Monday)")
@_store_options
@_execution_options
@click.option("--report-every", type=int, default=None, metavar="N",
              help="run the compare and report stages every N weeks (default: never; the replay report is made "
                   "at the end either way)")
@click.option("--keep-runs", type=int, default=None, metavar="N",
              help="every N weeks and after the last, remove all but the newest N pipeline runs of the replay "
                   "(as gc; runs behind registered model versions stay)")
@click.option("--keep-versions", type=int, default=None, metavar="N",
              help="with --keep-runs: of the model keep only the newest N versions besides the one in production "
                   "and the replay's first model; the others leave the registry, and their runs go as any other")
@click.option("--quiet", is_flag=True, help="no line per finished notebook (one line per week stays)")
@_debug_option
def replay(start_date, weeks, report_every, **params):
    """Replay the weekly loop as of each Monday from --start, one week after another, into its own folder and
    store (<outputs>/replay-<start>-<weeks>w), then render the replay report that compares retraining
    policies. Killed and started again with the same arguments, it goes on from the first unfinished week;
    finished, it is served from its state file."""
    args = _invocation(params)
    from powerpipe.run.replay import run_replay

    options = run_options(args)
    on_step = (lambda result: log.info("  %s", step_line(result))) if not args.quiet else None
    state = run_replay(options, start_date, weeks, report_every=report_every, keep_runs=args.keep_runs,
                       keep_versions=args.keep_versions, on_step=on_step, on_week=lambda row: print(replay_line(row), flush=True))
    return print_replay(state)


def replay_line(row: dict) -> str:
    """One line per finished week of a replay."""
    def rmse(policy: str) -> str:
        value = (row.get(policy) or {}).get("rmse")
        return f"{value:.3g}" if value is not None else "-"

    promoted = row.get("promoted")
    moved = f"; {promoted['action'] or 'promoted'} v{promoted['version']}" if promoted else ""
    alerts = f"; {len(row['alerts'])} alert(s)" if row["alerts"] else ""
    return (f"week {row['index'] + 1} as of {row['week']}: {row['status']}; live RMSE production "
            f"{rmse('production')} (v{row.get('production_version') or '-'}), first model {rmse('first_model')}, "
            f"persistence {rmse('persistence')}, climatology {rmse('climatology')}{moved}{alerts}; "
            f"{row.get('seconds', 0):.0f} s")


def print_replay(state: dict) -> int:
    rows = sorted(state["weeks"].values(), key=lambda r: r["index"])
    report = state.get("report") or {}
    failed = [r["week"] for r in rows if r["status"] != OK]
    print()
    print(f"replay:   {state['folder']} ({len(rows)} weeks"
          + (f"; not ok: {', '.join(failed)}" if failed else ", every week ok") + ")")
    if report.get("html"):
        print(f"report:   {report['html']}" + (" (up to date: nothing ran)" if report.get("cached") else ""))
    else:
        print(f"report:   FAILED ({report.get('error')}); executed notebook: {report.get('notebook')}")
    return EXIT_OK if not failed and report.get("html") else EXIT_FAILED


@cli.command()
@click.option("--tracking-uri", default=None,
              help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (this machine only)")
@click.option("--port", type=int, default=8050, show_default=True)
@click.option("--model-name", default=MODEL_NAME, show_default=True, help="registered model")
@click.option("--alias", default=PRODUCTION_ALIAS, show_default=True, help="alias to serve")
@click.option("--poll-seconds", type=float, default=30.0, show_default=True,
              help="how often to check whether the alias moved")
@click.option("--debug", is_flag=True, help="Dash debug mode (reloader, dev tools)")
def dashboard(**params):
    """Serve the dashboard on the production model (python dashboard/app.py is the same)."""
    from powerpipe.dashboard.app import main as dashboard_main

    argv = []
    for name, value in params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return dashboard_main(argv)


# Every option any command may carry, with its default: commands fill in only their own.
_ARGUMENT_DEFAULTS = dict(
    config=paths.DEFAULT_CONFIG, data="auto", tracking_uri=None, outputs=paths.OUTPUTS_DIR, jobs=os.cpu_count() or 1,
    executor=None, scheduler=None, timeout=None, store_timeout=None, min_free_mb=0, keep_runs=None,
    keep_versions=None,
    fresh_kernels=False, force=False, force_promote=False, reproduce=None, search_storage=None, if_running="fail",
    dry_run=False, start=False, pipeline_run=None, stage=None, point=None, finish=False, list_points=False,
    debug=False, quiet=False, as_of=None, fail_on_alert=False,
)


def _invocation(params: dict, **fixed) -> "SimpleNamespace":
    """The command's parameters as one namespace (every option, defaults for the others); checks them and
    configures output, once, before any work."""
    args = SimpleNamespace(**{**_ARGUMENT_DEFAULTS, **{k: v for k, v in params.items() if v is not None or k not in _ARGUMENT_DEFAULTS}, **fixed})
    problem = check_arguments(args)
    if problem:
        raise click.UsageError(problem)
    _CURRENT.args = args
    configure_output(args.debug, args.store_timeout)
    return args


class _Current(threading.local):
    args: SimpleNamespace | None = None


_CURRENT = _Current()


def configure_output(debug: bool, store_timeout: float | None) -> None:
    """Logging, MLflow's verbosity and its bound on store calls: the CLI's business only."""
    from powerpipe.tracking import store as tracking  # light: MLflow is imported inside its functions

    # Before anything imports MLflow: it reads these once, and kernels and Dask workers inherit them.
    tracking.bound_store_calls(store_timeout or tracking.STORE_BUDGET_SECONDS)
    if not debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow here and in the kernels
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # With a tracking server, MLflow prints two "View run ... at" lines per ended run to stdout.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if debug else "%(message)s")
    if not debug:
        for noisy in ("mlflow", "alembic", "papermill", "traitlets", "urllib3", "py.warnings"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        logging.captureWarnings(True)


def main(argv: list[str] | None = None, prog: str = "powerpipe") -> int:
    """Run one command; returns its exit code (``ExitCode``). Flags without a command mean ``run``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if prog == RUN_ALL and (not argv or argv[0] not in cli.commands) and argv[:1] != ["--version"]:
        argv = ["run", *argv]  # run_all.py [FLAGS] is `powerpipe run [FLAGS]`
    elif argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]
    _CURRENT.args = None
    try:
        with stop_signals_as_interrupts():
            # Not cli.main(): it would turn Ctrl-C and SIGTERM alike into click's Abort.
            with cli.make_context(prog, argv) as ctx:
                code = cli.invoke(ctx)
        return int(code) if code is not None else EXIT_OK
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:  # a flag or argument click refused
        exc.show()
        return EXIT_USAGE
    except RunLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except PipelineError as exc:
        if _debugging():
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
        args = _CURRENT.args
        message = known_failure(exc, args) if args is not None else None
        if message is None or _debugging():
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _debugging() -> bool:
    return bool(_CURRENT.args is not None and _CURRENT.args.debug)


def run_all_main(argv: list[str] | None = None) -> int:
    """``runner/run_all.py``: flags mean ``powerpipe run``; a command name first, that command."""
    return main(argv, prog=RUN_ALL)


def entry() -> None:
    """The ``powerpipe`` console script."""
    sys.exit(main())

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
    if args.keep_versions is not None and args.keep_versions < 1:
        return f"--keep-versions must be at least 1, got {args.keep_versions}"
    if args.keep_versions is not None and args.keep_runs is None:
        return "--keep-versions goes with --keep-runs (retention removes the runs of the versions it lets go)"
    if getattr(args, "as_of", None) is not None:
        from powerpipe.core.exceptions import ConfigError
        from powerpipe.forecast.windows import parse_time

        try:
            parse_time(args.as_of)
        except ConfigError as exc:
            return str(exc)
    return None


def known_failure(exc: BaseException, args) -> str | None:
    """One line for a failure a user can act on without a traceback (a full disk, a store that stopped
    answering), or None for a bug."""
    from powerpipe.core import fsutil
    from powerpipe.tracking import store as tracking

    disk_full = fsutil.as_disk_full_error(exc, args.outputs)
    if disk_full is not None:
        return str(disk_full)
    if tracking.is_unreachable(exc) and _from_store_client(exc):
        return str(tracking.unreachable_error(tracking.tracking_uri(args.tracking_uri, args.outputs), exc))
    return None


def _from_store_client(exc: BaseException | None) -> bool:
    """Raised by MLflow's client or what it talks through (not, say, a Dask connection that dropped)."""
    from powerpipe.core.exceptions import chain

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
    from powerpipe.run.session import load_and_check, plan

    config = load_and_check(config_path)
    steps = plan(config)
    for step, parameters in steps:
        params = ", ".join(f"{k}={v!r}" for k, v in parameters.items())
        print(f"{step.stage:8} {_display_path(step.notebook)}  {params}")
    from powerpipe.run.refit import REFIT_EVALUATION, refit_enabled

    if refit_enabled(config):  # one more execution, of a notebook known only once the gate has chosen
        print(f"{'promote':8} <the winner's notebook and parameters>  evaluation={REFIT_EVALUATION!r}  "
              "(refit on every hour, then registered; and, if production's configuration is not in the grid, "
              "it is retrained as one more training point)")
    print(f"{sum(step.executions for step, _ in steps)} notebook executions planned; nothing was run.")
    return EXIT_OK


def stagewise_command(args) -> int:
    """--list-points, --start, or --pipeline-run ID with --stage [--point] or --finish."""
    from powerpipe.run import stagewise

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
        return exit_code(summary, stagewise.fails_on_alert(args.outputs, args.pipeline_run))
    ok = stagewise.run_stage(args.outputs, args.pipeline_run, args.stage, args.point, on_step=on_step)
    return EXIT_OK if ok else EXIT_FAILED


def run_options(args):
    """RunOptions from the command line (checked: jobs, executor and scheduler, free space)."""
    from powerpipe.run.options import RunOptions

    if args.jobs < 1:
        raise PipelineError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor == "local" and args.scheduler:
        raise PipelineError("--scheduler sends notebooks to a Dask cluster: use it with --executor dask")
    executor = args.executor or ("dask" if args.scheduler else "local")
    if args.min_free_mb > 0:
        from powerpipe.core import fsutil

        fsutil.check_free_space(args.outputs, int(args.min_free_mb * fsutil.MB))
    return RunOptions(config=args.config, data=args.data, tracking_uri=args.tracking_uri, outputs=args.outputs,
                      jobs=args.jobs, reuse_kernels=not args.fresh_kernels, timeout=args.timeout,
                      force=args.force, force_promote=args.force_promote, progress=not args.quiet,
                      executor=executor, scheduler=args.scheduler, if_running=args.if_running,
                      search_storage=args.search_storage, as_of=args.as_of, fail_on_alert=args.fail_on_alert)


def run_pipeline_command(args) -> int:
    from powerpipe.run.session import run_pipeline

    options = run_options(args)
    display = progress_display(args.quiet)
    bar = None

    def on_start(pipeline, total: int) -> None:
        nonlocal bar
        from powerpipe.tracking import store as tracking

        log.info("pipeline run %s -> %s", pipeline.run_id, pipeline.run_dir)
        log.info("tracking: %s (experiment %s)", tracking.redact(pipeline.tracking_uri), pipeline.config.experiment)
        if display == "bar":
            from tqdm import tqdm

            bar = tqdm(total=total, unit="notebook", file=sys.stderr, dynamic_ncols=True)

    def on_step(result) -> None:
        if bar is not None:
            if bar.n >= bar.total:  # a step decided during the run (the champion's retraining, the refit)
                bar.total = bar.n + 1
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
    code = exit_code(summary, args.fail_on_alert)
    if args.keep_runs is not None:
        collect_garbage(args.outputs, args.tracking_uri, args.keep_runs, keep_versions=args.keep_versions)
    return code


def exit_code(summary: dict, fail_on_alert: bool) -> ExitCode:
    """0 for a run that went well, 1 for one that did not; 3 for one that went well but raised a monitoring
    alert, with ``--fail-on-alert`` (a failed run stays 1)."""
    if summary["status"] != OK:
        return EXIT_FAILED
    return ExitCode.ALERT if fail_on_alert and summary.get("alerts") else EXIT_OK


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
    if getattr(result, "error", None) and result.status not in DONE:
        line += f" ({str(result.error).splitlines()[0]})"
    return line


def collect_garbage(outputs: Path, tracking_uri: str | None, keep_runs: int, dry_run: bool = False,
                    keep_versions: int | None = None) -> None:
    from powerpipe.tracking import retention, store as tracking

    uri = tracking.tracking_uri(tracking_uri, outputs)
    report = retention.collect_garbage(outputs, uri, keep_runs, dry_run=dry_run, keep_versions=keep_versions)
    print(report.describe())


def reproduce(args) -> int:
    from powerpipe.run.reproduce import reproduce_run

    outcome = reproduce_run(args.reproduce, tracking_uri=args.tracking_uri, outputs=args.outputs,
                            data_path=None if args.data == "auto" else args.data, timeout=args.timeout)
    print(outcome.report())
    return EXIT_OK if outcome.matches else EXIT_FAILED


def print_summary(summary: dict, run_dir: Path) -> None:
    from powerpipe.search.study import listed_points, search_lines

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
        if point["status"] == CACHED:
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
        refit = promoted.get("refit_run_id")
        print(f"promoted: {promoted['name']} version {promoted['version']} "
              f"({promoted['metric']}={promoted['value']:.4g}, run {promoted.get('evaluated_run_id') or promoted['run_id']}"
              + (f", refit on every hour as run {refit}" if refit else "") + ")")
    else:
        print("promoted: nothing")
    if summary["report"]:
        print(f"report:   {run_dir / summary['report']}")
    print(f"summary:  {run_dir / 'summary.json'}")
    print(f"status:   {summary['status']}")
    print_watch(summary)


def watch_line(monitoring: dict) -> str:
    """One line of what monitoring found: the live error next to the holdout's, the skill against baselines."""
    if monitoring.get("status") != "ok":
        return f"monitoring: {monitoring.get('message', monitoring.get('status'))}"
    live, holdout = monitoring["live"], monitoring.get("holdout") or {}
    text = (f"monitoring: {monitoring['message']}: RMSE {live['rmse']:.3g} GW, R² {live['r2']:.3f}"
            + (f" (holdout: RMSE {holdout['rmse']:.3g} GW, R² {holdout['r2']:.3f})"
               if "rmse" in holdout and "r2" in holdout else ""))
    skills = [f"{name} {monitoring[name]['skill']:.3f}" for name in ("persistence", "climatology")
              if monitoring.get(name) and monitoring[name].get("skill") is not None]
    return text + (f"; skill against {', '.join(skills)}" if skills else "")


def print_watch(summary: dict) -> None:
    """--as-of, the data period, monitoring in one line, and every alert, loudly, last (where a log tail shows it)."""
    if summary.get("as_of"):
        print(f"as of:    {summary['as_of']} (the run saw only the hours before it)")
    period = summary.get("data_period")
    if period:
        print(f"data:     {period['start'][:16].replace('T', ' ')} to {period['end'][:16].replace('T', ' ')} UTC")
    if summary.get("monitoring"):
        print(watch_line(summary["monitoring"]))
    alerts = summary.get("alerts") or []
    if alerts:
        print()
        print("!" * 78)
        print(f"ALERT{'S' if len(alerts) > 1 else ''}: monitoring of the production model")
        for alert in alerts:
            print(f"  ALERT: {alert}")
        print("!" * 78)


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)
