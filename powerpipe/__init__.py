"""powerpipe: the shared code of the solar and wind notebooks and the runner that executes them.

Kept light on import: the notebooks import only the modules they need (``data``, ``modeling``,
``tracking``), and the runner imports papermill and MLflow only when it actually runs.
"""

__version__ = "0.1.0"
