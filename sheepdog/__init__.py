"""Sheepdog: map a Python function over many arguments on a GridEngine or Slurm cluster.

    >>> import sheepdog
    >>> sheepdog.map(f, [(1, 1), (1, 2)], {"host": "headnode"})

Only the public names are defined here; each lives in a module of its own and
is imported on first use (PEP 562), so that ``import sheepdog`` costs almost
nothing and a script pays only for the parts it uses: a local map never loads
paramiko, and only the dashboard loads Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.4.0"

#: Each public name, and the module that defines it.
_HOMES = {
    "as_completed": "api", "cancel": "api", "get_errors": "api", "get_results": "api",
    "map": "api", "map_async": "api", "map_sync": "api", "wait": "api",
    "job_script": "caller.jobscript",
    "CallbackError": "caller.watcher",
    "Config": "config",
    "DiskFullError": "storage",
    "Executor": "executor",
    "RemoteTraceback": "caller.outcomes",
    "Request": "caller.request",
    "SerialisationError": "wire.serialisation",
    "SSHError": "remote.errors",
    "Server": "server",
    "Session": "caller.session",
    "Storage": "storage",
    "StorageError": "storage",
    "SubmissionError": "backends.base",
    "TaskError": "caller.outcomes",
    "TaskLost": "caller.outcomes",
    "UnsafePathError": "storage.file_safety",
}
#: A module reachable under the name it had before the package had folders, so that
#: ``sheepdog.serialisation.pickle_protocol = 2`` reaches the module in use (``import
#: sheepdog.serialisation`` works too: see ``serialisation.py``).
_MOVED_MODULES = {"serialisation": "wire.serialisation"}

__all__ = sorted([*_HOMES, "__version__"])

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from .api import (
        as_completed, cancel, get_errors, get_results, map, map_async, map_sync, wait,
    )
    from .backends.base import SubmissionError
    from .caller.jobscript import job_script
    from .caller.outcomes import RemoteTraceback, TaskError, TaskLost
    from .caller.request import Request
    from .caller.session import Session
    from .caller.watcher import CallbackError
    from .config import Config
    from .executor import Executor
    from .remote.errors import SSHError
    from .server import Server
    from .storage import DiskFullError, Storage, StorageError
    from .storage.file_safety import UnsafePathError
    from .wire.serialisation import SerialisationError


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    elif name in _MOVED_MODULES:
        value = importlib.import_module(f".{_MOVED_MODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'sheepdog' has no attribute {name!r}")
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
