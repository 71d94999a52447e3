"""The contract every scheduler backend fulfils, and :func:`create`, which picks one.

A backend submits a rendered job file as an array job of ``n`` tasks, reports
which array tasks have ended (so that tasks which ended without reporting can
be marked lost), and cancels. Each scheduler lives in its own small module:
batch schedulers declare what differs over the shared core in ``batch.py``;
which names exist is the registry's business (``registry.py``).
"""

from __future__ import annotations

import abc
import functools
from typing import ClassVar, NamedTuple, Optional

from ..config import Config
from ..resources import Resources, format_memory, format_walltime, resources_of
from .registry import backend_class


class SubmissionError(RuntimeError):
    """The scheduler refused the job; the message carries the scheduler's own words."""


class TaskEnd(NamedTuple):
    """How an array task ended, and whether running it again could help."""

    reason: str
    retryable: bool
    #: The worker's exit status, where the scheduler tells it.
    exit_status: Optional[int] = None


class Backend(abc.ABC):
    """How to run a job file as an array job on one kind of scheduler."""

    name: ClassVar[str]
    #: The environment variable that holds the 1-based array task id.
    task_variable: ClassVar[str]
    #: What a task removed on purpose was, in the scheduler's words ("deleted (qdel)").
    kill_word: ClassVar[str] = "deleted"
    #: Whether the tasks go on running when the calling process exits.
    outlives_caller: ClassVar[bool] = True
    #: Signals the scheduler sends a task it is about to kill on purpose (``qdel``,
    #: ``scancel``, a time limit): the worker reports them, so the task is not retried.
    kill_signals: ClassVar[tuple[str, ...]] = ()
    #: Whether the tasks run in the caller's own thread (``inline.py``): then no job
    #: file, server or key is made, and ``caller/inline.py`` runs them instead of a job.
    runs_in_caller: ClassVar[bool] = False

    def __init__(self, config: Config) -> None:
        self.config = config
        #: How many times the scheduler was asked about jobs (``benchmarks/pool.py`` tells).
        self.queries = 0

    def check(self) -> None:
        """Raise for a config that cannot work with this scheduler, before anything is stored."""

    def header(self, n_array_tasks: int) -> list[str]:
        """The job file's header lines for the scheduler (prefix included)."""
        return []

    @functools.cached_property
    def resources(self) -> Resources:
        """What each worker asks for by name (``cores``, ``memory``...); see docs/resources.rst."""
        return resources_of(self.config)

    def memory_limit(self) -> Optional[int]:
        """Bytes of address space each worker may use: ``memory``, or the scheduler's options."""
        return self.resources.memory

    def walltime_seconds(self) -> Optional[float]:
        """Seconds each worker may run: ``walltime``, or the scheduler's options; None if
        unlimited."""
        return self.resources.walltime

    def notes(self) -> list[str]:
        """What the job header does not say of how the workers run, for ``job_script``."""
        return []

    def limit_words(self, limit: str) -> Optional[str]:
        """How a task that a limit (``"memory"`` or ``"walltime"``) ended is reported, as in
        "killed at its walltime of 0:30:00"; None when no such limit is set."""
        if limit == "memory":
            memory = self.memory_limit()
            return None if memory is None else f"killed: over its memory limit of " \
                                               f"{format_memory(memory)}"
        walltime = self.walltime_seconds()
        return None if walltime is None else f"killed at its walltime of " \
                                             f"{format_walltime(walltime)}"

    def capacity(self) -> tuple[Optional[int], Optional[int]]:
        """(slots that can run tasks at once, largest array allowed); None where unknown."""
        return None, None

    @abc.abstractmethod
    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        """Start the job; return the scheduler's job id."""

    @abc.abstractmethod
    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        """Which of the array tasks ``candidates`` of ``job_id`` have ended, and how."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Remove the job's tasks that have not ended."""

    @abc.abstractmethod
    def deliver_key(self, request_id: int, key: str) -> str:
        """Write the request's key where its workers, and nobody else, can read it; the path."""

    @abc.abstractmethod
    def withdraw_key(self, path: str) -> None:
        """Remove a key file that :meth:`deliver_key` wrote (the request has ended)."""

    @abc.abstractmethod
    def running_tasks(self, job_id: str) -> set[int]:
        """The array tasks of ``job_id`` that the scheduler says are running."""

    @abc.abstractmethod
    def task_output(self, job_id: str, task_id: int) -> str:
        """The last few KB of what an array task wrote to stderr, or "" if none is found."""

    def submitted_here(self, job_id: str) -> bool:
        """Whether this process submitted ``job_id``. Asked only of a backend whose tasks
        end with their caller (then its workers were not taken along by an earlier
        process's end); the others need not know, and say False."""
        return False

    def log_location(self, job_id: str, task_id: int) -> Optional[str]:
        """Where the task's own log is, for messages about a task that ended silently."""
        return None

    def reverse_route(self, local_port: int) -> Optional[tuple[str, int]]:
        """(host, port) on the cluster side that leads back to ``local_port`` here, if any."""
        return None

    def close(self) -> None:
        """Release connections; the backend may be used again afterwards."""


def create(config: Config) -> Backend:
    """The backend that ``config.scheduler`` names."""
    backend: type[Backend] = backend_class(config.scheduler)
    return backend(config)
