"""One database file as every part of storage uses it: connections, transactions, changes.

Each thread gets a connection of its own, opened in WAL mode with a busy
timeout, so the server thread can write results while the caller polls
progress. Every write runs in an explicit ``BEGIN IMMEDIATE`` transaction,
and a write that fails because the disk is full raises :class:`DiskFullError`,
which names the disk; what was stored before stays. A database opened
read-only (``read_only.py``) connects with SQLite's ``mode=ro``, changes no
setting of the file, and refuses every write. The large payloads kept
in files beside the database (see ``payloads.py``) are reached through it
too. Writers that move tasks
say so (:meth:`Database.changed`), which wakes whoever waits for a change in
this process.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager
from typing import Iterator

from . import diskspace
from .file_safety import UnsafePathError, check_companions
from .payloads import PayloadDirectory


class StorageError(RuntimeError):
    """The database cannot be used (wrong schema version, not a sheepdog file, not private)."""


class DiskFullError(StorageError):
    """Nothing more can be written: the disk or quota that holds the database is full."""


#: The largest integer SQLite stores; a larger id or offset names nothing in a database.
MAX_INTEGER = 2**63 - 1


def sqlite_uri(path: str, **parameters: str) -> str:
    """The URI that opens the file ``path`` with SQLite's URI ``parameters``."""
    return f"file:{urllib.parse.quote(path)}?{urllib.parse.urlencode(parameters)}"


class Database:
    """The database file ``dbfile`` and its ``payloads``: safe to share between threads."""

    def __init__(self, dbfile: str, payloads: PayloadDirectory, read_only: bool = False) -> None:
        self.dbfile = dbfile
        self.payloads = payloads
        self.read_only = read_only
        self._local = threading.local()
        self._changes = threading.Condition()
        self._change_count = 0

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                check_companions(self.dbfile)  # connections open later than Storage's checks
            except UnsafePathError as error:
                raise StorageError(str(error)) from error
            if self.read_only:
                connection = sqlite3.connect(sqlite_uri(self.dbfile, mode="ro"), uri=True,
                                             timeout=60, isolation_level=None)
            else:
                connection = sqlite3.connect(self.dbfile, timeout=60, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                # 32 MB of pages rather than SQLite's 2 MB. Chosen when each task's key
                # was a row of an index (storing 100,000 was 1.5x as fast); with keys in
                # buckets (schema 9) the storage path is the same either way. The reads
                # of a million tasks (benchmarks/reading.py) were measured with it.
                connection.execute("PRAGMA cache_size=-32768")
            self._local.connection = connection
        return connection

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection in a transaction, committed unless the block raises."""
        if self.read_only:
            raise StorageError(f"{self.dbfile} is open read-only here: nothing can be written "
                               f"to it through this handle")
        connection = self.connection()
        with self.disk_guard(self.dbfile):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:  # SQLite may have rolled back already
                    connection.execute("ROLLBACK")
                raise

    @staticmethod
    @contextmanager
    def disk_guard(path: str) -> Iterator[None]:
        """Raise :class:`DiskFullError` naming the disk of ``path`` when a write finds it full."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            if not diskspace.is_disk_full(error):
                raise
            raise DiskFullError(diskspace.describe(path, str(error))) from error

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs on exit)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def changed(self) -> None:
        """Tasks moved: wake whoever waits in :meth:`wait_for_change`."""
        with self._changes:
            self._change_count += 1
            self._changes.notify_all()

    @property
    def change_count(self) -> int:
        """Grows whenever a report or a conclusion about a task is stored through this object."""
        return self._change_count

    def wait_for_change(self, since: int, timeout: float) -> None:
        """Sleep until something is stored after ``change_count`` was ``since``.

        Only changes made through this same object (for example by the server
        thread of this process) wake it early; ``timeout`` bounds the wait.
        """
        with self._changes:
            self._changes.wait_for(lambda: self._change_count != since, timeout)
