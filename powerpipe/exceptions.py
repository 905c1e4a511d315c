"""One exception base for everything the pipeline reports to a user as a clear, short message."""


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
    """The MLflow tracking store cannot be reached or used."""
