"""Everything one database holds, and the only SQL in sheepdog.

A request's rows, its tasks and their moves between states, the workers that
hold them, the summaries people read, the payload files kept beside the
database, and the checks that keep those files the caller's own. Other parts
of sheepdog import :class:`Storage` from here.
"""

from .connection import DiskFullError, StorageError
from .outputs import STREAMS
from .schema import SCHEMA_VERSION
from .store import Storage
from .tasks import Progress

__all__ = ["DiskFullError", "Progress", "SCHEMA_VERSION", "STREAMS", "Storage", "StorageError"]
