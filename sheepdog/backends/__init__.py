"""Schedulers that run job files: what every backend offers, and how to pick one.

A backend submits a rendered job file as an array job of ``n`` tasks, reports
which array tasks have ended (so that tasks which ended without reporting can
be marked lost), and cancels. Each scheduler lives in its own small module.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple, Optional

from ..config import Config


class SubmissionError(RuntimeError):
    """The scheduler refused the job; the message carries the scheduler's own words."""


class TaskEnd(NamedTuple):
    """How an array task ended, and whether running it again could help."""

    reason: str
    retryable: bool


class Backend(abc.ABC):
    """How to run a job file as an array job on one kind of scheduler."""

    name: ClassVar[str]
    #: The environment variable that holds the 1-based array task id.
    task_variable: ClassVar[str] = "SGE_TASK_ID"

    def __init__(self, config: Config) -> None:
        self.config = config

    def directives(self, n_array_tasks: int) -> list[str]:
        """Scheduler options written into the job file's header."""
        return []

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

    def close(self) -> None:
        """Release connections; the backend may be used again afterwards."""


def create(config: Config) -> Backend:
    """The backend that ``config.scheduler`` names."""
    if config.scheduler == "local":
        from .local import LocalBackend

        return LocalBackend(config)
    from .gridengine import GridEngineBackend

    return GridEngineBackend(config)
