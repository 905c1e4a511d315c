"""What the repository itself promises: clean notebooks, one tag contract, one error module, small classes."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import nbformat
import pytest

from powerpipe.core import paths

PACKAGE_DIRS = (paths.PROJECT_ROOT / "powerpipe", paths.PROJECT_ROOT / "dashboard")


def _tracked(pattern: str) -> list:
    try:
        out = subprocess.run(["git", "ls-files", pattern], cwd=paths.PROJECT_ROOT, capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [paths.PROJECT_ROOT / line for line in out.splitlines() if line]


def _sources():
    return sorted(path for folder in PACKAGE_DIRS for path in folder.rglob("*.py"))


def test_every_committed_notebook_is_clean_with_one_parameters_cell():
    notebooks = _tracked("*.ipynb")
    assert len(notebooks) >= 6
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), f"{path} has outputs"
        tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path}: {len(tagged)} cells tagged parameters"


def test_tag_names_are_written_only_in_tags_module():
    literal = re.compile(r"""["']powerpipe\.([a-z_]+)["']""")
    package = paths.PROJECT_ROOT / "powerpipe"  # module and logger names (at any depth) are not tags
    modules = {path.stem for path in package.rglob("*.py")} | {path.name for path in package.rglob("*") if path.is_dir()}
    offenders = [f"{path.relative_to(paths.PROJECT_ROOT)}:{number}"
                 for path in _sources() if path.name != "tags.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 for match in literal.finditer(line) if match.group(1) not in modules]
    assert not offenders, f"tag names written outside powerpipe/tags.py: {offenders}"


def test_every_error_type_lives_in_exceptions_module():
    bases = {"Exception", "PipelineError", "LookupError", "RuntimeError", "ValueError"}
    offenders = []
    for path in _sources():
        if path.name == "exceptions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Name) and (base.id in bases or base.id.endswith("Error"))
                    for base in node.bases):
                offenders.append(f"{path.name}:{node.name}")
    assert not offenders, f"exception classes outside powerpipe/exceptions.py: {offenders}"


def test_broad_exception_handlers_say_why():
    """A broad handler is a boundary that must not die, and says so; clean-up that re-raises is fine."""
    offenders = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not (isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name)
                    and node.type.id in ("Exception", "BaseException")):
                continue
            reraises = isinstance(node.body[-1], ast.Raise) and node.body[-1].exc is None
            if not reraises and "#" not in lines[node.lineno - 1]:
                offenders.append(f"{path.relative_to(paths.PROJECT_ROOT)}:{node.lineno}")
    assert not offenders, f"broad exception handlers without a reason: {offenders}"


def test_no_class_over_150_lines():
    long = [f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in _sources() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 150]
    assert not long, f"classes over 150 lines: {long}"


TOY_CONFTEST = '''
import os

import pytest

from tests.xdist_groups import pytest_collection_modifyitems  # noqa: F401 - the hook under test


def made(what):
    with open(os.environ["MADE"], "a") as record:
        record.write(f"{what} {os.getpid()}\\n")


@pytest.fixture(scope="session")
def smoke_run():
    made("smoke")


@pytest.fixture(scope="session")
def airflow_bin():
    made("airflow")


@pytest.fixture(autouse=True)
def _started(request):
    made(f"started {request.node.name}")
'''
# As collected: fast tests first, a long one last, the groups between: the hook must start groups, then the long one.
TOY_TESTS = "\n".join(
    [f"def test_plain_{n}():\n    __import__('time').sleep(0.1)\n" for n in range(6)]
    + [f"def test_on_smoke_{n}(smoke_run):\n    pass\n" for n in range(6)]
    + [f"def test_on_airflow_{n}(airflow_bin):\n    pass\n" for n in range(6)]
    + ["@__import__('pytest').mark.slow\ndef test_gradient_boosting_on_the_time_split():\n    pass\n"])


def test_the_readme_command_makes_each_session_fixture_once_not_once_per_worker(tmp_path):
    # The README's `-n 2 --dist loadgroup`: conftest groups the tests on the smoke run and on the Airflow
    # deployment, each group in one worker (its marks must exist before xdist reads them).
    (tmp_path / "conftest.py").write_text(TOY_CONFTEST)
    (tmp_path / "test_toy.py").write_text(TOY_TESTS)
    made = tmp_path / "made.txt"
    env = {**os.environ, "MADE": str(made), "PYTHONPATH": str(paths.PROJECT_ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q",
                             "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "19 passed" in result.stdout, result.stdout
    lines = [line.split() for line in made.read_text().splitlines()]
    assert sorted(line[0] for line in lines if line[0] != "started") == ["airflow", "smoke"]
    # longest first: each worker starts on a group; the long test is the first thing its worker runs after
    # its group, before any fast test (collected last, it would have run after them)
    started = [(line[2], line[1]) for line in lines if line[0] == "started"]
    by_worker: dict[str, list[str]] = {}
    for pid, name in started:
        by_worker.setdefault(pid, []).append(name)
    assert sorted(names[0].split("_")[2] for names in by_worker.values()) == ["airflow", "smoke"], started
    (names,) = [names for names in by_worker.values() if "test_gradient_boosting_on_the_time_split" in names]
    assert not [name for name in names[:names.index("test_gradient_boosting_on_the_time_split")]
                if name.startswith("test_plain")], started


def test_the_grouped_fixtures_and_the_tests_started_first_still_exist():
    from tests.xdist_groups import GROUPS, LONGEST

    defined = {node.name for path in (paths.PROJECT_ROOT / "tests").glob("*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
    gone = (set(GROUPS) | set(LONGEST)) - defined
    assert not gone, f"renamed or gone: {gone}"
