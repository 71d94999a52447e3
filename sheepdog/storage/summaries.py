"""Reads that sum up requests and tasks for people and for followers.

The dashboard's page and ``sheepdog list`` (how far each request has come,
each task's state and times, durations, throughput, failures) and the
executor's follower (which tasks moved on since it last looked). Nothing
here writes.
"""

from __future__ import annotations

import json
from typing import NamedTuple, Optional, Sequence

from .connection import Database
from .outputs import read_outputs
from .payloads import PayloadFile
from .requests import Requests
from ..wire import serialisation
from .states import (DONE, FAILED, PENDING, RUNNING, UNSUCCESSFUL, UNSUCCESSFUL_OF_REQUEST_SQL,
                     UNSUCCESSFUL_SQL, may_run_again)


#: How much of a task's arguments the dashboard and ``sheepdog errors --json`` show.
REPR_CHARS = 200
#: The states of finished tasks.
FINISHED = (DONE, *UNSUCCESSFUL)


class TaskLog(NamedTuple):
    """What one task left behind: its state, its error text, and its output by stream."""

    task: int
    state: str
    error: Optional[str]
    output: dict[str, str]


class TaskChange(NamedTuple):
    """A task as :meth:`Storage.task_changes` found it: its state, when it got
    there, whether it will go back in the queue (``again``), its error text
    and output (failed, lost, cancelled) or its stored result (done)."""

    task: int
    state: str
    updated: float
    again: bool
    error: Optional[str]
    output: dict[str, str]
    result: bytes | PayloadFile | None


class RequestSummary(NamedTuple):
    """A request as the dashboard and ``sheepdog list`` show it: ``counts`` maps a state
    to its number of tasks, and ``executing`` counts the running ones that have begun
    (the rest are queued at their workers). The function is its module and qualified
    name (None for a request stored before sheepdog kept them); ``ended`` is when its
    last task finished, once every task has."""

    request_id: int
    created: float
    backend: str
    n_tasks: int
    counts: dict[str, int]
    function_module: Optional[str] = None
    function_name: Optional[str] = None
    executing: int = 0
    ended: Optional[float] = None
    #: Of the done tasks, those that reused an earlier result (``cache``, see ``memo.py``).
    remembered: int = 0

    @property
    def function(self) -> str:
        """``module.qualname``, as people read it; ``?`` when it was not kept."""
        if not self.function_name:
            return "?"
        return (f"{self.function_module}.{self.function_name}" if self.function_module
                else self.function_name)

    @property
    def complete(self) -> bool:
        return sum(self.counts.get(state, 0) for state in (DONE, *UNSUCCESSFUL)) >= self.n_tasks


class TaskSummary(NamedTuple):
    """One task as the dashboard shows it; ``started`` is None before a worker took it,
    ``began`` before it started to run there, and ``seconds`` (how long ``f`` ran, as
    its worker measured it) before it reported."""

    task: int
    state: str
    attempts: int
    started: Optional[float]
    updated: Optional[float]
    began: Optional[float] = None
    seconds: Optional[float] = None


