"""Execute one notebook with papermill on this project's interpreter, and render it to HTML.

A failed execution still leaves its notebook on disk (with the failing cell marked at the top) and
its HTML; the caller gets an ``Execution`` either way and decides what a failure means.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"


@dataclass
class Execution:
    status: str  # "ok" or "failed"
    output_notebook: Path
    output_html: Path | None
    seconds: float
    error: str | None = None
    scraps: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def kernel_manager_class(env: dict[str, str] | None = None, stderr_path: Path | None = None):
    """A KernelManager that always starts ``sys.executable``, whatever kernelspecs the machine has.

    papermill would otherwise look up the notebook's ``python3`` kernelspec, and a stale one
    elsewhere on the machine silently runs another interpreter. ``env`` is added to the kernel's
    environment (how the runner hands a notebook its MLflow run without writing it into the notebook).
    The kernel's own stderr (start-up chatter, crash messages) goes to ``stderr_path``, not the terminal.
    """
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    extra_env = dict(env or {})

    class ProjectKernelSpecManager(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            spec = get_kernel_dict()
            spec["argv"][0] = sys.executable
            return KernelSpec(resource_dir=RESOURCES, env=extra_env, **spec)

    class ProjectKernelManager(KernelManager):
        def _kernel_spec_manager_default(self):
            return ProjectKernelSpecManager(data_dir=self.data_dir)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if stderr_path is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(stderr_path, "ab") as stderr:  # the child keeps its own copy of the handle
                return await super()._async_launch_kernel(kernel_cmd, stderr=stderr, **kw)

    return ProjectKernelManager


def execute(
    notebook: str | Path,
    output_notebook: str | Path,
    parameters: dict[str, Any],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    render: bool = True,
) -> Execution:
    """Run ``notebook`` into ``output_notebook`` (working directory: its folder); never raises for
    an error inside the notebook, a timeout or a dead kernel."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output_notebook = Path(output_notebook)
    output_notebook.parent.mkdir(parents=True, exist_ok=True)
    stderr_file = tempfile.NamedTemporaryFile(prefix="kernel-stderr-", suffix=".txt", delete=False)
    stderr_file.close()
    stderr_path = Path(stderr_file.name)
    started = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output_notebook),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            progress_bar=False,
            cwd=str(output_notebook.parent),
            execution_timeout=timeout,
            kernel_manager_class=kernel_manager_class(env, stderr_path),
        )
    except PapermillExecutionError as exc:
        # papermill has already written the notebook with an error banner pointing at the cell.
        first_line = (str(exc.evalue).strip().splitlines() or [""])[0]
        error = f"{exc.ename}: {first_line} (cell {exc.exec_count})"
    except Exception as exc:  # noqa: BLE001 - timeouts, dead kernels: recorded, not raised
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        mark_failure(output_notebook, error)
    finally:
        kernel_stderr = stderr_path.read_text(errors="replace")
        stderr_path.unlink()
    seconds = time.perf_counter() - started
    if error and kernel_stderr.strip():
        log.error("kernel stderr of %s:\n%s", output_notebook.name, _tail(kernel_stderr))
    html = render_html(output_notebook) if render and output_notebook.exists() else None
    return Execution(
        status="failed" if error else "ok",
        output_notebook=output_notebook,
        output_html=html,
        seconds=seconds,
        error=error,
        scraps=read_scraps(output_notebook),
    )


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def mark_failure(path: Path, error: str) -> None:
    """Put a visible banner at the top of a notebook that failed outside a cell error (e.g. a timeout)."""
    import nbformat

    if not path.exists():
        return
    nb = nbformat.read(path, as_version=4)
    failing = next(
        (i for i, c in enumerate(nb.cells)
         if c.cell_type == "code" and c.get("metadata", {}).get("papermill", {}).get("status") == "running"),
        None,
    )
    where = f" while running cell {failing + 1}" if failing is not None else ""
    banner = nbformat.v4.new_markdown_cell(
        f'<span style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;">'
        f"Execution failed{where}</span>\n\n`{error}`"
    )
    banner.metadata["tags"] = ["powerpipe-error"]
    nb.cells.insert(0, banner)
    nbformat.write(nb, path)


def render_html(notebook: Path, html: Path | None = None, exclude_input: bool = False,
                template_file: Path | None = None) -> Path:
    """Render an executed notebook to one HTML file (images embedded), optionally with our own template."""
    import nbformat
    from nbconvert import HTMLExporter

    html = html or notebook.with_suffix(".html")
    if template_file:
        exporter = HTMLExporter(embed_images=True, extra_template_paths=[str(template_file.parent)],
                                template_file=template_file.name)
    else:
        exporter = HTMLExporter(embed_images=True)
    if exclude_input:
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
    with warnings.catch_warnings():
        # scrapbook's data outputs have no HTML form; nbconvert warns about each one.
        warnings.filterwarnings("ignore", message="Your element with mimetype")
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    html.write_text(body, encoding="utf-8")
    return html


def read_scraps(notebook: Path) -> dict[str, Any]:
    """Values glued with scrapbook in an executed notebook (empty if none or unreadable)."""
    if not notebook.exists():
        return {}
    try:
        import scrapbook

        return {name: scrap.data for name, scrap in scrapbook.read_notebook(str(notebook)).scraps.items()}
    except Exception:  # noqa: BLE001 - a notebook that died early may not be readable as a scrapbook
        log.debug("no scraps readable in %s", notebook, exc_info=True)
        return {}
