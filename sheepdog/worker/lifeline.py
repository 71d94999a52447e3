"""A worker's processes end with the process that started them, even when it is killed.

A local worker's parent is the caller's process; a cluster worker's is the
scheduler's shepherd; a runner's is its worker. When that parent dies, by
SIGKILL too, nothing is left for the child to report to: without this, a
local worker whose caller was killed would go on retrying the vanished
server for ``retry_seconds``, holding its slot. On Linux the kernel sends
the signal (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes, and the
caller's exit handler and the scheduler still end their workers.
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Optional

from ..wire.settings import CALLER_PID_VARIABLE

#: prctl(2)'s option that names the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent(expected: Optional[int] = None) -> None:
    """Be killed when the parent process dies; at once if it already has.

    ``expected`` is the pid the parent must have: a parent that died before
    this process got here has been replaced (by init, or a subreaper).
    """
    parent = os.getppid() if expected is None else expected
    c_library = libc()
    try:
        prctl = getattr(c_library, "prctl")
    except AttributeError:  # not Linux
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the kernel was asked to tell us
        os.kill(os.getpid(), signal.SIGKILL)


@functools.lru_cache(maxsize=None)
def libc() -> object:
    """The C library (``ctypes.CDLL(None)``), or None without ctypes; loaded once per
    process, so that a worker's runners, forked for each batch, find it and the
    functions looked up in it at hand: loading it again took them milliseconds."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def expected_parent() -> Optional[int]:
    """The parent a worker must have, where the backend says (the local one does)."""
    value = os.environ.get(CALLER_PID_VARIABLE, "")
    return int(value) if value.isdigit() else None
