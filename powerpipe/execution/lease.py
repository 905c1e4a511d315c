"""One kernel policy for every executor: which kernel a notebook gets, and whether it is kept after.

- a kernel is warmed up (the notebooks' imports preloaded) only when it will be reused;
- a kernel that died is replaced before the next notebook;
- a kernel whose notebook failed or timed out is thrown away, never reused;
- a kernel is replaced after ``max_uses`` notebooks or once its memory passes ``max_memory``, so a
  long-lived one cannot grow without bound (measured: a kernel running the four model notebooks in turn
  grows from 0.85 GiB warm to 1.0 GiB after its first four, then by about 8 MiB a notebook);
- every kernel gets the same thread caps, so the kernels of one machine share its cores.

``KernelPool`` (local threads) and the Dask workers both hold their kernels through a ``KernelLease``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from powerpipe.execution import kernels
from powerpipe.core.exceptions import KernelError

log = logging.getLogger(__name__)

# A replacement costs a cold start (about 7 s with TensorFlow): a replay paid it every few weeks at 25.
MAX_KERNEL_USES = 100
MAX_KERNEL_MEMORY = 3 * 2**30  # bytes of resident memory


def threads_per_kernel(kernels_on_machine: int) -> int:
    """BLAS/TensorFlow threads for each kernel, so that the kernels of one machine share its cores."""
    return max(1, (os.cpu_count() or 1) // max(1, kernels_on_machine))


@dataclass(frozen=True)
class KernelSettings:
    """What a kernel is started with; equal settings mean interchangeable kernels."""

    env: tuple[tuple[str, str], ...]
    warmup: str | None

    @classmethod
    def for_threads(cls, threads: int, modules: list[str], tracking_uri: str | None, reuse: bool) -> "KernelSettings":
        threads = max(1, threads)
        warmup = kernels.warmup_code(modules, tracking_uri, threads) if reuse else None
        return cls(tuple(sorted(kernels.thread_caps(threads).items())), warmup)


class KernelLease:
    """Hands out kernels under the policy above and knows every kernel it started (to kill them all)."""

    def __init__(self, settings: KernelSettings, reuse: bool = True, max_uses: int = MAX_KERNEL_USES,
                 max_memory: int = MAX_KERNEL_MEMORY):
        self.settings, self.reuse, self.max_uses, self.max_memory = settings, reuse, max_uses, max_memory
        self._live: set[kernels.Kernel] = set()
        self._lock = threading.Lock()
        self.closed = False

    def start(self, abandoned: Callable[[], bool] | None = None) -> kernels.Kernel:
        """A new kernel, warmed up if it will be reused. Its start is given up (``KernelCancelled``) once the
        lease is killed, or once ``abandoned()`` says nobody will use it (a kernel warmed ahead of a run
        that has ended)."""
        if self.closed:
            raise KernelError("the pipeline was stopped")

        def cancelled() -> bool:
            return self.closed or (abandoned is not None and abandoned())

        kernel = kernels.Kernel(env=dict(self.settings.env), warmup=self.settings.warmup if self.reuse else None,
                                cancelled=cancelled)
        with self._lock:
            self._live.add(kernel)
        if self.closed:  # killed while this kernel started: run nothing more
            self.retire(kernel)
            raise KernelError("the pipeline was stopped")
        return kernel

    def take(self, kernel: kernels.Kernel | None = None) -> kernels.Kernel:
        """``kernel`` if it is still alive, else a new one in its place."""
        if kernel is not None and kernel.alive():
            return kernel
        self.retire(kernel)
        return self.start()

    def give_back(self, kernel: kernels.Kernel, reusable: bool) -> kernels.Kernel | None:
        """After one notebook: the kernel to keep for the next, or None (it was shut down)."""
        kernel.uses += 1
        if self.reuse and reusable and kernel.uses < self.max_uses and not self.closed and not self._grown(kernel):
            return kernel
        self.retire(kernel)
        return None

    def _grown(self, kernel: kernels.Kernel) -> bool:
        memory = kernel.memory_bytes()
        if memory is None or memory <= self.max_memory:
            return False
        log.info("replacing a kernel that holds %.1f GiB after %d notebooks (limit %.1f GiB)", memory / 2**30,
                 kernel.uses, self.max_memory / 2**30)
        return True

    def retire(self, kernel: kernels.Kernel | None) -> None:
        if kernel is None:
            return
        with self._lock:
            self._live.discard(kernel)
        kernel.shutdown()

    def kill_all(self) -> int:
        """Stop now: every kernel this lease started, busy or idle. Returns how many."""
        self.closed = True
        with self._lock:
            doomed = list(self._live)
            self._live.clear()
        for kernel in doomed:
            kernel.stopped = True  # its notebook's run is KILLED (interrupted), not FAILED
            kernel.shutdown()
        return len(doomed)
