"""Watching a request while it runs: lost tasks, retries, and workers that never call.

Whichever process waits for a request follows it through its :class:`Watcher`,
which owns the watch state (when it next looks, since when no worker has
called back) in the way submitit's ``InfoWatcher`` does: it looks at the
workers and the scheduler every ``WATCH_SECONDS``, and puts what may run again
back in the queue once every task has finished. The rules live here once,
whatever the scheduler; each backend only says how its array tasks (the
workers) ended (``Backend.ended_tasks``) and which are running.

- A worker silent for ``lost_after`` seconds has ended; the tasks it held
  are lost, and retryable.
- A worker that the scheduler says has ended loses the tasks it held, with
  the scheduler's reason; if the scheduler warned it before killing it, it
  was removed on purpose and its tasks are not retried.
- A worker that could not read the request's key, or workers that run for
  ``connect_timeout`` without any calling back, end the request at once with
  :class:`CallbackError`: every other worker would fail the same way.
- Lost (and, with ``retry_failed``, failed) tasks with attempts left go back
  in the queue, where the workers still alive pull them. Only when tasks
  wait and no worker is alive or about to start is a new job submitted; not
  if every worker of the last job was removed on purpose (then the waiting
  tasks are lost with that reason).
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Protocol, cast

from ..backends.base import Backend, TaskEnd
from ..config import Config
from ..storage import Progress, Storage
from ..wire.protocol import EXIT_NO_KEY, index_spec, worker_name
from .pool import Pool

log = logging.getLogger(__name__)

#: Seconds between looks at the scheduler and the heartbeats while waiting.
WATCH_SECONDS = 2.0


class CallbackError(RuntimeError):
    """The workers cannot reach this process, or cannot read the request's key.

    Raised by ``map``/``wait`` within seconds of the first task ending that
    way, or ``connect_timeout`` after tasks started running without any of
    them calling back. The request's jobs are cancelled first, so that no
    slot is held in vain; the message says what the workers tried and what
    to change.
    """


class Watched(Protocol):
    """What the watcher needs of a request (``request.Request`` is one)."""

    id: int
    storage: Storage
    urls: list[str]
    pool: Optional[Pool]

    @property
    def config(self) -> Config: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def key_file(self) -> Optional[str]: ...

    def progress(self) -> Progress: ...

    def submit_job(self, n_workers: Optional[int] = None) -> str: ...

    def withdraw_key(self) -> None: ...

    def end(self) -> None: ...


class Watcher:
    """The watch state of one request, and the looks that act on it."""

    def __init__(self, request: Watched) -> None:
        self.request = request
        #: When tasks were first seen running with none having called back.
        self.unreached_since: Optional[float] = None
        #: When :meth:`follow` next looks at the scheduler and the heartbeats.
        self.next_watch = time.monotonic() + WATCH_SECONDS

    def follow(self) -> Progress:
        """One look at the request; the progress seen.

        Every ``WATCH_SECONDS`` it watches the workers and the scheduler
        (:meth:`watch`); once every task has finished it puts what may run
        again back in the queue (:meth:`retry`), and otherwise ends the
        request. A complete progress means the request has ended.
        """
        request = self.request
        progress = request.progress()
        if progress.complete:
            if not self.retry():
                request.end()
                if request.pool is not None:  # its predecessors' workers may have moved on
                    request.pool.prune()
                return progress
            progress = request.progress()
        if time.monotonic() >= self.next_watch:
            self.watch()
            self.next_watch = time.monotonic() + WATCH_SECONDS
        return progress

    def watch(self) -> None:
        """Conclude what the workers' silence and the scheduler say; raise CallbackError
        for workers that cannot reach this process.

        The workers of a warm pool move between its requests: its watchers look
        at all of them together, once per the pool's look, and let it grow.
        """
        pool = self.request.pool
        if pool is None:
            self._watch_workers(self.request)
        elif pool.look_due():
            members = [cast(Watched, member) for member in pool.members()]  # requests
            if self.request not in members:  # it left the pool; its workers still count
                members.append(self.request)
            for member in members:
                self._watch_workers(member)
            pool.prune()
            pool.grow()
        self.retry()
        self._check_reached()

    def _watch_workers(self, request: Watched) -> None:
        """What the silence of ``request``'s workers and the scheduler say of them."""
        storage, config = request.storage, request.config
        lost = storage.lose_silent(request.id, time.time() - config.lost_after,
                                   f"its worker sent no heartbeat for {config.lost_after:.0f} s")
        if lost:
            log.warning("request %s: tasks %s lost: their worker fell silent", request.id,
                        index_spec(lost))
        by_job: dict[str, set[int]] = {}
        launches: dict[str, int] = {}
        for job_id, launch, array_task in storage.live_workers(request.id):
            by_job.setdefault(job_id, set()).add(array_task)
            launches[job_id] = launch
        for job_id, array_tasks in by_job.items():
            for array_task, end in sorted(request.backend.ended_tasks(job_id, array_tasks).items()):
                if end.exit_status == EXIT_NO_KEY:
                    raise self._abandon(_no_key_message(request, job_id, array_task))
                _worker_ended(request, job_id, worker_name(launches[job_id], array_task), end)

    def retry(self) -> bool:
        """Put tasks that may run again back in the queue, and start workers for them if
        none is alive; True if any went back."""
        request = self.request
        config, storage = request.config, request.storage
        again = (storage.requeue(request.id, config.retries + 1, config.retry_failed)
                 if config.retries else [])
        if again:
            log.info("request %s: tasks %s go back in the queue", request.id, index_spec(again))
        if again and request.pool is not None:
            request.pool.signal.notify()  # its idle workers take them at once
        if request.progress().pending and not storage.any_worker_alive(request.id):
            if request.pool is None or not request.pool.live_workers():
                _relaunch(request)
        return bool(again)

    def _abandon(self, message: str) -> CallbackError:
        """Cancel the request's jobs and mark its open tasks lost with ``message``."""
        request = self.request
        if request.pool is not None:  # every request of the pool fails the same way
            request.pool.close()
        for job in request.storage.jobs(request.id):
            try:
                request.backend.cancel(job.job_id)
            except Exception as error:  # the error below matters more
                log.warning("request %s: could not cancel job %s: %s", request.id, job.job_id,
                            error)
        request.storage.lose_open(request.id, message)
        request.withdraw_key()
        self.unreached_since = None
        return CallbackError(message)

    def _check_reached(self) -> None:
        """Raise CallbackError when tasks run but none has called back for ``connect_timeout``."""
        request = self.request
        progress = request.progress()
        # Jobs that started workers for this request (not those whose workers came to it
        # from another request of its pool, recorded with none).
        jobs = [job for job in request.storage.jobs(request.id) if job.n_workers]
        reached = request.pool is not None and request.pool.reached
        if progress.running or progress.done or progress.failed or not jobs or reached:
            self.unreached_since = None
            return
        running = request.backend.running_tasks(jobs[-1].job_id)
        if not running:
            return
        if self.unreached_since is None:
            self.unreached_since = time.monotonic()
        waited = time.monotonic() - self.unreached_since
        if waited < request.config.connect_timeout:
            return
        job_id, task_id = jobs[-1].job_id, min(running)
        urls = " and ".join(request.urls or ["the URLs in its job file"])
        raise self._abandon((
            f"request {request.id}: {len(running)} tasks of job {job_id} have run for "
            f"{waited:.0f} s and none has called back on {urls}. Task {task_id}'s stderr "
            f"ends with:\n{_output_tail(request, job_id, task_id)}\nIf this machine is behind "
            f"NAT or a firewall, use {{'callback': 'tunnel'}}; if the workers know it by "
            f"another name or address, set 'localhost'; or let the workers through the "
            f"firewall to the port in those URLs. See 'How workers reach you' in the docs"
        ))


