"""powerpipe: the German solar and wind notebooks as a reproducible pipeline.

Layers, top to bottom (each imports only those below it; ``pyproject.toml``'s import-linter contracts
enforce it): ``cli`` → ``dashboard`` | ``run`` → ``search`` → ``execution`` → ``tracking`` → ``spec`` →
``forecast`` → ``core``. Notebooks import ``powerpipe.forecast`` and ``powerpipe.tracking``'s notebook
side; the runner never runs inside a kernel.

Kept light on import: heavy modules (papermill, MLflow, TensorFlow) load inside functions.
"""

from powerpipe import _legacy

__version__ = "0.1.0"

_legacy.install()
