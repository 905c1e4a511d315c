"""What a notebook sees of a search (``powerpipe.search``): the trial it runs as, and figures of a study.

The runner hands a trial's notebook its identity through the kernel's environment, as it hands it
its MLflow run: the study's storage, the study's name, the trial's number and the pruner's settings.
``pruning_callbacks()`` gives a Keras ``fit`` a callback that reports each epoch's validation loss
to the trial (``report`` does it for any loop); when the pruner finds the trial hopeless, the
notebook is marked ``pruned`` (a scrap the runner reads) and stopped with ``optuna.TrialPruned``:
the runner records the trial PRUNED, not failed, and keeps its executed notebook. Outside a search
(a grid point, a notebook run by hand) there is no trial: the list is empty, ``report`` does nothing.

``study_figures(name)``: a study's optimisation history and parameter importances (plotly), rebuilt
from its trials' MLflow runs, so a notebook needs no access to the study's storage.

Kept apart from ``search`` (the runner's side) so that a notebook's cache key covers only this
module: editing the runner invalidates no cached run. Optuna is imported only inside a trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

from powerpipe.core import tags

STORAGE_ENV = "POWERPIPE_SEARCH_STORAGE"
STUDY_ENV = "POWERPIPE_SEARCH_STUDY"
TRIAL_ENV = "POWERPIPE_SEARCH_TRIAL"  # the trial's number
PRUNER_ENV = "POWERPIPE_SEARCH_PRUNER"  # JSON: {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0}
ENV_NAMES = (STORAGE_ENV, STUDY_ENV, TRIAL_ENV, PRUNER_ENV)
PRUNED_SCRAP = "pruned"  # glued by a notebook its trial's pruner stopped

log = logging.getLogger(__name__)

_trial: dict[tuple, Any] = {}  # this kernel's current trial, by its identity
_storages: dict[str, Any] = {}


def environment(storage_url: str, study_name: str, number: int, pruner: dict) -> dict[str, str]:
    """The environment of a trial's kernel (a notebook that is no trial gets these names empty)."""
    return {STORAGE_ENV: storage_url, STUDY_ENV: study_name, TRIAL_ENV: str(number),
            PRUNER_ENV: json.dumps(pruner, sort_keys=True)}


def open_storage(url: str, attempts: int = 5):
    """An Optuna RDB storage; a SQLite file waits for other writers (kernels report while the runner tells)."""
    if url not in _storages:
        import optuna
        import sqlalchemy.exc

        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
        for attempt in range(1, attempts + 1):
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                    optuna.exceptions.StorageInternalError) as exc:
                # Two processes creating a new storage at once: both create its tables and stamp its schema
                # version; the second one fails ("UNIQUE constraint failed: alembic_version", "table ...
                # already exists"). The storage is there now: open it again.
                if attempt == attempts:
                    raise
                log.info("search storage being created by another process (%s); opening it again",
                         str(exc).splitlines()[0])
                time.sleep(0.2 * attempt)
        if url.startswith("sqlite:///"):
            _write_ahead_log(storage.engine)
        _storages[url] = storage
    return _storages[url]


def _write_ahead_log(engine) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints: the runner's and kernels' many small
    writes (ask, tell, a report per epoch) take a millisecond each instead of a journal sync each
    (a crash loses at most the last ones, which a resumed search runs again)."""
    import sqlalchemy

    def pragmas(connection, record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connection made while creating the tables reconnects with them


def make_pruner(settings: dict | None):
    """Optuna's pruner for a search's ``pruner`` settings (``median``, or ``none``)."""
    import optuna

    settings = settings or {}
    if settings.get("name", "none") == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.get("n_startup_trials", 5),
                                           n_warmup_steps=settings.get("n_warmup_steps", 0))
    return optuna.pruners.NopPruner()


def current_trial():
    """The Optuna trial this notebook runs as, or None outside a search."""
    identity = tuple(os.environ.get(name, "") for name in ENV_NAMES)
    storage_url, study_name, number, pruner = identity
    if not (storage_url and study_name and number):
        return None
    if identity not in _trial:
        import optuna

        storage = open_storage(storage_url)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  pruner=make_pruner(json.loads(pruner or "{}")))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name),
                                                                   int(number))
        _trial.clear()
        _trial[identity] = optuna.trial.Trial(study, trial_id)
    return _trial[identity]


def report(value: float, step: int) -> None:
    """Report an intermediate value (lower is better for the pruner's median) at ``step`` to this
    notebook's trial; if the pruner stops the trial, mark the notebook pruned and raise ``TrialPruned``."""
    trial = current_trial()
    if trial is None or value is None or not math.isfinite(float(value)):
        return
    trial.report(float(value), int(step))
    if trial.should_prune():
        import optuna

        from powerpipe.tracking.store import glue

        glue(PRUNED_SCRAP, {"trial": trial.number, "step": int(step), "value": float(value)})
        raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step}: {float(value):.4g} is worse "
                                 "than the median of the earlier trials at this step")


