"""Every error the package raises on purpose, under one base (as papermill keeps its own in one module).

A ``PipelineError`` is shown to a user as one clear message (no traceback unless ``--debug``); the
CLI exits 2 for those raised before anything ran.
"""


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


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


class StoreUnreachableError(TrackingError):
    """The tracking store did not answer (a server down, a database host unreachable): not "no such thing"."""


class KernelError(PipelineError):
    """A kernel could not be started or prepared."""


class DaskExecutorError(PipelineError):
    """The Dask cluster cannot be used for this pipeline (unreachable, or cannot see its files)."""


class NoProductionModel(PipelineError):
    """The store has no version behind ``name@alias`` (or no store exists yet): the pipeline must run first."""


class ArtifactNotServed(PipelineError, LookupError):
    """The dashboard does not serve this artifact (unknown run, kind or path)."""
