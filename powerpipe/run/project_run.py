"""One model notebook as an MLflow Project entry point: ``mlflow run . -e rf -P n_estimators=64``.

``MLproject`` runs ``python -m powerpipe.run.project_run NOTEBOOK [--data D] key=value ...``. This joins
the run that ``mlflow run`` created (``MLFLOW_RUN_ID`` in the environment; run by hand, a new run is
created in the default experiment), checks each value against the notebook's ``parameters`` cell,
resolves the data as ``run_all.py --data`` does, and executes the notebook through
``tasks.run_task``: the same tags, parameters, artifacts (source and executed notebook, HTML, model)
and metrics as a training grid point of a pipeline run, with the executed notebook under
``outputs/projects/<run id>/``. It carries no cache key: a pipeline never reuses it as a cached point.

Exit codes as ``run_all.py``: 0 the notebook ran, 1 it failed (its run is FAILED, the executed notebook
shows where), 2 bad input (unknown notebook, parameter or value; bad data; unusable store).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from powerpipe.core import paths, tags
from powerpipe.core.exceptions import ParameterError, PipelineError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROJECTS_DIR_NAME = "projects"  # outputs/projects/<run id>/: executed notebooks of MLflow Project runs
MLFLOW_RUN_ID_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the command it starts
STAGE = "train"
NONE_WORDS = ("none", "null", "~")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m powerpipe.run.project_run",
        description="Execute one model notebook as an MLflow Project entry point, recorded like a training grid "
                    "point (into the run `mlflow run` created, else a new one).")
    parser.add_argument("notebook", type=Path, help="the model notebook, e.g. notebooks/model_rf.ipynb")
    parser.add_argument("values", nargs="*", metavar="key=value",
                        help="notebook parameters; each value is read as YAML (64, 0.1, true, none) and must be of "
                             "the type its parameters cell declares")
    parser.add_argument("--data", default="auto",
                        help="processed CSV path, 'synthetic', or 'auto' (as run_all.py --data; default: auto)")
    parser.add_argument("--outputs", type=Path, default=paths.OUTPUTS_DIR,
                        help="the executed notebook goes to <outputs>/projects/<run id>/ (default: outputs/)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, which `mlflow run` sets, else "
                             "SQLite in the outputs folder)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds the notebook may run before it is stopped and failed (default: no limit)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return parser


def parse_values(notebook: Path, pairs: list[str]) -> dict[str, Any]:
    """``key=value`` words as typed values, each read as its notebook parameter's declared type allows."""
    import datetime

    import yaml

    from powerpipe.spec.parameterize import read_parameters

    declared = read_parameters(notebook)
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(f"{pair!r} is not key=value")
        parameter = declared.get(key)
        if text.strip().lower() in NONE_WORDS and (parameter is None or parameter.nullable):
            values[key] = None
            continue
        try:
            parsed = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            parsed = text
        if isinstance(parsed, (datetime.date, datetime.datetime)):
            parsed = text  # dates stay as written: the notebooks take them as strings
        if parameter is not None and not parameter.accepts(parsed) and parameter.accepts(text):
            parsed = text  # "64" for a str parameter stays "64"
        values[key] = parsed
    return values


def check(notebook: Path, values: dict[str, Any], runtime_names: tuple[str, ...]) -> None:
    """Every value against the parameters cell; the runner's own parameters cannot be given."""
    from powerpipe.spec.parameterize import check_values, read_parameters

    where = f"mlflow run -P ({notebook.name})"
    given = [name for name in values if name in runtime_names]
    if given:
        raise ParameterError(f"{where}: parameter '{given[0]}' is set from --data / -P data, not as a notebook value")
    missing = [name for name in runtime_names if name not in read_parameters(notebook)]
    if missing:
        raise ParameterError(f"{where}: notebook {notebook} must declare {', '.join(missing)} to run as a "
                             "training notebook")
    check_values(notebook, values, where)


def check_logged_texts(values: dict[str, Any], logged: dict[str, str]) -> None:
    """Each value as `mlflow run` logged it (the -P text) must be the text the notebook logs (``str``).

    MLflow keeps one text per parameter and refuses another: ``-P max_depth=none`` is logged as
    ``none`` and the notebook's ``log_params`` would then fail on ``None`` at the end of training.
    """
    from powerpipe.execution.tasks import _param_text

    for key, value in values.items():
        canonical = _param_text(value)
        if key in logged and logged[key] != canonical:
            raise ParameterError(f"mlflow run -P {key}={logged[key]}: MLflow keeps parameters as the text given, and "
                                 f"the notebook records {canonical!r}; write it as -P {key}={canonical}")


