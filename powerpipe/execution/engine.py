"""Execute one notebook with papermill on this project's interpreter, and render it to HTML.

Importing this module imports papermill (about a second): the CLI imports it only to run.

A failed execution still leaves its notebook on disk (with the failing cell marked at the top) and
its HTML; the caller gets an ``Execution`` either way and decides what a failure means.

Every file written here, papermill's saves of the executed notebook included, is written atomically
(``fsutil``): a full disk or a killed runner never leaves a truncated notebook or HTML file. A full
disk is not a notebook's failure: ``DiskFullError`` is raised to the caller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.iorw import LocalHandler, papermill_io
from papermill.utils import remove_args

from powerpipe.core.exceptions import DiskFullError
from powerpipe.core.fsutil import atomic_write_text
from powerpipe.execution.kernels import DETACH_RUN_CODE, KERNEL_NAME, RESET_CODE, Kernel, KernelError, preamble_code

log = logging.getLogger(__name__)

ENGINE_NAME = "powerpipe-warm-kernel"
# scrapbook's data outputs have no HTML form and nbconvert warns about each one. Set once, here:
# catch_warnings() around each render is not thread-safe, and renders run in parallel.
warnings.filterwarnings("ignore", message="Your element with mimetype", category=UserWarning)


@dataclass
class Execution:
    status: str  # "ok" or "failed"
    output_notebook: Path
    output_html: Path | None
    seconds: float
    error: str | None = None
    scraps: dict[str, Any] = field(default_factory=dict)
    kernel_reusable: bool = False  # the (warm) kernel finished cleanly and was reset

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class WarmKernelEngine(NBClientEngine):
    """papermill's nbclient engine, on a kernel we already have running instead of a new one."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        kernel = kwargs.pop("kernel")
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        client = PapermillNotebookClient(
            nb_man, km=kernel.km, timeout=execution_timeout, startup_timeout=start_timeout,
            kernel_name=kernel_name, log=logging.getLogger("papermill"), log_output=log_output,
            stdout_file=stdout_file, stderr_file=stderr_file, **kwargs,
        )
        client.kc = kernel.kc  # nbclient would otherwise open (and leak) a new client per notebook
        return client.execute(cleanup_kc=False)


papermill_engines.register(ENGINE_NAME, WarmKernelEngine)


class AtomicLocalHandler(LocalHandler):
    """papermill's local file handler, writing each save of a notebook atomically (temporary file, rename).

    papermill rewrites the output notebook after every cell; its own handler truncates the file
    first, so a full disk or a kill mid-save left an empty or cut notebook. No fsync: these saves are
    frequent, and a rename is enough against crashes of this process and full disks.
    """

    def write(self, buf, path):
        dirname = os.path.dirname(path)
        if dirname and not os.path.exists(dirname):
            raise FileNotFoundError(f"output folder {dirname} doesn't exist.")
        atomic_write_text(path, buf, fsync=False)


# Registered for absolute paths (execute() passes only those): papermill picks the first registered
# prefix a path starts with, and would otherwise use its LocalHandler. Reads are LocalHandler's.
papermill_io.register("/", AtomicLocalHandler())


class _Deadline:
    """Interrupts a notebook that runs past its time, and kills its kernel if the interrupt is ignored."""

    def __init__(self, kernel: Kernel, seconds: float | None, grace: float = 10.0):
        self.expired = False
        self._timers = []
        if seconds:
            self._timers = [threading.Timer(seconds, self._interrupt, (kernel,)),
                            threading.Timer(seconds + grace, self._kill, (kernel,))]
            for timer in self._timers:
                timer.daemon = True
                timer.start()

    def _interrupt(self, kernel: Kernel) -> None:
        self.expired = True
        log.warning("notebook ran past its timeout: interrupting its kernel")
        kernel.interrupt()

    def _kill(self, kernel: Kernel) -> None:
        log.warning("kernel ignored the interrupt: killing it")
        kernel.shutdown()

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def execute(
    notebook: str | Path,
    output_notebook: str | Path,
    parameters: dict[str, Any],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    render: bool = True,
    kernel: Kernel | None = None,
) -> Execution:
    """Run ``notebook`` into ``output_notebook`` (working folder: its folder).

    Never raises for an error inside the notebook, a timeout or a dead kernel: those come back as a
    failed ``Execution`` with the notebook written and the failing cell marked. With ``kernel``, the
    notebook runs on that (warm) kernel, which is reset afterwards; without, on a fresh kernel.
    Raises ``DiskFullError`` when the notebook or its HTML cannot be written for want of space (the
    last whole save of the notebook stays); a warm kernel is then not reusable and is left to the caller.
    """
    notebook = Path(notebook).resolve()
    output_notebook = Path(output_notebook).resolve()
    output_notebook.parent.mkdir(parents=True, exist_ok=True)
    own_kernel = kernel is None
    started = time.perf_counter()
    error = None
    kernel_reusable = False
    try:
        kernel = kernel or Kernel()
        kernel.run(preamble_code(output_notebook.parent, env or {}))
    except KernelError as exc:
        error = f"KernelError: {exc}"
    try:
        error, kernel_reusable = _run_notebook(notebook, output_notebook, parameters, kernel, timeout, own_kernel,
                                               error)
    finally:
        if own_kernel and kernel is not None:
            try:
                if kernel.alive():
                    kernel.run(DETACH_RUN_CODE)
            except KernelError:
                pass
            kernel.shutdown()
    seconds = time.perf_counter() - started
    html = render_html(output_notebook) if render and output_notebook.exists() else None
    return Execution(
        status="failed" if error else "ok",
        output_notebook=output_notebook,
        output_html=html,
        seconds=seconds,
        error=error,
        scraps=read_scraps(output_notebook),
        kernel_reusable=kernel_reusable and not own_kernel,
    )


