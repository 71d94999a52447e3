"""Warm pools: workers that outlive one request and serve the next compatible ones.

Without a pool every request is its own array job, and each ``map`` or
``Executor.submit`` pays the scheduler's dispatch and a Python start again.
With one, the workers started for a request stay while there is work for
them in this process: when a worker's pull finds nothing left in its request
(or its request has workers enough while another has none), the server hands
it over to another request of its pool (``server/callbacks.py``), and an idle
worker's pull is held open until work arrives, so a dependent call is
answered as soon as its task exists. A worker idle for ``linger`` seconds
leaves; closing the session, or the end of the process, removes the pool's
jobs from the scheduler at once.

A pool is the set of requests of one process and one database whose workers
are interchangeable: every config key that reaches the job file, the
scheduler or the server is equal (:func:`pool_key`). Only keys that the
caller alone reads (retries, how long to wait, the dashboard) may differ.

Growth is the pool's, not each request's: a request made while the pool has
live workers submits no job. Every ``LOOK_SECONDS`` at most, a watcher asks
the pool whether the queue is longer than its workers clear in
``CLEAR_SECONDS``; if so, and the last submission is ``SUBMIT_SPACING``
seconds old, it doubles the workers, within the same limits as a job of its
own (``chunking.choose_workers``), and replaces at once the workers that left
before their walltime. With none alive, the watcher's own rules decide whether
to start more (``watcher._relaunch``: not for workers that could not start). So a short map starts few workers, and a
long one grows to the cluster's slots within a minute or so.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import threading
import time
import weakref
from typing import Any, Hashable, Mapping, Optional, Protocol

from ..backends.base import Backend
from ..config import Config
from ..server.wakeups import WorkSignal
from ..storage import Progress, Storage
from .chunking import choose_workers

log = logging.getLogger(__name__)

#: Config keys that only the caller reads: requests that differ in them share workers.
CALLER_ONLY_KEYS = frozenset({
    "retries", "retry_failed", "lost_after", "connect_timeout", "dashboard", "linger",
    "cache",
})
#: Seconds between a pool's looks at its queue (and so its scheduler queries).
LOOK_SECONDS = 5.0
#: A queue that the live workers clear in this many seconds needs no more of them.
CLEAR_SECONDS = 2.0
#: Seconds between two submissions of one pool: a few jobs a minute at most.
SUBMIT_SPACING = 10.0
#: A pool's first job starts a worker per task up to ``FIRST_WORKERS`` (a few long tasks
#: run side by side at once), and one per ``TASKS_PER_FIRST_WORKER`` tasks beyond: a
#: map of many short tasks needs few workers, and more follow while the queue stays long.
FIRST_WORKERS = 8
TASKS_PER_FIRST_WORKER = 25


class Request(Protocol):
    """What a pool needs of its requests (``request.Request`` is one)."""

    id: int

    @property
    def ended(self) -> bool: ...

    def progress(self) -> Progress: ...

    def submit_job(self, n_workers: Optional[int] = None) -> str: ...

    def withdraw_key(self) -> None: ...


def pool_key(stored: Mapping[str, Any]) -> Hashable:
    """What must be equal for two requests to share workers: every stored config value
    that the job file, the scheduler or the server sees (``stored`` is the config as
    the database keeps it: every key, JSON-able and so comparable)."""
    return tuple(sorted((key, repr(value)) for key, value in stored.items()
                        if key not in CALLER_ONLY_KEYS))


class Pool:
    """The requests of one warm pool, its shared backend, and its idle workers' clocks."""

    def __init__(self, key: Hashable, backend: Backend, config: Config,
                 storage: Storage, signal: WorkSignal) -> None:
        self.key = key
        #: Shared by the pool's requests, so that each watcher sees every job's tasks.
        self.backend = backend
        self.config = config
        self.linger = float(config.linger)
        self.storage = storage
        self.signal = signal
        self._lock = threading.Lock()
        self._requests: dict[int, Request] = {}
        self._idle_since: dict[tuple[int, str], float] = {}
        self._digests: dict[int, str] = {}
        self._jobs: set[str] = set()
        self._holders: set[int] = set()  # ids of the sessions that made requests in it
        self.closed = False
        #: Held while a request decides whether the pool needs a job, so that requests
        #: made at once from several threads start one job, not one each.
        self.starting = threading.Lock()
        #: Whether any of its workers has reached this process (asked for work).
        self.reached = False
        self._next_look = 0.0
        self._last_submission = -math.inf
        self._left_early = 0  # workers that left before their walltime since the last look
        self._finished_at_look: Optional[tuple[float, int]] = None
        #: What the benchmark reports: jobs submitted and looks at the queue.
        self.submissions = 0
        self.looks = 0

    def __repr__(self) -> str:
        return f"<sheepdog pool of {len(self._requests)} requests on {self.config.scheduler}>"

    # -- membership ----------------------------------------------------------

    def add(self, request: Request) -> None:
        """``request`` joins the pool; idle workers hear of it at once."""
        with self._lock:
            self._requests[request.id] = request
        self.signal.notify()

    def forget(self, request_id: int) -> None:
        """``request_id`` has ended and none of its workers is left: it leaves the pool,
        and its key file goes (workers of its jobs might have read it until now)."""
        with self._lock:
            request = self._requests.pop(request_id, None)
            self._digests.pop(request_id, None)
        if request is not None:
            request.withdraw_key()

    def members(self) -> list[Request]:
        with self._lock:
            return list(self._requests.values())

    def prune(self) -> None:
        """Requests that have ended (their waiter saw every task finish, with no retry
        left) and host no live worker leave the pool. A request whose tasks were lost is
        complete, yet may be retried: it stays until it ends, and keeps its key file."""
        ids = self.request_ids()
        live = self.storage.live_counts(ids)
        for request in self.members():
            if request.id not in live and request.ended:
                self.forget(request.id)

    def holds(self, request_id: int) -> bool:
        return request_id in self._requests

    def request_ids(self) -> list[int]:
        with self._lock:
            return list(self._requests)

    def hold(self, holder: object) -> None:
        """``holder`` (a session) uses the pool: it stays open until every holder let go."""
        with self._lock:
            self._holders.add(id(holder))

    def let_go(self, holder: object) -> None:
        """``holder`` has closed: the pool closes when it was the last to use it."""
        with self._lock:
            self._holders.discard(id(holder))
            last = not self._holders
        if last:
            self.close()

    def record_job(self, job_id: str) -> None:
        """A job was submitted for a request of the pool: :meth:`close` removes it."""
        with self._lock:
            self._jobs.add(job_id)
            self._last_submission = time.monotonic()
            self.submissions += 1

    # -- what the server asks ----------------------------------------------------

    def handover_target(self, request_id: int) -> Optional[int]:
        """The request that a worker of ``request_id``, asking for work, should move to.

        When its own request has nothing pending, the pending request with the
        fewest live workers; when it has, a pending request with no live
        worker at all, provided its own keeps another worker (so that a small
        request is not left behind a large one, and neither starves).
        """
        if self.closed:
            return None
        others = [other for other in self.request_ids() if other != request_id]
        if not others:
            return None
        pending = self.storage.pending_counts(others + [request_id])
        waiting = [other for other in others if pending.get(other)]
        if not waiting:
            return None
        live = self.storage.live_counts(waiting + [request_id])
        if not pending.get(request_id):
            return min(waiting, key=lambda other: live.get(other, 0))
        starving = [other for other in waiting if not live.get(other)]
        if starving and live.get(request_id, 0) >= 2:
            return starving[0]
        return None

    def function_digest(self, request_id: int) -> str:
        """The SHA-256 of ``request_id``'s function: a worker that holds it already does
        not fetch it again."""
        with self._lock:
            digest = self._digests.get(request_id)
        if digest is None:
            digest = hashlib.sha256(self.storage.function(request_id) or b"").hexdigest()
            with self._lock:
                self._digests[request_id] = digest
        return digest

    def may_wait(self, request_id: int, worker: str) -> bool:
        """Whether an idle worker may go on waiting for work (it has waited less than
        ``linger`` and the pool is open); False: it should leave."""
        now = time.monotonic()
        with self._lock:
            since = self._idle_since.setdefault((request_id, worker), now)
        return not self.closed and now - since < self.linger

    def busy(self, request_id: int, worker: str) -> None:
        """The worker got work (or moved on): its idle clock stops, and the pool's workers
        are known to reach this process."""
        self.reached = True
        with self._lock:
            self._idle_since.pop((request_id, worker), None)

    def left_early(self) -> None:
        """A worker left before its walltime (the server heard it say so): the next look
        comes at once, and replaces it without waiting for the queue to be measured."""
        with self._lock:
            self._left_early += 1

    def look_due(self) -> bool:
        """Whether it is time for the pool's next look at its workers and the scheduler
        (one per ``LOOK_SECONDS``, however many requests' watchers ask, or at once when
        workers left before their walltime)."""
        now = time.monotonic()
        with self._lock:
            if self.closed or (now < self._next_look and not self._left_early):
                return False
            self._next_look = now + LOOK_SECONDS
            self.looks += 1
            return True

    # -- growth --------------------------------------------------------------------

    def live_workers(self) -> int:
        return self.storage.live_worker_count(self.request_ids())

    def first_workers(self, pending: int) -> int:
        """Workers of the first job of a pool: enough for ``pending`` short tasks."""
        wanted = max(min(pending, FIRST_WORKERS), -(-pending // TASKS_PER_FIRST_WORKER))
        return min(wanted, self._most_workers(pending))

    def _most_workers(self, pending: int) -> int:
        return choose_workers(pending, *self.backend.capacity(), self.config.max_running)

    def grow(self) -> None:
        """Submit more workers when the queue is longer than the live ones clear in
        ``CLEAR_SECONDS`` (called at each of the pool's looks, see :meth:`look_due`)."""
        now = time.monotonic()
        with self._lock:
            replacing, self._left_early = self._left_early, 0
        ids = self.request_ids()
        pending = self.storage.pending_counts(ids)
        if not pending:
            return
        total = sum(pending.values())
        live = self.storage.live_worker_count(ids)
        if not live:
            # None is alive: whether to start any is the watcher's relaunch to decide, by
            # how the last ones ended (workers that could not even start are not repeated).
            return
        if replacing:  # as many as left, while there is work for them
            self._submit_for(pending, min(self._most_workers(total) - live, replacing), live,
                             total)
            return
        finished = self.storage.finished_count(ids)
        previous, self._finished_at_look = self._finished_at_look, (now, finished)
        if previous is not None and now > previous[0]:
            rate = (finished - previous[1]) / (now - previous[0])
            if rate > 0 and total / rate <= CLEAR_SECONDS:
                return
        if now - self._last_submission < SUBMIT_SPACING:
            return
        self._submit_for(pending, min(self._most_workers(total) - live, live), live, total)

    def _submit_for(self, pending: dict[int, int], more: int, live: int, total: int) -> None:
        """A job of ``more`` workers, for the request with the most tasks ``pending``."""
        if more <= 0:
            return
        target = max(pending, key=lambda request_id: pending[request_id])
        with self._lock:
            request = self._requests.get(target)
        if request is not None:
            log.info("pool: %d tasks wait for %d workers; starting %d more", total, live, more)
            request.submit_job(more)

    # -- ending ---------------------------------------------------------------------

    def close(self) -> None:
        """Remove the pool's jobs from the scheduler; waiting workers leave at once."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            jobs, self._jobs = sorted(self._jobs), set()
        self.signal.notify()
        for job_id in jobs:
            try:
                self.backend.cancel(job_id)
            except Exception as error:  # the others still deserve their cancel
                log.warning("pool: could not remove job %s: %s", job_id, error)
        for request in self.members():
            self.forget(request.id)


class Pools:
    """This process's warm pools of one database (held by its ``DatabaseOwner``)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.signal = WorkSignal()
        self._lock = threading.Lock()
        self._pools: dict[Hashable, Pool] = {}
        self._of_request: dict[int, Pool] = {}
        _all_pools.add(self)

    def find(self, stored: Mapping[str, Any]) -> Optional[Pool]:
        """The open pool that a request of ``config`` would join, if there is one."""
        with self._lock:
            pool = self._pools.get(pool_key(stored))
        return None if pool is None or pool.closed else pool

    def pool_for(self, config: Config, stored: Mapping[str, Any],
                 backend: Backend) -> Optional[Pool]:
        """The open pool that a request of ``config`` joins (made on first use, with
        ``backend``), or None when ``config`` asks for none (``linger`` 0, or no TLS to
        carry keys over)."""
        if not config.linger or not config.tls or backend.runs_in_caller:
            return None
        key = pool_key(stored)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.closed:
                pool = self._pools[key] = Pool(key, backend, config, self.storage, self.signal)
            return pool

    def warm(self, stored: Mapping[str, Any]) -> bool:
        """Whether a request of ``config`` would find live workers waiting in its pool."""
        pool = self.find(stored)
        return pool is not None and pool.live_workers() > 0

    def join(self, pool: Pool, request: Request) -> None:
        with self._lock:
            self._of_request[request.id] = pool
        pool.add(request)

    def of(self, request_id: int) -> Optional[Pool]:
        """The pool that ``request_id`` belongs to in this process, if any."""
        return self._of_request.get(request_id)

    def forget(self, request_id: int) -> None:
        with self._lock:
            pool = self._of_request.pop(request_id, None)
        if pool is not None:
            pool.forget(request_id)

    def close(self, pools: Optional[list[Pool]] = None) -> None:
        """Close ``pools`` (all of them by default): their jobs leave the scheduler."""
        with self._lock:
            chosen = list(self._pools.values()) if pools is None else pools
            for pool in chosen:
                if self._pools.get(pool.key) is pool:
                    del self._pools[pool.key]
        for pool in chosen:
            pool.close()


_all_pools: "weakref.WeakSet[Pools]" = weakref.WeakSet()


@atexit.register
def _close_every_pool() -> None:
    """The process ends: no pool's job may hold a slot after it."""
    for pools in list(_all_pools):
        pools.close()
