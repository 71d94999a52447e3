"""Reads that sum up requests and tasks for people and for followers.

The dashboard's page and ``sheepdog list`` (how far each request has come,
each task's state and times, durations, throughput, failures) and the
executor's follower (which tasks moved on since it last looked). Nothing
here writes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .connection import Database
from .outputs import read_outputs
from .payloads import PayloadFile
from .requests import Requests
from .states import DONE, FAILED, PENDING, UNSUCCESSFUL, UNSUCCESSFUL_SQL, may_run_again


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
    """A request as the dashboard lists it: ``counts`` maps a state to its number of tasks."""

    request_id: int
    created: float
    backend: str
    n_tasks: int
    counts: dict[str, int]


class TaskSummary(NamedTuple):
    """One task as the dashboard shows it; ``started`` is None before a worker took it."""

    task: int
    state: str
    attempts: int
    started: Optional[float]
    updated: Optional[float]


class Summaries:
    """Reads over one database that sum up its requests and tasks."""

    def __init__(self, database: Database, requests: Requests) -> None:
        self._database = database
        self._requests = requests

    def request_summaries(self) -> list[RequestSummary]:
        """Every request with its task counts by state, oldest first: two small reads."""
        connection = self._database.connection()
        counts: dict[int, dict[str, int]] = {}
        for request_id, state, n in connection.execute(
                "SELECT request_id, state, n FROM task_counts WHERE n > 0"):
            counts.setdefault(request_id, {})[state] = n
        rows = connection.execute(
            "SELECT id, created, backend, n_tasks FROM requests ORDER BY id").fetchall()
        return [RequestSummary(request_id, created, backend, n_tasks, counts.get(request_id, {}))
                for request_id, created, backend, n_tasks in rows]

    def dashboard_tasks(self, request_id: int, offset: int = 0, limit: int = 1000
                        ) -> list[TaskSummary]:
        """A page of the request's tasks in argument order: state, attempts and times."""
        self._requests.n_tasks(request_id)
        rows = self._database.connection().execute(
            "SELECT t.idx, t.state, t.attempts, t.started, t.updated "
            "FROM tasks t WHERE t.request_id = ? ORDER BY t.idx LIMIT ? OFFSET ?",
            (request_id, limit, offset))
        return [TaskSummary(*row) for row in rows]

    def dashboard_durations(self, request_id: int) -> list[float]:
        """Seconds from start to report of every task that reported (done or failed)."""
        rows = self._database.connection().execute(
            "SELECT t.updated - t.started AS seconds FROM tasks t "
            "WHERE t.request_id = ? AND t.state IN (?, ?) AND seconds IS NOT NULL",
            (request_id, DONE, FAILED))
        return [row[0] for row in rows]

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

    def dashboard_last_finish(self, request_id: int) -> Optional[float]:
        """When the request's last finished task finished, if any has."""
        row = self._database.connection().execute(
            "SELECT max(t.updated) FROM tasks t WHERE t.request_id = ? AND t.state IN (?, ?, ?, ?)",
            (request_id, DONE, *UNSUCCESSFUL)).fetchone()
        return row[0]

    def dashboard_failures(self, request_id: int, limit: int) -> list[TaskLog]:
        """The first ``limit`` failed, lost or cancelled tasks, with their error and output."""
        self._requests.n_tasks(request_id)
        rows = self._database.connection().execute(
            f"SELECT t.idx, t.state, t.error FROM tasks t WHERE t.request_id = ? AND "
            f"{UNSUCCESSFUL_SQL} ORDER BY t.idx LIMIT ?",
            (request_id, *UNSUCCESSFUL, limit)).fetchall()
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
