"""One pipeline run at a time per outputs folder: a lock file that names its holder and outlives no one.

``outputs/.powerpipe.lock`` holds one JSON object: the pipeline run id, the host, the pid and that
process's start time, when it was taken, and whether it is *scheduled*:

- a **process** lock (``scheduled=False``, a whole run) belongs to the process that took it. It is
  stale once that process (same host, same pid, same start time: a reused pid does not count) is
  gone, so a runner killed with SIGKILL or by a power cut never blocks the next one.
- a **scheduled** lock (``scheduled=True``) is held from ``run_all.py --start`` to ``--finish``
  across the separate processes of a scheduler's tasks, so no pid can vouch for it. It is stale once
  that pipeline run's ``summary.json`` exists (it finished without releasing) or after
  ``SCHEDULED_MAX_AGE`` seconds.

Taking over a stale lock logs a warning that names the dead holder. A lock held by a process on
another host is never presumed dead (its pid means nothing here).

Every read-check-write happens under ``fcntl.flock`` on the lock file itself, so two runners racing
for a free folder cannot both win. The file is only written in place under that lock, and removed
(under it) on release; whoever locks a file that was removed meanwhile notices (inode check) and
starts again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from powerpipe.core.exceptions import RunLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".powerpipe.lock"
SUMMARY_NAME = "summary.json"
SCHEDULED_MAX_AGE = 24 * 3600.0  # seconds: a scheduled pipeline run not finished by then is presumed abandoned
POLL_SECONDS = 1.0  # how often a waiting runner looks again
START_TIME_TOLERANCE = 0.05  # seconds: process start times compare equal within this


def _process_start_time(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent: dead
            return None
        return process.create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None


def describe(holder: dict) -> str:
    """``pipeline run ID (host H, pid P, since T)`` for messages."""
    kind = ", scheduled: held from --start to --finish" if holder.get("scheduled") else ""
    return (f"pipeline run {holder.get('pipeline_run_id', '?')} (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, since {holder.get('since', '?')}{kind})")


class RunLock:
    """The lock of one outputs folder (and so of its default tracking store)."""

    def __init__(self, outputs_dir: str | os.PathLike):
        self.outputs_dir = Path(outputs_dir).resolve()
        self.path = self.outputs_dir / LOCK_NAME

    # -- the public interface -------------------------------------------------------------------------
    def acquire(self, pipeline_run_id: str, *, wait: bool = False, wait_timeout: float | None = None,
                scheduled: bool = False) -> None:
        """Take the lock for ``pipeline_run_id``, or raise ``RunLockedError`` naming the holder.

        ``wait``: poll until it is free (or stale), at most ``wait_timeout`` seconds (None: no limit).
        Taking it again for the same ``pipeline_run_id`` succeeds (and rewrites who holds it).
        """
        if not pipeline_run_id:
            raise ValueError("a pipeline run id is needed to take the lock")
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        deadline = None if wait_timeout is None else time.monotonic() + max(0.0, wait_timeout)
        waited = False
        while True:
            with _locked(self.path, exclusive=True) as fd:
                current, unreadable = _read(fd)
                if current is None and not unreadable:
                    _write(fd, _mine(pipeline_run_id, scheduled))
                    self._log_taken(pipeline_run_id, waited)
                    return
                if current is not None and current.get("pipeline_run_id") == pipeline_run_id:
                    _write(fd, _mine(pipeline_run_id, scheduled))
                    return
                reason = "the lock file is unreadable (its writer died mid-write)" if unreadable \
                    else self._stale_reason(current)
                if reason:
                    log.warning("%s: taking over the lock of %s: %s", self.outputs_dir,
                                describe(current) if current else "an unknown holder", reason)
                    _write(fd, _mine(pipeline_run_id, scheduled))
                    return
            if not wait:
                raise self._error(current, waited=None)
            if deadline is not None and time.monotonic() >= deadline:
                raise self._error(current, waited=wait_timeout)
            if not waited:
                log.warning("%s is in use by %s: waiting for it to finish%s", self.outputs_dir, describe(current),
                            f" (at most {wait_timeout:g} s)" if wait_timeout is not None else "")
                waited = True
            pause = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def release(self, pipeline_run_id: str) -> None:
        """Give the lock up, if ``pipeline_run_id`` holds it (otherwise leave it as it is)."""
        if not self.path.exists():
            return
        with _locked(self.path, exclusive=True) as fd:
            current, unreadable = _read(fd)
            if current is None and not unreadable:  # an empty file (none of ours is left empty): tidy up
                os.unlink(self.path)
                return
            if current is None or current.get("pipeline_run_id") != pipeline_run_id:
                log.debug("%s: not releasing the lock: held by %s, not %s", self.outputs_dir,
                          describe(current) if current else "no one", pipeline_run_id)
                return
            os.ftruncate(fd, 0)
            os.unlink(self.path)

    def holder(self) -> dict | None:
        """Who holds the lock now (its JSON), or None when it is free. A stale holder is still returned."""
        if not self.path.exists():
            return None
        with _locked(self.path, exclusive=False) as fd:
            current, _ = _read(fd)
            return current

    def is_stale(self, holder: dict) -> str | None:
        """Why ``holder`` no longer holds the folder, or None when it may still be running."""
        return self._stale_reason(holder)

    def _stale_reason(self, holder: dict) -> str | None:
        run_id = str(holder.get("pipeline_run_id"))
        if holder.get("scheduled"):
            if (self.outputs_dir / run_id / SUMMARY_NAME).is_file():
                return f"pipeline run {run_id} has finished (its {SUMMARY_NAME} exists) without releasing it"
            try:
                age = time.time() - float(holder.get("since_epoch"))
            except (TypeError, ValueError):
                return "it does not say when it was taken"
            if age > SCHEDULED_MAX_AGE:
                return (f"held for {age / 3600:.1f} h, longer than a scheduled run may take "
                        f"({SCHEDULED_MAX_AGE / 3600:g} h)")
            return None
        if holder.get("host") != socket.gethostname():
            return None  # its pid means nothing here: presumed alive
        try:
            pid = int(holder.get("pid"))
        except (TypeError, ValueError):
            return "it names no process"
        started = _process_start_time(pid)
        if started is None:
            return f"its process {pid} is no longer running"
        recorded = holder.get("process_started")
        if recorded is not None and abs(started - float(recorded)) > START_TIME_TOLERANCE:
            return f"its process {pid} is no longer running (pid {pid} is another process now)"
        return None

    def _error(self, holder: dict | None, waited: float | None) -> RunLockedError:
        holder = holder or {}
        message = f"{self.outputs_dir} is in use by {describe(holder)}"
        if waited is not None:
            message += f"; still held after waiting {waited:g} s"
        else:
            message += "; one pipeline run at a time per outputs folder: wait for it (--if-running wait)"
        if holder.get("host") not in (None, socket.gethostname()) and not holder.get("scheduled"):
            message += (f". It runs on another host, so it cannot be checked from here: if it is dead, "
                        f"remove {self.path}")
        elif holder.get("scheduled"):
            message += (f". A scheduled run holds it until run_all.py --pipeline-run "
                        f"{holder.get('pipeline_run_id')} --finish (or for at most {SCHEDULED_MAX_AGE / 3600:g} h)")
        return RunLockedError(message, holder=holder)

    def _log_taken(self, pipeline_run_id: str, waited: bool) -> None:
        if waited:
            log.info("%s is free: taken by pipeline run %s", self.outputs_dir, pipeline_run_id)


# -- the lock file ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[int | None]:
    """The lock file's descriptor, flock-ed; the very file at ``path``, not one removed meanwhile.

    A reader (``exclusive=False``) creates nothing: it gets None when there is no lock file.
    """
    flags = os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY
    while True:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            if exclusive:
                raise
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            mine = os.fstat(fd)
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # released and removed while we waited for it: open the new one
    try:
        yield fd
    finally:
        os.close(fd)  # closing drops the flock

def _read(fd: int | None) -> tuple[dict | None, bool]:
    """(holder or None, whether the file held something that is not a holder)."""
    if fd is None:
        return None, False
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    if not text.strip():
        return None, False
    try:
        value = json.loads(text)
    except ValueError:
        return None, True
    if not isinstance(value, dict) or not value.get("pipeline_run_id"):
        return None, True
    return value, False

def _write(fd: int, holder: dict) -> None:
    text = (json.dumps(holder, indent=2) + "\n").encode()
    os.ftruncate(fd, 0)
    written = 0
    while written < len(text):
        written += os.pwrite(fd, text[written:], written)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems do not sync; the content is written all the same
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise

def _mine(pipeline_run_id: str, scheduled: bool) -> dict:
    now = time.time()
    return {
        "pipeline_run_id": pipeline_run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_started": _process_start_time(os.getpid()),
        "since": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "since_epoch": now,
        "scheduled": bool(scheduled),
    }

