"""Every error the package raises on purpose, under one base (as papermill keeps its own in one module).

A ``PipelineError`` is shown to a user as one clear message (no traceback unless ``--debug``); the
CLI exits 2 for those raised before anything ran.
"""


def chain(exc: BaseException | None):
    """``exc``, then what it was raised from or during, and so on (each once, even in a cycle)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class PipelineError(Exception):
    """Base of every error the runner shows without a traceback (unless --debug)."""


class ConfigError(PipelineError):
    """The pipeline YAML is invalid: names the file and the key."""


class ParameterError(ConfigError):
    """A grid key or value does not match the target notebook's parameters cell."""


class NotebookError(PipelineError):
    """A notebook is missing, unreadable, or has no cell tagged ``parameters``."""


class DataError(PipelineError):
    """The data file is missing or malformed: names the file, and the column where one is at fault."""


class TransferInterrupted(DataError):
    """A download stopped early for a reason worth retrying (cut connection, timeout, busy server)."""


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


class StoreUnreachableError(TrackingError):
    """The tracking store did not answer (a server down, a database host unreachable): not "no such thing"."""


class RollbackError(TrackingError):
    """An alias cannot be moved back: the version named does not exist, or no earlier holder is recorded."""


class ReplayError(PipelineError):
    """A replay that cannot run: a start that is no Monday, no weeks, or a folder holding another replay."""


class KernelError(PipelineError):
    """A kernel could not be started or prepared."""


class KernelCancelled(KernelError):
    """A kernel's start was abandoned: the run no longer needs it (it ended, or is being stopped)."""


class DaskExecutorError(PipelineError):
    """The Dask cluster cannot be used for this pipeline (unreachable, or cannot see its files)."""


class RequestError(PipelineError, ValueError):
    """A request the served model cannot read (``forecast.quantile_model``): names the column and what is accepted."""


class NoProductionModel(PipelineError):
    """The store has no version behind ``name@alias`` (or no store exists yet): the pipeline must run first."""


class ArtifactNotServed(PipelineError, LookupError):
    """The dashboard does not serve this artifact (unknown run, kind or path)."""


class DiskFullError(PipelineError, OSError):
    """A file system ran out of space (ENOSPC): names the mount point, the space free and, if known, needed.

    Also an ``OSError`` (``errno`` ENOSPC), so code that handles failed writes handles it too.
    """

    def __init__(self, message: str):
        import errno

        super().__init__(message)
        self.errno = errno.ENOSPC

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Terminated(KeyboardInterrupt):
    """The runner got SIGTERM or SIGHUP (a scheduler or service manager stopping it): handled as Ctrl-C is.

    A ``KeyboardInterrupt`` on purpose: every place that stops kernels and marks runs KILLED on
    Ctrl-C does so for these signals too. ``signum`` says which signal; the exit code is 128 + it.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunLockedError(PipelineError):
    """Another pipeline run holds the outputs folder (``powerpipe.runlock``): names it (id, host, pid, since).

    ``holder`` is the lock file's content (a dict; empty if unreadable).
    """

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = dict(holder or {})

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
