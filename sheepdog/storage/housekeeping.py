"""Tidying a database: how much room each request takes, and removing whole requests.

A database that remembers (the ``cache`` config key) is kept for long, and
grows: ``sheepdog list`` shows each request's size, and ``sheepdog rm`` and
``sheepdog prune`` remove requests with everything that is theirs (tasks,
arguments, results, outputs, exceptions, jobs, workers, computation keys,
the meta entries named after them, and their payload files).

Rows are removed in one write transaction, the lock every writer takes, so
another process that uses the database meanwhile sees the requests whole or
not at all; the payload files go after the commit (a result remembered by a
later request is a link of its own, see ``memo.py``, and stays). A request
with tasks still open (pending or running) is never removed: its workers
would report to nothing. SQLite reuses the pages it frees; the file does not
shrink until a ``VACUUM``.

A request's size is read, not counted: ``request_bytes`` keeps the bytes of its
payloads in the database (its function, and the data of its arguments,
results, outputs and exceptions), and whoever writes or deletes those rows
says how many bytes came or went (:func:`add_bytes`) in the same transaction,
once per statement rather than once per row, so that ``sheepdog list`` stays a
small read at a million tasks and storing results costs no trigger. Its
payload files are sized when asked, by listing its directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from typing import NamedTuple, Optional, Sequence

from .connection import Database
from .key_buckets import keyed_indices
from .states import DONE, PENDING, RUNNING

#: The tables whose rows belong to one request, by its ``request_id``.
_TABLES = ("tasks", "task_counts", "arguments", "results", "outputs", "exceptions", "jobs",
           "workers", "computation_keys", "request_bytes")
#: The meta entries named after a request: ``<name>:<request id>``.
_META_NAMES = ("server", "key_file")


def add_bytes(db: sqlite3.Connection, request_id: int, n_bytes: int) -> None:
    """Inside the transaction that wrote (or, negative, deleted) them: ``n_bytes`` of
    the request's payloads in the database."""
    if n_bytes:
        db.execute("INSERT INTO request_bytes VALUES (?, ?) ON CONFLICT (request_id) "
                   "DO UPDATE SET bytes = bytes + excluded.bytes", (request_id, n_bytes))


class Freed(NamedTuple):
    """What a removal freed: requests, their tasks, and bytes (rows and files)."""

    requests: list[int]
    tasks: int
    bytes: int


class StillOpen(ValueError):
    """A request asked to be removed still has tasks to finish."""


class Housekeeping:
    """Sizes and removal of one database's requests."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._payloads = database.payloads

    def request_sizes(self, request_ids: Optional[Sequence[int]] = None) -> dict[int, int]:
        """Bytes that each request (every one, or those of ``request_ids``) takes: its
        payloads in the database (as kept in ``request_bytes``) and in files."""
        rows = self._database.connection().execute(
            "SELECT r.id, coalesce(b.bytes, 0) FROM requests r "
            "LEFT JOIN request_bytes b ON b.request_id = r.id").fetchall()
        wanted = None if request_ids is None else set(request_ids)
        return {request_id: size + self._file_bytes(request_id) for request_id, size in rows
                if wanted is None or request_id in wanted}

    def _file_bytes(self, request_id: int) -> int:
        directory = os.path.join(self._payloads.root, str(request_id))
        try:
            with os.scandir(directory) as entries:
                return sum(entry.stat(follow_symlinks=False).st_size for entry in entries)
        except FileNotFoundError:
            return 0

    def removable_before(self, created_before: float, keep_cached: bool) -> list[int]:
        """Requests made before ``created_before`` whose tasks have all finished; with
        ``keep_cached``, not those with a success a later request may reuse."""
        rows = self._database.connection().execute(
            "SELECT id, computation IS NOT NULL, n_tasks, remembered, coalesce((SELECT n "
            f"FROM task_counts WHERE request_id = id AND state = '{DONE}'), 0) FROM requests "
            "WHERE created < ? AND NOT EXISTS (SELECT 1 FROM task_counts WHERE request_id = "
            f"id AND state IN ('{PENDING}', '{RUNNING}') AND n > 0) ORDER BY id",
            (created_before,)).fetchall()
        return [request_id for request_id, keyed, n_tasks, remembered, done in rows
                if not (keep_cached and keyed and self._has_own_success(
                    request_id, n_tasks, remembered, done))]

    def _has_own_success(self, request_id: int, n_tasks: int, remembered: int,
                         done: int) -> bool:
        """Whether a request made with the cache has a task it computed done (given its
        counts): one whose key it holds, which a later request may reuse.

        More tasks done than it was given done (those are its sources' to give)
        says so at once, and none done, or every task done, says so too. Otherwise
        a task it was given may have left ``done`` (its result unloadable), so the
        tasks that hold a key are asked.
        """
        if done > remembered or done in (0, n_tasks):
            return done > remembered
        return self._database.connection().execute(
            f"SELECT EXISTS (SELECT 1 FROM tasks WHERE request_id = ? AND state = '{DONE}' "
            "AND idx IN (SELECT value FROM json_each(?)))",
            (request_id, json.dumps(keyed_indices(self._database.connection(), request_id)))
        ).fetchone()[0] == 1

    def remove(self, request_ids: Sequence[int]) -> Freed:
        """Remove the requests with all that is theirs, or nothing at all.

        KeyError names requests that are not in the database, :class:`StillOpen`
        those with tasks still to finish; either way nothing is removed.
        """
        chosen = sorted(set(request_ids))
        if not chosen:
            return Freed([], 0, 0)
        sizes = self.request_sizes(chosen)
        with self._database.write() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM temp.removed")
            db.executemany("INSERT INTO temp.removed VALUES (?)", [(rid,) for rid in chosen])
            known = {row[0] for row in db.execute(
                "SELECT id FROM requests WHERE id IN (SELECT id FROM temp.removed)")}
            unknown = [rid for rid in chosen if rid not in known]
            if unknown:
                raise KeyError(f"no request {', '.join(map(str, unknown))} in "
                               f"{self._database.dbfile}; nothing was removed")
            still_open = [row[0] for row in db.execute(
                "SELECT DISTINCT request_id FROM task_counts WHERE n > 0 AND state IN "
                f"('{PENDING}', '{RUNNING}') AND request_id IN (SELECT id FROM temp.removed)")]
            if still_open:
                raise StillOpen(
                    f"request {', '.join(map(str, sorted(still_open)))} still has tasks to "
                    f"finish: cancel it first (sheepdog cancel RID); nothing was removed")
            tasks = db.execute("SELECT coalesce(sum(n_tasks), 0) FROM requests "
                               "WHERE id IN (SELECT id FROM temp.removed)").fetchone()[0]
            for table in _TABLES:
                db.execute(f"DELETE FROM {table} WHERE request_id IN "
                           "(SELECT id FROM temp.removed)")
            db.executemany("DELETE FROM meta WHERE key = ?",
                           [(f"{name}:{rid}",) for rid in chosen for name in _META_NAMES])
            db.execute("DELETE FROM requests WHERE id IN (SELECT id FROM temp.removed)")
        for rid in chosen:
            shutil.rmtree(os.path.join(self._payloads.root, str(rid)), ignore_errors=True)
        self._database.changed()
        return Freed(chosen, tasks, sum(sizes.get(rid, 0) for rid in chosen))
