"""What a user asks of a pipeline run (the command line's flags, as data): ``RunOptions``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from powerpipe.core import paths


@dataclass
class RunOptions:
    config: Path = paths.DEFAULT_CONFIG
    data: str = "auto"
    tracking_uri: str | None = None
    outputs: Path = paths.OUTPUTS_DIR
    jobs: int = os.cpu_count() or 1
    reuse_kernels: bool = True
    timeout: float | None = None  # overrides the config's
    force: bool = False  # run every grid point even when a cached run exists
    force_promote: bool = False
    progress: bool = True
    executor: str = "local"  # "local": a pool of warm kernels here; "dask": tasks on a Dask cluster
    scheduler: str | None = None  # Dask scheduler address; None with "dask": a LocalCluster of `jobs` workers
    if_running: str = "fail"  # another run holds the outputs folder: "fail" at once, or "wait" for it
    search_storage: str | None = None  # database of the searches' studies (default: beside a SQLite store)
    as_of: str | None = None  # --as-of: the run sees only the hours before this time (UTC)
    fail_on_alert: bool = False  # --fail-on-alert: a monitoring alert makes the command exit 3
    render_notebooks: bool = True  # each executed notebook also as HTML (a replay's weeks without reports: no)
    figures: bool = True  # the training notebooks draw their figures (a replay's weeks without reports: no)
