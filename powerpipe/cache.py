"""When a grid point need not run again: a FINISHED run with the same inputs already exists.

A run's inputs are summed up in one key, tagged on the run: the notebook's content hash, the
parameters that shape its result (not the per-run paths), the data's SHA-256, the installed
versions of the main packages and the hash of the package code the notebook runs: the powerpipe
modules it imports, followed through their own imports, and the kernel bookkeeping. Editing the
dashboard or the runner invalidates nothing. Equal keys mean the earlier run is reused.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .tags import CACHE_KEY

PACKAGE_DIR = Path(__file__).parent
# Code that runs inside every kernel whatever the notebook imports: warm-up, preamble, reset.
KERNEL_CODE = ("kernels",)
MAIN_PACKAGES = ("papermill", "nbclient", "ipykernel", "mlflow", "scikit-learn", "tensorflow", "keras",
                 "pandas", "numpy", "matplotlib", "plotly", "scrapbook", "pvlib")


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


def _package_imports(module: str) -> set[str]:
    """The powerpipe modules that ``module`` (a name inside the package) imports itself."""
    path = PACKAGE_DIR / f"{module}.py"
    if not path.is_file():
        return set()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base == "powerpipe" or base.startswith("powerpipe."):
                base = base.removeprefix("powerpipe").lstrip(".")
                found |= {base.split(".")[0]} if base else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("powerpipe.")}
    return {name for name in found if (PACKAGE_DIR / f"{name}.py").is_file()}


@lru_cache(maxsize=None)
def notebook_code_sha256(notebook: Path) -> str:
    """SHA-256 of the package modules a notebook execution runs (its imports, followed, and the kernel code)."""
    from .kernels import notebook_imports

    wanted = {name.split(".")[1] for name in notebook_imports([notebook]) if name.startswith("powerpipe.")}
    wanted |= set(KERNEL_CODE)
    if "powerpipe" in notebook_imports([notebook]):
        wanted.add("__init__")
    seen: set[str] = set()
    while wanted:
        module = wanted.pop()
        if module not in seen:
            seen.add(module)
            wanted |= _package_imports(module) - seen
    digest = hashlib.sha256()
    for module in sorted(seen):
        path = PACKAGE_DIR / f"{module}.py"
        if path.is_file():
            digest.update(module.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(notebook_sha256: str, parameters: dict[str, Any], data_sha256: str, code_sha256: str) -> str:
    payload = {
        "notebook": notebook_sha256,
        "parameters": parameters,
        "data": data_sha256,
        "packages": package_versions(),
        "powerpipe": code_sha256,
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
            filter_string=f"attributes.status = 'FINISHED' and tags.`{CACHE_KEY}` LIKE '%'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        for run in page:
            runs.setdefault(run.data.tags[CACHE_KEY], run)
        token = page.token
        if not token:
            return runs
