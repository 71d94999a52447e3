"""Tasks: their arguments, the outcomes they report or sheepdog concludes, and what they left.

Every change of a task's state goes through :func:`states.apply` (a task's
own report wins over sheepdog's conclusions, and the first report over any
later one); this module chooses the tasks and stores what comes with a
report. A large result is written to a staging file first, outside the
transaction, and moved beside the database (see ``payloads.py``) only when
its report is accepted. The reads return the stored arguments, results and
error texts, each with the output its task left (see ``outputs.py``), and
the exception a failed task raised, as its worker pickled it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

from . import states
from .connection import Database
from .housekeeping import add_bytes
from .outputs import read_outputs, store_outputs, with_output
from .payloads import PayloadFile
from .requests import Requests, may_name_a_row
from .states import (DONE, FAILED, PENDING, RUNNING, UNSUCCESSFUL, UNSUCCESSFUL_OF_REQUEST_SQL,
                     UNSUCCESSFUL_SQL)
from .summaries import TaskLog
from ..wire.protocol import ALONE_BYTES, nbytes


def _store_times(db: sqlite3.Connection, request_id: int, begun: Sequence[int],
                 ran: Sequence[tuple[int, float]]) -> None:
    """Inside a transaction: which running tasks have begun, and how long reported ones ran."""
    if begun:
        db.executemany(f"UPDATE tasks SET began = ? WHERE request_id = ? AND idx = ? "
                       f"AND state = '{RUNNING}' AND began IS NULL",
                       [(time.time(), request_id, index) for index in begun])
    if ran:
        db.executemany(f"UPDATE tasks SET seconds = ? WHERE request_id = ? AND idx = ? "
                       f"AND state IN ('{DONE}', '{FAILED}') AND seconds IS NULL",
                       [(seconds, request_id, index) for index, seconds in ran])


@dataclass(frozen=True)
class Progress:
    """How many of a request's tasks are in each state.

    ``running`` tasks are held by a worker; of these, ``queued`` wait in its
    batch and have not started yet, and the rest (:attr:`executing`) run now.
    """

    total: int
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    cancelled: int = 0
    queued: int = 0
    #: Of the ``done`` tasks, those that reused an earlier result (see ``memo.py``).
    remembered: int = 0

    @property
    def executing(self) -> int:
        return self.running - self.queued

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.lost + self.cancelled

    @property
    def complete(self) -> bool:
        return self.finished >= self.total


class Tasks:
    """The tasks of one database's requests."""

    def __init__(self, database: Database, requests: Requests) -> None:
        self._database = database
        self._payloads = database.payloads
        self._requests = requests

    # -- what a task runs on ---------------------------------------------

    def task_arguments(
        self, request_id: int, indices: Sequence[int]
    ) -> dict[int, bytes | PayloadFile]:
        """The stored arguments of the tasks ``indices`` (unknown ones are left out)."""
        connection = self._database.connection()
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
        return {index: self._payloads.stored("arguments", request_id, index, data, in_file)
                for index, data, in_file in rows}

    def task_exists(self, request_id: int, index: int) -> bool:
        row = self._database.connection().execute(
            "SELECT 1 FROM tasks WHERE request_id = ? AND idx = ?", (request_id, index)
        ).fetchone()
        return row is not None

    # -- outcomes --------------------------------------------------------

    def new_staging_file(self, request_id: int, index: int) -> tuple[int, str]:
        """(descriptor, path) of a new file to receive a task's result into.

        Hand the path to :meth:`record_reports` as a :class:`PayloadFile`; it
        becomes the stored result if the report is accepted and is removed
        otherwise.
        """
        return self._payloads.staging_file(f"results-{request_id}", index)

    def record_reports(self, request_id: int, reports: Sequence[tuple[int, bool, Any]],
                       outputs: Sequence[tuple[int, str, Any]] = (),
                       exceptions: Sequence[tuple[int, Any]] = (),
                       begun: Sequence[int] = (), ran: Sequence[tuple[int, float]] = ()) -> int:
        """Store many (index, failed, payload) reports in one transaction; returns how many.

        A payload is the pickled result (bytes-like, or a :class:`PayloadFile`
        from :meth:`new_staging_file`), or the UTF-8 error text when ``failed``.
        A large result is written to a staging file first, outside the
        transaction, and moved into place only if its report is accepted.

        ``outputs`` are (index, stream, bytes) tails of the tasks' output (a
        stream of :data:`~sheepdog.storage.outputs.STREAMS`), kept by the rule
        of :func:`~sheepdog.storage.outputs.store_outputs`. ``exceptions`` are
        (index, bytes) pickled exceptions of failed reports, kept only with an
        error report that is accepted (see ``wire/failures.py``).

        ``begun`` are tasks that their worker started to run: a running task is
        marked as begun now, the others are left alone. ``ran`` are (index,
        seconds that ``f`` ran on the worker), kept for a task that has
        reported and has no seconds yet.
        """
        staged = {}
        try:
            with self._database.disk_guard(self._payloads.root):
                for index, failed, payload in reports:
                    if isinstance(payload, PayloadFile):
                        staged[index] = payload.path
                    elif not failed and nbytes([payload]) >= ALONE_BYTES:
                        staged[index] = self._payloads.stage(
                            f"results-{request_id}", index, [payload])
            with self._database.write() as db:
                accepted = self._store_reports(db, request_id, reports, staged, exceptions)
                store_outputs(db, request_id, outputs, accepted)
                _store_times(db, request_id, begun, ran)
        finally:
            for path in staged.values():
                if os.path.exists(path):
                    os.remove(path)
        self._database.changed()
        return len(accepted)

    def _store_reports(self, db: sqlite3.Connection, request_id: int,
                       reports: Sequence[tuple[int, bool, Any]], staged: Mapping[int, str],
                       exceptions: Sequence[tuple[int, Any]]) -> set[int]:
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
                os.replace(staged_file, self._payloads.new_path("results", request_id, index))
            rows.append((request_id, index, b"" if staged_file else payload,
                         int(staged_file is not None)))
        db.executemany("INSERT OR REPLACE INTO results (request_id, idx, data, in_file) "
                       "VALUES (?, ?, ?, ?)", rows)
        failed_now = set(failed)
        kept = {index: bytes(data) for index, data in exceptions if index in failed_now}
        db.executemany("INSERT OR REPLACE INTO exceptions (request_id, idx, data) "
                       "VALUES (?, ?, ?)", [(request_id, *row) for row in kept.items()])
        # Nothing was replaced: a task that just finished or failed has no result or
        # exception yet (another attempt starts without them, see :meth:`requeue`).
        add_bytes(db, request_id, sum(nbytes(row[2]) for row in rows)
                  + sum(map(len, kept.values())))
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

    def lose_open(self, request_id: int, reason: str) -> int:
        """Mark every task not yet finished lost, with ``reason``, for good (no retry); how
        many. One transaction, however many tasks."""
        return len(self._apply("lose", request_id, reason=reason, retryable=0))

    def cancel_open(self, request_id: int, reason: str) -> int:
        """Mark every task not yet finished as cancelled; return how many."""
        return len(self._apply("cancel", request_id, reason=reason))

    def cancel_tasks(self, request_id: int, indices: Sequence[int], reason: str) -> list[int]:
        """pending -> cancelled for the tasks ``indices``; the ones that moved.

        A cancelled task is never handed to a worker, so it never runs; a task
        already running is left to finish.
        """
        return self._apply("cancel", request_id, indices, where="tasks.state = 'pending'",
                           reason=reason)

    def requeue(self, request_id: int, max_attempts: int, failed_too: bool) -> list[int]:
        """Put lost (and, if asked, failed) tasks with attempts left back in the queue.

        Returns their indices; the output, the exception and any result they left go
        (a result stays with a task that failed because it could not be loaded).
        """
        with self._database.write() as db:
            again = states.apply(
                db, "requeue", request_id, max_attempts=max_attempts,
                where=f"attempts < :max_attempts AND {states.may_run_again(failed_too)}")
            for table in ("outputs", "exceptions", "results"):
                add_bytes(db, request_id, -sum(row[0] for row in db.execute(
                    f"DELETE FROM {table} WHERE request_id = ? AND idx IN "
                    "(SELECT value FROM json_each(?)) RETURNING length(data)",
                    (request_id, json.dumps(again)))))
        if again:
            self._database.changed()
        return sorted(again)

    def _apply(self, event: str, request_id: int, tasks: Optional[states.Tasks] = None,
               **parameters: Any) -> list[int]:
        """:func:`states.apply` in a transaction of its own; wakes waiters if anything moved."""
        with self._database.write() as db:
            moved = states.apply(db, event, request_id, tasks, **parameters)
        if moved:
            self._database.changed()
        return moved

    # -- reads -----------------------------------------------------------

    def progress(self, request_id: int) -> Progress:
        """How many tasks are in each state: small reads (the tasks executing now are
        counted through an index that holds only them), however many tasks there are."""
        if not may_name_a_row(request_id):
            raise self._requests.unknown(request_id)
        # One statement, so that the total and the counts come from one state of the
        # database. The tasks executing are counted once (an aggregate in FROM is not
        # run again for each row), through an index that holds only them.
        rows = self._database.connection().execute(
            "SELECT r.n_tasks, r.remembered, e.n, c.state, c.n FROM requests r "
            "JOIN (SELECT count(*) AS n FROM tasks INDEXED BY tasks_executing "
            f"WHERE request_id = ?1 AND state = '{RUNNING}' AND began IS NOT NULL) e "
            "LEFT JOIN task_counts c ON c.request_id = r.id AND c.n > 0 WHERE r.id = ?1",
            (request_id,)).fetchall()
        if not rows:
            raise self._requests.unknown(request_id)
        total, remembered, executing = rows[0][:3]
        counts = {state: n for *_request, state, n in rows if state is not None}
        if counts.get(RUNNING):
            counts["queued"] = counts[RUNNING] - executing
        return Progress(total=total, remembered=remembered, **counts)

    def open_indices(self, request_id: int) -> list[int]:
        """Indices of tasks that have not finished (pending or running)."""
        rows = self._database.connection().execute(
            "SELECT idx FROM tasks WHERE request_id = ? AND state IN (?, ?) ORDER BY idx",
            (request_id, PENDING, RUNNING),
        )
        return [row[0] for row in rows]

    def results(
        self, request_id: int, with_arguments: bool = True
    ) -> list[tuple[bytes | PayloadFile | None, str, bytes | PayloadFile | None]]:
        """(arguments, state, result) of every task, in argument order.

        Without ``with_arguments`` the arguments are not read, and are None.
        """
        return list(self.iter_results(request_id, with_arguments))

    def iter_results(
        self, request_id: int, with_arguments: bool = True
    ) -> Iterator[tuple[bytes | PayloadFile | None, str, bytes | PayloadFile | None]]:
        """:meth:`results` one task at a time, read as they are consumed: a million
        results need not be held at once. Nothing may be written through this
        thread's connection until the iterator is exhausted."""
        self._requests.n_tasks(request_id)
        arguments = ("a.data, a.in_file" if with_arguments else "NULL, 0")
        join = ("JOIN arguments a ON a.request_id = t.request_id AND a.idx = t.idx "
                if with_arguments else "")
        rows = self._database.connection().execute(
            f"SELECT t.idx, {arguments}, t.state, r.data, r.in_file FROM tasks t {join}"
            "LEFT JOIN results r ON r.request_id = t.request_id AND r.idx = t.idx "
            "WHERE t.request_id = ? ORDER BY t.idx",
            (request_id,),
        )
        stored = self._payloads.stored
        for index, argument, argument_in_file, state, result, result_in_file in rows:
            yield (None if argument is None else
                   stored("arguments", request_id, index, argument, argument_in_file),
                   state,
                   None if result is None else
                   stored("results", request_id, index, result, result_in_file))

    def errors(self, request_id: int) -> list[tuple[bytes | PayloadFile, str, str]]:
        """(arguments, state, error text) of failed, lost and cancelled tasks, in order.

        The error text ends with the task's output, when any was kept (see
        :func:`~sheepdog.storage.outputs.with_output`).
        """
        self._requests.n_tasks(request_id)
        rows = self._database.connection().execute(
            "SELECT t.idx, a.data, a.in_file, t.state, t.error FROM tasks t "
            "JOIN arguments a ON a.request_id = t.request_id AND a.idx = t.idx "
            f"WHERE {UNSUCCESSFUL_OF_REQUEST_SQL} ORDER BY t.idx",
            (request_id, request_id, *UNSUCCESSFUL),
        ).fetchall()
        kept = (read_outputs(self._database, request_id, UNSUCCESSFUL_SQL, UNSUCCESSFUL)
                if rows else {})
        return [(self._payloads.stored("arguments", request_id, index, data, in_file), state,
                 with_output(error or "", kept.get(index, {})))
                for index, data, in_file, state, error in rows]

    def task_exception(self, request_id: int, index: int) -> Optional[bytes]:
        """The pickled exception that failed task ``index`` raised, if its worker sent one."""
        row = self._database.connection().execute(
            "SELECT data FROM exceptions WHERE request_id = ? AND idx = ?", (request_id, index)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def task_logs(self, request_id: int, index: Optional[int] = None) -> list[TaskLog]:
        """What task ``index`` left behind, or else every failed, lost or cancelled task.

        Raises KeyError for an unknown request or task.
        """
        total = self._requests.n_tasks(request_id)
        if index is not None and not 1 <= index <= total:
            raise KeyError(f"request {request_id} has no task {index}: its tasks are 1 to {total}")
        where, parameters = ((UNSUCCESSFUL_SQL, UNSUCCESSFUL) if index is None
                             else ("t.idx = ?", (index,)))
        rows = self._database.connection().execute(
            f"SELECT t.idx, t.state, t.error FROM tasks t WHERE t.request_id = ? AND {where} "
            "ORDER BY t.idx", (request_id, *parameters)).fetchall()
        kept = read_outputs(self._database, request_id, where, parameters) if rows else {}
        return [TaskLog(idx, state, error, kept.get(idx, {})) for idx, state, error in rows]
