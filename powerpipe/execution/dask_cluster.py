"""Run the pipeline's notebook tasks on a Dask distributed cluster (``--executor dask``).

The runner keeps doing what it does locally (stages, promotion, report, summary.json); only the
notebook executions move: each ``NotebookTask`` goes to the cluster as one Dask task, and a worker
runs it with ``tasks.run_task`` on a warm kernel that it keeps between tasks. Everything a task
needs travels with it, so the workers need the project installed (same code and environment), the
tracking server, and the run folder and data at the same path as the runner (a shared folder).

Worker death: the scheduler re-runs a task whose worker died. Every attempt's MLflow run carries
the task's Dask key, so a new attempt marks the dead one's run KILLED, and a grid point gets at most
``MAX_ATTEMPTS`` executions: after that (or when the scheduler gives up with ``KilledWorker``) its
last run is marked FAILED. One grid point thus ends with exactly one FINISHED or one FAILED run.

dask and distributed are imported inside functions: ``--help`` and the local executor never pay for them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from powerpipe.core import tags
from powerpipe.core.constants import INTERRUPTED
from powerpipe.core.exceptions import DaskExecutorError
from powerpipe.execution.tasks import NotebookTask, TaskOutcome, finished_outcome, store_client
from powerpipe.execution.lease import KernelLease, KernelSettings, threads_per_kernel
from powerpipe.execution.waiting import wait

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # one execution, and one retry elsewhere if its worker died
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


# -- checks made before anything runs ------------------------------------------------------------

def is_loopback_scheduler(address: str | None) -> bool:
    """True for no address (a LocalCluster started here) or a scheduler on this machine's loopback."""
    if not address:
        return True
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    if parsed.scheme == "inproc":
        return True
    host = (parsed.hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tracking_uri(tracking_uri: str, scheduler: str | None) -> None:
    """Refuse a store that only this machine can write to when workers may be on other machines.

    A remote scheduler may hand a notebook to any machine: each would write its own SQLite file or
    folder, and the runner would see none of those runs.
    """
    if is_loopback_scheduler(scheduler):
        return
    scheme = urllib.parse.urlsplit(tracking_uri).scheme.lower()
    if scheme in ("sqlite", "file", "") or (len(scheme) == 1 and tracking_uri[1:3] in (":\\", ":/")):
        from powerpipe.tracking import store as tracking

        raise DaskExecutorError(
            f"tracking URI {tracking.redact(tracking_uri)} is a local {'SQLite file' if scheme == 'sqlite' else 'folder'}"
            f", but the Dask scheduler {scheduler} may run notebooks on other machines, which cannot write to "
            "it. Start an MLflow tracking server (see README, 'Scaling out') and pass --tracking-uri "
            "http://HOST:5000, or use --executor local.")


# -- on the workers --------------------------------------------------------------------------------

_leases_lock = threading.Lock()
_leases: dict[KernelSettings, KernelLease] = {}  # kernel settings -> this worker process's kernels
_idle_kernels: dict[KernelSettings, list] = {}  # warm kernels not running anything


def _lease(settings: KernelSettings, reuse: bool) -> KernelLease:
    with _leases_lock:
        lease = _leases.get(settings)
        if lease is None or lease.closed:
            lease = _leases[settings] = KernelLease(settings, reuse=reuse)
        return lease


def _take_kernel(lease: KernelLease):
    with _leases_lock:
        idle = _idle_kernels.get(lease.settings, [])
        kernel = idle.pop() if idle else None
    return lease.take(kernel)


def _give_back(lease: KernelLease, kernel, reusable: bool) -> None:
    kept = lease.give_back(kernel, reusable)
    if kept is not None:
        with _leases_lock:
            _idle_kernels.setdefault(lease.settings, []).append(kept)


def shutdown_worker_kernels(include_busy: bool = False) -> int:
    """Stop this worker process's warm kernels (run on every worker when a pipeline ends). Returns how many."""
    with _leases_lock:
        idle = {settings: kernels for settings, kernels in _idle_kernels.items()}
        _idle_kernels.clear()
        leases = list(_leases.values())
        if include_busy:  # Ctrl-C: the notebooks running on them fail at once
            _leases.clear()
    if include_busy:
        return sum(lease.kill_all() for lease in leases)
    stopped = 0
    for settings, kernels in idle.items():
        for kernel in kernels:
            _leases[settings].retire(kernel)
            stopped += 1
    return stopped


def _runs_of(client, task: NotebookTask, key: str) -> list:
    """Earlier attempts' runs of this grid point, oldest first."""
    runs = client.search_runs([task.experiment_id],
                              tags.equals(tags.DASK_KEY, key), max_results=100)
    return sorted(runs, key=lambda run: run.info.start_time)


def _close_attempts(client, runs: list, reason: str, last_failed: bool) -> None:
    """Mark attempts' runs still RUNNING as KILLED; with ``last_failed``, the latest one FAILED instead."""
    for run in runs[:-1] if last_failed else runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, tags.ERROR, reason[:5000])
            client.set_terminated(run.info.run_id, "KILLED")
    if last_failed and runs:
        client.set_tag(runs[-1].info.run_id, tags.ERROR, reason[:5000])
        client.set_terminated(runs[-1].info.run_id, "FAILED")