def _worker_ended(request: Watched, job_id: str, worker: str, end: TaskEnd) -> None:
    """Record that the scheduler says ``worker`` ended; the tasks it held are lost."""
    array_task = int(worker.partition(".")[2])
    location = request.backend.log_location(job_id, array_task)
    reason = (f"its worker ended without reporting it ({end.reason}; job {job_id}, array task "
              f"{array_task}{f'; its log: {location}' if location else ''})")
    warned = f"; the scheduler warned before killing it: it was {request.backend.kill_word}"
    lost = request.storage.end_worker(request.id, worker, reason, end.retryable,
                                      warned if end.retryable else "")
    if lost:
        log.warning("request %s: tasks %s lost: %s", request.id, index_spec(lost), reason)


def _relaunch(request: Watched) -> None:
    """Tasks wait and no worker is left: a new job, unless no worker of the last one both
    reached this process and ended in a way worth repeating (they were all removed on
    purpose, or none could start or call back)."""
    ends = request.storage.newest_launch_ends(request.id)
    if ends and not any(end.retryable and end.reached for end in ends):
        reason = f"no worker is left to run it: {ends[0].reason}"
        for index in request.storage.open_indices(request.id):
            request.storage.record_lost(request.id, index, reason)
        return
    backend = request.backend
    if not backend.outlives_caller and not any(
            backend.submitted_here(job.job_id) for job in request.storage.jobs(request.id)):
        # Its workers went with the process that started them: a later get_results starts
        # the tasks again, here. (Not so for workers of this process that left before
        # their walltime: the pool replaces them.)
        log.warning("request %s: no worker is left for its %d unfinished tasks (%s workers end "
                    "with the Python process that started them); restarting them in new "
                    "workers of this process", request.id, request.progress().pending,
                    request.backend.name)
    request.submit_job()


def _output_tail(request: Watched, job_id: str, task_id: int) -> str:
    try:
        output = request.backend.task_output(job_id, task_id).strip()
    except Exception as error:  # a diagnosis without the log is still a diagnosis
        output = f"(could not read it: {error})"
    lines = output.splitlines()[-15:] or ["(empty)"]
    return "\n".join("    " + line for line in lines)


def _no_key_message(request: Watched, job_id: str, task_id: int) -> str:
    return (
        f"request {request.id}: the workers cannot read the request's key file "
        f"{request.key_file}, which sheepdog wrote on the head node: the compute nodes do "
        f"not see the head node's home directory. Task {task_id} of job {job_id} said:\n"
        f"{_output_tail(request, job_id, task_id)}\nShare the home directory with the "
        f"compute nodes, or, on a cluster whose users you trust, set "
        f"{{'key_in_job_file': True}} (see 'How workers reach you' in the docs)"
    )
