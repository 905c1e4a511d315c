"""The default executor: notebooks on this machine, ``jobs`` worker threads each owning a warm kernel."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable

from powerpipe.core.exceptions import KernelError
from powerpipe.execution.tasks import NotebookTask, TaskOutcome, run_task
from powerpipe.execution.lease import KernelLease
from powerpipe.execution.waiting import wait

log = logging.getLogger(__name__)


class KernelPool:
    """Up to ``jobs`` worker threads, each holding one kernel through the lease.

    ``submit(fn)`` queues ``fn(kernel) -> (result, kernel_reusable)``. Kernels start with the first
    task, not before: a fully cached run starts none. Then ``warm_ahead`` threads (``jobs`` by default)
    warm their kernels at once, ready for the tasks to come. The others are started only when a task
    finds every thread busy, and start their kernel with it: a run of one notebook does not pay for
    ``jobs`` kernels, and never a cold kernel while a warm one is idle.
    """

    def __init__(self, jobs: int, lease: KernelLease, warm_ahead: int | None = None):
        self.lease = lease
        self.jobs = max(1, jobs)
        self._tasks: queue.Queue = queue.Queue()
        self._closing = False
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a task
        self._threads: list[threading.Thread] = []
        for _ in range(max(1, self.jobs if warm_ahead is None else min(self.jobs, warm_ahead))):
            self._spawn(warm=True)

    def _spawn(self, warm: bool) -> None:
        thread = threading.Thread(target=self._work, args=(warm,), name=f"powerpipe-worker-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def submit(self, fn: Callable) -> Future:
        future: Future = Future()
        with self._lock:
            self._tasks.put((future, fn))
            if self._idle < self._tasks.qsize() and len(self._threads) < self.jobs and self._wanted.is_set():
                self._spawn(warm=False)  # every thread is busy: one more, cold, for this task
        self._wanted.set()
        return future

    def _work(self, warm: bool) -> None:
        kernel = None
        self._wanted.wait()
        if warm and self.lease.reuse and not self._closing:
            try:
                kernel = self.lease.start()  # warm before the task reaches this thread
            except KernelError as exc:
                log.warning("%s", exc)
        while True:
            with self._lock:
                self._idle += 1
            item = self._tasks.get()
            with self._lock:
                self._idle -= 1
            if item is None or self._closing:
                if item is not None:
                    item[0].cancel()
                break
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                kernel = self.lease.take(kernel)
                result, reusable = fn(kernel)
                kernel = self.lease.give_back(kernel, reusable)
                future.set_result(result)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                self.lease.retire(kernel)
                kernel = None
                future.set_exception(exc)
        self.lease.retire(kernel)

    def close(self) -> None:
        """Finish queued work, then stop the workers and their kernels."""
        if not self._wanted.is_set():  # never used: no kernel was started
            self._closing = True
            self._wanted.set()
        with self._lock:
            threads = list(self._threads)
            self.jobs = len(threads)  # no thread is started any more
        for _ in threads:
            self._tasks.put(None)
        for thread in threads:
            thread.join()

    def kill(self) -> None:
        """Stop now: cancel all queued work and kill every kernel (Ctrl-C)."""
        self._closing = True
        self._wanted.set()
        while True:  # every queued task is cancelled, so that nobody waits on it for ever
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        self.lease.kill_all()
        with self._lock:
            threads = list(self._threads)
            self.jobs = len(threads)
        for _ in threads:
            self._tasks.put(None)


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
