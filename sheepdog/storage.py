"""SQLite storage for requests, their tasks, and what the tasks reported.

This is the only module with SQL in it. The database is opened in WAL mode
with a busy timeout, so the server thread can write results while the caller
polls progress, and every write runs in an explicit ``BEGIN IMMEDIATE``
transaction. Task states and the transitions between them live here:

``pending`` -> ``running`` -> ``done`` | ``failed`` | ``lost``

The first report of a task wins: a task that reports twice (a re-run, a
retried POST) is stored once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

SCHEMA_VERSION = 1

PENDING, RUNNING, DONE, FAILED, LOST = "pending", "running", "done", "failed", "lost"
FINISHED_STATES = (DONE, FAILED, LOST)

_SCHEMA = """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    secret TEXT NOT NULL,
    function BLOB NOT NULL,
    n_tasks INTEGER NOT NULL,
    backend TEXT NOT NULL
);
CREATE TABLE tasks (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    idx INTEGER NOT NULL,
    args BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    result BLOB,
    error TEXT,
    updated REAL,
    PRIMARY KEY (request_id, idx)
) WITHOUT ROWID;
CREATE INDEX tasks_by_state ON tasks (request_id, state);
CREATE TABLE jobs (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    job_id TEXT NOT NULL,
    submitted REAL NOT NULL
);
"""


class StorageError(RuntimeError):
    """The database cannot be used (wrong schema version, not a sheepdog file)."""


@dataclass(frozen=True)
class Progress:
    """How many of a request's tasks are in each state."""

    total: int
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.lost

    @property
    def complete(self) -> bool:
        return self.finished >= self.total


class Storage:
    """One SQLite database file; safe to share between threads of one process."""

    def __init__(self, dbfile: str | os.PathLike[str]) -> None:
        self.dbfile = os.path.abspath(os.fspath(dbfile))
        self._local = threading.local()
        self._migrate()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.dbfile, timeout=60, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _migrate(self) -> None:
        try:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise StorageError(
                        f"{self.dbfile} has sheepdog schema version {version}; this "
                        f"sheepdog reads version {SCHEMA_VERSION}: use another dbfile"
                    )
        except sqlite3.DatabaseError as error:
            raise StorageError(f"{self.dbfile} is not a usable sheepdog database: {error}") from error

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs on exit)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # -- requests -------------------------------------------------------

    def create_request(
        self, function: bytes, arguments: Iterable[bytes], secret: str, backend: str
    ) -> int:
        """Store a request and its tasks (indices 1..N); return the request id."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO requests (created, secret, function, n_tasks, backend) "
                "VALUES (?, ?, ?, 0, ?)",
                (time.time(), secret, function, backend),
            )
            request_id = cursor.lastrowid
            db.executemany(
                "INSERT INTO tasks (request_id, idx, args) VALUES (?, ?, ?)",
                ((request_id, index, blob) for index, blob in enumerate(arguments, 1)),
            )
            n_tasks = db.execute(
                "SELECT count(*) FROM tasks WHERE request_id = ?", (request_id,)
            ).fetchone()[0]
            db.execute("UPDATE requests SET n_tasks = ? WHERE id = ?", (n_tasks, request_id))
        return request_id

    def request_secret(self, request_id: int) -> str | None:
        row = self._connection().execute(
            "SELECT secret FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None else row[0]

    def function(self, request_id: int) -> bytes | None:
        row = self._connection().execute(
            "SELECT function FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None else row[0]

    def n_tasks(self, request_id: int) -> int:
        row = self._connection().execute(
            "SELECT n_tasks FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"request {request_id} is not in {self.dbfile}")
        return row[0]

    def add_job(self, request_id: int, job_id: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (request_id, job_id, submitted) VALUES (?, ?, ?)",
                (request_id, job_id, time.time()),
            )

    def job_ids(self, request_id: int) -> list[str]:
        rows = self._connection().execute(
            "SELECT job_id FROM jobs WHERE request_id = ? ORDER BY submitted", (request_id,)
        )
        return [row[0] for row in rows]

    # -- tasks ----------------------------------------------------------

    def task_arguments(self, request_id: int, index: int) -> bytes | None:
        row = self._connection().execute(
            "SELECT args FROM tasks WHERE request_id = ? AND idx = ?", (request_id, index)
        ).fetchone()
        return None if row is None else row[0]

    def mark_running(self, request_id: int, index: int) -> bool:
        """pending -> running; False when the task is unknown or already further on."""
        return self._transition(request_id, index, RUNNING, (PENDING,), None, None)

    def record_result(self, request_id: int, index: int, result: bytes) -> bool:
        """Store a result unless the task already finished; True if stored."""
        return self._transition(request_id, index, DONE, (PENDING, RUNNING), result, None)

    def record_error(self, request_id: int, index: int, error: str) -> bool:
        """Store the error of a task whose function raised; True if stored."""
        return self._transition(request_id, index, FAILED, (PENDING, RUNNING), None, error)

    def record_lost(self, request_id: int, index: int, reason: str) -> bool:
        """Mark a task that ended without reporting; True if it was still open."""
        return self._transition(request_id, index, LOST, (PENDING, RUNNING), None, reason)

    def _transition(
        self,
        request_id: int,
        index: int,
        state: str,
        from_states: tuple[str, ...],
        result: bytes | None,
        error: str | None,
    ) -> bool:
        marks = ", ".join("?" for _ in from_states)
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET state = ?, result = ?, error = ?, updated = ? "
                f"WHERE request_id = ? AND idx = ? AND state IN ({marks})",
                (state, result, error, time.time(), request_id, index, *from_states),
            )
        return cursor.rowcount == 1

    def task_exists(self, request_id: int, index: int) -> bool:
        row = self._connection().execute(
            "SELECT 1 FROM tasks WHERE request_id = ? AND idx = ?", (request_id, index)
        ).fetchone()
        return row is not None

    def progress(self, request_id: int) -> Progress:
        rows = self._connection().execute(
            "SELECT state, count(*) FROM tasks WHERE request_id = ? GROUP BY state",
            (request_id,),
        ).fetchall()
        counts = dict(rows)
        return Progress(total=self.n_tasks(request_id), **counts)

    def open_indices(self, request_id: int) -> list[int]:
        """Indices of tasks that have not finished (pending or running)."""
        rows = self._connection().execute(
            "SELECT idx FROM tasks WHERE request_id = ? AND state IN (?, ?) ORDER BY idx",
            (request_id, PENDING, RUNNING),
        )
        return [row[0] for row in rows]

    def results(self, request_id: int) -> list[tuple[bytes, str, bytes | None]]:
        """(arguments, state, result) of every task, in argument order."""
        self.n_tasks(request_id)
        return self._connection().execute(
            "SELECT args, state, result FROM tasks WHERE request_id = ? ORDER BY idx",
            (request_id,),
        ).fetchall()

    def errors(self, request_id: int) -> list[tuple[bytes, str, str]]:
        """(arguments, state, error text) of failed and lost tasks, in argument order."""
        self.n_tasks(request_id)
        return self._connection().execute(
            "SELECT args, state, error FROM tasks WHERE request_id = ? AND state IN (?, ?) "
            "ORDER BY idx",
            (request_id, FAILED, LOST),
        ).fetchall()

    def integrity_check(self) -> str:
        return self._connection().execute("PRAGMA integrity_check").fetchone()[0]