def _label(notebook: Path, values: dict[str, Any]) -> str:
    """The name a pipeline gives a grid point with these values: ``model_rf__n_estimators_64__max_depth_10``."""
    from powerpipe.spec.config import GridPoint, NotebookSpec

    return GridPoint(NotebookSpec(STAGE, notebook), dict(values), dict(values)).label


def run(args: argparse.Namespace) -> int:
    import mlflow

    from powerpipe.forecast import data as data_module
    from powerpipe.tracking import store as tracking
    from powerpipe.spec.config import OPTIONAL_RUNTIME_PARAMETERS, RUNTIME_PARAMETERS
    from powerpipe.spec.parameterize import notebook_hash
    from powerpipe.run.recorder import git_commit
    from powerpipe.execution.tasks import NotebookTask, run_task

    notebook = args.notebook if args.notebook.is_absolute() else (Path.cwd() / args.notebook)
    if not notebook.is_file() and not args.notebook.is_absolute():
        notebook = paths.PROJECT_ROOT / args.notebook
    notebook = notebook.resolve()
    # The runner's own training parameters: data_path (from --data); evaluation stays the notebook's default.
    runtime_names = tuple(name for name in RUNTIME_PARAMETERS[STAGE] if name not in OPTIONAL_RUNTIME_PARAMETERS)
    assert runtime_names == ("data_path",), runtime_names
    values = parse_values(notebook, args.values)
    check(notebook, values, runtime_names)
    if args.timeout is not None and args.timeout <= 0:
        raise ParameterError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")

    source = data_module.resolve(args.data)
    if source.synthetic:
        log.warning("SYNTHETIC DATA: %s was generated, not measured; metrics say nothing about the real grid",
                    source.path)
    uri = tracking.tracking_uri(args.tracking_uri, args.outputs)
    tracking.check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    run_id = os.environ.get(MLFLOW_RUN_ID_ENV)
    if run_id:
        existing = client.get_run(run_id)
        experiment_id = existing.info.experiment_id
    else:
        experiment_id = tracking.ensure_experiment(client, tracking.EXPERIMENT, uri)
        existing = None
    experiment_name = client.get_experiment(experiment_id).name

    label = _label(notebook, values)
    if existing is None:
        run_id = client.create_run(experiment_id, run_name=label).info.run_id
        already_logged: dict[str, str] = {}
    else:
        already_logged = dict(existing.data.params)
        check_logged_texts(values, already_logged)
    output = Path(args.outputs).resolve() / PROJECTS_DIR_NAME / run_id / f"{label}.ipynb"
    run_tags = {
        tags.KIND: tags.KIND_NOTEBOOK,
        tags.STAGE: STAGE,
        tags.NOTEBOOK: notebook.name,
        tags.NOTEBOOK_SHA256: notebook_hash(notebook),
        tags.DATA_SHA256: source.sha256,
        tags.DATA_PATH: str(source.path),
        tags.SYNTHETIC_DATA: tags.flag(source.synthetic),
        tags.PARAMETERS: json.dumps(values, sort_keys=True, default=str),
        tags.OUTPUT_NOTEBOOK: str(output),
    }
    if existing is None or not existing.data.tags.get(tags.MLFLOW_GIT_COMMIT):
        run_tags[tags.MLFLOW_GIT_COMMIT] = git_commit()
    # `mlflow run` logged every -P parameter already, as the user wrote it; MLflow refuses to log a
    # parameter twice with another text ("1e-3" vs "0.001"), so those are left as they are.
    shown = {key: value for key, value in values.items() if key not in already_logged}
    task = NotebookTask(
        notebook=str(notebook), stage=STAGE, label=label, output_notebook=str(output),
        parameters={**values, "data_path": str(source.path)}, shown=shown, tags=run_tags,
        tracking_uri=uri, experiment_id=experiment_id, experiment_name=experiment_name, cache_key="",
        timeout=args.timeout, run_id=run_id)
    log.info("running %s in MLflow run %s (store %s)", notebook.name, run_id, tracking.redact(uri))
    outcome, _ = run_task(task, None)
    if not outcome.ok:
        log.error("%s failed: %s\n  executed notebook: %s", label, outcome.error, outcome.output_notebook)
        return EXIT_FAILED
    shown_metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(outcome.metrics.items()))
    print(f"{label}: ok in {outcome.seconds:.1f} s; run {run_id}; {shown_metrics}")
    print(f"executed notebook: {outcome.output_notebook}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "papermill", "traitlets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    try:
        return run(args)
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
