"""Files written whole or not at all, and a full disk told as one clear error.

Atomic writes: a temporary file beside the target, then an atomic rename. A crash or a full disk
mid-write leaves the previous file (or none), never a truncated one; the temporary file is removed.

Disk space: ``free_bytes``, a check before a run (``check_free_space``), and the translation of an
``ENOSPC`` (or SQLite's "database or disk is full") into ``DiskFullError``: "no space left on
<mount> (N MB free, about M MB needed)".
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from powerpipe.core.exceptions import DiskFullError, chain

MB = 1024 * 1024
# errno values that mean "this file system has no room for it".
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
# What libraries say when they hide the errno: SQLite (also through SQLAlchemy), the C library.
_FULL_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded")


# -- atomic writes -----------------------------------------------------------------------------------

_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then put back
os.umask(_UMASK)

@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, on error it is removed.

    An ``ENOSPC`` on the way comes out as ``DiskFullError`` naming the mount point and the space free.
    """
    target = Path(target)
    with disk_full_guard(target.parent, writing=target):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets what open() would give it
        os.close(handle)
        temporary = Path(name)
        try:
            yield temporary
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def atomic_write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8", fsync: bool = True) -> None:
    """Write ``text`` to ``target`` whole or not at all. ``fsync=False``: safe against crashes of this
    process and full disks, not against a power cut (for files rewritten often, such as autosaves)."""
    atomic_write_bytes(target, text.encode(encoding), fsync=fsync)


def atomic_write_bytes(target: str | os.PathLike, payload: bytes, fsync: bool = True) -> None:
    with atomic_path(target) as temporary:
        # Unbuffered: a full disk fails the write once, not again when a buffer is flushed on close.
        with open(temporary, "wb", buffering=0) as handle:
            view = memoryview(payload)
            while view:
                view = view[handle.write(view):]
            if fsync:
                os.fsync(handle.fileno())


# -- disk space --------------------------------------------------------------------------------------

def _existing(path: str | os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists (a folder about to be created lives on its parent's disk)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged process may still write on the file system holding ``path``."""
    stats = os.statvfs(_existing(path))
    return stats.f_bavail * stats.f_frsize


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system holding ``path`` (``/`` at worst)."""
    path = _existing(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _mb(count: int) -> str:
    return f"{count / MB:.0f}" if count >= 10 * MB or count == 0 else f"{count / MB:.1f}"


def disk_full_error(path: str | os.PathLike, needed_bytes: int | None = None,
                    writing: str | os.PathLike | None = None) -> DiskFullError:
    """The ``DiskFullError`` for the file system holding ``path``, with the space free now (and needed)."""
    try:
        where, free = mount_point(path), free_bytes(path)
    except OSError:
        return DiskFullError(f"no space left on the file system holding {path}")
    message = f"no space left on {where} ({_mb(free)} MB free"
    message += f", about {_mb(needed_bytes)} MB needed)" if needed_bytes else ")"
    if writing is not None:
        message += f" while writing {writing}"
    return DiskFullError(message)


def check_free_space(path: str | os.PathLike, needed_bytes: int) -> int:
    """Refuse to start when the file system holding ``path`` has obviously too little room; returns the free bytes."""
    free = free_bytes(path)
    if free < needed_bytes:
        raise disk_full_error(path, needed_bytes)
    return free


def is_disk_full(exc: BaseException | None) -> bool:
    """True if ``exc``, or any exception it was raised from or during, says the disk is full."""
    return any(isinstance(link, DiskFullError) or (isinstance(link, OSError) and link.errno in _FULL_ERRNOS)
               or any(message in str(link).lower() for message in _FULL_MESSAGES) for link in chain(exc))


def as_disk_full_error(exc: BaseException, path: str | os.PathLike, needed_bytes: int | None = None,
                       writing: str | os.PathLike | None = None) -> DiskFullError | None:
    """``exc`` as a ``DiskFullError`` about the file system of ``path`` if it says the disk is full, else None.

    ``writing``: the file being written, named in the message (default: the error's own file name).
    """
    if isinstance(exc, DiskFullError):
        return exc
    if not is_disk_full(exc):
        return None
    writing = writing or getattr(exc, "filename", None)
    return disk_full_error(path, needed_bytes, writing=writing or None)


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike, needed_bytes: int | None = None,
                    writing: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a full disk met inside the block into ``DiskFullError`` about the file system of ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted: a full disk is translated, anything else re-raised
        translated = as_disk_full_error(exc, path, needed_bytes, writing)
        if translated is None:
            raise
        raise translated from exc


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes the files under ``path`` take (a file: its size; missing: 0). Links are not followed."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
