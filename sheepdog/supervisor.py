"""Watching a request while it runs: lost tasks, retries, and workers that never call.

Whichever process waits for a request calls :func:`watch` every few seconds
and :func:`retry` when every task has finished. The rules live here once,
whatever the scheduler; each backend only says how its tasks ended
(``Backend.ended_tasks``) and which are running.

- A running task silent for ``lost_after`` seconds is lost (and retryable).
- A task whose array task ended without reporting is lost with the
  scheduler's reason; one the scheduler warned before killing it was removed
  on purpose and is not retried.
- A worker that could not read the request's key, or tasks that run for
  ``connect_timeout`` without any calling back, end the request at once with
  :class:`CallbackError`: every other task would fail the same way.
- Lost (and, with ``retry_failed``, failed) tasks with attempts left are
  resubmitted as a new job over just their arguments.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence

from .protocol import EXIT_NO_KEY
from .storage import Storage

if TYPE_CHECKING:
    from .request import Request

log = logging.getLogger(__name__)


class CallbackError(RuntimeError):
    """The workers cannot reach this process, or cannot read the request's key.

    Raised by ``map``/``wait`` within seconds of the first task ending that
    way, or ``connect_timeout`` after tasks started running without any of
    them calling back. The request's jobs are cancelled first, so that no
    slot is held in vain; the message says what the workers tried and what
    to change.
    """


def task_owners(storage: Storage, request_id: int,
                open_indices: Sequence[int]) -> dict[int, tuple[str, int]]:
    """For each open argument index, the newest job covering it and its array task id.

    The inverse of ``worker.argument_indices``.
    """
    wanted = set(open_indices)
    owners: dict[int, tuple[str, int]] = {}
    for job in storage.jobs(request_id):
        if job.indices is None:
            owners.update((i, (job.job_id, (i - 1) // job.chunksize + 1)) for i in wanted)
        else:
            owners.update((i, (job.job_id, position // job.chunksize + 1))
                          for position, i in enumerate(job.indices) if i in wanted)
    return owners


def watch(request: "Request") -> None:
    """Mark lost what ended silently or fell silent; raise CallbackError for unreachable workers."""
    storage, config = request.storage, request.config
    silent_since = time.time() - config.lost_after
    for index in storage.stale_running(request.id, silent_since):
        storage.record_lost(request.id, index,
                            f"no heartbeat for {config.lost_after:.0f} s", retryable=True)
    open_indices = storage.open_indices(request.id)
    if not open_indices:
        return
    backend = request.backend
    owners = task_owners(storage, request.id, open_indices)
    by_job: dict[str, set[int]] = {}
    for job_id, task_id in owners.values():
        by_job.setdefault(job_id, set()).add(task_id)
    ended = {job_id: backend.ended_tasks(job_id, tasks) for job_id, tasks in by_job.items()}
    warned = storage.kill_noticed(request.id)
    for index, (job_id, task_id) in owners.items():
        end = ended[job_id].get(task_id)
        if end is None:
            continue
        if end.exit_status == EXIT_NO_KEY:
            raise _abandon(request, _no_key_message(request, job_id, task_id))
        reason = end.reason
        if index in warned and end.retryable:
            reason += f"; the scheduler warned before killing it: it was {backend.kill_word}"
        log_location = backend.log_location(job_id, task_id)
        if log_location:
            reason += f"; its log: {log_location}"
        if storage.record_lost(
            request.id, index, f"the task ended without reporting ({reason}; job {job_id})",
            retryable=end.retryable and index not in warned,
        ):
            log.warning("request %s: task %s lost (%s)", request.id, index, reason)
    _check_reached(request)


def retry(request: "Request") -> bool:
    """Resubmit lost (and, if asked, failed) tasks that have attempts left; True if any."""
    config = request.config
    if not config.retries:
        return False
    again = request.storage.retry_candidates(request.id, config.retries + 1, config.retry_failed)
    if not again:
        return False
    request.storage.requeue(request.id, again)
    request.submit_job(again)
    return True


def _abandon(request: "Request", message: str) -> CallbackError:
    """Cancel the request's jobs and mark its open tasks lost with ``message``."""
    for job in request.storage.jobs(request.id):
        try:
            request.backend.cancel(job.job_id)
        except Exception as error:  # the error below matters more
            log.warning("request %s: could not cancel job %s: %s", request.id, job.job_id, error)
    for index in request.storage.open_indices(request.id):
        request.storage.record_lost(request.id, index, message)
    request.withdraw_key()
    request.unreached_since = None
    return CallbackError(message)


def _output_tail(request: "Request", job_id: str, task_id: int) -> str:
    try:
        output = request.backend.task_output(job_id, task_id).strip()
    except Exception as error:  # a diagnosis without the log is still a diagnosis
        output = f"(could not read it: {error})"
    lines = output.splitlines()[-15:] or ["(empty)"]
    return "\n".join("    " + line for line in lines)


def _no_key_message(request: "Request", job_id: str, task_id: int) -> str:
    return (
        f"request {request.id}: the workers cannot read the request's key file "
        f"{request.key_file}, which sheepdog wrote on the head node: the compute nodes do "
        f"not see the head node's home directory. Task {task_id} of job {job_id} said:\n"
        f"{_output_tail(request, job_id, task_id)}\nShare the home directory with the "
        f"compute nodes, or, on a cluster whose users you trust, set "
        f"{{'key_in_job_file': True}} (see 'How workers reach you' in the docs)"
    )


def _check_reached(request: "Request") -> None:
    """Raise CallbackError when tasks run but none has called back for ``connect_timeout``."""
    progress = request.progress()
    jobs = request.storage.jobs(request.id)
    if progress.running or progress.done or progress.failed or not jobs:
        request.unreached_since = None
        return
    running = request.backend.running_tasks(jobs[-1].job_id)
    if not running:
        return
    if request.unreached_since is None:
        request.unreached_since = time.monotonic()
    waited = time.monotonic() - request.unreached_since
    if waited < request.config.connect_timeout:
        return
    job_id, task_id = jobs[-1].job_id, min(running)
    urls = " and ".join(request.urls or ["the URLs in its job file"])
    raise _abandon(request, (
        f"request {request.id}: {len(running)} tasks of job {job_id} have run for "
        f"{waited:.0f} s and none has called back on {urls}. Task {task_id}'s stderr "
        f"ends with:\n{_output_tail(request, job_id, task_id)}\nIf this machine is behind "
        f"NAT or a firewall, use {{'callback': 'tunnel'}}; if the workers know it by "
        f"another name or address, set 'localhost'; or let the workers through the "
        f"firewall to the port in those URLs. See 'How workers reach you' in the docs"
    ))