def pruning_callbacks(monitor: str = "val_loss") -> list:
    """Keras callbacks for ``fit(..., callbacks=...)``: ``monitor`` reported to the trial after each epoch.
    Empty outside a search, so the same notebook runs as a grid point or by hand unchanged."""
    if current_trial() is None:
        return []
    import keras

    class ReportToTrial(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            report((logs or {}).get(monitor), epoch)

    return [ReportToTrial()]


# -- figures of a study, from its trials' MLflow runs ---------------------------------------------------

def studies_in(runs) -> list[str]:
    """The studies among a frame of runs (``tracking.training_runs``), in order of appearance."""
    column = f"tags.{tags.SEARCH_STUDY}"
    if runs is None or column not in getattr(runs, "columns", ()):
        return []
    return list(dict.fromkeys(name for name in runs[column].dropna() if name))


def study_of_run(run_id: str, client=None) -> str | None:
    """The study a run was a trial of, or None (a grid point, a run made by hand)."""
    client = client or _client()
    return client.get_run(run_id).data.tags.get(tags.SEARCH_STUDY) or None


def study_from_runs(study_name: str, client=None):
    """The study as its trials' MLflow runs recorded it: an in-memory Optuna study (None if no trial)."""
    import optuna

    client = client or _client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              tags.equals(tags.SEARCH_STUDY, study_name), max_results=50000)
    by_number: dict[int, Any] = {}
    for run in runs:  # several runs of one trial (a retried Dask attempt): the FINISHED one
        number = int(run.data.tags.get(tags.SEARCH_TRIAL, -1))
        if number not in by_number or run.info.status == "FINISHED":
            by_number[number] = run
    if not by_number:
        return None
    first = next(iter(by_number.values())).data.tags
    goal, metric = first.get(tags.SEARCH_OBJECTIVE, "minimize rmse").split()
    distributions = {name: optuna.distributions.json_to_distribution(text)
                     for name, text in json.loads(first.get(tags.SEARCH_SPACE, "{}")).items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" in a notebook
    study = optuna.create_study(study_name=study_name, direction=goal)
    study.set_user_attr("metric", metric)
    for number in sorted(by_number):
        run = by_number[number]
        shown = json.loads(run.data.tags.get(tags.PARAMETERS, "{}"))
        params = {name: shown[name] for name in distributions if name in shown}
        value = run.data.metrics.get(metric)
        state = optuna.trial.TrialState.FAIL
        if run.data.tags.get(tags.SEARCH_PRUNED) == tags.flag(True):
            state, value = optuna.trial.TrialState.PRUNED, None
        elif run.info.status == "FINISHED" and value is not None and math.isfinite(value):
            state = optuna.trial.TrialState.COMPLETE
        else:
            value = None
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={name: distributions[name] for name in params}, value=value, state=state,
            user_attrs={"trial": number, "mlflow_run_id": run.info.run_id}))
    return study


def study_figures(study_name: str, client=None) -> list:
    """Optimisation history and parameter importances of a study (plotly figures; [] if nothing finished)."""
    import optuna

    study = study_from_runs(study_name, client)
    if study is None:
        return []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    metric = study.user_attrs.get("metric", "objective")
    history = optuna.visualization.plot_optimization_history(study)
    history.update_layout(title=f"Optimisation history of {study_name} ({metric})")
    figures = [history]
    varied = [name for name in complete[0].distributions
              if len({repr(t.params.get(name)) for t in complete}) > 1]
    if len(complete) >= 2 and varied:
        importances = optuna.visualization.plot_param_importances(study, params=varied)
        importances.update_layout(title=f"Parameter importances in {study_name}")
        figures.append(importances)
    return figures


def _client():
    import mlflow

    from powerpipe.tracking.store import tracking_uri

    return mlflow.MlflowClient(tracking_uri())
