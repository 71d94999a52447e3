"""Opening a database to read it, changing nothing: what the reading commands use.

``Storage(path, read_only=True)`` (``sheepdog list``, ``status``,
``results``, ``errors``, ``logs`` and ``dashboard``) creates no file,
tightens no mode, changes no setting and never migrates. It refuses, with a
:class:`~sheepdog.storage.connection.StorageError` that says why, a file
that is not the caller's alone (checked with ``lstat`` only, see
``file_safety.py``), one that is not a sheepdog database, and one whose
schema is not this sheepdog's (an older one too: its reads need the current
schema, and bringing a file up to date is a write).

SQLite's read-only connections and the write-ahead log: a read-only
connection to a database in WAL mode needs the ``-shm`` file beside it. When
no ``-wal`` and ``-shm`` exist (nobody has the file open), SQLite creates
both, and leaves them behind; where it cannot create them (a directory the
caller cannot write) the connection fails. So, before SQLite's read-only
connection, a file is checked through an ``immutable`` connection, which
reads the file as it is and creates nothing beside it, whenever that is
safe: when there is no write-ahead log (the file then holds every commit)
and no connection of this process may have the file open (closing the
check's descriptor would drop their locks). A file that is not a sheepdog
database is then refused before anything is created beside it.
"""

from __future__ import annotations

import os
import sqlite3

from .connection import Database, StorageError, sqlite_uri
from .file_safety import (
    UnsafePathError,
    check_companions,
    check_database_files,
    check_directory,
)
from .schema import check_readable


def check_files(dbfile: str, payload_root: str, opened_here: bool) -> None:
    """Refuse ``dbfile`` and the files beside it unless they are the caller's alone,
    and a file nobody writes that is not a sheepdog database of this version.

    ``opened_here`` says that a connection of this process may have it open:
    the file is then only ``lstat``-ed.
    """
    try:
        check_directory(dbfile)
        check_companions(dbfile)
        check_database_files(dbfile, ("-wal", "-shm"), (payload_root,), follow_own_link=True)
    except UnsafePathError as error:
        raise StorageError(str(error)) from error
    if not os.path.exists(dbfile):
        raise StorageError(f"no sheepdog database at {dbfile}: reading never creates one")
    if not opened_here and not os.path.exists(dbfile + "-wal"):
        _check_as_it_is(dbfile)


def _check_as_it_is(dbfile: str) -> None:
    """Check the file's schema through a connection that creates nothing beside it."""
    try:
        connection = sqlite3.connect(sqlite_uri(dbfile, mode="ro", immutable="1"), uri=True)
    except sqlite3.Error as error:
        raise StorageError(f"{dbfile} cannot be read: {error}") from error
    try:
        check_readable(connection, dbfile)
    finally:
        connection.close()


def check_connection(database: Database) -> None:
    """Open ``database``'s read-only connection and check its schema once more."""
    try:
        connection = database.connection()
    except sqlite3.Error as error:
        raise _unreadable(database.dbfile, error) from error
    try:
        check_readable(connection, database.dbfile)
    except StorageError as refusal:
        if isinstance(refusal.__cause__, sqlite3.OperationalError):
            raise _unreadable(database.dbfile, refusal.__cause__) from refusal.__cause__
        raise


def _unreadable(dbfile: str, error: sqlite3.Error) -> StorageError:
    """Why a read-only connection failed; in WAL mode, most likely a missing ``-shm``."""
    if os.path.exists(dbfile + "-shm"):
        return StorageError(f"{dbfile} cannot be read: {error}")
    return StorageError(
        f"{dbfile} cannot be read ({error}): a database in write-ahead-log mode can be read "
        f"only where its {os.path.basename(dbfile)}-shm file exists or can be created, and "
        f"{os.path.dirname(dbfile)} does not let you create it. Read it where you can write "
        f"its directory, or while its requests run")
