"""Sheepdog: map a Python function over many arguments on a GridEngine cluster.

    >>> import sheepdog
    >>> sheepdog.map(f, [(1, 1), (1, 2)], {"host": "headnode"})

Only the public names are defined here; each lives in a module of its own.
"""

from .api import (
    as_completed, cancel, get_errors, get_results, map, map_async, map_sync, wait,
)
from .backends import SubmissionError
from .config import Config
from .executor import Executor
from .outcomes import TaskError, TaskLost
from .request import Request
from .serialisation import SerialisationError
from .server import Server
from .session import Session
from .ssh import SSHError
from .private import UnsafePathError
from .storage import DiskFullError, Storage, StorageError
from .supervisor import CallbackError

__version__ = "0.4.0"

__all__ = [
    "CallbackError",
    "Config",
    "DiskFullError",
    "Executor",
    "Request",
    "SerialisationError",
    "SSHError",
    "Server",
    "Session",
    "Storage",
    "StorageError",
    "SubmissionError",
    "TaskError",
    "TaskLost",
    "UnsafePathError",
    "__version__",
    "as_completed",
    "cancel",
    "get_errors",
    "get_results",
    "map",
    "map_async",
    "map_sync",
    "wait",
]