class Summaries:
    """Reads over one database that sum up its requests and tasks."""

    def __init__(self, database: Database, requests: Requests) -> None:
        self._database = database
        self._requests = requests

    def request_summaries(self, request_id: Optional[int] = None) -> list[RequestSummary]:
        """Every request (or the one ``request_id``) with its task counts by state, oldest
        first, and for each finished request, when its last task finished: small reads.

        That is the latest time a task entered a finished state, which ``task_counts``
        keeps per state: a task that left such a state (another attempt) entered one
        again later, so the latest is its last task's finish."""
        connection = self._database.connection()
        only, chosen = ("request_id = ?", (request_id,)) if request_id is not None else ("1", ())
        counts: dict[int, dict[str, int]] = {}
        finishes: dict[int, float] = {}
        for rid, state, n, last in connection.execute(
                f"SELECT request_id, state, n, last FROM task_counts WHERE n > 0 AND {only}",
                chosen):
            counts.setdefault(rid, {})[state] = n
            if state in FINISHED and last is not None:
                finishes[rid] = max(last, finishes.get(rid, last))
        executing = dict(connection.execute(
            "SELECT request_id, count(*) FROM tasks INDEXED BY tasks_executing "
            f"WHERE state = '{RUNNING}' AND began IS NOT NULL AND {only} GROUP BY request_id",
            chosen).fetchall())
        rows = connection.execute(
            "SELECT id, created, backend, n_tasks, function_module, function_name, remembered "
            f"FROM requests WHERE {only.replace('request_id', 'id')} ORDER BY id",
            chosen).fetchall()
        summaries = [RequestSummary(rid, created, backend, n_tasks, counts.get(rid, {}), module,
                                    name, executing.get(rid, 0), remembered=remembered)
                     for rid, created, backend, n_tasks, module, name, remembered in rows]
        return [summary._replace(ended=finishes.get(summary.request_id))
                if summary.complete and summary.n_tasks else summary for summary in summaries]

    def dashboard_tasks(self, request_id: int, offset: int = 0, limit: int = 1000
                        ) -> list[TaskSummary]:
        """A page of the request's tasks in argument order: state, attempts and times."""
        self._requests.n_tasks(request_id)
        rows = self._database.connection().execute(
            "SELECT t.idx, t.state, t.attempts, t.started, t.updated, t.began, t.seconds "
            "FROM tasks t WHERE t.request_id = ? ORDER BY t.idx LIMIT ? OFFSET ?",
            (request_id, limit, offset))
        return [TaskSummary(*row) for row in rows]

    def dashboard_durations(self, request_id: int) -> list[float]:
        """How long ``f`` ran, as its worker measured it, for every task that reported
        (done or failed); for a task whose worker did not say, from its lease to its report."""
        rows = self._database.connection().execute(
            "SELECT coalesce(t.seconds, t.updated - t.started) AS ran FROM tasks t "
            "WHERE t.request_id = ? AND t.state IN (?, ?) AND ran IS NOT NULL",
            (request_id, DONE, FAILED))
        return [row[0] for row in rows]

    def argument_reprs(self, request_id: int, indices: Sequence[int],
                       limit: int = REPR_CHARS) -> dict[int, str]:
        """index -> the task's arguments as ``f(...)`` saw them, a repr cut to ``limit``
        characters; arguments kept in a file (1 MB or more) are not loaded, only sized."""
        reprs = {}
        for index, payload in self._tasks_arguments(request_id, indices).items():
            if isinstance(payload, PayloadFile):
                reprs[index] = f"(arguments of {len(payload)} bytes, kept in a file)"
                continue
            loaded, value = serialisation.load_or_describe(payload)
            if not loaded:
                reprs[index] = f"(arguments that cannot be loaded here: {value})"
                continue
            args, kwargs = serialisation.call_arguments(value)
            text = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            reprs[index] = text if len(text) <= limit else text[:limit - 1] + "…"
        return reprs

    def _tasks_arguments(self, request_id: int, indices: Sequence[int]
                         ) -> dict[int, bytes | PayloadFile]:
        rows = self._database.connection().execute(
            "SELECT idx, data, in_file FROM arguments WHERE request_id = ? AND idx IN "
            "(SELECT value FROM json_each(?))", (request_id, json.dumps(list(indices))))
        stored = self._database.payloads.stored
        return {index: stored("arguments", request_id, index, data, in_file)
                for index, data, in_file in rows}

    def error_tails(self, request_id: int, limit: int, chars: int = 400) -> list[tuple[int, str]]:
        """(index, the last ``chars`` characters of its error) of the first ``limit``
        failed, lost or cancelled tasks: enough to group them by what they raised."""
        rows = self._database.connection().execute(
            f"SELECT t.idx, substr(coalesce(t.error, ''), -?) FROM tasks t "
            f"WHERE {UNSUCCESSFUL_OF_REQUEST_SQL} ORDER BY t.idx LIMIT ?",
            (chars, request_id, request_id, *UNSUCCESSFUL, limit))
        return [(index, tail) for index, tail in rows]

    def dashboard_finishes(self, request_id: int, since: float, width: float
                           ) -> dict[int, int]:
        """bucket -> how many tasks finished in it; bucket b spans ``since + b * width``
        onwards for ``width`` seconds (a task's finish is its last state change)."""
        rows = self._database.connection().execute(
            "SELECT CAST((t.updated - ?) / ? AS INTEGER) AS bucket, count(*) FROM tasks t "
            "WHERE t.request_id = ? AND t.state IN (?, ?, ?, ?) AND t.updated >= ? "
            "GROUP BY bucket",
            (since, width, request_id, DONE, *UNSUCCESSFUL, since))
        return dict(rows.fetchall())

    def dashboard_failures(self, request_id: int, limit: int) -> list[TaskLog]:
        """The first ``limit`` failed, lost or cancelled tasks, with their error and output."""
        self._requests.n_tasks(request_id)
        rows = self._database.connection().execute(
            f"SELECT t.idx, t.state, t.error FROM tasks t WHERE "
            f"{UNSUCCESSFUL_OF_REQUEST_SQL} ORDER BY t.idx LIMIT ?",
            (request_id, request_id, *UNSUCCESSFUL, limit)).fetchall()
        if not rows:
            return []
        marks = ", ".join("?" for _ in rows)
        outputs = read_outputs(self._database, request_id, f"t.idx IN ({marks})",
                               [row[0] for row in rows])
        return [TaskLog(index, state, error, outputs.get(index, {}))
                for index, state, error in rows]

    def task_changes(self, request_id: int, since: float, max_attempts: int,
                     failed_too: bool) -> list[TaskChange]:
        """Tasks of the request that moved on from pending at ``since`` or later.

        ``since`` is a ``time.time()``, compared with the time of each task's
        last change. A follower keeps the newest time it saw and asks again
        from a little before it, so that no change slips between two looks.
        ``max_attempts`` and ``failed_too`` are those of :meth:`Tasks.requeue`: a
        task that it will put back in the queue is marked ``again``.
        """
        in_time = "t.updated >= ? AND t.state != ?"
        rows = self._database.connection().execute(
            f"SELECT t.idx, t.state, t.updated, t.attempts < ? AND {may_run_again(failed_too)}, "
            "t.error, r.data, r.in_file FROM tasks t "
            "LEFT JOIN results r ON r.request_id = t.request_id AND r.idx = t.idx "
            f"WHERE t.request_id = ? AND {in_time} ORDER BY t.updated, t.idx",
            (max_attempts, request_id, since, PENDING),
        ).fetchall()
        outputs = (read_outputs(self._database, request_id, f"{in_time} AND {UNSUCCESSFUL_SQL}",
                                (since, PENDING, *UNSUCCESSFUL))
                   if any(row[1] in UNSUCCESSFUL for row in rows) else {})
        stored = self._database.payloads.stored
        return [TaskChange(index, state, updated, bool(again), error, outputs.get(index, {}),
                           None if data is None else
                           stored("results", request_id, index, data, in_file))
                for index, state, updated, again, error, data, in_file in rows]