def _run_notebook(notebook: Path, output_notebook: Path, parameters: dict[str, Any], kernel: Kernel | None,
                  timeout: float | None, own_kernel: bool, error: str | None) -> tuple[str | None, bool]:
    """Execute with papermill on ``kernel`` (unless ``error`` already); returns (error, kernel reusable)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    kernel_reusable = False
    if error is None:
        deadline = _Deadline(kernel, timeout)
        try:
            papermill.execute_notebook(
                str(notebook), str(output_notebook), parameters=parameters, kernel_name=KERNEL_NAME,
                engine_name=ENGINE_NAME, kernel=kernel, progress_bar=False,
            )
            kernel_reusable = True
        except PapermillExecutionError as exc:
            # papermill has already written the notebook with an error banner pointing at the cell.
            first_line = (str(exc.evalue).strip().splitlines() or [""])[0]
            error = f"{exc.ename}: {first_line} (cell {exc.exec_count})"
        except DiskFullError:
            raise  # not the notebook's fault: the whole run has no room, the caller decides
        except Exception as exc:  # noqa: BLE001 - dead kernels and the like: recorded, not raised
            text = str(exc).strip()
            error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            mark_failure(output_notebook, error)
            if kernel.stderr_tail():
                log.error("kernel stderr of %s:\n%s", output_notebook.name, kernel.stderr_tail())
        finally:
            deadline.cancel()
        if deadline.expired:
            error = f"Timeout: the notebook ran longer than {timeout:g} s and was stopped ({error})"
            if kernel_reusable:  # finished just as the deadline hit
                kernel_reusable, error = False, None
        if kernel_reusable and not own_kernel:
            try:
                kernel.run(RESET_CODE)
            except KernelError as exc:
                log.warning("could not reset kernel after %s (%s); it will be replaced", output_notebook.name, exc)
                kernel_reusable = False
    return error, kernel_reusable


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
    atomic_write_text(path, nbformat.writes(nb), fsync=False)


_exporters = threading.local()  # building an exporter compiles its templates: once per thread


def _html_exporter_class():
    """nbconvert's HTMLExporter, except that a ``template_file`` name is looked up on the template paths
    only: nbconvert's own observer first tries it as a path relative to the CWD (another folder's file of
    that name wins; a deleted CWD raises), and does so again with the bare name it splits off a path."""
    from nbconvert import HTMLExporter

    class PathsOnlyHTMLExporter(HTMLExporter):
        def _template_file_changed(self, change):  # replaces nbconvert's @observe("template_file") handler
            pass

    return PathsOnlyHTMLExporter


def _exporter(exclude_input: bool, template_file: Path | None, fresh: bool = False):
    """The thread's HTML exporter for these options (``fresh``: a new one in its place).

    Built so that nothing depends on the working folder: nbconvert looks ``template_file`` up in the CWD
    first (``_html_exporter_class`` stops that), and searches ``extra_template_basedirs`` (default: the
    CWD, which fails in a deleted folder) for the base templates; so the template's folder is named for
    both, and the template is loaded at once (not lazily, later, in another CWD or thread).
    """
    key = (exclude_input, str(template_file))
    cache = _exporters.__dict__.setdefault("by_key", {})
    if fresh or key not in cache:
        options = {"embed_images": True}
        if template_file:
            template_file = Path(template_file).resolve()
            options.update(extra_template_basedirs=[str(template_file.parent)],
                           extra_template_paths=[str(template_file.parent)], template_file=template_file.name)
        else:
            options.update(extra_template_basedirs=[str(Path(__file__).resolve().parent)])
        if exclude_input:
            options.update(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        exporter = _html_exporter_class()(**options)
        exporter.template  # noqa: B018 - load it now, with the paths above
        cache[key] = exporter
    return cache[key]


def render_html(notebook: Path, html: Path | None = None, exclude_input: bool = False,
                template_file: Path | None = None, drop_stderr: bool = False) -> Path:
    """Render an executed notebook to one HTML file (images embedded), optionally with our own template.

    ``drop_stderr``: leave out what the kernel wrote to stderr (library warnings, TensorFlow's CUDA
    chatter): a client's report shows only what its cells display.
    """
    import nbformat

    html = html or notebook.with_suffix(".html")
    node = nbformat.read(notebook, as_version=4)
    if drop_stderr:
        for cell in node.cells:
            if "outputs" in cell:
                cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream"
                                                                and o.get("name") == "stderr")]
    try:
        body, _ = _exporter(exclude_input, template_file).from_notebook_node(node)
    except LookupError:  # jinja2's TemplateNotFound: a cached exporter gone stale; one fresh retry
        log.warning("rendering %s: template lookup failed; retrying with a fresh exporter", notebook.name)
        body, _ = _exporter(exclude_input, template_file, fresh=True).from_notebook_node(node)
    atomic_write_text(html, body, fsync=False)
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
