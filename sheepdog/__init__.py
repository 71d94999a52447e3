"""Sheepdog: map a Python function over many arguments on a GridEngine cluster.

    >>> import sheepdog
    >>> sheepdog.map(f, [(1, 1), (1, 2)], {"host": "headnode"})

Only the public names are defined here; each lives in a module of its own.
"""

from .api import as_completed, cancel, get_errors, get_results, map, map_async, map_sync, wait
from .backends import SubmissionError
from .config import Config
from .executor import Executor
from .caller.outcomes import TaskError, TaskLost
from .caller.request import Request
from .wire.serialisation import SerialisationError
from .server.host import Server
from .caller.session import Session
from .remote.errors import SSHError
from .storage.file_safety import UnsafePathError
from .storage import DiskFullError, Storage, StorageError
from .caller.watcher import CallbackError

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
