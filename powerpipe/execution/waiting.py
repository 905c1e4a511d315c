"""Waiting on a future without blocking Ctrl-C (a plain ``result()`` would hold off KeyboardInterrupt)."""

from __future__ import annotations

POLL_SECONDS = 0.2


def wait(future, poll: float = POLL_SECONDS):
    """The future's result; the main thread wakes every ``poll`` seconds, so a signal gets through."""
    while True:
        try:
            return future.result(timeout=poll)
        except TimeoutError:  # concurrent.futures' and distributed's are the built-in one since 3.11
            continue
