"""The README's test command runs on pytest-xdist workers: which tests must share one, and which start first
(conftest's hook).

A module of its own, light to import: tests/test_repository.py runs it in a toy suite under xdist.
"""

from __future__ import annotations

import pytest

# A session or module fixture that is costly to make -> the group of every test that uses it: made once, in
# one worker (a module fixture is also made again whenever its tests do not run one after the other).
GROUPS = {"smoke_run": "smoke", "airflow_bin": "airflow", "replayed": "replay", "used_kernel": "reused_kernel"}

# The longest tests outside the groups, as the suite last measured them (20 to 70 s each on 2 busy cores).
# Started right after the groups, so that the two workers finish together: in collection order one worker
# ran its last 70 s alone. A name here that no longer exists only loses its head start:
# tests/test_repository.py checks that each still does.
LONGEST = (
    "test_tracking_server_stopping_mid_run_is_one_clear_error_and_the_next_run_resumes",
    "test_gradient_boosting_on_the_time_split",
    "test_worker_killed_mid_notebook_is_retried_once_elsewhere",
    "test_search_on_dask_with_an_mlflow_server",
    "test_keep_runs_after_a_run_removes_old_runs_but_not_the_production_model",
    "test_sigkill_mid_grid_then_next_run_completes_only_the_missing_points",
    "test_second_run_is_cached_and_force_reruns",
    "test_search_runs_trials_two_at_once_promotes_the_best_and_is_reused",
    "test_sigkill_mid_search_then_resume_to_exactly_n_trials",
    "test_failed_and_timed_out_trials_are_fail_and_the_search_goes_on",
    "test_two_weekly_runs_as_of_cut_every_stage_and_the_second_watches_the_first_model",
)


def _start_order(item) -> int:
    """Groups first (one long unit each), then the longest tests, then the other slow ones, then the fast
    ones, which fill in at the end: longest-first keeps two workers busy to the last test."""
    if item.get_closest_marker("xdist_group"):
        return 0
    if getattr(item, "originalname", item.name) in LONGEST:
        return 1
    return 2 if item.get_closest_marker("slow") else 3


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n``), the tests on one session fixture's results run in one worker, so that
    the fixture (the smoke pipeline, the Airflow deployment) is made once, not once per worker; and the
    longest work starts first.

    First: xdist's own hook turns the marks into the ``@group`` suffix of each test id, which is what its
    scheduler reads; a mark added after that is ignored (then each worker made its own smoke run). And
    pytest 9.2 ignores that suffix (pytest-xdist#1386): requirements-dev.txt pins pytest 9.1.1.
    """
    for item in items:
        for fixture, group in GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):  # not in one process:
        # there the order is the files' (a module's fixtures made once), and nothing waits on a second worker
        items.sort(key=_start_order)  # stable: within each rank, as collected
