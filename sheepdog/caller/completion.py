"""Tasks one by one as they finish: the follower the Executor and ``as_completed`` share.

``Request.wait`` waits for a whole request; a future stands for one task, so
something must say, task by task, when one starts and when one has finished
for good. :class:`TaskFollower` does that for one request: each look follows
the request (``Request.follow``: the workers, the scheduler, the retries)
and reads the tasks that changed since the last look (``Storage.task_changes``).
A lost or failed task that will go back in the queue (``retries``) has not
finished for good; it is handed out when its last attempt ends.

:func:`as_completed` follows a stored request from any process and yields
``(index, result)`` as its tasks finish.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .outcomes import FINISHED_STATES, outcome
from ..storage.states import RUNNING
from ..storage.summaries import TaskChange

if TYPE_CHECKING:
    from .request import Request

#: How far before the newest change it saw a follower reads again. Changes are
#: stamped with ``time.time()`` inside their write transaction, so in commit
#: order, unless the clock is set back; this covers small steps of the clock,
#: and a follower reads every task once the request has ended, so a larger
#: step delays a task's future but never loses it.
OVERLAP_SECONDS = 1.0
#: The shortest and the longest sleep between looks while nothing changes.
FIRST_DELAY, LONGEST_DELAY = 0.02, 0.5


class TaskFollower:
    """Hands out each task of one request once when it starts and once when it has finished."""

    def __init__(self, request: "Request") -> None:
        self.request = request
        self._newest = 0.0
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._n_tasks = request.storage.n_tasks(request.id)

    @property
    def complete(self) -> bool:
        """Every task has finished for good and been handed out."""
        return len(self._finished) >= self._n_tasks

    def look(self) -> tuple[list[int], list[TaskChange]]:
        """Follow the request once: (tasks that started, tasks that finished) since the last look.

        Raises what following raises (``CallbackError``, a resubmission the
        scheduler refused).
        """
        request, storage = self.request, self.request.storage
        progress = request.follow()
        # Once the request has ended, read every task: nothing can then be missed.
        since = 0.0 if progress.complete else self._newest - OVERLAP_SECONDS
        config = request.config
        changes = storage.task_changes(request.id, since, config.retries + 1, config.retry_failed)
        if changes:
            self._newest = max(self._newest, max(change.updated for change in changes))
        started = [change.task for change in changes
                   if change.state == RUNNING and change.task not in self._started]
        self._started.update(started)
        finished = [change for change in changes if change.state in FINISHED_STATES
                    and not change.again and change.task not in self._finished]
        self._finished.update(change.task for change in finished)
        return started, finished


def as_completed(request: "Request", timeout: Optional[float] = None,
                 errors: str = "raise") -> Iterator[tuple[int, Any]]:
    """``(index, result)`` for each task of ``request`` as it finishes (see ``api.as_completed``)."""
    if errors not in ("raise", "yield"):
        raise ValueError(f"errors must be 'raise' or 'yield', not {errors!r}")
    storage = request.storage
    deadline = None if timeout is None else time.monotonic() + timeout
    if not request.progress().complete:
        request.ensure_served()
    follower = TaskFollower(request)
    delay = FIRST_DELAY
    while not follower.complete:
        seen = storage.change_count
        _started, finished = follower.look()
        for change in finished:
            value, error = outcome(request, change)
            if error is None:
                yield change.task, value
            elif errors == "yield":
                yield change.task, error
            else:
                raise error
        if follower.complete:
            return
        if deadline is not None and time.monotonic() > deadline:
            progress = request.progress()
            raise TimeoutError(f"request {request.id}: {progress.finished} of {progress.total} "
                               f"tasks finished after {timeout} s")
        if finished:
            delay = FIRST_DELAY
        else:
            storage.wait_for_change(seen, delay)
            delay = min(delay * 1.5, LONGEST_DELAY)
