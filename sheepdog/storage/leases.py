"""Workers and the tasks they hold: pulls, leases, heartbeats, and how workers end.

A request's jobs are numbered (their *launch*), and array task ``t`` of launch
``L`` is the worker ``L.t``. A row for each worker is written before its job is
submitted, so that a worker is known from its first pull, and a worker that
has not ended is alive or about to start: while one is, no new job is needed.

A worker *pulls* tasks: :meth:`Leases.pull` hands it the lowest pending ones,
which then run under its lease until they report. Pulls are numbered; a pull
repeated (its answer was lost on the way) gets the same tasks again rather
than more. A worker never gets more than a fair share of what is pending
(:func:`fair_share`), so the last tasks are spread over the workers instead
of queueing behind one of them. A pull that finds nothing left ends the
worker: it exits. Heartbeats renew the lease; a worker that falls silent, or
that the scheduler says has ended, loses the tasks it held (see ``states``),
and those may go back in the queue for the workers still alive.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, NamedTuple, Optional, Union

from . import states
from .connection import Database


class AskAgain:
    """The answer to a pull that finds nothing pending while another worker holds tasks
    that it may give back: the worker asks again shortly instead of leaving."""


ASK_AGAIN = AskAgain()


class WorkerEnd(NamedTuple):
    """How a worker ended: why, whether the tasks it held may run again, and whether it
    reached the server (it pulled, whether or not it got any task)."""

    reason: str
    retryable: bool
    reached: bool


#: The most bytes of arguments one pull hands out (one task always goes, whatever its
#: size): what the caller's server holds for one answer, and the worker for one batch.
PULL_BYTES = 64 << 20


def _within_bytes(db: sqlite3.Connection, request_id: int, limit: int) -> list[int]:
    """The first ``limit`` pending tasks, or fewer, so that their arguments fit in
    ``PULL_BYTES`` (arguments kept in files count as that much: they go alone)."""
    chosen: list[int] = []
    total = 0
    for index, size in db.execute(
            "SELECT t.idx, CASE WHEN a.in_file THEN ? ELSE length(a.data) END FROM tasks t "
            "JOIN arguments a ON a.request_id = t.request_id AND a.idx = t.idx "
            "WHERE t.request_id = ? AND t.state = 'pending' ORDER BY t.idx LIMIT ?",
            (PULL_BYTES, request_id, limit)).fetchall():
        total += size
        if chosen and total > PULL_BYTES:
            break
        chosen.append(index)
    return chosen


def _end(db: sqlite3.Connection, request_id: int, worker_id: int, reason: str,
         retryable: bool, lost_reason: str, lost_retryable: bool = True) -> list[int]:
    """Inside a transaction: the worker has ended (``retryable``: in a way worth starting
    another for); the tasks it still held are lost with ``lost_reason``."""
    db.execute("UPDATE workers SET ended = ?, end_reason = ?, end_retryable = ? "
               "WHERE id = ? AND ended IS NULL", (time.time(), reason, int(retryable), worker_id))
    return states.apply(db, "lose", request_id, _held(db, request_id, worker_id),
                        where="worker = :worker_id", worker_id=worker_id, reason=lost_reason,
                        retryable=int(lost_retryable))


def _held(db: sqlite3.Connection, request_id: int, worker_id: int) -> list[int]:
    """The open tasks that the worker ``worker_id`` holds, found through its own index.

    Left to itself, SQLite's planner looks for them among all the request's
    tasks (by the primary key): a million rows read for every worker that
    ends. ``unlikely()`` tells it that few tasks match, so it takes the index
    (and a file without that index still works).
    """
    return [index for (index,) in db.execute(
        "SELECT idx FROM tasks WHERE request_id = ? AND unlikely(worker = ?) "
        "AND state IN ('pending', 'running')", (request_id, worker_id))]


def fair_share(pending: int, live_workers: int) -> int:
    """The most tasks one pull may take: half of an even split of what is pending among
    the ``live_workers``.

    Halving as the queue drains (guided self-scheduling) leaves work for the
    workers that finish next, so no worker ends up with a long tail alone.
    """
    return max(1, -(-pending // (2 * max(1, live_workers))))


def _another_holds_more_than_one(db: sqlite3.Connection, request_id: int, worker_id: int
                                 ) -> bool:
    """Whether a worker other than ``worker_id`` holds two running tasks or more (so it
    may give some back).

    Asked by every idle worker's pull at the end of a request, so it stops at
    the first such worker: it reads the running tasks alone (told by
    ``unlikely()``, the planner would read every task of the request), and finds a later task of the same worker
    through ``tasks_by_worker`` (which ends in the task's index), without
    grouping every running task.
    """
    return db.execute(
        "SELECT 1 FROM tasks a WHERE a.request_id = :request "
        "AND unlikely(a.state = 'running') AND a.worker != :worker AND EXISTS (SELECT 1 "
        "FROM tasks b WHERE b.request_id = :request AND unlikely(b.worker = a.worker) "
        "AND b.idx > a.idx AND b.state = 'running') LIMIT 1",
        {"request": request_id, "worker": worker_id}).fetchone() is not None


def _launch_and_task(worker: str) -> tuple[int, int]:
    launch, _, array_task = worker.partition(".")
    return int(launch), int(array_task)


def _worker_row(db: sqlite3.Connection, request_id: int, worker: str, columns: str
                ) -> Optional[tuple[Any, ...]]:
    """``columns`` of the row of ``worker`` (``"L.T"``), or None when the request has none."""
    launch, array_task = _launch_and_task(worker)
    return db.execute(f"SELECT {columns} FROM workers WHERE request_id = ? AND launch = ? "
                      "AND array_task = ?", (request_id, launch, array_task)).fetchone()


class Leases:
    """The workers of each request and the tasks they hold."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def add_workers(self, request_id: int, n_workers: int) -> int:
        """Record the workers of the request's next job, before it is submitted; its launch."""
        with self._database.write() as db:
            launch = db.execute("SELECT coalesce(max(launch), 0) + 1 FROM workers "
                                "WHERE request_id = ?", (request_id,)).fetchone()[0]
            db.executemany(
                "INSERT INTO workers (request_id, launch, array_task) VALUES (?, ?, ?)",
                ((request_id, launch, task) for task in range(1, n_workers + 1)))
        return launch

    def end_launch(self, request_id: int, launch: int, reason: str) -> None:
        """The launch's job was never submitted: none of its workers will run."""
        with self._database.write() as db:
            db.execute("UPDATE workers SET ended = ?, end_reason = ?, end_retryable = 0 "
                       "WHERE request_id = ? AND launch = ? AND ended IS NULL",
                       (time.time(), reason, request_id, launch))

    def pull(self, request_id: int, worker: str, seq: int, size: int, least: int = 1,
             stay: bool = False) -> Union[list[int], AskAgain, None]:
        """The tasks that pull number ``seq`` of ``worker`` gets: at most ``size``, and no
        fewer than ``least`` (the worker's tasks worth a pull) for the sake of the fair share.

        None for a worker the request does not have. An empty list tells the
        worker that nothing is left for it, and ends it; :data:`ASK_AGAIN`, that
        nothing is pending now but another worker holds tasks it may give back,
        or, with ``stay`` (a worker of a warm pool), that nothing is pending now.
        """
        with self._database.write() as db:
            row = _worker_row(db, request_id, worker, "id, pulls, ended")
            if row is None:
                return None
            worker_id, pulls, ended = row
            left_held: list[int] = []
            if ended is not None or seq not in (pulls, pulls + 1):
                return []
            if seq == pulls:  # asked again: its answer was lost
                return [index for (index,) in db.execute(
                    "SELECT idx FROM tasks WHERE request_id = ? AND worker = ? AND batch = ? "
                    "AND state = 'running' ORDER BY idx", (request_id, worker_id, seq))]
            share = fair_share(self._pending(db, request_id), self._live_count(db, request_id))
            limit = min(size, max(least, share))
            indices = sorted(states.apply(db, "assign", request_id,
                                          _within_bytes(db, request_id, limit),
                                          worker=worker_id, batch=seq))
            if indices:
                db.execute("UPDATE workers SET pulls = ?, heartbeat = ? WHERE id = ?",
                           (seq, time.time(), worker_id))
            elif stay or _another_holds_more_than_one(db, request_id, worker_id):
                db.execute("UPDATE workers SET heartbeat = ? WHERE id = ?",
                           (time.time(), worker_id))
                return ASK_AGAIN
            else:  # it leaves; it should hold nothing, but nothing may wait on it
                db.execute("UPDATE workers SET pulls = ? WHERE id = ?", (seq, worker_id))
                left_held = _end(db, request_id, worker_id, "it ran out of tasks", True,
                                 "its worker left without reporting it")
        if indices or left_held:
            self._database.changed()
        return indices

    def hand_over(self, request_id: int, worker: str, seq: int, to_request: int
                  ) -> Optional[str]:
        """Worker ``worker`` of ``request_id``, whose pull ``seq`` found nothing it must do
        there, becomes a worker of ``to_request`` (a request of its warm pool); its name
        there, or None when it cannot move (unknown, ended, ``seq`` not a new pull, or its
        job not yet recorded).

        It keeps its job and array task: in ``to_request`` it is array task ``T`` of a
        launch recorded with the same job id (one launch per job that ever served the
        request, with ``n_workers`` 0: no array task was started for it), so that the
        watcher of ``to_request`` asks the scheduler about the right job. It starts
        there with pull 1; in ``request_id`` it ends, handing back nothing (it holds
        nothing between pulls).
        """
        with self._database.write() as db:
            row = _worker_row(db, request_id, worker, "id, pulls, ended")
            # A repeated pull (its answer was lost) must get its tasks again: not moved.
            if row is None or row[2] is not None or seq != row[1] + 1:
                return None
            launch, array_task = _launch_and_task(worker)
            job = db.execute("SELECT job_id FROM jobs WHERE request_id = ? AND launch = ?",
                             (request_id, launch)).fetchone()
            if job is None:
                return None
            new_launch = db.execute(
                "SELECT coalesce(max(launch), 0) + 1 FROM workers WHERE request_id = ?",
                (to_request,)).fetchone()[0]
            db.execute("INSERT INTO jobs (request_id, job_id, submitted, launch, n_workers) "
                       "VALUES (?, ?, ?, ?, 0)", (to_request, job[0], time.time(), new_launch))
            db.execute("INSERT INTO workers (request_id, launch, array_task, heartbeat) "
                       "VALUES (?, ?, ?, ?)", (to_request, new_launch, array_task, time.time()))
            _end(db, request_id, row[0], f"it went on to request {to_request} of its pool",
                 True, "its worker left without reporting it")
        self._database.changed()
        return f"{new_launch}.{array_task}"

    def leave(self, request_id: int, worker: str, reason: str) -> bool:
        """The worker leaves on purpose between pulls (idle too long, or before its
        walltime): it ends, in a way that another worker may replace. True if it was alive."""
        with self._database.write() as db:
            row = _worker_row(db, request_id, worker, "id, ended")
            if row is None or row[1] is not None:
                return False
            _end(db, request_id, row[0], reason, True, "its worker left without reporting it")
        self._database.changed()
        return True

    def live_worker_count(self, request_ids: list[int]) -> int:
        """Workers of submitted jobs of any of ``request_ids`` that are alive or yet to
        start (a warm pool's workers: see ``caller/pool.py``)."""
        return self._database.connection().execute(
            "SELECT count(*) FROM workers w JOIN jobs j ON j.request_id = w.request_id "
            "AND j.launch = w.launch WHERE w.request_id IN (SELECT value FROM json_each(?)) "
            "AND w.ended IS NULL", (json.dumps(request_ids),)).fetchone()[0]

    def pending_counts(self, request_ids: list[int]) -> dict[int, int]:
        """Pending tasks of each of ``request_ids`` that has some."""
        return dict(self._database.connection().execute(
            "SELECT request_id, n FROM task_counts WHERE state = 'pending' AND n > 0 "
            "AND request_id IN (SELECT value FROM json_each(?))", (json.dumps(request_ids),)))

    def live_counts(self, request_ids: list[int]) -> dict[int, int]:
        """Live workers (alive or yet to start) of each of ``request_ids`` that has some."""
        return dict(self._database.connection().execute(
            "SELECT request_id, count(*) FROM workers WHERE ended IS NULL "
            "AND request_id IN (SELECT value FROM json_each(?)) GROUP BY request_id",
            (json.dumps(request_ids),)))

    def finished_count(self, request_ids: list[int]) -> int:
        """Tasks of ``request_ids`` that are done or failed: a pool's throughput, read twice."""
        return self._database.connection().execute(
            "SELECT coalesce(sum(n), 0) FROM task_counts WHERE state IN ('done', 'failed') "
            "AND request_id IN (SELECT value FROM json_each(?))",
            (json.dumps(request_ids),)).fetchone()[0]

    @staticmethod
    def _pending(db: sqlite3.Connection, request_id: int) -> int:
        row = db.execute("SELECT n FROM task_counts WHERE request_id = ? AND state = 'pending'",
                         (request_id,)).fetchone()
        return row[0] if row else 0

    @staticmethod
    def _live_count(db: sqlite3.Connection, request_id: int) -> int:
        """Workers that have not ended, including those the scheduler has yet to start:
        the queue is shared with them too."""
        return db.execute("SELECT count(*) FROM workers WHERE request_id = ? AND ended IS NULL",
                          (request_id,)).fetchone()[0]

    def lose_held(self, request_id: int, worker: str, batch: int, index: int,
                  reason: str) -> bool:
        """Task ``index`` of pull ``batch`` crashed while ``worker`` held it: lost, retryable
        unless the scheduler warned the worker; True if it was still held."""
        return bool(self._apply_held("lose", request_id, worker, batch, [index], reason=reason))

    def release(self, request_id: int, worker: str, batch: int, indices: list[int]
                ) -> list[int]:
        """Tasks of pull ``batch`` that ``worker`` holds and gives back unstarted go back in
        the queue; those that did."""
        return self._apply_held("release", request_id, worker, batch, indices)

    def _apply_held(self, event: str, request_id: int, worker: str, batch: int,
                    indices: list[int], **parameters: Any) -> list[int]:
        """``event`` for those of ``indices`` that ``worker`` still holds from pull ``batch``
        (a late or replayed report never touches a task that another worker, or this one
        in a later pull, now runs); those that moved."""
        with self._database.write() as db:
            row = _worker_row(db, request_id, worker, "id")
            moved = [] if row is None else states.apply(
                db, event, request_id, indices, where="worker = :worker_id AND batch = :batch",
                worker_id=row[0], batch=batch, **parameters)
        if moved:
            self._database.changed()
        return sorted(moved)

    def _worker_update(self, request_id: int, worker: str, assignment: str) -> bool:
        launch, array_task = _launch_and_task(worker)
        with self._database.write() as db:
            cursor = db.execute(
                f"UPDATE workers SET {assignment} = ? WHERE request_id = ? AND launch = ? "
                "AND array_task = ?", (time.time(), request_id, launch, array_task))
        return cursor.rowcount == 1

    def worker_heartbeat(self, request_id: int, worker: str) -> bool:
        """The worker is alive: its lease goes on. False for an unknown worker."""
        return self._worker_update(request_id, worker, "heartbeat")

    def worker_kill_notice(self, request_id: int, worker: str) -> bool:
        """The scheduler warned the worker it will kill it: its tasks are not to be retried."""
        return self._worker_update(request_id, worker, "kill_notice")

    def live_workers(self, request_id: int) -> list[tuple[str, int, int]]:
        """(job id, launch, array task) of the submitted workers that have not ended."""
        return list(self._database.connection().execute(
            "SELECT j.job_id, w.launch, w.array_task FROM workers w JOIN jobs j "
            "ON j.request_id = w.request_id AND j.launch = w.launch "
            "WHERE w.request_id = ? AND w.ended IS NULL ORDER BY w.launch, w.array_task",
            (request_id,)))

    def any_worker_alive(self, request_id: int) -> bool:
        """Whether a worker of a submitted job of the request is alive or yet to start.

        Workers whose job was never recorded (the process that submitted it
        died in between) do not count: no one would ever learn how they ended.
        """
        row = self._database.connection().execute(
            "SELECT 1 FROM workers w JOIN jobs j ON j.request_id = w.request_id "
            "AND j.launch = w.launch WHERE w.request_id = ? AND w.ended IS NULL LIMIT 1",
            (request_id,)).fetchone()
        return row is not None

    def newest_launch_ends(self, request_id: int) -> list[WorkerEnd]:
        """How the workers of the request's newest job ended (those that did)."""
        rows = self._database.connection().execute(
            "SELECT end_reason, end_retryable, pulls FROM workers WHERE request_id = ? AND "
            "launch = (SELECT max(launch) FROM workers WHERE request_id = ?) "
            "AND ended IS NOT NULL ORDER BY array_task", (request_id, request_id))
        return [WorkerEnd(reason or "", bool(retryable), pulls > 0)
                for reason, retryable, pulls in rows]

    def end_worker(self, request_id: int, worker: str, reason: str, retryable: bool,
                   warned: str = "") -> list[int]:
        """The scheduler says the worker ended: the tasks it held are lost with ``reason``.

        If the scheduler had warned the worker that it would kill it, it was
        removed on purpose: ``warned`` is added to the reason, and the tasks
        are not retried, whatever ``retryable`` says. Returns the tasks lost.
        """
        with self._database.write() as db:
            row = _worker_row(db, request_id, worker, "id, kill_notice")
            if row is None:
                return []
            worker_id, kill_notice = row
            if kill_notice is not None:
                reason += warned
            lost = _end(db, request_id, worker_id, reason, retryable and kill_notice is None,
                        reason, retryable)
        if lost:
            self._database.changed()
        return sorted(lost)

    def lose_silent(self, request_id: int, silent_since: float, reason: str) -> list[int]:
        """Workers with no heartbeat since ``silent_since`` end; the tasks they held are lost.

        Tasks that ran before workers pulled (schema 3 and before) are judged
        by their own last heartbeat.
        """
        with self._database.write() as db:
            silent = [worker_id for (worker_id,) in db.execute(
                "SELECT id FROM workers WHERE request_id = ? AND ended IS NULL AND pulls > 0 "
                "AND heartbeat < ?", (request_id, silent_since))]
            db.executemany("UPDATE workers SET ended = ?, end_reason = ?, end_retryable = 1 "
                           "WHERE id = ?", ((time.time(), reason, i) for i in silent))
            lost = [index for worker_id in silent for index in states.apply(
                db, "lose", request_id, _held(db, request_id, worker_id),
                where="worker = :worker_id", worker_id=worker_id, reason=reason, retryable=1)]
            unleased = [index for (index,) in db.execute(
                "SELECT idx FROM tasks WHERE request_id = ? AND unlikely(state = 'running') "
                "AND worker IS NULL AND heartbeat < ?",
                (request_id, silent_since))]
            lost += states.apply(db, "lose", request_id, unleased, where="worker IS NULL",
                                 reason=reason, retryable=1)
        if lost:
            self._database.changed()
        return sorted(lost)
