"""The job file's entry point on the cluster: pull tasks, run them, post, pull again.

Embedded in the job file with the rest of ``wire`` and ``worker`` (see
``caller/jobscript.py``), so it imports only the standard library and those;
the settings come from the job file as a :class:`WorkerSettings`.
:func:`run` is the worker's life; the connection to the caller is
``client.py``, the batch size ``batching.py``, the forked process that runs
the tasks ``runner.py``, the main process that watches it and posts its
reports ``supervisor.py``, and the capture of their output ``output.py``.

A job has about as many array tasks as the cluster has slots, and each is a
*worker* that pulls its tasks from the server: it asks for a batch, runs it,
posts the reports and asks again, until the server has nothing left for it.
So a scheduler dispatch and a Python start are paid once per slot rather
than once per task, trivial tasks travel in large batches, and long ones are
spread over the slots. When the scheduler warns that it will kill the
worker, the supervisor kills the runner, posts what it holds and says so
(see :func:`report_kill_notices`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, Callable, Mapping, Optional, Sequence

from ..wire.failures import error_bytes
from ..wire.protocol import ERROR, HANDOVER, IDLE, WAIT, Frame, unpack_frames, worker_name
from ..wire.settings import WorkerSettings
from .batching import BatchSize
from .client import Client, Identity, read_key
from .lifeline import die_with_parent, expected_parent
from .output import TaskOutput
from .spare import Runners
from .supervisor import Supervisor

#: How long a worker waits to ask again when the server has no task for it yet, but
#: other workers may give some back.
WAIT_SECONDS = 0.5
#: How long an idle worker of a warm pool tries to reach its caller before it leaves:
#: it holds nothing, so a caller that has gone costs it only this.
IDLE_RETRY_SECONDS = 10.0
#: Seconds before its walltime by which a worker has left (a tenth of it when that is
#: less, and at least a second).
LEAVE_MARGIN = 10.0
#: A task is expected to take up to this many times the average of the worker's last
#: batch when it decides what still fits before its walltime.
TASK_TIME_SAFETY = 1.5
#: Functions a worker of a warm pool keeps, by digest, for the requests it may return to.
KEPT_FUNCTIONS = 16


def python_mismatch(expected: Sequence[int]) -> Optional[str]:
    """A message when this Python cannot load code made by ``expected`` (major, minor)."""
    here = tuple(sys.version_info[:2])
    if here == tuple(expected):
        return None
    return (
        f"this worker runs Python {sys.version.split()[0]} ({sys.executable}), but the "
        f"function was shipped from Python {expected[0]}.{expected[1]}; code objects "
        f"only load into the same minor version: set 'shell' in the config to a "
        f"Python {expected[0]}.{expected[1]} interpreter on the workers"
    )



def kill_signal_numbers(settings: WorkerSettings) -> list[int]:
    """The signals by which the scheduler warns that it will kill the task (see below)."""
    names = settings.kill_signals
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def report_kill_notices(connect: Callable[[float], Client], supervisor: Supervisor,
                        numbers: list[int]) -> None:
    """Tell the server when the scheduler warns that it is about to kill this task.

    The backend names the warning signals (``kill_signals`` in the settings):
    GridEngine jobs submitted with ``-notify`` get SIGUSR2 before ``qdel`` or an
    enforced limit kills them (and SIGUSR1 before a suspension, which needs no
    action, so it is ignored); Slurm sends SIGTERM. A warned task was stopped
    on purpose, so it is not retried; the scheduler's accounting then says
    why. The worker posts what it holds and leaves at once, with its runner,
    rather than make the scheduler wait out its notice period.
    """

    def on_kill_notice(signum: int, frame: Optional[FrameType]) -> None:
        # Answered once: a second notice (the scheduler may send more than one) waits for
        # the exit below rather than run this again inside the first one's runner.wait().
        signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
        supervisor.on_kill_notice(connect)
        os._exit(128 + signum)

    supervisor.kill_signals = list(numbers)  # held while it starts a runner
    for number in numbers:
        signal.signal(number, on_kill_notice)
    if hasattr(signal, "SIGUSR1") and signal.SIGUSR1 not in numbers:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class Walltime:
    """When this worker must have left, for a scheduler that kills it at its walltime.

    Its clock starts with the process (as the scheduler's does). It takes no
    batch that would run past ``LEAVE_MARGIN`` seconds (or a tenth of the
    walltime, if less) before then, and gives back what it holds unstarted
    when the next task would not end in time.
    """

    def __init__(self, seconds: Optional[float]) -> None:
        margin = min(LEAVE_MARGIN, max(1.0, 0.1 * seconds)) if seconds else 0.0
        self.deadline = ((time.monotonic() + seconds - margin - seconds_since_start())
                         if seconds else None)

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def tasks_that_fit(self, per_task: Optional[float], wanted: int) -> int:
        """How many of ``wanted`` tasks of ``per_task`` seconds end in time (0: leave)."""
        left = self.left()
        if left == float("inf"):
            return wanted
        if left <= 0:
            return 0
        if per_task is None:
            return 1
        return min(wanted, int(left / (TASK_TIME_SAFETY * per_task)))


def seconds_since_start() -> float:
    """How long this process has run (the scheduler's clock started with it, before this
    Python was up); 0 where the system does not say (Linux's ``/proc`` does)."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            started = int(stat.read().rsplit(b")", 1)[1].split()[19])  # field 22, in ticks
        with open("/proc/uptime", "rb") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def run(job_settings: Mapping[str, Any]) -> int:
    """Be worker ``<launch>.<array task>`` of the request until no task is left; an exit status.

    ``job_settings`` is the job file's ``SETTINGS`` literal (:class:`WorkerSettings`).
    A worker of a warm pool goes on with other requests of its caller as the
    server hands it over, and leaves when the server says it has been idle
    long enough, when its caller has gone, or before its walltime.
    """
    die_with_parent(expected_parent())
    settings = WorkerSettings.from_dict(job_settings)
    me = Identity(settings.request_id, read_key(settings),
                  worker_name(settings.launch, os.environ[settings.task_variable]))

    def connect(retry_seconds: float = settings.retry_seconds) -> Client:
        return Client(settings.urls, me.request_id, me.key, retry_seconds,
                      settings.certificate, settings.disk_full_seconds)

    client = connect()
    output = TaskOutput()
    supervisor = Supervisor(client, connect(settings.heartbeat_seconds), me.worker,
                            settings.heartbeat_seconds, output)
    kill_signals = kill_signal_numbers(settings)
    report_kill_notices(connect, supervisor, kill_signals)
    walltime = Walltime(settings.walltime_seconds)
    runners = Runners(me, settings, connect, output, kill_signals)
    try:
        problem = python_mismatch(settings.python)
        functions: dict[str, bytearray] = {}
        versions_told: set[str] = set()  # digests of the functions whose batches told them
        function, digest = _fetch_function(client, functions) if problem is None else (None, "")
        batch, status, seq, idle = BatchSize(settings.chunksize), 0, 1, False
        frames: Optional[list[Frame]] = None
        # The next batch's spare (``spare.py``), forked once a batch has run, while the
        # pull that follows is on its way: forking overlaps the server's answer.
        prepare_next: Optional[Callable[[], None]] = None
        while True:
            if frames is None:
                size = walltime.tasks_that_fit(batch.per_task, batch.size)
                if not size:
                    client.request("leaving", worker=me.worker)
                    return status
                try:
                    frames = unpack_frames(client.request(
                        "pull", worker=me.worker, seq=seq, size=size,
                        least=min(size, batch.least),
                        retry_seconds=IDLE_RETRY_SECONDS if idle else None,
                        while_waiting=prepare_next))
                except ConnectionError:
                    if idle:  # holding nothing, and its caller has gone: nothing is lost
                        return status
                    raise
            if not frames:
                return status
            kind = frames[0][1]
            if kind in (WAIT, IDLE):  # none yet; after IDLE the server did the waiting
                idle = kind == IDLE
                frames = None
                if kind == WAIT:
                    time.sleep(WAIT_SECONDS)
                continue
            if kind == HANDOVER:
                ticket = json.loads(bytes(frames[0][2]))
                me.request_id, me.key = int(ticket["request"]), str(ticket["key"]).encode()
                me.worker = supervisor.worker = str(ticket["worker"])
                for line in (client, supervisor.beater):
                    line.switch(me.request_id, me.key)
                digest = str(ticket["function"])
                if problem is None and digest not in functions:
                    function, digest = _fetch_function(client, functions)
                elif problem is None:
                    function = functions[digest]
                batch, seq, idle = BatchSize(settings.chunksize), 1, False
                frames = frames[1:] or None  # the first pull there, if it found work
                continue
            idle = False
            seq += 1
            arguments = {index: payload for index, _kind, payload in frames}
            frames = None
            indices = list(arguments)
            started = time.monotonic()
            if problem is not None:  # every task fails the same way, and says why
                for index in indices:
                    supervisor.queue(index, ERROR, error_bytes(problem))
                supervisor.flush()
                status = 1
                batch.took(len(indices), time.monotonic() - started)
                continue
            assert function is not None, "fetched above whenever this Python can load it"
            runnable, runnable_digest, told = function, digest, digest in versions_told
            versions_told.add(digest)
            status = supervisor.run(lambda todo: runners.start(
                runnable, runnable_digest, arguments, todo, told), indices, seq - 1,
                batch.give_back_after, leave_at=walltime.deadline,
                per_task=batch.per_task and TASK_TIME_SAFETY * batch.per_task) or status
            batch.took(len(supervisor.started), time.monotonic() - started)
            prepare_next = functools.partial(runners.prepare, function, digest)
    finally:
        runners.discard()
        client.close()
        supervisor.beater.close()


def _fetch_function(client: Client, functions: dict[str, bytearray]) -> tuple[bytearray, str]:
    """The function (and namespace) of the client's request and its digest, by which it is
    kept: a worker of a warm pool fetches each function once."""
    blob = client.request("function")
    if len(functions) >= KEPT_FUNCTIONS:
        functions.pop(next(iter(functions)))
    digest = hashlib.sha256(blob).hexdigest()
    functions[digest] = blob
    return blob, digest
