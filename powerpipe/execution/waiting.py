"""Waiting on a future without blocking Ctrl-C (a plain ``result()`` would hold off KeyboardInterrupt)."""

from __future__ import annotations

import threading

POLL_SECONDS = 0.2


def wait(future, poll: float = POLL_SECONDS):
    """The future's result; the main thread wakes every ``poll`` seconds, so a signal gets through.

    It waits on the future's done-callback and only then asks for the result. Polling
    ``result(timeout=poll)`` instead loses results on Dask: when the timeout and the end of the task meet,
    ``distributed.utils.sync`` raises ``UnboundLocalError: ... 'result'`` for a task that succeeded
    (dask/distributed#8514; seen here as a grid point failing after its run had FINISHED).
    """
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    while not done.wait(poll):
        if future.done():  # a Dask client closed meanwhile cancels its futures but may run no callback
            break
    return future.result()
