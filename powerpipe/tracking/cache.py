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

from powerpipe.core.tags import CACHE_KEY

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # powerpipe/
# Code that runs inside every kernel whatever the notebook imports: warm-up, preamble, reset.
KERNEL_CODE = ("powerpipe.execution.kernels",)
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


def module_file(module: str) -> Path | None:
    """The source file of a ``powerpipe`` module (``powerpipe.forecast.data``), or None if it is no module."""
    parts = module.split(".")
    if parts[0] != "powerpipe":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a.b.c`` itself."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _imported_modules(module: str) -> set[str]:
    """The ``powerpipe`` modules that ``module`` imports itself (absolute or relative, at any depth)."""
    path = module_file(module)
    if path is None:
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "powerpipe":
                continue
            found.add(base)
            # `from powerpipe.forecast import data`: data is a module of its own
            found |= {f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "powerpipe"}
    return {name for parent in found for name in _with_parents(parent) if module_file(name)}


@lru_cache(maxsize=None)
def notebook_code_sha256(notebook: Path) -> str:
    """SHA-256 of the package modules a notebook execution runs: its imports, followed through every
    subpackage (each package's ``__init__`` included), and the kernel code."""
    from powerpipe.spec.parameterize import notebook_imports

    wanted = {name for name in notebook_imports([notebook]) if name.split(".")[0] == "powerpipe"}
    wanted = {parent for name in wanted for parent in _with_parents(name) if module_file(parent)}
    wanted |= {parent for name in KERNEL_CODE for parent in _with_parents(name)}
    seen: set[str] = set()
    while wanted:
        module = wanted.pop()
        if module not in seen:
            seen.add(module)
            wanted |= _imported_modules(module) - seen
    digest = hashlib.sha256()
    for module in sorted(seen):
        path = module_file(module)
        if path is not None:
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
