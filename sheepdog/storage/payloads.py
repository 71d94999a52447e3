"""Large payloads kept in files beside the database, and the helpers that move them.

SQLite moves a large BLOB through its page cache and journal several times,
while a file is written once and can be streamed or mapped, so pickled
arguments and results of ``ALONE_BYTES`` or more (the size at which workers
post a result alone, so the server can receive it straight into its file;
see ``wire/protocol.py``) live in files under ``<dbfile>.payloads/<request
id>/`` (directories 0700, files 0600; a root directory that another user owns
or can write to is refused). Which payloads are in files is recorded in the
database (``requests.py``, ``tasks.py``); this module only knows the files.
New files are written under a unique staging name (``*.part``) and renamed
into place, so a file with a final name is always whole.

A process killed while it wrote a staging file (a large upload, say) leaves
it behind, so opening the database removes staging files that nobody is
writing. Every user of the directory (each database opened, in any process)
holds a shared ``flock`` on it: one that finds no other holder removes every
staging file; otherwise only those untouched for :data:`STALE_STAGING_SECONDS`,
which no live writer leaves so long. (Where the directory cannot be locked,
as on NFS, the age rule alone applies.)
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import stat
import tempfile
import time
from typing import Any, Iterator, Optional, Sequence

from .file_safety import private_directory

log = logging.getLogger(__name__)

#: Bytes moved at a time when a payload file is written or streamed.
CHUNK_BYTES = 4 << 20
#: Payload files this large are loaded as memory maps rather than read.
MAP_BYTES = 64 << 20
#: A staging file untouched this long is left over, even if the directory is in use.
STALE_STAGING_SECONDS = 24 * 3600
STAGING_SUFFIX = ".part"


class PayloadError(RuntimeError):
    """A payload file is not what the database says it is."""


class PayloadFile:
    """A payload kept in a file; ``len()`` is its size in bytes."""

    __slots__ = ("path", "size")

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"PayloadFile({self.path!r}, {self.size})"

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The file's bytes, a chunk at a time (for streaming it to a worker)."""
        with open(self.path, "rb") as stream:
            while True:
                chunk = stream.read(chunk_bytes)
                if not chunk:
                    return
                yield chunk

    def read(self) -> memoryview:
        """The whole payload in a writable buffer, loaded in place by ``serialisation.loads``.

        A payload of :data:`MAP_BYTES` or more is a private mapping of the
        file: nothing is copied up front, pages are read in as they are
        touched, and writes stay in this process. Each live mapping holds a
        file descriptor, so smaller payloads (of which a result list may hold
        thousands) are read into memory instead.
        """
        with open(self.path, "rb", buffering=0) as stream:
            if os.fstat(stream.fileno()).st_size != self.size:
                raise PayloadError(f"{self.path} is not {self.size} bytes long: the payload "
                                   f"file was changed outside sheepdog")
            if self.size >= MAP_BYTES:
                return memoryview(mmap.mmap(stream.fileno(), self.size, access=mmap.ACCESS_COPY))
            data = bytearray(self.size)
            stream.readinto(data)
            return memoryview(data)


def payload_bytes(payload: bytes | PayloadFile) -> bytes | memoryview:
    """A stored payload's bytes, from its database row or from its file."""
    return payload.read() if isinstance(payload, PayloadFile) else payload


def write_all(descriptor: int, data: Any) -> None:
    """Write all of bytes-like ``data`` to a file descriptor, ``CHUNK_BYTES`` at a time.

    ``os.write`` may write less than asked; and on ext4 one write of hundreds
    of MB was measured about five times slower than the same bytes in 4 MB writes.
    """
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(descriptor, view[:CHUNK_BYTES]):]


def write_parts(descriptor: int, parts: Sequence[Any]) -> None:
    """Write the concatenation of bytes-like ``parts`` to ``descriptor``, then close it."""
    try:
        for part in parts:
            write_all(descriptor, part)
    finally:
        os.close(descriptor)


class PayloadDirectory:
    """The files of one database's large payloads: ``<root>/<request id>/<table>-<index>``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._root_is_private = False
        self._lock: Optional[int] = None  # a descriptor of the root, holding the shared lock

    def __del__(self) -> None:
        if self._lock is not None:
            os.close(self._lock)

    def _private_root(self) -> None:
        """Create the root directory, or check that it is the caller's alone (once)."""
        if not self._root_is_private:
            private_directory(self.root)
            if self._lock is None:
                self._lock = self._lock_root(fcntl.LOCK_SH)[0]
            self._root_is_private = True

    def _lock_root(self, operation: int) -> tuple[int, bool]:
        """(descriptor of the root, whether ``operation`` locked it): kept open to hold it."""
        descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, operation)
            return descriptor, True
        except OSError:  # held by another, or not lockable here
            return descriptor, False

    def remove_leftovers(self) -> list[str]:
        """Remove staging files that no live process is writing; return their paths.

        See the module's docstring for how a live writer is told apart.
        """
        if self._lock is not None or not os.path.isdir(self.root):
            return []
        lock, alone = self._lock_root(fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = []
        oldest = time.time() - STALE_STAGING_SECONDS
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.endswith(STAGING_SUFFIX):
                    continue
                status = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(status.st_mode) and (alone or status.st_mtime < oldest):
                    try:
                        os.remove(entry.path)
                        removed.append(entry.path)
                    except FileNotFoundError:
                        pass
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)
        except OSError:
            pass  # not lockable here: the age rule protects this user's files
        self._lock = lock
        if removed:
            log.info("removed %d unfinished payload files left in %s by a process that "
                     "ended while writing them", len(removed), self.root)
        return removed

    def path(self, table: str, request_id: int, index: int) -> str:
        """Where a payload of ``table`` (arguments or results) lives when kept in a file."""
        return os.path.join(self.root, str(request_id), f"{table}-{index}")

    def new_path(self, table: str, request_id: int, index: int) -> str:
        """:meth:`path`, creating its directories (readable by their owner only)."""
        self._private_root()
        os.makedirs(os.path.join(self.root, str(request_id)), mode=0o700, exist_ok=True)
        return self.path(table, request_id, index)

    def staging_file(self, kind: str, index: int) -> tuple[int, str]:
        """(descriptor, path) of a new private file, to be renamed into place when whole."""
        self._private_root()
        return tempfile.mkstemp(prefix=f"{kind}-{index}.", suffix=STAGING_SUFFIX, dir=self.root)

    def stage(self, kind: str, index: int, parts: Sequence[Any]) -> str:
        """Write bytes-like ``parts`` to a new staging file (see :meth:`staging_file`); its path.

        A file that could not be written whole (a full disk) is removed.
        """
        descriptor, path = self.staging_file(kind, index)
        try:
            write_parts(descriptor, parts)
        except BaseException:
            os.remove(path)
            raise
        return path

    def stored(self, table: str, request_id: int, index: int, data: bytes,
               in_file: int) -> bytes | PayloadFile:
        """A row's payload: its ``data``, or the file it names when ``in_file``."""
        if not in_file:
            return data
        path = self.path(table, request_id, index)
        return PayloadFile(path, os.stat(path).st_size)
