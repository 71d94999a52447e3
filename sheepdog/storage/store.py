"""SQLite storage for requests, their tasks, and what the tasks reported.

This module, with ``states.py`` (the task states and the one function that
moves tasks between them) and ``leases.py`` (the workers and the tasks they
hold), holds all of sheepdog's SQL. The database is opened in WAL mode with a
busy timeout, so the server thread can write results while the caller polls
progress, and every write runs in an explicit ``BEGIN IMMEDIATE``
transaction. A task's own report wins over sheepdog's conclusions, and the
first report wins over any later one (see ``states.py``).

Arguments and results live in tables of their own, so that the small, frequent
state updates never rewrite a large payload. Large payloads
are kept in files beside the database (see ``payloads.py``); the rows say
which, a file is in place before its row commits, and a result's file is
moved in only when its report is accepted.

How many tasks are in each state is kept in a table updated by a trigger in
the same transaction as each change, so reading progress does not scan tasks.

The tail of what a task wrote to stdout and stderr (see ``output.py``) is kept
in a table of its own, one row per stream, only for tasks that wrote
something. It arrives with the task's report and is kept with it (a duplicate
run's output does not replace it), or alone for a task that crashed; it is
appended to the error text that :meth:`Storage.errors` returns.

A write that fails because the disk is full raises :class:`DiskFullError`,
which names the disk; what was stored before stays.

The file holds each request's secret, and the caller loads the results kept
in it, so it must be the caller's alone: it is created 0600, and an existing
one (with its ``-wal`` and ``-shm`` files and its payload directory) is
checked and tightened, or refused, before it is used (see ``private.py``).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

from . import diskspace, states
from .leases import Leases
from .payloads import SPILL_BYTES, PayloadDirectory, PayloadFile
from ..wire.protocol import nbytes
from .file_safety import UnsafePathError, private_directory, private_file
from ..wire.protocol import OUTPUT_TAIL_BYTES
from .states import PENDING, RUNNING, UNSUCCESSFUL, UNSUCCESSFUL_SQL
from .summaries import Summaries, TaskLog

#: The states of tasks that have an error to show, and the SQL that picks them.

_SCHEMA = """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    secret TEXT NOT NULL,
    function BLOB NOT NULL,
    n_tasks INTEGER NOT NULL,
    backend TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE tasks (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    idx INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    updated REAL,
    heartbeat REAL,
    kill_notice REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    retryable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, idx)
) WITHOUT ROWID;
CREATE INDEX tasks_by_state ON tasks (request_id, state);
CREATE TABLE arguments (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE results (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE jobs (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    job_id TEXT NOT NULL,
    submitted REAL NOT NULL,
    chunksize INTEGER NOT NULL,
    indices TEXT
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
)
"""

#: From version 1: payload files, and task counts kept per state.
_UPGRADE_TO_2 = """
ALTER TABLE arguments ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
CREATE TABLE task_counts (
    request_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (request_id, state)
) WITHOUT ROWID;
INSERT INTO task_counts SELECT request_id, state, count(*) FROM tasks GROUP BY request_id, state;
CREATE TRIGGER count_task_states AFTER UPDATE OF state ON tasks
WHEN OLD.state != NEW.state
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE request_id = OLD.request_id AND state = OLD.state;
    INSERT INTO task_counts VALUES (NEW.request_id, NEW.state, 1)
        ON CONFLICT (request_id, state) DO UPDATE SET n = n + 1;
END
"""

#: From version 2: the tail of each task's stdout and stderr.
_UPGRADE_TO_3 = """
CREATE TABLE outputs (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx, stream)
)
"""

#: From version 3: workers that pull their tasks, and hold them on a lease.
#: Jobs are numbered per request (their ``launch``) and run ``n_workers``
#: workers; a task names the worker that holds it and the pull (``batch``)
#: that gave it, and when it was handed out.
_UPGRADE_TO_4 = """
ALTER TABLE tasks ADD COLUMN worker INTEGER;
ALTER TABLE tasks ADD COLUMN batch INTEGER;
ALTER TABLE tasks ADD COLUMN started REAL;
ALTER TABLE jobs ADD COLUMN launch INTEGER;
ALTER TABLE jobs ADD COLUMN n_workers INTEGER;
CREATE TABLE workers (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL,
    launch INTEGER NOT NULL,
    array_task INTEGER NOT NULL,
    pulls INTEGER NOT NULL DEFAULT 0,
    heartbeat REAL,
    kill_notice REAL,
    ended REAL,
    end_reason TEXT,
    end_retryable INTEGER,
    UNIQUE (request_id, launch, array_task)
);
CREATE INDEX tasks_by_worker ON tasks (request_id, worker);
ALTER TABLE jobs DROP COLUMN chunksize;
ALTER TABLE jobs DROP COLUMN indices
"""

#: The schema as scripts, each bringing it one version up: a database of
#: version N runs the scripts from N on, in one transaction.
_MIGRATIONS = (_SCHEMA, _UPGRADE_TO_2, _UPGRADE_TO_3, _UPGRADE_TO_4)
SCHEMA_VERSION = len(_MIGRATIONS)

#: The streams of a task's output, in the order they are shown: one file
#: for both, or one each.
STREAMS = ("stdout and stderr", "stdout", "stderr")
#: The most of one stream's tail that is stored (the worker's tail, and a
#: note that earlier bytes were left out).
MAX_OUTPUT_BYTES = OUTPUT_TAIL_BYTES + 1024


class Job(NamedTuple):
    """A scheduler job of a request: the ``launch``-th, of ``n_workers`` array tasks."""

    job_id: str
    launch: int
    n_workers: int


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script`` one by one (trigger bodies hold semicolons too)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        yield statement


class StorageError(RuntimeError):
    """The database cannot be used (wrong schema version, not a sheepdog file, not private)."""


class DiskFullError(StorageError):
    """Nothing more can be written: the disk or quota that holds the database is full."""


def with_output(error: str, output: Mapping[str, str]) -> str:
    """``error`` followed by each stream of the task's ``output`` in a marked section."""
    sections = [error.rstrip()]
    for stream in STREAMS:
        if stream in output:
            sections.append(f"--- the task's {stream} (its last "
                            f"{OUTPUT_TAIL_BYTES >> 10} KB at most) ---\n"
                            f"{output[stream].rstrip()}\n--- end of the task's {stream} ---")
    return "\n\n".join(sections)


@dataclass(frozen=True)
class Progress:
    """How many of a request's tasks are in each state."""

    total: int
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    cancelled: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.lost + self.cancelled

    @property
    def complete(self) -> bool:
        return self.finished >= self.total


class Storage(Leases, Summaries):
    """One SQLite database file; safe to share between threads of one process."""

    def __init__(self, dbfile: str | os.PathLike[str]) -> None:
        self.dbfile = os.path.abspath(os.fspath(dbfile))
        #: Large payloads live here, one directory per request.
        self.payloads = PayloadDirectory(self.dbfile + ".payloads")
        self._changes = threading.Condition()
        self._change_count = 0
        self._local = threading.local()
        try:
            private_file(self.dbfile)
            for suffix in ("-wal", "-shm"):
                private_file(self.dbfile + suffix, create=False)
            private_directory(self.payloads.root, create=False)
        except UnsafePathError as error:
            raise StorageError(str(error)) from error
        self._migrate()
        self.payloads.remove_leftovers()

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
        with self._disk_guard(self.dbfile):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:  # SQLite may have rolled back already
                    connection.execute("ROLLBACK")
                raise

    @contextmanager
    def _disk_guard(self, path: str) -> Iterator[None]:
        """Raise :class:`DiskFullError` naming the disk of ``path`` when a write finds it full."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            if not diskspace.is_disk_full(error):
                raise
            raise DiskFullError(diskspace.describe(path, str(error))) from error

    def _migrate(self) -> None:
        try:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if not 0 <= version <= SCHEMA_VERSION:
                    raise StorageError(
                        f"{self.dbfile} has sheepdog schema version {version}; this "
                        f"sheepdog reads version {SCHEMA_VERSION}: use another dbfile"
                    )
                for script in _MIGRATIONS[version:]:
                    for statement in _statements(script):
                        db.execute(statement)
                if version != SCHEMA_VERSION:
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
        self,
        function: bytes,
        arguments: Iterable[bytes | Sequence[Any]],
        secret: str,
        backend: str,
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a request and its tasks (indices 1..N); return the request id.

        Each argument is bytes, or a list of bytes-like parts (see
        ``serialisation.dumps_parts``) that are written out without joining
        them. Large ones are written to files before the transaction starts,
        so that the server is not kept waiting to store results meanwhile.
        ``config`` (JSON-able) is kept so that a later process can reach the
        request's jobs, to watch or cancel them.
        """
        rows: list[tuple[int, Any, int]] = []  # (index, inline data, in a file)
        staged: dict[int, str] = {}  # index -> file written, to be renamed into place
        try:
            for index, payload in enumerate(arguments, 1):
                if isinstance(payload, list) and len(payload) == 1:
                    payload = payload[0]
                if isinstance(payload, bytes) and len(payload) < SPILL_BYTES:
                    rows.append((index, payload, 0))  # the common case, kept fast
                    continue
                parts: list[Any] = payload if isinstance(payload, list) else [payload]
                if nbytes(parts) < SPILL_BYTES:
                    rows.append((index, b"".join(parts), 0))
                    continue
                with self._disk_guard(self.payloads.root):
                    staged[index] = self.payloads.stage("arguments", index, parts)
                rows.append((index, b"", 1))
            with self._write() as db:
                request_id = db.execute(
                    "INSERT INTO requests (created, secret, function, n_tasks, backend, config) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time(), secret, function, len(rows), backend,
                     json.dumps(dict(config or {}))),
                ).lastrowid
                assert request_id is not None  # an INSERT always sets it
                for index, path in staged.items():
                    os.replace(path, self.payloads.new_path("arguments", request_id, index))
                db.executemany(
                    "INSERT INTO arguments (request_id, idx, data, in_file) VALUES (?, ?, ?, ?)",
                    zip(itertools.repeat(request_id), *zip(*rows)) if rows else (),
                )
                db.execute("INSERT INTO tasks (request_id, idx) "
                           "SELECT request_id, idx FROM arguments WHERE request_id = ?",
                           (request_id,))
                db.execute("INSERT INTO task_counts VALUES (?, ?, ?)",
                           (request_id, PENDING, len(rows)))
        finally:
            for path in staged.values():
                if os.path.exists(path):
                    os.remove(path)
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

    def request_config(self, request_id: int) -> dict[str, Any]:
        row = self._connection().execute(
            "SELECT config FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"request {request_id} is not in {self.dbfile}")
        return json.loads(row[0])

    def add_job(self, request_id: int, job_id: str, launch: int, n_workers: int) -> None:
        """Record the scheduler's id of a launch's job (see :meth:`add_workers`)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (request_id, job_id, submitted, launch, n_workers) "
                "VALUES (?, ?, ?, ?, ?)",
                (request_id, job_id, time.time(), launch, n_workers),
            )

    def jobs(self, request_id: int) -> list[Job]:
        """The request's jobs, oldest first (jobs of schema 3 and before have no workers)."""
        rows = self._connection().execute(
            "SELECT job_id, coalesce(launch, 0), coalesce(n_workers, 0) FROM jobs "
            "WHERE request_id = ? ORDER BY rowid", (request_id,))
        return [Job(*row) for row in rows]

    def meta(self, key: str) -> bytes | None:
        row = self._connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta_once(self, key: str, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless one is there; return the stored value."""
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    # -- tasks ----------------------------------------------------------

    def task_arguments(
        self, request_id: int, indices: Sequence[int]
    ) -> dict[int, bytes | PayloadFile]:
        """The stored arguments of the tasks ``indices`` (unknown ones are left out)."""
        connection = self._connection()
        if len(indices) > 1 and list(indices) == list(range(indices[0], indices[-1] + 1)):
            rows = connection.execute(
                "SELECT idx, data, in_file FROM arguments "
                "WHERE request_id = ? AND idx BETWEEN ? AND ?",
                (request_id, indices[0], indices[-1]),
            ).fetchall()
        else:
            rows = connection.execute(
                "SELECT idx, data, in_file FROM arguments WHERE request_id = ? AND idx IN "
                "(SELECT value FROM json_each(?))", (request_id, json.dumps(list(indices)))
            ).fetchall()
        return {index: self.payloads.stored("arguments", request_id, index, data, in_file)
                for index, data, in_file in rows}

    def new_staging_file(self, request_id: int, index: int) -> tuple[int, str]:
        """(descriptor, path) of a new file to receive a task's result into.

        Hand the path to :meth:`record_reports` as a :class:`PayloadFile`; it
        becomes the stored result if the report is accepted and is removed
        otherwise.
        """
        return self.payloads.staging_file(f"results-{request_id}", index)

    def record_reports(self, request_id: int, reports: Sequence[tuple[int, bool, Any]],
                       outputs: Sequence[tuple[int, str, Any]] = ()) -> int:
        """Store many (index, failed, payload) reports in one transaction; returns how many.

        A payload is the pickled result (bytes-like, or a :class:`PayloadFile`
        from :meth:`new_staging_file`), or the UTF-8 error text when ``failed``.
        A large result is written to a staging file first, outside the
        transaction, and moved into place only if its report is accepted.

        ``outputs`` are (index, stream, bytes) tails of the tasks' output (a
        stream of :data:`STREAMS`). One that comes with its task's accepted
        report replaces what was kept; any other is kept only where its task
        has none for that stream yet (it came after its report, or the task
        crashed), so a duplicate run's output never replaces the first's.
        """
        staged = {}
        try:
            with self._disk_guard(self.payloads.root):
                for index, failed, payload in reports:
                    if isinstance(payload, PayloadFile):
                        staged[index] = payload.path
                    elif not failed and nbytes([payload]) >= SPILL_BYTES:
                        staged[index] = self.payloads.stage(
                            f"results-{request_id}", index, [payload])
            with self._write() as db:
                accepted = self._store_reports(db, request_id, reports, staged)
                self._store_outputs(db, request_id, outputs, accepted)
        finally:
            for path in staged.values():
                if os.path.exists(path):
                    os.remove(path)
        self._changed()
        return len(accepted)

    @staticmethod
    def _store_outputs(db: sqlite3.Connection, request_id: int,
                       outputs: Sequence[tuple[int, str, Any]], accepted: set[int]) -> None:
        """Inside a transaction: output tails, by the rule of :meth:`record_reports`."""
        for index, stream, data in outputs:
            if stream not in STREAMS:
                raise ValueError(f"unknown output stream {stream!r}")
            data = bytes(data)[-MAX_OUTPUT_BYTES:]
            if index in accepted:
                db.execute("INSERT OR REPLACE INTO outputs (request_id, idx, stream, data) "
                           "VALUES (?, ?, ?, ?)", (request_id, index, stream, data))
            else:
                db.execute("INSERT OR IGNORE INTO outputs (request_id, idx, stream, data) "
                           "SELECT request_id, idx, ?, ? FROM tasks WHERE request_id = ? "
                           "AND idx = ?", (stream, data, request_id, index))

    def _store_reports(self, db: sqlite3.Connection, request_id: int,
                       reports: Sequence[tuple[int, bool, Any]], staged: Mapping[int, str]
                       ) -> set[int]:
        """Inside a transaction: the tasks' own reports, except where one was already stored."""
        done = states.apply(db, "finish", request_id,
                            [index for index, failed, _payload in reports if not failed])
        failed = states.apply(db, "fail", request_id, {
            index: bytes(payload).decode("utf-8") for index, failed, payload in reports if failed})
        accepted = set(done)
        rows = []
        for index, failed_report, payload in reports:
            if failed_report or index not in accepted:
                continue
            accepted.discard(index)  # a second result for the task in this body is not stored
            staged_file = staged.get(index)
            if staged_file is not None:
                os.replace(staged_file, self.payloads.new_path("results", request_id, index))
            rows.append((request_id, index, b"" if staged_file else payload,
                         int(staged_file is not None)))
        db.executemany("INSERT OR REPLACE INTO results (request_id, idx, data, in_file) "
                       "VALUES (?, ?, ?, ?)", rows)
        return set(done) | set(failed)

    def record_unloadable(self, request_id: int, index: int, reason: str) -> bool:
        """A done task whose result cannot be loaded here becomes failed, with ``reason``."""
        return bool(self._apply("unloadable", request_id, [index], reason=reason))

    def record_lost(self, request_id: int, index: int, reason: str,
                    retryable: bool = False) -> bool:
        """Mark a task that ended without reporting; True if it was still open.

        It is never retryable if the scheduler had warned its worker that it
        would kill it (then it was removed on purpose).
        """
        return bool(self._apply("lose", request_id, [index], reason=reason,
                                retryable=int(retryable)))

    def cancel_open(self, request_id: int, reason: str) -> int:
        """Mark every task not yet finished as cancelled; return how many."""
        return len(self._apply("cancel", request_id, reason=reason))

    def requeue(self, request_id: int, max_attempts: int, failed_too: bool) -> list[int]:
        """Put lost (and, if asked, failed) tasks with attempts left back in the queue.

        Returns their indices; the output they left goes.
        """
        with self._write() as db:
            again = states.apply(db, "requeue", request_id,
                                 where=f"attempts < :max_attempts AND {states.may_run_again(failed_too)}",
                                 max_attempts=max_attempts)
            db.execute("DELETE FROM outputs WHERE request_id = ? AND idx IN "
                       "(SELECT value FROM json_each(?))", (request_id, json.dumps(again)))
        if again:
            self._changed()
        return sorted(again)

    def _apply(self, event: str, request_id: int, tasks: Optional[states.Tasks] = None,
               **parameters: Any) -> list[int]:
        """:func:`states.apply` in a transaction of its own; wakes waiters if anything moved."""
        with self._write() as db:
            moved = states.apply(db, event, request_id, tasks, **parameters)
        if moved:
            self._changed()
        return moved

    def task_exists(self, request_id: int, index: int) -> bool:
        row = self._connection().execute(
            "SELECT 1 FROM tasks WHERE request_id = ? AND idx = ?", (request_id, index)
        ).fetchone()
        return row is not None

    def progress(self, request_id: int) -> Progress:
        """How many tasks are in each state: one small read, however many tasks there are."""
        rows = self._connection().execute(
            "SELECT state, n FROM task_counts WHERE request_id = ? AND n > 0", (request_id,)
        ).fetchall()
        return Progress(total=self.n_tasks(request_id), **dict(rows))

    def _changed(self) -> None:
        with self._changes:
            self._change_count += 1
            self._changes.notify_all()

    @property
    def change_count(self) -> int:
        """Grows whenever this object stores a report or a conclusion about a task."""
        return self._change_count

    def wait_for_change(self, since: int, timeout: float) -> None:
        """Sleep until this object stores something after ``change_count`` was ``since``.

        Only changes made through this same object (for example by the server
        thread of this process) wake it early; ``timeout`` bounds the wait.
        """
        with self._changes:
            self._changes.wait_for(lambda: self._change_count != since, timeout)

    def open_indices(self, request_id: int) -> list[int]:
        """Indices of tasks that have not finished (pending or running)."""
        rows = self._connection().execute(
            "SELECT idx FROM tasks WHERE request_id = ? AND state IN (?, ?) ORDER BY idx",
            (request_id, PENDING, RUNNING),
        )
        return [row[0] for row in rows]

    def request_ids(self) -> list[int]:
        """Every request in the database, oldest first."""
        return [row[0] for row in self._connection().execute("SELECT id FROM requests ORDER BY id")]

    def open_requests(self) -> list[int]:
        """Requests with tasks not yet finished (pending or running), oldest first."""
        rows = self._connection().execute(
            "SELECT DISTINCT request_id FROM task_counts WHERE state IN (?, ?) AND n > 0 "
            "ORDER BY request_id",
            (PENDING, RUNNING),
        )
        return [row[0] for row in rows]

    def results(
        self, request_id: int, with_arguments: bool = True
    ) -> list[tuple[bytes | PayloadFile | None, str, bytes | PayloadFile | None]]:
        """(arguments, state, result) of every task, in argument order.

        Without ``with_arguments`` the arguments are not read, and are None.
        """
        self.n_tasks(request_id)
        arguments = ("a.data, a.in_file" if with_arguments else "NULL, 0")
        join = ("JOIN arguments a ON a.request_id = t.request_id AND a.idx = t.idx "
                if with_arguments else "")
        rows = self._connection().execute(
            f"SELECT t.idx, {arguments}, t.state, r.data, r.in_file FROM tasks t {join}"
            "LEFT JOIN results r ON r.request_id = t.request_id AND r.idx = t.idx "
            "WHERE t.request_id = ? ORDER BY t.idx",
            (request_id,),
        )
        return [
            (None if argument is None else
             self.payloads.stored("arguments", request_id, index, argument, argument_in_file),
             state,
             None if result is None else
             self.payloads.stored("results", request_id, index, result, result_in_file))
            for index, argument, argument_in_file, state, result, result_in_file in rows
        ]

    def errors(self, request_id: int) -> list[tuple[bytes | PayloadFile, str, str]]:
        """(arguments, state, error text) of failed, lost and cancelled tasks, in order.

        The error text ends with the task's output, when any was kept (see
        :func:`with_output`).
        """
        self.n_tasks(request_id)
        rows = self._connection().execute(
            "SELECT t.idx, a.data, a.in_file, t.state, t.error FROM tasks t "
            "JOIN arguments a ON a.request_id = t.request_id AND a.idx = t.idx "
            f"WHERE t.request_id = ? AND {UNSUCCESSFUL_SQL} ORDER BY t.idx",
            (request_id, *UNSUCCESSFUL),
        ).fetchall()
        outputs = self._outputs(request_id, UNSUCCESSFUL_SQL, UNSUCCESSFUL) if rows else {}
        return [(self.payloads.stored("arguments", request_id, index, data, in_file), state,
                 with_output(error or "", outputs.get(index, {})))
                for index, data, in_file, state, error in rows]

    def task_logs(self, request_id: int, index: Optional[int] = None) -> list[TaskLog]:
        """What task ``index`` left behind, or else every failed, lost or cancelled task.

        Raises KeyError for an unknown request or task.
        """
        total = self.n_tasks(request_id)
        where, parameters = ((UNSUCCESSFUL_SQL, UNSUCCESSFUL) if index is None
                             else ("t.idx = ?", (index,)))
        rows = self._connection().execute(
            f"SELECT t.idx, t.state, t.error FROM tasks t WHERE t.request_id = ? AND {where} "
            "ORDER BY t.idx", (request_id, *parameters)).fetchall()
        if index is not None and not rows:
            raise KeyError(f"request {request_id} has no task {index}: its tasks are 1 to {total}")
        outputs = self._outputs(request_id, where, parameters) if rows else {}
        return [TaskLog(idx, state, error, outputs.get(idx, {})) for idx, state, error in rows]

    def _outputs(self, request_id: int, where: str, parameters: Sequence[Any]
                 ) -> dict[int, dict[str, str]]:
        """index -> stream -> text of the output kept for the tasks ``t`` that match ``where``."""
        rows = self._connection().execute(
            "SELECT o.idx, o.stream, o.data FROM outputs o JOIN tasks t "
            "ON t.request_id = o.request_id AND t.idx = o.idx "
            f"WHERE o.request_id = ? AND {where}", (request_id, *parameters))
        kept: dict[int, dict[str, str]] = {}
        for index, stream, data in rows:
            kept.setdefault(index, {})[stream] = bytes(data).decode("utf-8", "replace")
        return kept

    def integrity_check(self) -> str:
        return self._connection().execute("PRAGMA integrity_check").fetchone()[0]

    # -- cancelling some tasks (executor.py) ---------------------------------

    def cancel_tasks(self, request_id: int, indices: Sequence[int], reason: str) -> list[int]:
        """pending -> cancelled for the tasks ``indices``; the ones that moved.

        A cancelled task is never handed to a worker, so it never runs; a task
        already running is left to finish.
        """
        return self._apply("cancel", request_id, indices, where="tasks.state = 'pending'",
                           reason=reason)

