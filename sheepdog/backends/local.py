"""Run job files as processes on this machine: sheepdog without a cluster.

The very same job file the cluster would run is started once per array task,
with the environment a GridEngine task sees (``SGE_TASK_ID``, ``JOB_ID``, ...),
at most ``workers`` at a time. It is the embedded default for the demo and for
users without a cluster, and the backend the fast tests use.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path

from . import Backend, TaskEnd

_job_numbers = itertools.count(1)
_live_jobs: "weakref.WeakSet[LocalJob]" = weakref.WeakSet()


def describe_exit(returncode: int) -> str:
    """Words for a process's exit status, naming the signal that killed it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


class LocalJob:
    """One array job: a pool of threads, each running task processes in turn."""

    def __init__(self, job_id: str, script: Path, n_tasks: int, workers: int, shell: str) -> None:
        self.job_id = job_id
        self.script = script
        self.shell = shell
        self.n_tasks = n_tasks
        self.ended: dict[int, TaskEnd] = {}
        self._pending = iter(range(1, n_tasks + 1))
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._cancelled = False
        self._threads = [
            threading.Thread(target=self._work, name=f"sheepdog-{job_id}-{n}", daemon=True)
            for n in range(min(workers, n_tasks))
        ]
        self._remaining = n_tasks
        _live_jobs.add(self)
        for thread in self._threads:
            thread.start()

    def _next_task(self) -> int | None:
        with self._lock:
            return None if self._cancelled else next(self._pending, None)

    def _work(self) -> None:
        while (task_id := self._next_task()) is not None:
            returncode = self._run(task_id)
            with self._lock:
                if returncode is None:
                    self.ended[task_id] = TaskEnd("cancelled before it started", retryable=False)
                else:
                    self.ended[task_id] = TaskEnd(describe_exit(returncode), not self._cancelled,
                                                  exit_status=returncode)
                self._remaining -= 1
                finished = self._remaining == 0
            if finished and all(end.reason == "exit status 0" for end in self.ended.values()):
                shutil.rmtree(self.script.parent, ignore_errors=True)

    def _run(self, task_id: int) -> int | None:
        """Run one array task to its end; None if it was cancelled before it started."""
        environment = dict(
            os.environ,
            SGE_TASK_ID=str(task_id),
            SGE_TASK_FIRST="1",
            SGE_TASK_LAST=str(self.n_tasks),
            SGE_TASK_STEPSIZE="1",
            JOB_ID=self.job_id,
            JOB_NAME=self.script.name,
        )
        with open(self.log_path(task_id), "wb") as log_file:
            with self._lock:
                if self._cancelled:
                    return None
                process = subprocess.Popen(
                    [self.shell, str(self.script)],
                    cwd=self.script.parent,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
                self._running[task_id] = process
            returncode = process.wait()
        with self._lock:
            del self._running[task_id]
        return returncode

    def log_path(self, task_id: int) -> Path:
        """Where the task's stdout and stderr go."""
        return self.script.parent / f"{self.script.name}.{task_id}.log"

    @property
    def running(self) -> list[int]:
        with self._lock:
            return list(self._running)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            running = list(self._running.values())
        for process in running:
            process.kill()


@atexit.register
def _kill_live_jobs() -> None:
    """Leave no task process behind when the caller exits."""
    for job in list(_live_jobs):
        job.cancel()


class LocalBackend(Backend):
    """Array jobs as processes on this machine, ``config.workers`` at a time."""

    name = "local"

    def __init__(self, config) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config)
        self._jobs: dict[str, LocalJob] = {}

    def capacity(self) -> tuple[int | None, int | None]:
        return self.config.workers, None

    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        directory = Path(tempfile.mkdtemp(prefix=f"sheepdog-{request_id}-"))
        path = directory / f"sheepdog_{request_id}.py"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(script)
        job_id = f"local-{os.getpid()}-{next(_job_numbers)}"
        workers = min(self.config.workers or 1, self.config.max_running or n_array_tasks)
        self._jobs[job_id] = LocalJob(
            job_id, path, n_array_tasks, workers, self.config.shell or "python3"
        )
        return job_id

    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        job = self._jobs.get(job_id)
        if job is None:
            return {}
        return {task: how for task, how in list(job.ended.items()) if task in candidates}

    def cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel()

    def deliver_key(self, request_id: int, key: str) -> str:
        """A 0600 file in a fresh 0700 directory of its own."""
        directory = tempfile.mkdtemp(prefix=f"sheepdog-{request_id}-key-")
        path = os.path.join(directory, "key")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(key)
        return path

    def withdraw_key(self, path: str) -> None:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def running_tasks(self, job_id: str) -> set[int]:
        job = self._jobs.get(job_id)
        return set(job.running) if job is not None else set()

    def task_output(self, job_id: str, task_id: int) -> str:
        job = self._jobs.get(job_id)
        if job is None:
            return ""
        try:
            with open(job.log_path(task_id), "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                log_file.seek(max(0, log_file.tell() - 4000))
                return log_file.read().decode("utf-8", "replace")
        except OSError:
            return ""
