"""Warm, reused kernels: same results as fresh ones, reset between notebooks, light runner start-up."""

from __future__ import annotations

import subprocess
import sys
import time

import nbformat
import pytest

from powerpipe.forecast import data
from powerpipe.execution import kernels
from powerpipe.spec.parameterize import notebook_imports
from powerpipe.core import paths
from powerpipe.execution.engine import execute

from .conftest import make_notebook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return data.write_processed(data.synthetic_frame("2015-11-01", "2016-02-29 23:00"), folder / "small.csv")


# The time split with a short backtest that fits the small data: two monthly folds from 2016.
EVALUATION = {"split": "time", "test_start": "2016-01-01", "folds": 2, "fold_length": "month"}


@pytest.fixture(scope="module")
def used_kernel(small_data, tmp_path_factory):
    """A warm kernel that has already run another notebook and been reset (made once for the module: its
    start and the first notebook are the slow part)."""
    folder = tmp_path_factory.mktemp("used_kernel")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    modules = notebook_imports(sorted(paths.NOTEBOOKS_DIR.glob("*.ipynb")))
    warm = kernels.Kernel(env=kernels.thread_caps(1), warmup=kernels.warmup_code(modules, uri, 1))
    try:
        other = execute(paths.NOTEBOOKS_DIR / "model_linreg.ipynb", folder / "other.ipynb",
                        {"data_path": str(small_data), "evaluation": EVALUATION},
                        env={"MLFLOW_TRACKING_URI": uri, **kernels.thread_caps(1)}, render=False, kernel=warm)
        assert other.ok and other.kernel_reusable, other.error
        yield warm
    finally:
        warm.shutdown()


@pytest.mark.parametrize("notebook, parameters", [
    ("model_linreg.ipynb", {}),
    ("model_rf.ipynb", {"n_estimators": 5, "max_depth": 6}),
    ("model_keras.ipynb", {"epochs": 2, "batch_size": 256}),
    ("model_gbr.ipynb", {"max_iter": 20}),
])
def test_reused_kernel_gives_exactly_the_metrics_of_a_fresh_one(tmp_path, small_data, tracking_uri, used_kernel,
                                                                notebook, parameters):
    source = paths.NOTEBOOKS_DIR / notebook
    parameters = {**parameters, "data_path": str(small_data), "evaluation": EVALUATION}
    env = {"MLFLOW_TRACKING_URI": tracking_uri, **kernels.thread_caps(1)}
    fresh = execute(source, tmp_path / "fresh.ipynb", parameters, env=env, render=False)
    assert fresh.ok, fresh.error
    # The compared notebook runs on a kernel that has been used (another notebook, or the previous case) and reset,
    # and without figures (as a replay's weeks without reports): the same metrics, no figure drawn.
    reused = execute(source, tmp_path / "reused.ipynb", {**parameters, "figures": False}, env=env, render=False,
                     kernel=used_kernel)
    assert reused.ok, reused.error
    assert reused.kernel_reusable
    assert reused.scraps["metrics"] == fresh.scraps["metrics"]
    assert _images(fresh.output_notebook) >= 4 and _images(reused.output_notebook) == 0
    import mlflow

    from powerpipe.forecast import serving

    client = mlflow.MlflowClient(tracking_uri)
    [newest] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  order_by=["attributes.start_time DESC"], max_results=1)
    logged = {a.path for a in client.list_artifacts(newest.info.run_id, "evaluation")}
    assert {serving.MONTHLY_SKILL_ARTIFACT, serving.RELIABILITY_ARTIFACT} <= logged  # the tables, without figures
    assert not [a for a in client.list_artifacts(newest.info.run_id) if a.path.endswith(".png")]


def _images(notebook) -> int:
    """How many pictures the executed notebook shows."""
    return sum("image/png" in output.get("data", {}) for cell in nbformat.read(notebook, as_version=4).cells
               for output in cell.get("outputs", []))


def test_namespace_is_wiped_between_notebooks(tmp_path):
    first = make_notebook(tmp_path / "first.ipynb", "x: int = 1", "leftover = 42")
    second = make_notebook(tmp_path / "second.ipynb", "x: int = 1",
                           "import os, random, scrapbook as sb\n"
                           "sb.glue('seen', 'leftover' in globals(), display=False)\n"
                           "sb.glue('cwd', os.getcwd(), display=False)\n"
                           "sb.glue('draw', random.random(), display=False)")
    kernel = kernels.Kernel()
    try:
        assert execute(first, tmp_path / "a" / "first.ipynb", {}, kernel=kernel, render=False).kernel_reusable
        result = execute(second, tmp_path / "b" / "second.ipynb", {}, kernel=kernel, render=False)
        again = execute(second, tmp_path / "c" / "second.ipynb", {}, kernel=kernel, render=False)
    finally:
        kernel.shutdown()
    assert result.scraps["seen"] is False
    assert result.scraps["cwd"] == str(tmp_path / "b")
    assert result.scraps["draw"] == again.scraps["draw"]  # seeds reset before each notebook


def test_a_kernel_is_replaced_after_its_uses_or_once_its_memory_passes_the_limit():
    from powerpipe.execution.lease import KernelLease, KernelSettings

    settings = KernelSettings(env=(), warmup=None)
    roomy, cramped = KernelLease(settings, max_uses=2), KernelLease(settings, max_memory=1)
    kernel, other = roomy.take(), cramped.take()
    try:
        assert 10 * 2**20 < kernel.memory_bytes() < 2**30  # a bare kernel's resident memory, read
        assert roomy.give_back(kernel, reusable=True) is kernel  # one use of two, memory under 3 GiB: kept
        assert roomy.give_back(kernel, reusable=True) is None and not kernel.alive()  # two uses: replaced
        assert cramped.give_back(other, reusable=True) is None and not other.alive()  # over its memory limit
        assert kernel.memory_bytes() is None  # gone: no answer, no error
    finally:
        roomy.kill_all()
        cramped.kill_all()