def run_task_on_worker(task: NotebookTask, key: str, modules: list[str], reuse_kernels: bool,
                       host_threads: dict[str, int], store_settings: dict[str, str] | None = None) -> TaskOutcome:
    """The Dask task: run one notebook task on this worker's warm kernel (module-level: it pickles by name).

    ``host_threads``: Dask threads per machine, so that the kernels of one machine share its cores.
    ``store_settings``: the runner's bound on tracking-server calls, for this worker and its kernels
    (a worker started elsewhere does not inherit the runner's environment); the worker's own win.
    """
    from distributed import get_worker

    from powerpipe.execution.tasks import run_task

    for name, value in (store_settings or {}).items():
        os.environ.setdefault(name, value)
    worker = get_worker()
    client = store_client(task.tracking_uri)
    earlier = _runs_of(client, task, key)
    finished = [run for run in earlier if run.info.status == "FINISHED"]
    if finished:  # an attempt completed, but its worker died before the scheduler heard of it: no rerun
        run = finished[-1]
        _close_attempts(client, [r for r in earlier if r is not run], "superseded by a FINISHED attempt",
                        last_failed=False)
        return finished_outcome(run, task.output_notebook)
    if earlier:
        where = earlier[-1].data.tags.get(tags.DASK_WORKER, "?")
        if len(earlier) >= MAX_ATTEMPTS:
            reason = (f"WorkerDied: the Dask worker running this notebook died in {len(earlier)} attempts "
                      f"(last on {where}); not tried again")
            _close_attempts(client, earlier, reason, last_failed=True)
            log.error("%s: %s", task.label, reason)
            return TaskOutcome(run_id=earlier[-1].info.run_id, ok=False, error=reason,
                               output_notebook=task.output_notebook)
        _close_attempts(client, earlier, f"its Dask worker {where} died mid-notebook; retried on {worker.address}",
                        last_failed=False)
        log.warning("%s: worker %s died mid-notebook; retrying on %s", task.label, where, worker.address)
    here = urllib.parse.urlsplit(worker.address).hostname
    threads = threads_per_kernel(host_threads.get(here, worker.state.nthreads))
    lease = _lease(KernelSettings.for_threads(threads, modules, task.tracking_uri, reuse_kernels), reuse_kernels)
    task = dataclasses.replace(task, tags={**task.tags, tags.DASK_KEY: key, tags.DASK_WORKER: worker.address})
    kernel = _take_kernel(lease)
    reusable = False
    try:
        outcome, reusable = run_task(task, kernel)
    finally:
        _give_back(lease, kernel, reusable)
    return outcome


# -- on the runner ----------------------------------------------------------------------------------

def interrupted_outcome(task: NotebookTask, key: str) -> TaskOutcome:
    """A task the stop cancelled: its attempts' runs still RUNNING end KILLED (interrupted), as the runner
    marks the others; a run its worker ended already keeps its status."""
    try:
        client = store_client(task.tracking_uri)
        runs = _runs_of(client, task, key)
        _close_attempts(client, runs, INTERRUPTED, last_failed=False)
    except Exception as exc:  # noqa: BLE001 - boundary: stopping anyway; the runner marks what is left RUNNING
        log.debug("%s: could not mark its run KILLED: %s", task.label, exc)
        runs = []
    return TaskOutcome(run_id=runs[-1].info.run_id if runs else "", ok=False, error=INTERRUPTED,
                       output_notebook=task.output_notebook)


def _set_log_levels(levels: dict[str, int]) -> None:
    """Give worker processes the runner's log levels (run on a LocalCluster the runner started: its terminal)."""
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _check_on_worker(paths_wanted: list[str]) -> list[str]:
    """Which of these paths this worker cannot see (run on every worker before the first task)."""
    return [path for path in paths_wanted if not os.path.exists(path)]


