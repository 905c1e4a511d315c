"""When a grid point need not run again: a FINISHED run with the same inputs already exists.

A run's inputs are summed up in one key, tagged on the run: the notebook's content hash, the
parameters that shape its result (not the per-run paths), the data's SHA-256, the installed
versions of the main packages and the hash of this package's own code. Equal keys mean the earlier run is reused instead of executed.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CACHE_KEY_TAG = "powerpipe.cache_key"
MAIN_PACKAGES = ("papermill", "nbclient", "ipykernel", "mlflow", "scikit-learn", "tensorflow", "keras",
                 "pandas", "numpy", "matplotlib", "plotly", "scrapbook")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in MAIN_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


@lru_cache(maxsize=1)
def shared_code_sha256() -> str:
    """SHA-256 of this package's sources: the notebooks' split, metrics and logging live here."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(notebook_sha256: str, parameters: dict[str, Any], data_sha256: str) -> str:
    payload = {
        "notebook": notebook_sha256,
        "parameters": parameters,
        "data": data_sha256,
        "packages": package_versions(),
        "powerpipe": shared_code_sha256(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def finished_runs_by_key(client, experiment_id: str) -> dict[str, Any]:
    """Every FINISHED run of the experiment that carries a cache key, newest first per key."""
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'FINISHED' and tags.`{CACHE_KEY_TAG}` LIKE '%'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        for run in page:
            runs.setdefault(run.data.tags[CACHE_KEY_TAG], run)
        token = page.token
        if not token:
            return runs
