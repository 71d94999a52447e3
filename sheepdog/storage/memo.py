"""Remembered computations: each task's key, and the earlier successes a new task may reuse.

A request made with the ``cache`` config key stores the key of each of its
tasks (``caller/fingerprint.py`` makes them) in ``computations``. Only a task
that is ``done`` has a result to reuse: failed, lost and cancelled tasks are
never found, so they are computed again. Of several successes with one key,
the newest request's wins (``cache: "refresh"`` computes again and so becomes
the newest).

Reusing is two steps, so that the caller can check that a result loads in
its process (:meth:`Memo.earlier_results`) before anything is written: then
:meth:`Memo.reuse` copies the chosen results in one transaction, marks their
tasks done through the ``finish`` event of ``states.py``, and counts them on
the request. A result kept in a file is linked (or copied) into the new
request's directory, so that removing the older request keeps it.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterable, NamedTuple, Sequence

from . import states
from .connection import Database
from .payloads import PayloadFile
from .states import DONE


class EarlierResult(NamedTuple):
    """A successful earlier task with the key of task ``task`` of the new request."""

    task: int
    source_request: int
    source_index: int
    result: bytes | PayloadFile


class Memo:
    """The computation keys of one database's tasks."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._payloads = database.payloads

    def store_keys(self, request_id: int, keys: Sequence[bytes]) -> None:
        """Keep the key of each task of the request (``keys[0]`` is task 1's)."""
        with self._database.write() as db:
            db.executemany("INSERT OR REPLACE INTO computations (request_id, idx, key, digest) "
                           "VALUES (?, ?, ?, ?)",
                           ((request_id, index, _index_key(key), key)
                            for index, key in enumerate(keys, 1)))

    def earlier_results(self, request_id: int) -> list[EarlierResult]:
        """For each task of the request that is still pending, the newest successful task
        of another request with the same key, with its result."""
        rows = self._database.connection().execute(
            "SELECT c.idx, s.request_id, s.idx, r.data, r.in_file FROM computations c "
            "JOIN tasks mine ON mine.request_id = c.request_id AND mine.idx = c.idx "
            "JOIN computations s ON s.key = c.key AND s.digest = c.digest "
            "AND s.request_id != c.request_id "
            "JOIN tasks t ON t.request_id = s.request_id AND t.idx = s.idx "
            "JOIN results r ON r.request_id = s.request_id AND r.idx = s.idx "
            f"WHERE c.request_id = ? AND mine.state = 'pending' AND t.state = '{DONE}' "
            "ORDER BY c.idx, s.request_id", (request_id,))
        newest: dict[int, EarlierResult] = {}
        stored = self._payloads.stored
        for index, source_request, source_index, data, in_file in rows:
            newest[index] = EarlierResult(
                index, source_request, source_index,
                stored("results", source_request, source_index, data, in_file))
        return list(newest.values())

    def reuse(self, request_id: int, chosen: Iterable[EarlierResult]) -> int:
        """Give each chosen task the earlier result, as done; how many were given one.

        A source removed meanwhile (``sheepdog rm`` in another process) gives
        nothing, and its task stays pending, to be computed.
        """
        chosen = list(chosen)
        if not chosen:
            return 0
        by_index = {c.task: c for c in chosen}
        linked: list[str] = []
        committed = False
        try:
            with self._database.write() as db:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS reused "
                           "(idx INTEGER PRIMARY KEY, source_request INTEGER, source_idx INTEGER)")
                db.execute("DELETE FROM temp.reused")
                db.executemany("INSERT INTO temp.reused VALUES (?, ?, ?)",
                               [(c.task, c.source_request, c.source_index) for c in chosen])
                copied = db.execute(
                    "INSERT OR IGNORE INTO results (request_id, idx, data, in_file) "
                    "SELECT ?, u.idx, r.data, r.in_file FROM temp.reused u JOIN results r "
                    "ON r.request_id = u.source_request AND r.idx = u.source_idx "
                    "RETURNING idx, in_file", (request_id,)).fetchall()
                for index, in_file in copied:
                    if in_file:
                        linked.append(self._link_file(request_id, by_index[index]))
                moved = states.apply(
                    db, "finish", request_id, [index for index, _in_file in copied])
                db.execute("UPDATE computations SET remembered_from = (SELECT source_request "
                           "FROM temp.reused u WHERE u.idx = computations.idx) "
                           "WHERE request_id = ? AND idx IN (SELECT idx FROM temp.reused)",
                           (request_id,))
                db.execute("UPDATE requests SET remembered = remembered + ? WHERE id = ?",
                           (len(moved), request_id))
            committed = True  # the files are the results' now
        finally:
            for path in [] if committed else linked:
                os.remove(path)
        if moved:
            self._database.changed()
        return len(moved)

    def _link_file(self, request_id: int, source: EarlierResult) -> str:
        """Put the source's result file in place as its new task's; the new path."""
        from_path = self._payloads.path("results", source.source_request, source.source_index)
        to_path = self._payloads.new_path("results", request_id, source.task)
        try:
            os.link(from_path, to_path)
        except OSError:  # a file system without hard links
            shutil.copyfile(from_path, to_path)
        return to_path

    def remembered(self, request_id: int) -> int:
        """How many of the request's tasks reused an earlier result."""
        row = self._database.connection().execute(
            "SELECT remembered FROM requests WHERE id = ?", (request_id,)).fetchone()
        return 0 if row is None else row[0]


def _index_key(digest: bytes) -> int:
    """The first 64 bits of ``digest`` as SQLite's signed integer: what the index holds."""
    return int.from_bytes(digest[:8], "big", signed=True)
