"""What the caller tells its workers in the job file: one typed structure, both sides.

The caller builds a :class:`WorkerSettings` when it submits a job, the job
file carries it as a plain dict literal (readable by whoever opens the file),
and the worker turns that dict back into the same structure before it reads a
field. So every setting has one name, one type and one default, here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional


#: Set by the local backend, in each worker's environment, to the pid of the caller that
#: started it: the parent the worker must have, or its caller has died already.
CALLER_PID_VARIABLE = "SHEEPDOG_CALLER_PID"


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything one array task of a request needs to find, prove and run its work."""

    #: The request whose tasks the workers pull.
    request_id: int
    #: Where the caller's server listens, tried in order (direct, then tunnel).
    urls: tuple[str, ...] = ()
    #: The PEM certificate the workers pin; None for plain HTTP.
    certificate: Optional[str] = None
    #: The request's key itself (only with ``key_in_job_file``), else None.
    key: Optional[str] = None
    #: The private file on the cluster that holds the request's key.
    key_file: Optional[str] = None
    #: Which of the request's jobs this is: workers are named ``launch.array_task``.
    launch: int = 1
    #: A fixed number of tasks per pull (the config's ``chunksize``); None adapts.
    chunksize: Optional[int] = None
    #: The environment variable that holds the 1-based array task id.
    task_variable: str = "SGE_TASK_ID"
    #: The caller's Python (major, minor): code objects load only into the same.
    python: tuple[int, int] = (0, 0)
    #: Bytes of address space each worker may use, or None.
    memory_limit: Optional[int] = None
    #: Signals the scheduler sends before it kills a task on purpose.
    kill_signals: tuple[str, ...] = ("SIGUSR2",)
    #: How long a worker keeps retrying an unreachable caller.
    retry_seconds: float = 180.0
    #: How often a worker tells the caller it is alive.
    heartbeat_seconds: float = 10.0
    #: How long a report refused for a full disk is retried; None for the default.
    disk_full_seconds: Optional[float] = None
    #: What a worker does when its versions differ from the caller's: "warn" (it tells
    #: the caller), "error" (its tasks fail, saying so) or "ignore".
    version_mismatch: str = "warn"
    #: Seconds the scheduler lets each worker run, when known: it leaves before then.
    walltime_seconds: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the job file's ``SETTINGS`` literal."""
        return {field.name: _plain(getattr(self, field.name))
                for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WorkerSettings:
        """The settings from the job file's literal; tuples come back as tuples."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown worker settings {unknown}: the job file was made by "
                             f"another version of sheepdog")
        converted: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                                     for name, value in values.items()}
        return cls(**converted)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
