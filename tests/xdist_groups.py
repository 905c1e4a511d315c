"""The README's test command runs on two pytest-xdist workers: which tests must share one (conftest's hook).

A module of its own, light to import: tests/test_repository.py runs it in a toy suite under xdist.
"""

from __future__ import annotations

import pytest

# A session fixture that is costly to make -> the group of every test that uses it (made once, in one worker).
GROUPS = {"smoke_run": "smoke", "airflow_bin": "airflow"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n``), the tests on one session fixture's results run in one worker, so that
    the fixture (the smoke pipeline, the Airflow deployment) is made once, not once per worker.

    First: xdist's own hook turns the marks into the ``@group`` suffix of each test id, which is what its
    scheduler reads; a mark added after that is ignored (then each worker made its own smoke run). And
    pytest 9.2 ignores that suffix (pytest-xdist#1386): requirements-dev.txt pins pytest 9.1.1.
    """
    for item in items:
        for fixture, group in GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
