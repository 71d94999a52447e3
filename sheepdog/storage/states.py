"""The states of a task and every move between them, as one table, and the one function that applies them.

A task is ``pending`` until a worker pulls it, then ``running`` under that
worker's lease until its own report makes it ``done`` or ``failed``; sheepdog
itself concludes ``lost`` (its worker died or fell silent) and ``cancelled``
(the user cancelled). A lost task, and with ``retry_failed`` a failed one, may
go back to ``pending`` while it has attempts left.

Every change of state is an *event* of :data:`TRANSITIONS`: the states it
applies to, the state it leads to, and the other columns it sets. A task's
own report may replace sheepdog's conclusions (``lost``, ``cancelled``), but
never another report: the first report wins, so a task that reports twice (a
re-run, a retried POST) is counted once. :func:`apply` moves a whole set of
tasks in one statement, and only those in a state the event applies to; it
returns the indices that moved, so callers act on exactly those. (huey and
rq keep their job states the same way: as data, applied in one place.)
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union

PENDING, RUNNING, DONE, FAILED, LOST = "pending", "running", "done", "failed", "lost"
CANCELLED = "cancelled"
STATES = (PENDING, RUNNING, DONE, FAILED, LOST, CANCELLED)
#: States that a task's own report (result or error) may replace.
REPORTABLE = (PENDING, RUNNING, LOST, CANCELLED)
#: States in which a task is still to finish.
OPEN = (PENDING, RUNNING)
#: States of tasks that finished without a result, and the SQL that picks them from ``t``.
UNSUCCESSFUL = (FAILED, LOST, CANCELLED)
UNSUCCESSFUL_SQL = "t.state IN (?, ?, ?)"
#: The same among the tasks of one request, ``(request id, request id, *UNSUCCESSFUL)``:
#: asked the former, SQLite's planner reads every task of the request (by the primary
#: key, in order); this finds the few through the index by state.
UNSUCCESSFUL_OF_REQUEST_SQL = ("t.request_id = ? AND t.idx IN (SELECT idx FROM tasks "
                               "WHERE request_id = ? AND state IN (?, ?, ?))")


@dataclass(frozen=True)
class Transition:
    """One event: from which states, to which state, and what else it sets.

    ``sets`` are (column, SQL expression) pairs. An expression may use the
    named parameters given to :func:`apply`, and ``{detail}``: the value given
    for each task (its error text) where the tasks are given with one.
    """

    sources: tuple[str, ...]
    target: str
    sets: tuple[tuple[str, str], ...] = ()


#: Whether a lost task may run again: as the caller says, but never when the
#: scheduler warned its worker first (it was removed on purpose).
_RETRYABLE_UNLESS_WARNED = (
    "CASE WHEN (SELECT w.kill_notice FROM workers w WHERE w.id = tasks.worker) IS NOT NULL "
    "OR tasks.kill_notice IS NOT NULL THEN 0 ELSE coalesce(:retryable, 1) END"
)

TRANSITIONS: Mapping[str, Transition] = {
    # A worker pulled the task: it runs under that worker's lease.
    "assign": Transition((PENDING,), RUNNING, (
        ("worker", ":worker"), ("batch", ":batch"), ("started", ":now"))),
    # The task's own report.
    "finish": Transition(REPORTABLE, DONE, (("error", "NULL"), ("retryable", "0"))),
    "fail": Transition(REPORTABLE, FAILED, (("error", "{detail}"), ("retryable", "0"))),
    # sheepdog's conclusions.
    "lose": Transition(OPEN, LOST, (
        ("error", "coalesce({detail}, :reason)"), ("retryable", _RETRYABLE_UNLESS_WARNED))),
    "cancel": Transition(OPEN, CANCELLED, (("error", ":reason"),)),
    # Its worker gives it back unstarted (it was stuck in a long task): back in the queue.
    "release": Transition((RUNNING,), PENDING, (
        ("worker", "NULL"), ("batch", "NULL"), ("started", "NULL"), ("began", "NULL"))),
    # Another attempt: back in the queue, with no lease and no error.
    "requeue": Transition((LOST, FAILED), PENDING, (
        ("error", "NULL"), ("worker", "NULL"), ("batch", "NULL"), ("started", "NULL"),
        ("began", "NULL"), ("seconds", "NULL"), ("heartbeat", "NULL"), ("kill_notice", "NULL"),
        ("attempts", "attempts + 1"))),
    # A result that arrived but cannot be loaded by the caller.
    "unloadable": Transition((DONE,), FAILED, (("error", ":reason"),)),
}

def may_run_again(failed_too: bool) -> str:
    """SQL: a task that the ``requeue`` event may put back in the queue (attempts allowing):
    a retryable lost one, and with ``failed_too`` a failed one."""
    return "(state = 'lost' AND retryable = 1" + (" OR state = 'failed')" if failed_too else ")")


#: Tasks given by index, or by index with a detail (an error text) each.
Tasks = Union[Iterable[int], Mapping[int, str]]


def apply(db: sqlite3.Connection, event: str, request_id: int, tasks: Optional[Tasks] = None,
          where: str = "1", **parameters: Any) -> list[int]:
    """Move the chosen tasks of a request that are in a state ``event`` applies to.

    Chooses ``tasks`` (indices, or index -> detail), or else the tasks that
    match ``where`` (an SQL condition on ``tasks``, with named parameters).
    Runs in the caller's transaction; returns the indices that moved, in no
    particular order.
    """
    transition = TRANSITIONS[event]
    values = {"now": time.time(), "request_id": request_id, "retryable": None, **parameters}
    detail = "NULL"
    if tasks is not None:
        entries = list(tasks.items() if isinstance(tasks, Mapping)
                       else ((index, None) for index in tasks))
        if not entries:
            return []
        if len(entries) == 1:  # the most frequent case (one report), in one statement
            values["chosen_index"], values["chosen_detail"] = entries[0]
            where = f"({where}) AND idx = :chosen_index"
            detail = ":chosen_detail"
        elif not isinstance(tasks, Mapping):  # a batch without details: a JSON list is
            values["chosen"] = json.dumps([index for index, _ in entries])  # the quickest
            where = f"({where}) AND idx IN (SELECT value FROM json_each(:chosen))"
        else:
            _choose(db, entries)
            where = f"({where}) AND idx IN (SELECT idx FROM temp.chosen)"
            detail = "(SELECT detail FROM temp.chosen WHERE chosen.idx = tasks.idx)"
    sets = "".join(f", {column} = {expression.format(detail=detail)}"
                   for column, expression in transition.sets)
    sources = ", ".join(f"'{state}'" for state in transition.sources)
    # "+state" keeps SQLite from scanning the request's tasks by state when it can
    # look the chosen ones up by their key.
    state = "+state" if tasks is not None else "state"
    sql = (f"UPDATE tasks SET state = '{transition.target}', updated = :now{sets} "
           f"WHERE request_id = :request_id AND {state} IN ({sources}) AND ({where}) "
           "RETURNING idx")
    return [row[0] for row in db.execute(sql, values)]


def _choose(db: sqlite3.Connection, entries: Iterable[tuple[int, Optional[str]]]) -> None:
    """Put (index, detail) pairs in this connection's ``temp.chosen`` table, for one statement."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS chosen (idx INTEGER PRIMARY KEY, detail TEXT)")
    db.execute("DELETE FROM temp.chosen")
    db.executemany("INSERT OR IGNORE INTO temp.chosen VALUES (?, ?)", entries)
