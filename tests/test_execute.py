"""Executing notebooks for real: success, a raising cell, and a stale kernelspec elsewhere on the machine."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest

from powerpipe.execution.engine import execute

pytestmark = pytest.mark.slow


def test_works_runs_on_project_interpreter_despite_stale_kernelspec(tmp_path, notebooks, monkeypatch):
    stale = tmp_path / "jupyter" / "kernels" / "python3"
    stale.mkdir(parents=True)
    (stale / "kernel.json").write_text(json.dumps({
        "argv": ["/nonexistent/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Stale Python", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    out = tmp_path / "out" / "works.ipynb"
    result = execute(notebooks["works"], out, {"x": 21}, env={"POWERPIPE_TEST_MARK": "1"})
    assert result.ok, result.error
    assert result.scraps["metrics"]["rmse"] == 42.0
    assert result.scraps["python"] == sys.executable
    assert out.exists() and result.output_html.exists()
    executed = nbformat.read(out, as_version=4)
    assert any("result 42" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "x = 21" in "".join(c.source for c in executed.cells)  # papermill's injected parameters


def test_raising_notebook_is_written_with_failing_cell_marked(tmp_path, notebooks):
    out = tmp_path / "out" / "raises.ipynb"
    result = execute(notebooks["raises"], out, {"x": 7})
    assert not result.ok
    assert "ValueError: broken on purpose with x=7" in result.error
    executed = nbformat.read(out, as_version=4)
    assert "An Exception was encountered" in executed.cells[0].source  # papermill's banner at the top
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "error" for o in outputs)
    assert any("before the error" in o.get("text", "") for o in outputs)
    assert result.output_html.exists() and "broken on purpose" in result.output_html.read_text()


def test_kernel_environment_carries_run_without_writing_it_into_the_notebook(tmp_path):
    from .conftest import make_notebook

    nb = make_notebook(tmp_path / "env.ipynb", "x: int = 1",
                       "import os, scrapbook as sb\nsb.glue('uri', os.environ['MLFLOW_TRACKING_URI'], display=False)")
    secret = "https://user:s3cret@tracking.example/"
    out = tmp_path / "out" / "env.ipynb"
    result = execute(nb, out, {}, env={"MLFLOW_TRACKING_URI": secret}, render=False)
    assert result.ok and result.scraps["uri"] == secret
    # The scrap itself holds it here only because this test glued it; the parameters cell does not.
    source = "".join(c.source for c in nbformat.read(out, as_version=4).cells)
    assert "s3cret" not in source


def test_full_disk_while_saving_raises_stops_the_kernel_and_keeps_the_last_whole_save(tmp_path, notebooks,
                                                                                        monkeypatch):
    """A full disk is not the notebook's failure: DiskFullError reaches the caller, the notebook on disk
    is the last save that fitted (never a truncated one), and the kernel started for it is stopped."""
    import psutil

    from powerpipe.execution import engine as execute_module
    from powerpipe.core.exceptions import DiskFullError

    real_write = execute_module.AtomicLocalHandler.write
    saves = []

    def write(self, buf, path):
        saves.append(path)
        if len(saves) > 2:
            raise DiskFullError("no space left on /somewhere (0 MB free)")
        return real_write(self, buf, path)

    monkeypatch.setattr(execute_module.AtomicLocalHandler, "write", write)
    out = tmp_path / "out" / "works.ipynb"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(DiskFullError):
        execute(notebooks["works"], out, {"x": 2})
    assert nbformat.read(out, as_version=4).cells  # the last whole save
    assert [p.name for p in out.parent.iterdir()] == ["works.ipynb"]  # no temporary file, no HTML
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    psutil.wait_procs(started, timeout=10)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_glue_writes_what_scrapbook_writes_without_importing_it(monkeypatch):
    import subprocess

    import IPython.display
    import scrapbook

    from powerpipe.tracking import store

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *args, **kwargs: shown.append((args, kwargs)))
    import numpy as np

    metrics = {"rmse": 1.25, "r2": 0.5, "n": 3, "mae": np.float32(0.5)}  # numpy scalars pass as scrapbook's do
    scrapbook.glue("metrics", metrics, display=False)
    store.glue("metrics", metrics)
    assert len(shown) == 2 and shown[0] == shown[1]  # the same output, so scrapbook.read_notebook reads ours
    # ... and a kernel recording metrics no longer imports scrapbook, papermill, nbformat or jsonschema
    code = ("import sys\nfrom powerpipe.tracking import store\nstore.glue('metrics', {'rmse': 1.0})\n"
            "print(sorted(m for m in ('scrapbook', 'papermill', 'nbformat', 'jsonschema') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