class DaskExecutor:
    """Runs notebook tasks on a Dask cluster: an existing one (``scheduler``) or a LocalCluster of ``jobs`` workers.

    ``run(task)`` blocks until the task's outcome is known (the runner calls it from one waiter
    thread per grid point) and never raises for a failed notebook or a dead worker: those come back
    as a failed ``TaskOutcome`` with its MLflow run marked FAILED.
    """

    def __init__(self, scheduler: str | None, jobs: int, modules: list[str], reuse_kernels: bool = True,
                 connect_timeout: float = 30):
        from distributed import Client, LocalCluster

        from powerpipe.tracking import store as tracking

        self.scheduler = scheduler
        self.modules = list(modules)
        self.store_settings = {name: os.environ[name] for name in tracking.store_call_settings() if name in os.environ}
        self.reuse_kernels = reuse_kernels
        self.cluster = None
        self._futures: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._killing = False  # kill() was called: tasks cancelled from now on were stopped, not failed
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - boundary: OSError, TimeoutError, ...: all mean "cannot use it"
                raise DaskExecutorError(f"cannot connect to the Dask scheduler {scheduler}: {exc}") from None
        else:
            self.cluster = LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address=None)
            self.client = Client(self.cluster, set_as_default=False)
            self.client.run(_set_log_levels, {name: logging.getLogger(name).getEffectiveLevel()
                                              for name in ("papermill", "traitlets", "mlflow", "alembic")})
        try:
            self.client.wait_for_workers(1, timeout=connect_timeout)
        except Exception:  # noqa: BLE001 - boundary: any failure to see a worker means "no worker"
            self.close()
            raise DaskExecutorError(f"the Dask scheduler {scheduler} has no worker (waited {connect_timeout:g} s); "
                                    "start some with: dask worker " + str(scheduler)) from None
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        self.host_threads: dict[str, int] = {}
        for address, info in workers.items():
            host = urllib.parse.urlsplit(address).hostname
            self.host_threads[host] = self.host_threads.get(host, 0) + int(info["nthreads"])
        log.info("Dask: scheduler %s, %d worker(s), %d thread(s)", self.client.scheduler.address, len(workers),
                 sum(w["nthreads"] for w in workers.values()))

    def check_paths(self, paths_wanted: list[str | Path]) -> None:
        """Fail before any notebook runs if a worker cannot see the run folder, the data or a notebook."""
        wanted = [str(path) for path in paths_wanted]
        try:
            missing = self.client.run(_check_on_worker, wanted)
        except (ImportError, AttributeError) as exc:
            raise DaskExecutorError(f"the Dask workers cannot import powerpipe ({exc}): install the project on "
                                    "every worker machine (pip install -r requirements.txt -c requirements.lock "
                                    "-e .)") from None
        problems = {worker: paths for worker, paths in missing.items() if paths}
        if problems:
            lines = "\n".join(f"  {worker}: {', '.join(paths)}" for worker, paths in sorted(problems.items()))
            raise DaskExecutorError("Dask workers cannot see these paths; the run folder (--outputs), the data and "
                                    "the project must be at the same path on every machine (a shared folder):\n"
                                    + lines)

    def run(self, task: NotebookTask) -> TaskOutcome:
        """Execute one task on the cluster and wait for its outcome (Ctrl-C stays responsive)."""
        if self._closed:
            raise RuntimeError("DaskExecutor is closed")
        key = f"notebook-{task.tags.get(tags.PIPELINE_RUN_ID, 'run')}-{task.label}"
        future = self.client.submit(run_task_on_worker, task, key, self.modules, self.reuse_kernels,
                                    self.host_threads, self.store_settings, key=key, pure=False, retries=1)
        with self._lock:
            self._futures[key] = future
        try:
            return wait(future)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - boundary: KilledWorker, CancelledError, a task that raised twice
            if self._killing:  # cancelled by the stop: its run ends KILLED, as the runner marks the others
                return interrupted_outcome(task, key)
            return self._failed(task, key, exc)
        finally:
            with self._lock:
                self._futures.pop(key, None)

    def _failed(self, task: NotebookTask, key: str, exc: BaseException) -> TaskOutcome:
        """Record a task that the cluster could not complete as one FAILED run of its grid point."""
        from powerpipe.tracking import store as tracking

        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if type(exc).__name__ == "KilledWorker":
            error = f"WorkerDied: the Dask workers running this notebook died ({exc})"
        log.error("%s: %s", task.label, error)
        client = store_client(task.tracking_uri)
        runs = _runs_of(client, task, key)
        if runs:
            _close_attempts(client, runs, error, last_failed=True)
            run_id = runs[-1].info.run_id
        else:  # it never got as far as creating its run: create one, so the grid point has its FAILED run
            run_id = client.create_run(task.experiment_id, run_name=task.label,
                                       tags={**task.tags, tags.DASK_KEY: key, **tracking.runner_tags()}).info.run_id
            client.set_tag(run_id, tags.ERROR, error[:5000])
            client.set_terminated(run_id, "FAILED")
        return TaskOutcome(run_id=run_id, ok=False, error=error, output_notebook=task.output_notebook)

    def _stop_kernels(self, include_busy: bool) -> None:
        try:
            self.client.run(shutdown_worker_kernels, include_busy, wait=True)
        except Exception as exc:  # noqa: BLE001 - boundary: a worker gone already has no kernel left
            log.debug("could not stop the workers' kernels: %s", exc)

    def close(self) -> None:
        """Stop the workers' warm kernels (they hold memory on a shared cluster), disconnect, stop a LocalCluster."""
        if self._closed:
            return
        self._closed = True
        self._stop_kernels(include_busy=False)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def kill(self) -> None:
        """Ctrl-C: cancel every task not finished and kill the kernels running notebooks."""
        if self._closed:
            return
        self._killing = True
        with self._lock:
            futures = list(self._futures.values())
        if futures:
            try:
                self.client.cancel(futures, force=True)
            except Exception:  # noqa: BLE001 - boundary: stopping anyway; a future gone needs no cancel
                pass
        self._stop_kernels(include_busy=True)
        self.close()

