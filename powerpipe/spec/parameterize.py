"""Read a notebook's ``parameters`` cell and check values against it, before anything runs.

The cell is parsed with ``ast`` (papermill's own inspector misses ``int | None`` annotations): each
top-level assignment is a parameter; its annotation, or else the type of its default, says which
values it takes.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powerpipe.core.exceptions import NotebookError, ParameterError

PARAMETERS_TAG = "parameters"
_SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


@dataclass(frozen=True)
class NotebookParameter:
    name: str
    default: Any
    allowed: tuple[type, ...] | None  # None: any value
    nullable: bool
    annotation: str

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable or self.allowed is None
        if self.allowed is None:
            return True
        for kind in self.allowed:
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
            if kind is int and isinstance(value, int) and not isinstance(value, bool):
                return True
            if kind not in (int, float) and isinstance(value, kind):
                return True
        return False

    @property
    def type_name(self) -> str:
        return self.annotation or (type(self.default).__name__ if self.default is not None else "any")


def load_notebook_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"notebook not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotebookError(f"notebook {path} is not valid notebook JSON: {exc}") from None


def notebook_hash(path: str | Path) -> str:
    """SHA-256 of the notebook's cells: type, tags and source (outputs and other metadata do not count)."""
    nb = load_notebook_json(path)
    digest = hashlib.sha256()
    for cell in nb.get("cells", []):
        source = cell.get("source", "")
        digest.update(cell.get("cell_type", "").encode())
        digest.update(json.dumps(cell.get("metadata", {}).get("tags", [])).encode())
        digest.update(("".join(source) if isinstance(source, list) else source).encode())
    return digest.hexdigest()


def read_parameters(path: str | Path) -> dict[str, NotebookParameter]:
    """The parameters declared in the notebook's cell tagged ``parameters``."""
    path = Path(path)
    stat = path.stat() if path.is_file() else None
    return _read_parameters(path, stat.st_mtime_ns if stat else None)


@lru_cache(maxsize=64)
def _read_parameters(path: Path, mtime_ns: int | None) -> dict[str, NotebookParameter]:
    """Parsed once per notebook version: a grid checks every value against the same cell."""
    nb = load_notebook_json(path)
    cells = [
        c for c in nb.get("cells", [])
        if c.get("cell_type") == "code" and PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])
    ]
    if not cells:
        raise NotebookError(f"notebook {path} has no cell tagged '{PARAMETERS_TAG}'")
    source = cells[0].get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(f"notebook {path}: parameters cell is not valid Python: {exc}") from None
    params: dict[str, NotebookParameter] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            params[node.target.id] = _parameter(node.target.id, node.annotation, node.value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    params[target.id] = _parameter(target.id, None, node.value)
    return params


def _parameter(name: str, annotation: ast.expr | None, value: ast.expr | None) -> NotebookParameter:
    try:
        default = ast.literal_eval(value) if value is not None else None
    except ValueError:
        default = None
    if annotation is not None:
        allowed, nullable = _types_of(annotation)
        return NotebookParameter(name, default, allowed, nullable, ast.unparse(annotation))
    if default is None:
        return NotebookParameter(name, None, None, True, "")
    kind = float if isinstance(default, float) else type(default)
    return NotebookParameter(name, default, (kind,), False, "")


def _types_of(node: ast.expr) -> tuple[tuple[type, ...] | None, bool]:
    """(allowed types or None for any, whether None is allowed) for an annotation."""
    if isinstance(node, ast.Constant) and node.value is None:
        return (), True
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # string annotation
        return _types_of(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        kind = _SIMPLE_TYPES.get(node.id)
        return ((kind,) if kind else None), node.id in ("Any", "None")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, left_null = _types_of(node.left)
        right, right_null = _types_of(node.right)
        if left is None or right is None:
            return None, True
        return left + right, left_null or right_null
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        if node.value.id == "Optional":
            inner, _ = _types_of(node.slice)
            return inner, True
        if node.value.id == "Union" and isinstance(node.slice, ast.Tuple):
            allowed: tuple[type, ...] = ()
            nullable = False
            for element in node.slice.elts:
                kinds, null = _types_of(element)
                if kinds is None:
                    return None, True
                allowed += kinds
                nullable = nullable or null
            return allowed, nullable
        return _types_of(node.value)
    return None, True


def check_values(notebook: str | Path, values: dict[str, Any], where: str) -> None:
    """Raise ParameterError naming ``where`` (the config file and key), the notebook and the key."""
    declared = read_parameters(notebook)
    for key, value in values.items():
        if key not in declared:
            hint = _closest(key, declared)
            raise ParameterError(
                f"{where}: notebook {notebook} has no parameter '{key}'"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; its parameters are: {', '.join(declared) or 'none'}"
            )
        parameter = declared[key]
        if not parameter.accepts(value):
            raise ParameterError(
                f"{where}: parameter '{key}' of notebook {notebook} takes {parameter.type_name}, "
                f"got {value!r} ({type(value).__name__})"
            )


def _closest(key: str, names) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return matches[0] if matches else None


def notebook_imports(notebooks) -> list[str]:
    """Top-level modules the notebooks import, in first-seen order (what a warm kernel preloads)."""
    seen: dict[str, None] = {}
    for path in notebooks:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") != "code":
                continue
            source = "".join(cell.get("source", ""))
            source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    seen.setdefault(name, None)
    return list(seen)
