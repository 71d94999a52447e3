"""Remembered computations: each task's key, and the earlier successes a new task may reuse.

A request made with the ``cache`` config key keeps its function's digest,
and the key of each task it computes (``caller/fingerprint.py`` makes them)
in ``computation_keys``. Only a task
that is ``done`` has a result to reuse: failed, lost and cancelled tasks are
never found, so they are computed again. Of several successes with one key,
the newest request's wins (``cache: "refresh"`` computes again and so becomes
the newest).

A request's keys are kept in buckets of records (``key_buckets.py``). A
lookup reads the buckets of its keys in the requests of the same function,
and matches whole keys here.

Reusing is two steps, so that the caller can check that a result loads in
its process (:meth:`Memo.earlier_results`) before anything is written: then
the new request is created with them, in one transaction
(``requests.py``): :meth:`Memo.copy_earlier` copies the chosen results and
their arguments, their tasks are created done (never pending, so no worker
can take one), and :meth:`Memo.store_keys` counts them on the request and
keeps the keys of the tasks left to compute. A result kept in a file is
linked (or copied) into the new request's directory, so that removing the
older request keeps it.
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
from .key_buckets import RECORD, bucket_of, store_buckets
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

        Only the rows of ``keys``' buckets that requests of the same function
        (``function_digest``) have are read. The results of a source are read
        whole when it gives more than a few of them, as one ordered pass is
        several times as fast as as many lookups (a script run again finds all
        of them).
        """
        connection = self._database.connection()
        if connection.execute("SELECT 1 FROM computation_keys WHERE computation = ? LIMIT 1",
                              (function_digest,)).fetchone() is None:
            return []  # a new function: its keys' buckets are not asked one by one
        wanted = dict(zip(keys, range(1, len(keys) + 1)))  # the last task of each key
        found: dict[int, dict[int, int]] = {}  # source -> its index -> the new task
        for source, records in connection.execute(
                "SELECT request_id, records FROM computation_keys WHERE computation = ? "
                "AND bucket IN (SELECT value FROM json_each(?))",
                (function_digest, json.dumps(sorted({bucket_of(key) for key in wanted})))):
            for key, source_index in RECORD.iter_unpack(records):
                task = wanted.get(key)
                if task is not None:
                    found.setdefault(source, {})[source_index] = task
        if not found:
            return []
        sizes = dict(connection.execute(
            "SELECT id, n_tasks FROM requests WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(found)),)))
        newest: dict[int, EarlierResult] = {}
        stored = self._payloads.stored
        for source in sorted(found):  # oldest first: a newer success replaces an older one
            of_source = found[source]
            for source_index, data, in_file in self._successes(
                    connection, source, of_source, len(of_source) * 4 > sizes.get(source, 0)):
                task = of_source.get(source_index)
                if task is not None:
                    newest[task] = EarlierResult(task, source, source_index,
                                                 stored("results", source, source_index, data,
                                                        in_file))
        if len(wanted) < len(keys):  # a key that several tasks have: each gets its result
            for index, key in enumerate(keys, 1):
                last = newest.get(wanted[key])
                if last is not None and index != last.task:
                    newest[index] = last._replace(task=index)
        return [newest[task] for task in sorted(newest)]

    @staticmethod
    def _successes(connection: sqlite3.Connection, source: int, indices: Collection[int],
                   read_whole: bool) -> Iterator[tuple[int, bytes, int]]:
        """(index, data, in_file) of the results of request ``source``'s done tasks:
        those of ``indices``, and with ``read_whole`` others too."""
        if read_whole:
            return connection.execute(
                "SELECT t.idx, r.data, r.in_file FROM tasks t JOIN results r "
                "ON r.request_id = t.request_id AND r.idx = t.idx "
                f"WHERE t.request_id = ? AND t.state = '{DONE}'", (source,))
        # CROSS JOIN keeps SQLite's order, the indices first: left to itself, the
        # planner reads the source's done tasks and scans the indices for each one.
        return connection.execute(
            "SELECT r.idx, r.data, r.in_file FROM json_each(?) j "
            "CROSS JOIN tasks t ON t.request_id = ? AND t.idx = j.value "
            "CROSS JOIN results r ON r.request_id = t.request_id AND r.idx = t.idx "
            f"WHERE t.state = '{DONE}'", (json.dumps(sorted(indices)), source))

    def store_keys(self, db: sqlite3.Connection, request_id: int, computation: Computation,
                   reused: Collection[int]) -> None:
        """Inside the new request's transaction: its function's digest, how many of its
        tasks were given a result (``reused``), and the keys of the others, to compute."""
        db.execute("UPDATE requests SET computation = ?, remembered = ? WHERE id = ?",
                   (computation.function_digest, len(reused), request_id))
        store_buckets(db, computation.function_digest, request_id,
                      ((index, key) for index, key in enumerate(computation.keys, 1)
                       if index not in reused))

    def copy_earlier(self, db: sqlite3.Connection, request_id: int,
                     chosen: Sequence[EarlierResult], linked: list[str]) -> set[int]:
        """Inside the new request's transaction: the chosen results copied to its tasks
        (files linked, their paths put in ``linked``), with their arguments; the indices
        given one.

        They are copied in runs of tasks whose sources follow each other in one
        request (a script run again is one run): SQLite copies a run in one
        statement, several times faster than rows sent one by one; the results'
        bytes count towards the request's size (``housekeeping.add_bytes``). A
        task's argument is its source's (their keys, digests of the function and
        the argument's bytes, are equal), so it is copied too, unless the source
        keeps it in a file: the caller stores those, and the arguments of the
        tasks given nothing, as it would have. A source removed meanwhile
        (``sheepdog rm`` in another process, which removes whole requests) gives
        nothing, and its task is computed; so does one whose id the new request
        took (SQLite gives the next id after the largest there is).
        """
        if not chosen:
            return set()
        sources = sorted({found.source_request for found in chosen})
        still_there = {row[0] for row in db.execute(
            "SELECT id FROM requests WHERE id IN (SELECT value FROM json_each(?)) AND id != ?",
            (json.dumps(sources), request_id))}
        kept = sorted((found for found in chosen if found.source_request in still_there),
                      key=lambda found: found.task)
        runs = [(request_id, first.task - first.source_index, first.source_request,
                 first.source_index, last.source_index) for first, last in _runs(kept)]
        db.executemany("INSERT INTO results (request_id, idx, data, in_file) "
                       "SELECT ?, idx + ?, data, in_file FROM results "
                       "WHERE request_id = ? AND idx BETWEEN ? AND ?", runs)
        db.executemany("INSERT INTO arguments (request_id, idx, data, in_file) "
                       "SELECT ?, idx + ?, data, 0 FROM arguments "
                       "WHERE request_id = ? AND idx BETWEEN ? AND ? AND in_file = 0", runs)
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
