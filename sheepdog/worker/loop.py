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

import os
import signal
import sys
import time
from types import FrameType
from typing import Any, Callable, Mapping, Optional, Sequence

from ..wire.failures import error_bytes
from ..wire.protocol import ERROR, WAIT, unpack_frames, worker_name
from ..wire.settings import WorkerSettings
from .batching import BatchSize
from .client import Client, read_key
from .lifeline import die_with_parent, expected_parent
from .output import TaskOutput
from .runner import Runner, run_tasks
from .supervisor import Supervisor

#: How long a worker waits to ask again when the server has no task for it yet, but
#: other workers may give some back.
WAIT_SECONDS = 0.5


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
        supervisor.on_kill_notice(connect)
        os._exit(128 + signum)

    for number in numbers:
        signal.signal(number, on_kill_notice)
    if hasattr(signal, "SIGUSR1") and signal.SIGUSR1 not in numbers:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run(job_settings: Mapping[str, Any]) -> int:
    """Be worker ``<launch>.<array task>`` of the request until no task is left; an exit status.

    ``job_settings`` is the job file's ``SETTINGS`` literal (:class:`WorkerSettings`).
    """
    die_with_parent(expected_parent())
    settings = WorkerSettings.from_dict(job_settings)
    worker = worker_name(settings.launch, os.environ[settings.task_variable])
    key = read_key(settings)

    def connect(retry_seconds: float = settings.retry_seconds) -> Client:
        return Client(settings.urls, settings.request_id, key, retry_seconds,
                      settings.certificate, settings.disk_full_seconds)

    client = connect()
    output = TaskOutput()
    supervisor = Supervisor(client, connect(settings.heartbeat_seconds), worker,
                            settings.heartbeat_seconds, output)
    kill_signals = kill_signal_numbers(settings)
    report_kill_notices(connect, supervisor, kill_signals)
    try:
        problem = python_mismatch(settings.python)
        function = client.request("function") if problem is None else None
        batch, status, seq = BatchSize(settings.chunksize), 0, 1
        while True:
            frames = unpack_frames(client.request("pull", worker=worker, seq=seq,
                                                  size=batch.size, least=batch.least))
            if not frames:
                return status
            if frames[0][1] == WAIT:  # none yet, but other workers may give some back
                time.sleep(WAIT_SECONDS)
                continue
            seq += 1
            arguments = {index: payload for index, _kind, payload in frames}
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
            status = supervisor.run(lambda todo, claims: Runner(lambda channel: run_tasks(
                function, arguments, todo, channel, connect, settings, output, claims),
                kill_signals), indices, seq - 1, batch.give_back_after) or status
            batch.took(len(supervisor.started), time.monotonic() - started)
    finally:
        client.close()
        supervisor.beater.close()

