"""Remembered computations: each task's key, and the earlier successes a new task may reuse.

A request made with the ``cache`` config key keeps its function's digest,
and the key of each task it computes (``caller/fingerprint.py`` makes them)
in ``computations``. Only a task
that is ``done`` has a result to reuse: failed, lost and cancelled tasks are
never found, so they are computed again. Of several successes with one key,
the newest request's wins (``cache: "refresh"`` computes again and so becomes
the newest).

Reusing is two steps, so that the caller can check that a result loads in
its process (:meth:`Memo.earlier_results`) before anything is written: then
the new request is created with them, in one transaction
(``requests.py``): :meth:`Memo.copy_results` copies the chosen results,
their tasks are created done (never pending, so no worker can take one), and
:meth:`Memo.store_keys` counts them on the request and keeps the keys of the
tasks left to compute. A result kept in a file is linked (or copied) into the
new request's directory, so that removing the older request keeps it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from typing import Collection, NamedTuple, Sequence

from .connection import Database
from .payloads import PayloadFile
from .states import DONE


class EarlierResult(NamedTuple):
    """A successful earlier task with the key of task ``task`` of the new request."""

    task: int
    source_request: int
    source_index: int
    result: bytes | PayloadFile


class Computation(NamedTuple):
    """What a new request made with the cache remembers: its function's digest, the key
    of each of its tasks (``keys[0]`` is task 1's), and the earlier results chosen for
    some of them (see :meth:`Memo.earlier_results`)."""

    function_digest: bytes
    keys: Sequence[bytes]
    chosen: Sequence[EarlierResult]


class Memo:
    """The computation keys of one database's tasks."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._payloads = database.payloads

    def earlier_results(self, function_digest: bytes, keys: Sequence[bytes]
                        ) -> list[EarlierResult]:
        """For each key (``keys[0]`` is task 1's), the newest successful task of an earlier
        request with that key, with its result.

        Only a request of the same function (``function_digest``) can hold one,
        so when there is none the index is not asked at all.
        """
        connection = self._database.connection()
        if connection.execute("SELECT 1 FROM requests WHERE computation = ? LIMIT 1",
                              (function_digest,)).fetchone() is None:
            return []
        # The keys' index entries travel as one JSON array, which SQLite reads in one
        # go (a temporary table of them took as long again as the lookup itself).
        rows = connection.execute(
            "SELECT w.key + 1, s.digest, s.request_id, s.idx, r.data, r.in_file "
            "FROM json_each(?) w JOIN computations s ON s.key = w.value "
            "JOIN tasks t ON t.request_id = s.request_id AND t.idx = s.idx "
            "JOIN results r ON r.request_id = s.request_id AND r.idx = s.idx "
            f"WHERE t.state = '{DONE}' ORDER BY w.key, s.request_id",
            (json.dumps([_index_key(key) for key in keys]),))
        newest: dict[int, EarlierResult] = {}
        stored = self._payloads.stored
        for index, digest, source_request, source_index, data, in_file in rows:
            if digest == keys[index - 1]:  # not only the first 64 bits alike
                newest[index] = EarlierResult(
                    index, source_request, source_index,
                    stored("results", source_request, source_index, data, in_file))
        return list(newest.values())

    def store_keys(self, db: sqlite3.Connection, request_id: int, computation: Computation,
                   reused: Collection[int]) -> None:
        """Inside the new request's transaction: its function's digest, how many of its
        tasks were given a result (``reused``), and the keys of the others, to compute."""
        db.execute("UPDATE requests SET computation = ?, remembered = ? WHERE id = ?",
                   (computation.function_digest, len(reused), request_id))
        db.executemany(
            "INSERT INTO computations (request_id, idx, key, digest) VALUES (?, ?, ?, ?)",
            ((request_id, index, _index_key(key), key)
             for index, key in enumerate(computation.keys, 1) if index not in reused))

    def copy_results(self, db: sqlite3.Connection, request_id: int,
                     chosen: Sequence[EarlierResult], linked: list[str]) -> set[int]:
        """Inside the new request's transaction: the chosen results copied to its tasks
        (files linked, their paths put in ``linked``); the indices given one.

        A source removed meanwhile (``sheepdog rm`` in another process) gives
        nothing, and its task is computed.
        """
        if not chosen:
            return set()
        by_index = {c.task: c for c in chosen}
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
        return {index for index, _in_file in copied}

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
