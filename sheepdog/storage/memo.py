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

import itertools
import json
import os
import shutil
import sqlite3
from typing import Collection, Iterator, NamedTuple, Sequence

from .connection import Database
from .housekeeping import add_bytes
from .payloads import PayloadFile
from .states import DONE


class EarlierResult(NamedTuple):
    """A successful earlier task with the key of task ``task`` of the new request."""

    task: int
    source_request: int
    source_index: int
    result: bytes | PayloadFile


#: An earlier success found for a new task: (task index, source request, source index,
#: the result's row data, whether it is in a file).
_Found = tuple[int, int, int, bytes, int]

#: Earlier requests of the same function are read whole, rather than asked key by key,
#: while they computed at most this many times as many tasks as the new request has.
SCAN_FACTOR = 4


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
        so when there is none the index is not asked at all. When those requests
        computed no more than ``SCAN_FACTOR`` times as many tasks as there are keys
        (a script run again), their keys are read in order and matched here, which
        is about 1.7 times as fast as asking the index for each key; a long history
        is asked key by key.
        """
        connection = self._database.connection()
        sources = connection.execute(
            "SELECT id, n_tasks - remembered FROM requests WHERE computation = ? ORDER BY id",
            (function_digest,)).fetchall()
        if not sources:
            return []
        if sum(computed for _id, computed in sources) <= SCAN_FACTOR * len(keys):
            rows = self._read_sources(connection, [request_id for request_id, _n in sources],
                                      keys)
        else:
            rows = self._ask_index(connection, keys)
        newest: dict[int, EarlierResult] = {}
        stored = self._payloads.stored
        for index, source_request, source_index, data, in_file in rows:  # oldest first
            newest[index] = EarlierResult(
                index, source_request, source_index,
                stored("results", source_request, source_index, data, in_file))
        return list(newest.values())

    @staticmethod
    def _read_sources(connection: sqlite3.Connection, sources: Sequence[int],
                      keys: Sequence[bytes]) -> Iterator[_Found]:
        """The successes of requests ``sources`` whose keys are among ``keys``."""
        wanted = {key: index for index, key in enumerate(keys, 1)}
        alike: dict[bytes, list[int]] = {}  # the other tasks of a key that several have
        if len(wanted) < len(keys):
            for index, key in enumerate(keys, 1):
                if wanted[key] != index:
                    alike.setdefault(key, []).append(index)
        for source in sources:
            for source_index, digest, data, in_file in connection.execute(
                    "SELECT s.idx, s.digest, r.data, r.in_file FROM computations s "
                    "JOIN tasks t ON t.request_id = s.request_id AND t.idx = s.idx "
                    "JOIN results r ON r.request_id = s.request_id AND r.idx = s.idx "
                    f"WHERE s.request_id = ? AND t.state = '{DONE}'", (source,)):
                task = wanted.get(digest)
                if task is not None:
                    yield task, source, source_index, data, in_file
                    for other in alike.get(digest, ()):
                        yield other, source, source_index, data, in_file

    @staticmethod
    def _ask_index(connection: sqlite3.Connection, keys: Sequence[bytes]) -> Iterator[_Found]:
        """The successes with one of ``keys``, found through the index, oldest first."""
        # The keys' index entries travel as one JSON array, which SQLite reads in one
        # go (a temporary table of them took as long again as the lookup itself).
        rows = connection.execute(
            "SELECT w.key + 1, s.digest, s.request_id, s.idx, r.data, r.in_file "
            "FROM json_each(?) w JOIN computations s ON s.key = w.value "
            "JOIN tasks t ON t.request_id = s.request_id AND t.idx = s.idx "
            "JOIN results r ON r.request_id = s.request_id AND r.idx = s.idx "
            f"WHERE t.state = '{DONE}' ORDER BY w.key, s.request_id",
            (json.dumps([_index_key(key) for key in keys]),))
        for index, digest, source_request, source_index, data, in_file in rows:
            if digest == keys[index - 1]:  # not only the first 64 bits alike
                yield index, source_request, source_index, data, in_file

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

        They are copied in runs of tasks whose sources follow each other in one
        request (a script run again is one run): SQLite copies a run in one
        statement, several times faster than rows sent one by one; their bytes count
        towards the request's size (``housekeeping.add_bytes``). A source
        removed meanwhile (``sheepdog rm`` in another process, which removes
        whole requests) gives nothing, and its task is computed.
        """
        if not chosen:
            return set()
        sources = sorted({found.source_request for found in chosen})
        still_there = {row[0] for row in db.execute(
            "SELECT id FROM requests WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(sources),))}
        kept = sorted((found for found in chosen if found.source_request in still_there),
                      key=lambda found: found.task)
        db.executemany(
            "INSERT INTO results (request_id, idx, data, in_file) "
            "SELECT ?, idx + ?, data, in_file FROM results "
            "WHERE request_id = ? AND idx BETWEEN ? AND ?",
            ((request_id, first.task - first.source_index, first.source_request,
              first.source_index, last.source_index) for first, last in _runs(kept)))
        in_rows = [found.result for found in kept if not isinstance(found.result, PayloadFile)]
        add_bytes(db, request_id, sum(map(len, in_rows)))  # read with their sources already
        linked.extend(self._link_file(request_id, found) for found in kept
                      if isinstance(found.result, PayloadFile))
        return {found.task for found in kept}

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


def _runs(chosen: Sequence[EarlierResult]) -> Iterator[tuple[EarlierResult, EarlierResult]]:
    """(first, last) of each run of ``chosen`` (ordered by task) whose tasks and sources
    both follow each other, in one source request."""
    if not chosen:
        return
    first = last = chosen[0]
    for found in itertools.islice(chosen, 1, None):
        if (found.source_request, found.task, found.source_index) != (
                last.source_request, last.task + 1, last.source_index + 1):
            yield first, last
            first = found
        last = found
    yield first, last
