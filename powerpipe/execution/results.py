"""What one notebook execution (a grid point, a trial, a single-notebook stage) ended as: ``StepResult``.

Below the search and the run layers, which both produce and read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class StepResult:
    """One notebook execution (a grid point, or a single-notebook stage) as summary.json lists it."""

    stage: str
    notebook: str
    parameters: dict[str, Any]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    output_notebook: str | None = None
    seconds: float = 0.0
    error: str | None = None
    # Not in summary.json: the name of the execution, and the earlier run a cached result reuses.
    label: str = field(default="", repr=False, compare=False)
    cached_run: Any = field(default=None, repr=False, compare=False)
    trial: dict | None = None  # a search's trial: {"study": name, "number": n} (in summary.json only then)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("label", "cached_run")
                and (f.name != "trial" or self.trial is not None)}
