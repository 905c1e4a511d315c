"""The default executor: notebooks on this machine, ``jobs`` worker threads each owning a warm kernel."""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future
from typing import Callable

from powerpipe.core.exceptions import KernelCancelled, KernelError
from powerpipe.execution.tasks import NotebookTask, TaskOutcome, run_task
from powerpipe.execution.lease import KernelLease
from powerpipe.execution.waiting import wait

log = logging.getLogger(__name__)


class KernelPool:
    """Up to ``jobs`` worker threads, each holding one kernel through the lease.

    ``submit(fn)`` queues ``fn(kernel) -> (result, kernel_reusable)``. Kernels start with the first
    task, not before: a fully cached run starts none. Then ``warm_ahead`` threads (``jobs`` by default)
    start and warm their kernels at once, ready for the tasks to come. Another thread starts only when a
    task is queued that no free thread (idle, or still warming up) will take; it starts its kernel with
    that task. So a run of one notebook does not pay for ``jobs`` kernels, and a cold kernel never
    starts while a warm one is free.
    """

    def __init__(self, jobs: int, lease: KernelLease, warm_ahead: int | None = None):
        self.lease = lease
        self.jobs = max(1, jobs)
        self._warm_ahead = max(1, self.jobs if warm_ahead is None else min(self.jobs, warm_ahead))
        self._changed = threading.Condition()  # guards everything below
        self._tasks: collections.deque = collections.deque()
        self._free = 0  # threads started and not running a task
        self._threads: list[threading.Thread] = []
        self._stopping = False  # close or kill: no new task, threads end when the queue is empty
        self._closing = False  # kill: no kernel is started any more

    def submit(self, fn: Callable) -> Future:
        future: Future = Future()
        with self._changed:
            if self._stopping:  # nothing would run it: say so rather than leave its caller waiting
                future.cancel()
                return future
            self._tasks.append((future, fn))
            if not self._threads:  # the first task: the warm threads start
                for _ in range(self._warm_ahead):
                    self._spawn(warm=True)
            elif len(self._tasks) > self._free and len(self._threads) < self.jobs:
                self._spawn(warm=False)  # no free thread for this task: one more, cold
            self._changed.notify()
        return future

    def _spawn(self, warm: bool) -> None:
        """Start one more worker thread (called holding the lock)."""
        thread = threading.Thread(target=self._work, args=(warm,), name=f"powerpipe-worker-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        self._free += 1
        thread.start()

    def _next(self):
        """The next task for this thread, or None once the pool stops and nothing is queued."""
        with self._changed:
            while not self._tasks and not self._stopping:
                self._changed.wait()
            if not self._tasks:
                return None
            self._free -= 1
            return self._tasks.popleft()

    def _work(self, warm: bool) -> None:
        kernel = None
        if warm and self.lease.reuse and not self._closing and not self._warming_unneeded():
            try:  # warm before the task reaches this thread; given up if the pool stops with nothing queued
                kernel = self.lease.start(abandoned=self._warming_unneeded)
            except KernelCancelled:
                log.debug("a kernel warming up ahead was not needed: the run ended first")
            except KernelError as exc:
                log.warning("%s", exc)
        while (item := self._next()) is not None:
            future, fn = item
            if self._closing:
                future.cancel()
            elif future.set_running_or_notify_cancel():
                try:
                    kernel = self.lease.take(kernel)
                    result, reusable = fn(kernel)
                    kernel = self.lease.give_back(kernel, reusable)
                    future.set_result(result)
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    self.lease.retire(kernel)
                    kernel = None
                    future.set_exception(exc)
            with self._changed:
                self._free += 1
        self.lease.retire(kernel)

    def _warming_unneeded(self) -> bool:
        """The pool stops and no task is left: a kernel still warming up would only be shut down."""
        return self._stopping and not self._tasks

    def close(self) -> None:
        """Finish queued work, then stop the workers and their kernels (one still warming up is given up:
        on a loaded machine a kernel may take most of a minute to import TensorFlow, and nothing waits for it)."""
        with self._changed:
            self._stopping = True
            threads = list(self._threads)
            self._changed.notify_all()
        for thread in threads:
            thread.join()

    def kill(self) -> None:
        """Stop now: cancel all queued work and kill every kernel (Ctrl-C)."""
        with self._changed:
            self._closing = True
            queued = list(self._tasks)
            self._tasks.clear()
        for future, _ in queued:  # every queued task is cancelled, so that nobody waits on it for ever
            future.cancel()
        self.lease.kill_all()
        with self._changed:  # only now: the idle threads retire their kernels after the kill, not during it
            self._stopping = True
            self._changed.notify_all()


class LocalExecutor:
    """Runs notebook tasks on this machine's pool of warm kernels."""

    def __init__(self, jobs: int, lease: KernelLease, warm_ahead: int | None = None):
        self.pool = KernelPool(jobs, lease, warm_ahead)

    def run(self, task: NotebookTask) -> TaskOutcome:
        try:
            return wait(self.pool.submit(lambda kernel: run_task(task, kernel)))
        except KernelError as exc:  # no kernel could be started for it: this grid point fails
            return TaskOutcome(run_id="", ok=False, error=str(exc), output_notebook=task.output_notebook)

    def close(self) -> None:
        self.pool.close()

    def kill(self) -> None:
        self.pool.kill()
