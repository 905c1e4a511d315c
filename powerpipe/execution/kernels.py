"""Kernels on this project's interpreter: started ahead, warmed with the notebooks' imports, reused.

Starting a kernel and importing pandas, scikit-learn, MLflow (and TensorFlow) costs seconds per
notebook; a warm kernel pays it once. Between executions the kernel is reset: MLflow runs ended,
autolog off, figures closed, Keras state cleared, user namespace wiped, working folder, environment
and random seeds set afresh. Which kernel runs which notebook, and when one is replaced, is the executors' lease policy
(``executors.lease``).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from powerpipe.core.exceptions import KernelCancelled, KernelError

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"
# Thread-count variables read by BLAS/OpenMP libraries and TensorFlow at start-up.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
SEED = 0


def kernel_manager_class(env: dict[str, str] | None = None, stderr_path: Path | None = None):
    """A KernelManager that always starts ``sys.executable``, whatever kernelspecs the machine has.

    papermill would otherwise look up the notebook's ``python3`` kernelspec, and a stale one
    elsewhere on the machine silently runs another interpreter. ``env`` is added to the kernel's
    environment; its stderr (start-up chatter, crash messages) goes to ``stderr_path``.
    """
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    extra_env = dict(env or {})

    class ProjectKernelSpecManager(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            spec = get_kernel_dict()
            spec["argv"][0] = sys.executable
            return KernelSpec(resource_dir=RESOURCES, env=extra_env, **spec)

    class ProjectKernelManager(KernelManager):
        def _kernel_spec_manager_default(self):
            return ProjectKernelSpecManager(data_dir=self.data_dir)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if stderr_path is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(stderr_path, "ab") as stderr:  # the child keeps its own copy of the handle
                return await super()._async_launch_kernel(kernel_cmd, stderr=stderr, **kw)

    return ProjectKernelManager


def thread_caps(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_ENV}


def warmup_code(modules: list[str], tracking_uri: str | None, threads: int) -> str:
    """Code a new kernel runs once: import what the notebooks import, open the tracking store."""
    lines = [
        "def _powerpipe_warm_up(modules):",
        "    import importlib",
        "    for name in modules:",
        "        try:",
        "            importlib.import_module(name)",
        "        except ImportError:",
        "            pass  # `from x import function`: not a module; the notebook will import it",
        f"_powerpipe_warm_up({modules!r})",
        "del _powerpipe_warm_up",
        "import sys as _sys",
        # The inline backend set up once here, for notebooks that draw (their imports brought matplotlib);
        # the others are spared its 0.3 s.
        "if 'matplotlib' in _sys.modules:",
        "    get_ipython().run_line_magic('matplotlib', 'inline')",
        "if 'tensorflow' in _sys.modules:",
        "    import tensorflow as _tf",
        f"    _tf.config.threading.set_intra_op_parallelism_threads({threads})",
        f"    _tf.config.threading.set_inter_op_parallelism_threads({threads})",
    ]
    if tracking_uri:
        # Opening the store runs MLflow's schema checks once here instead of in every notebook.
        lines += [
            "if 'mlflow' in _sys.modules:",
            "    import mlflow as _mlflow",
            f"    _mlflow.MlflowClient({tracking_uri!r}).search_experiments(max_results=1)",
        ]
    lines.append("for _name in ('_sys', '_tf', '_mlflow', '_name'):\n    globals().pop(_name, None)")
    return "\n".join(lines)


def preamble_code(cwd: Path, env: dict[str, str]) -> str:
    """Run before each notebook: its folder, its environment (its MLflow run), fixed random seeds."""
    return "\n".join([
        "import os as _os, random as _random, sys as _sys",
        f"_os.chdir({str(cwd)!r})",
        f"_os.environ.update({dict(env)!r})",
        f"_random.seed({SEED})",
        "if 'numpy' in _sys.modules:",
        f"    _sys.modules['numpy'].random.seed({SEED})",
        "del _os, _random, _sys",
    ])


# Forget the notebook's active MLflow run without ending it: the runner ends it, after attaching the
# executed notebook, so a run is never FINISHED without its notebook (MLflow would otherwise end it,
# as FINISHED, at the next start_run or when the kernel exits).
DETACH_RUN_CODE = "\n".join([
    "import sys as _sys",
    "if 'mlflow' in _sys.modules:",
    "    from mlflow.tracking import fluent as _fluent",
    "    for _stack in _fluent._active_run_stack.get_all_thread_values().values():",
    "        _stack.clear()",
    "    del _fluent",
])

RESET_CODE = "\n".join([
    DETACH_RUN_CODE,
    "import sys as _sys",
    "if 'mlflow' in _sys.modules:",
    "    import mlflow as _mlflow",
    "    if 'keras' in _sys.modules:",
    "        _mlflow.keras.autolog(disable=True)",
    "if 'matplotlib.pyplot' in _sys.modules:",
    "    _sys.modules['matplotlib.pyplot'].close('all')",
    "if 'keras' in _sys.modules:",
    "    _sys.modules['keras'].backend.clear_session(free_memory=False)",
    # Like %reset -f, without its garbage collections (most of a second with TensorFlow loaded).
    "def _powerpipe_reset(shell):",
    "    for name in [n for n in shell.user_ns if n not in shell.user_ns_hidden]:",
    "        del shell.user_ns[name]",
    "    shell.user_ns['Out'].clear()",
    "    shell.user_ns.update({'_': '', '__': '', '___': ''})",
    "_powerpipe_reset(get_ipython())",
])


class Kernel:
    """One kernel process with its client, used by one thread at a time.

    ``cancelled``: asked every half second while the kernel starts and warms up; once it says yes, the
    start stops, the process is shut down and ``KernelCancelled`` raised (a run that ends or is stopped
    does not wait for a kernel nobody will use). A kernel that dies while starting, warming up or running
    bookkeeping code is an error at once, not after the timeout.
    """

    def __init__(self, env: dict[str, str] | None = None, warmup: str | None = None, startup_timeout: float = 120,
                 cancelled: Callable[[], bool] | None = None):
        handle = tempfile.NamedTemporaryFile(prefix="powerpipe-kernel-", suffix=".stderr", delete=False)
        handle.close()
        self.stderr_path = Path(handle.name)
        self.km = kernel_manager_class(env, self.stderr_path)(kernel_name=KERNEL_NAME)
        self.kc = None
        self.uses = 0
        self.stopped = False  # killed because the pipeline is stopping (Ctrl-C, SIGTERM), not by its notebook
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self._cancelled = cancelled or (lambda: False)
        started = time.monotonic()
        try:
            self.km.start_kernel()
            self.kc = self.km.client()
            self.kc.start_channels()
            self._wait_for_ready(started + startup_timeout)
            if warmup:  # its own time, as before: TensorFlow's import alone may take a minute on a busy machine
                self.run(warmup, timeout=startup_timeout, cancellable=True)
        except KernelCancelled:
            self.shutdown()
            raise
        except Exception as exc:  # noqa: BLE001 - boundary: whatever failed, this kernel is unusable
            detail = self.stderr_tail()
            self.shutdown()
            raise KernelError(f"could not start a kernel on {sys.executable}: {exc}"
                              + (f"\n{detail}" if detail else "")) from None
        log.debug("kernel started in %.1f s", time.monotonic() - started)

    def _wait_for_ready(self, deadline: float) -> None:
        """jupyter_client's wait for the kernel's first answer, in slices: between them, whether to go on."""
        while True:
            self._check_waiting(deadline, cancellable=True)
            try:
                self.kc.wait_for_ready(timeout=min(2.0, max(0.5, deadline - time.monotonic())))
                return
            except RuntimeError:  # no answer in this slice, or the kernel died: the next check says which
                continue

    def _check_waiting(self, deadline: float, cancellable: bool) -> None:
        if cancellable and self._cancelled():
            raise KernelCancelled("the kernel's start was abandoned: the run ended or was stopped")
        if not self.alive():
            raise KernelError("the kernel died")
        if time.monotonic() > deadline:
            raise KernelError("the kernel did not answer in time")

    def run(self, code: str, timeout: float = 60, cancellable: bool = False) -> None:
        """Execute bookkeeping code (not part of any notebook); raise KernelError if it fails."""
        deadline = time.monotonic() + timeout
        try:
            msg_id = self.kc.execute(code, store_history=False, allow_stdin=False)
            reply = self._message(self.kc.get_shell_msg, msg_id, deadline, cancellable)
            # Its outputs up to idle, so that nothing of it is left for the next execution to read.
            while True:
                msg = self._message(self.kc.get_iopub_msg, msg_id, deadline, cancellable)
                if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    break
        except KernelError:
            raise
        except Exception as exc:  # noqa: BLE001 - a dead channel or kernel: the kernel is unusable
            raise KernelError(f"kernel did not answer: {type(exc).__name__}: {exc}") from None
        content = reply["content"]
        if content["status"] != "ok":
            raise KernelError(f"{content.get('ename')}: {content.get('evalue')}" if content.get("ename")
                              else f"kernel bookkeeping failed: {content.get('status')}")

    def _message(self, get, msg_id: str, deadline: float, cancellable: bool) -> dict:
        """The next message from ``get`` (a channel's) answering ``msg_id``; checks the kernel every half second."""
        while True:
            try:
                msg = get(timeout=0.5)
            except queue.Empty:
                self._check_waiting(deadline, cancellable)
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def alive(self) -> bool:
        try:
            return self.km.is_alive()
        except Exception:  # noqa: BLE001 - boundary: a kernel we cannot even ask is not alive
            return False

    def memory_bytes(self) -> int | None:
        """The kernel process's resident memory, or None if it cannot be read (gone, not a local process)."""
        import psutil

        try:
            return psutil.Process(self.km.provisioner.process.pid).memory_info().rss
        except Exception:  # noqa: BLE001 - boundary: no process to ask is no answer, not an error
            return None

    def interrupt(self) -> None:
        try:
            self.km.interrupt_kernel()
        except Exception:  # noqa: BLE001 - boundary: already gone
            pass

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def shutdown(self) -> None:
        """Stop the kernel and close its client, once: a second call (the pool's thread while the stop
        kills every kernel) waits for the first and returns; two at once hung in zmq's context term."""
        with self._shutdown_lock:
            if not self._shut_down:
                self._shut_down = True
                self._shutdown()

    def _shutdown(self) -> None:
        # Each step may fail on a half-dead kernel; every later one must still run (broad by design).
        try:
            if self.kc is not None:
                self.kc.stop_channels()
        except Exception:  # noqa: BLE001
            pass
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.km.cleanup_resources()
        except Exception:  # noqa: BLE001
            pass
        try:
            os.unlink(self.stderr_path)
        except OSError:
            pass
