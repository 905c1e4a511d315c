"""Names declared once: what a step can end as, the stages in their order, the promotion defaults.

Statuses and stages are ``StrEnum``s: they compare equal to, format as and serialise to JSON as their
plain words (``"ok"``, ``"train"``), which is what summary.json, tags and schedulers read.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """How one step (a notebook execution, a stage) ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    CACHED = "cached"  # a FINISHED run of the same inputs was reused
    KILLED = "killed"
    PRUNED = "pruned"  # a search's trial that its pruner stopped early: neither trained nor failed


OK, FAILED, SKIPPED, CACHED, KILLED, PRUNED = (Status.OK, Status.FAILED, Status.SKIPPED, Status.CACHED,
                                               Status.KILLED, Status.PRUNED)
DONE = (OK, CACHED)
SETTLED = (*DONE, PRUNED)  # nothing went wrong
INTERRUPTED = "interrupted"  # the error of a run whose pipeline was stopped (Ctrl-C, SIGTERM): it ends KILLED


class Stage(StrEnum):
    """The pipeline's stages, in the order they run."""

    PROCESS = "process"
    TRAIN = "train"
    COMPARE = "compare"
    PROMOTE = "promote"
    REPORT = "report"


STAGES = tuple(stage.value for stage in Stage)


class Goal(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


DEFAULT_METRIC = "rmse"
DEFAULT_GOAL = Goal.MINIMIZE
MODEL_NAME = "BestModel"  # the registered model promotion writes to
PRODUCTION_ALIAS = "production"
EXPERIMENT = "predicting_wind_solar"  # the MLflow experiment of every run (the tutorial's name)