class _CountedKernel:
    """Stands in for a kernel: the pool's policy is under test, not Jupyter."""

    uses = 0

    def alive(self) -> bool:
        return True

    def memory_bytes(self) -> int:
        return 0

    def shutdown(self) -> None:
        pass


def test_a_run_of_one_notebook_warms_one_kernel_not_one_per_job():
    import threading

    from powerpipe.execution.lease import KernelLease, KernelSettings
    from powerpipe.execution.local import KernelPool

    class CountingLease(KernelLease):
        started = 0

        def start(self, abandoned=None):
            CountingLease.started += 1
            time.sleep(0.2)  # a kernel takes a while to warm up: tasks may come meanwhile
            return _CountedKernel()

    def kernels_for(jobs: int, warm_ahead: int | None, tasks: int) -> int:
        CountingLease.started = 0
        pool = KernelPool(jobs, CountingLease(KernelSettings(env=(), warmup=None)), warm_ahead)
        together = threading.Barrier(tasks, timeout=10)  # each task waits for the others: one thread each
        futures = [pool.submit(lambda kernel: (together.wait(), True)) for _ in range(tasks)]
        for future in futures:
            future.result(timeout=10)
        pool.close()
        return CountingLease.started

    assert kernels_for(jobs=4, warm_ahead=1, tasks=1) == 1  # one notebook declared: one kernel
    assert kernels_for(jobs=4, warm_ahead=None, tasks=1) == 4  # no plan: every job warms ahead
    assert kernels_for(jobs=4, warm_ahead=1, tasks=2) == 2  # a second task its plan did not count still runs
    assert kernels_for(jobs=4, warm_ahead=2, tasks=2) == 2  # both come while the two warm up: no third one


def test_closing_the_pool_gives_up_a_kernel_still_warming_up():
    """The run's work is done while a second kernel still warms up (a slow start on a loaded machine):
    closing the pool stops that start instead of waiting for it."""
    import threading

    from powerpipe.core.exceptions import KernelCancelled
    from powerpipe.execution.lease import KernelLease, KernelSettings
    from powerpipe.execution.local import KernelPool

    given_up = threading.Event()

    class SlowSecondLease(KernelLease):
        starts = 0

        def start(self, abandoned=None):
            SlowSecondLease.starts += 1
            if SlowSecondLease.starts == 1:
                return _CountedKernel()
            while not abandoned():  # the second start would take long: it lasts until the pool gives it up
                time.sleep(0.05)
            given_up.set()
            raise KernelCancelled("given up")

    pool = KernelPool(2, SlowSecondLease(KernelSettings(env=(), warmup=None)))
    assert pool.submit(lambda kernel: ("done", True)).result(timeout=10) == "done"
    closing = threading.Thread(target=pool.close)
    closing.start()
    closing.join(timeout=30)
    assert not closing.is_alive() and given_up.is_set()


def test_a_kernel_that_dies_while_warming_up_is_an_error_at_once_not_after_the_timeout():
    from powerpipe.core.exceptions import KernelError

    started = time.monotonic()
    with pytest.raises(KernelError, match="could not start a kernel.*died"):
        kernels.Kernel(warmup="import os\nos._exit(3)", startup_timeout=300)
    assert time.monotonic() - started < 150  # jupyter_client's own wait would have taken the 300 s


def test_a_kernel_start_given_up_while_warming_up_stops_its_process(tmp_path):
    import psutil

    from powerpipe.core.exceptions import KernelCancelled

    warming = tmp_path / "warming"
    before = set(psutil.Process().children())
    with pytest.raises(KernelCancelled):  # given up once the warm-up runs (a slow import): the run ended
        kernels.Kernel(warmup=f"open({str(warming)!r}, 'w').close()\nimport time\ntime.sleep(600)",
                       startup_timeout=900, cancelled=warming.exists)
    assert warming.exists()
    left = [p for p in set(psutil.Process().children()) - before if p.status() != psutil.STATUS_ZOMBIE]
    assert not left


def test_a_task_given_to_a_stopped_pool_is_cancelled_not_left_waiting():
    from powerpipe.execution.lease import KernelLease, KernelSettings
    from powerpipe.execution.local import KernelPool

    pool = KernelPool(2, KernelLease(KernelSettings(env=(), warmup=None), reuse=False))
    pool.close()
    assert pool.submit(lambda kernel: (1, True)).cancelled()


def test_a_run_plans_its_steps_trials_and_refit():
    from powerpipe.run.session import planned_notebooks
    from powerpipe.spec.config import load_config
    from powerpipe.spec.steps import build_steps

    smoke = load_config(paths.SMOKE_CONFIG)
    assert planned_notebooks(smoke, build_steps(smoke)) == 1 + 6 + 1 + 1 + 1  # process, grid, compare, report, refit


def test_failed_notebook_kernel_is_not_reused(tmp_path, notebooks):
    kernel = kernels.Kernel()
    try:
        result = execute(notebooks["raises"], tmp_path / "raises.ipynb", {}, kernel=kernel, render=False)
    finally:
        kernel.shutdown()
    assert not result.ok and not result.kernel_reusable


def test_runner_start_up_imports_nothing_heavy():
    heavy = ("mlflow", "papermill", "pandas", "tensorflow", "nbconvert", "sklearn")
    code = f"import powerpipe.cli.main, sys; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
