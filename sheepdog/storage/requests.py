"""Requests: a function mapped over arguments, its tasks created with it, and its jobs.

A request's row holds the pickled function, the secret its workers present,
and the configuration (JSON) that lets a later process reach its jobs, to
watch or cancel them. Its arguments are stored with it, one row per task;
large ones are kept in files (see ``payloads.py``), written before the
transaction starts and moved into place inside it. The ``meta`` table holds
values of the whole database, such as the server's TLS identity.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from .connection import MAX_INTEGER, Database
from .housekeeping import add_bytes
from .memo import Computation, Memo
from .states import DONE, PENDING, RUNNING
from ..wire.protocol import ALONE_BYTES, nbytes


class Job(NamedTuple):
    """A scheduler job of a request: the ``launch``-th, of ``n_workers`` array tasks."""

    job_id: str
    launch: int
    n_workers: int


#: An argument as stored: (task index, the data kept in its row, whether it is in a file).
_Row = tuple[int, Any, int]


def may_name_a_row(request_id: int) -> bool:
    """Whether ``request_id`` could be a row's id: SQLite holds no integer beyond 64 bits."""
    return -MAX_INTEGER <= request_id <= MAX_INTEGER


class Requests:
    """The requests of one database, with their arguments, jobs and the database's meta."""

    def __init__(self, database: Database, memo: Memo) -> None:
        self._database = database
        self._payloads = database.payloads
        self._memo = memo

    def create_request(
        self,
        function: bytes,
        arguments: Iterable[bytes | Sequence[Any]],
        secret: str,
        backend: str,
        config: Mapping[str, Any] | None = None,
        function_name: tuple[str, str] | None = None,
        computation: Computation | None = None,
    ) -> int:
        """Store a request and its tasks (indices 1..N); return the request id.

        Each argument is bytes, or a list of bytes-like parts (see
        ``serialisation.dumps_parts``) that are written out without joining
        them. Large ones are written to files before the transaction starts,
        so that the server is not kept waiting to store results meanwhile.
        ``config`` (JSON-able) is kept so that a later process can reach the
        request's jobs, to watch or cancel them. ``function_name`` is the
        function's (module, qualified name), which ``sheepdog list`` and the
        dashboard show. ``computation`` (with the ``cache`` config key) gives
        the tasks' keys, and earlier results for some of them: those tasks are
        created done, with their results, and their arguments are copied from
        the same earlier tasks where those keep them in rows (see ``memo.py``).
        """
        module, name = function_name or (None, None)
        module = module or None  # a function defined where there was no module name
        payloads = arguments if isinstance(arguments, Sequence) else list(arguments)
        chosen = () if computation is None else computation.chosen
        given = {found.task for found in chosen}  # their arguments are copied, if they can be
        staged: dict[int, str] = {}  # index -> file written, to be renamed into place
        linked: list[str] = []  # remembered results' files put in place
        committed = False
        try:
            rows = [self._argument_row(index, payload, staged)
                    for index, payload in enumerate(payloads, 1) if index not in given]
            with self._database.write() as db:
                request_id = db.execute(
                    "INSERT INTO requests (created, secret, function, n_tasks, backend, config, "
                    "function_module, function_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), secret, function, len(payloads), backend,
                     json.dumps(dict(config or {})), module, name),
                ).lastrowid
                assert request_id is not None  # an INSERT always sets it
                reused = self._memo.copy_earlier(db, request_id, chosen, linked)
                copied = dict(db.execute(
                    "SELECT idx, length(data) FROM arguments WHERE request_id = ?",
                    (request_id,))) if reused else {}
                rows += [self._argument_row(index, payloads[index - 1], staged)
                         for index in sorted(given.difference(copied))]
                for index, path in staged.items():
                    os.replace(path, self._payloads.new_path("arguments", request_id, index))
                db.executemany(
                    "INSERT INTO arguments (request_id, idx, data, in_file) VALUES (?, ?, ?, ?)",
                    zip(itertools.repeat(request_id), *zip(*rows)) if rows else (),
                )
                self._create_tasks(db, request_id, bool(reused))
                db.execute("INSERT INTO task_counts (request_id, state, n) VALUES (?, ?, ?)",
                           (request_id, PENDING, len(payloads) - len(reused)))
                if reused:
                    db.execute("INSERT INTO task_counts (request_id, state, n, last) "
                               "VALUES (?, ?, ?, ?)", (request_id, DONE, len(reused), time.time()))
                add_bytes(db, request_id, len(function) + sum(len(row[1]) for row in rows)
                          + sum(copied.values()))
                if computation is not None:
                    self._memo.store_keys(db, request_id, computation, reused)
            committed = True  # the linked files are the results' now
        finally:
            for path in [*staged.values(), *([] if committed else linked)]:
                if os.path.exists(path):
                    os.remove(path)
        return request_id

    @staticmethod
    def _create_tasks(db: sqlite3.Connection, request_id: int, any_reused: bool) -> None:
        """Inside the transaction, once every argument is stored: the request's tasks,
        pending, but those given an earlier result, which are created done."""
        if not any_reused:
            db.execute("INSERT INTO tasks (request_id, idx) "
                       "SELECT request_id, idx FROM arguments WHERE request_id = ?",
                       (request_id,))
            return
        # As the ``finish`` event of states.py leaves a task, without passing through pending.
        db.execute(
            f"INSERT INTO tasks (request_id, idx, state, updated, retryable) "
            f"SELECT a.request_id, a.idx, CASE WHEN r.idx IS NULL THEN '{PENDING}' "
            f"ELSE '{DONE}' END, CASE WHEN r.idx IS NULL THEN NULL ELSE ? END, 0 "
            f"FROM arguments a LEFT JOIN results r "
            f"ON r.request_id = a.request_id AND r.idx = a.idx WHERE a.request_id = ?",
            (time.time(), request_id))

    def _argument_row(self, index: int, payload: bytes | Sequence[Any],
                      staged: dict[int, str]) -> _Row:
        """The row of argument ``index``; a large one is written to a file, put in ``staged``."""
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        if isinstance(payload, bytes) and len(payload) < ALONE_BYTES:
            return (index, payload, 0)  # the common case, kept fast
        parts: list[Any] = payload if isinstance(payload, list) else [payload]
        if nbytes(parts) < ALONE_BYTES:
            return (index, b"".join(parts), 0)
        with self._database.disk_guard(self._payloads.root):
            staged[index] = self._payloads.stage("arguments", index, parts)
        return (index, b"", 1)

    def unknown(self, request_id: int) -> KeyError:
        """The error for a request that this database does not have."""
        return KeyError(f"request {request_id} is not in {self._database.dbfile}")

    def _column(self, request_id: int, column: str) -> Any:
        """``column`` of the request's row, or None when there is no such request."""
        if not may_name_a_row(request_id):
            return None
        row = self._database.connection().execute(
            f"SELECT {column} FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def request_secret(self, request_id: int) -> str | None:
        return self._column(request_id, "secret")

    def function(self, request_id: int) -> bytes | None:
        return self._column(request_id, "function")

    def n_tasks(self, request_id: int) -> int:
        """How many tasks the request has; KeyError for an unknown request."""
        n = self._column(request_id, "n_tasks")
        if n is None:
            raise self.unknown(request_id)
        return n

    def request_config(self, request_id: int) -> dict[str, Any]:
        config = self._column(request_id, "config")
        if config is None:
            raise self.unknown(request_id)
        return json.loads(config)

    def request_ids(self) -> list[int]:
        """Every request in the database, oldest first."""
        return [row[0] for row in self._database.connection().execute(
            "SELECT id FROM requests ORDER BY id")]

    def open_requests(self) -> list[int]:
        """Requests with tasks not yet finished (pending or running), oldest first."""
        rows = self._database.connection().execute(
            "SELECT DISTINCT request_id FROM task_counts WHERE state IN (?, ?) AND n > 0 "
            "ORDER BY request_id",
            (PENDING, RUNNING),
        )
        return [row[0] for row in rows]

    def add_job(self, request_id: int, job_id: str, launch: int, n_workers: int) -> None:
        """Record the scheduler's id of a launch's job (see :meth:`Leases.add_workers`)."""
        with self._database.write() as db:
            db.execute(
                "INSERT INTO jobs (request_id, job_id, submitted, launch, n_workers) "
                "VALUES (?, ?, ?, ?, ?)",
                (request_id, job_id, time.time(), launch, n_workers),
            )

    def jobs(self, request_id: int) -> list[Job]:
        """The request's jobs, oldest first (jobs of schema 3 and before have no workers)."""
        rows = self._database.connection().execute(
            "SELECT job_id, coalesce(launch, 0), coalesce(n_workers, 0) FROM jobs "
            "WHERE request_id = ? ORDER BY rowid", (request_id,))
        return [Job(*row) for row in rows]

    def meta(self, key: str) -> bytes | None:
        row = self._database.connection().execute(
            "SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, in place of any value there."""
        with self._database.write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def set_meta_once(self, key: str, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless one is there; return the stored value."""
        with self._database.write() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
