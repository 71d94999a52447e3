"""Naming a full disk: which failures mean one, and a message that says where.

SQLite says "database or disk is full" and a file write says ENOSPC (or
EDQUOT, over a quota): neither says which disk, nor what to do. Storage turns
such failures into ``storage.DiskFullError``, whose message (:func:`describe`)
names the file that could not grow, the mount point it lives on and how much
room is left there; the server answers a report it could not store because
of one with 507 (Insufficient Storage), so that the worker can say so in the
task's error.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Optional

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """True if ``error`` is a write that failed for want of room."""
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return code == getattr(sqlite3, "SQLITE_FULL", 13) or "disk is full" in str(error)
    return False


def mount_point(path: str) -> str:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def free_bytes(path: str) -> Optional[int]:
    """Bytes that an unprivileged writer may still use where ``path`` lives, if known."""
    try:
        stats = os.statvfs(mount_point(path))
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def describe(path: str, detail: str) -> str:
    """Why ``path`` could not be written, naming its disk and what to do."""
    free = free_bytes(path)
    room = "" if free is None else f", {free} bytes free"
    return (f"the disk that holds {path} (mounted at {mount_point(path)}{room}) is full or "
            f"over its quota ({detail}): free some space there, or use a dbfile on "
            f"another disk; what was stored before is kept")
