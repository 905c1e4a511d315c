"""Where notebook executions run: behind one small interface, chosen by one factory.

An executor takes a picklable ``tasks.NotebookTask`` and returns its ``tasks.TaskOutcome``:

- ``run(task)`` blocks until the outcome is known (the runner calls it from one waiting thread per
  grid point) and never raises for a failed notebook: that is a failed outcome with a FAILED run;
- ``close()`` finishes queued work and stops the kernels; ``kill()`` stops everything now (Ctrl-C).

``local`` runs warm kernels in threads of the runner (``local.LocalExecutor``); ``dask`` sends
tasks to a Dask cluster (``dask_cluster.DaskExecutor``). Both hold kernels through one policy,
``lease.KernelLease``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from powerpipe.execution.tasks import NotebookTask, TaskOutcome
from powerpipe.execution.waiting import wait

EXECUTORS = ("local", "dask")

__all__ = ["EXECUTORS", "Executor", "make_executor", "wait"]


class Executor(Protocol):
    def run(self, task: NotebookTask) -> TaskOutcome: ...

    def close(self) -> None: ...

    def kill(self) -> None: ...


def make_executor(kind: str, *, jobs: int, notebooks: list[Path], tracking_uri: str, reuse_kernels: bool,
                  scheduler: str | None = None, shared_paths: list[Path] = (), planned: int | None = None) -> Executor:
    """The executor for ``--executor kind``; kernels (or a cluster) start with its first task.

    ``shared_paths``: what Dask workers must see at the same path (the run folder, the data, the
    notebooks); checked on every worker before anything runs. ``planned``: how many notebooks the run
    declares; no more local kernels than that are warmed ahead (one more starts if a task needs it).
    """
    from powerpipe.spec.parameterize import notebook_imports
    from powerpipe.execution.lease import KernelLease, KernelSettings, threads_per_kernel

    modules = notebook_imports(notebooks)
    if kind == "dask":
        from powerpipe.execution.dask_cluster import DaskExecutor

        executor = DaskExecutor(scheduler, jobs, modules, reuse_kernels=reuse_kernels)
        executor.check_paths([path for path in shared_paths if Path(path).exists()])
        return executor
    if kind != "local":
        raise ValueError(f"unknown executor {kind!r}; one of {', '.join(EXECUTORS)}")
    from powerpipe.execution.local import LocalExecutor

    jobs = max(1, jobs)
    settings = KernelSettings.for_threads(threads_per_kernel(jobs), modules, tracking_uri, reuse_kernels)
    return LocalExecutor(jobs, KernelLease(settings, reuse=reuse_kernels), warm_ahead=planned)
