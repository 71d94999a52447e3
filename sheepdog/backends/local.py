"""Run job files as processes on this machine: sheepdog without a cluster.

The very same job file the cluster would run is started once per array task,
with its array task id in ``SHEEPDOG_TASK_ID``,
at most ``workers`` at a time. It is the embedded default for the demo and for
users without a cluster, and the backend the fast tests use.

Resources named in the config hold here too (docs/resources.rst): ``cores``
per worker cap the workers at once to this machine's cores, ``memory`` is the
workers' address-space limit, a worker past its ``walltime`` is killed (its
tasks are lost, not retried), and ``gpus`` share out the devices listed in
``CUDA_VISIBLE_DEVICES``, each worker seeing only its own.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Optional

from ..config import Config
from ..wire.settings import CALLER_PID_VARIABLE
from .base import Backend, SubmissionError, TaskEnd

_job_numbers = itertools.count(1)
#: The jobs this process submitted: a job id's pid alone may be an earlier process's, where
#: each run gets the same pid (a container's first process).
_submitted_jobs: set[str] = set()
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

    def __init__(self, job_id: str, script: Path, n_tasks: int, workers: int, shell: str,
                 walltime: Optional[tuple[float, str]] = None,
                 devices: Optional[list[str]] = None) -> None:
        self.job_id = job_id
        self.script = script
        self.shell = shell
        self.n_tasks = n_tasks
        #: (seconds, how a task killed then is reported), or None: no walltime.
        self.walltime = walltime
        #: Each worker's ``CUDA_VISIBLE_DEVICES``, by thread, or None: left as it is.
        self.devices = devices
        self._over_walltime: set[int] = set()
        self.ended: dict[int, TaskEnd] = {}
        #: What failed tasks wrote last, kept when the job's files are removed.
        self.failed_output: dict[int, str] = {}
        self._pending = iter(range(1, n_tasks + 1))
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._cancelled = False
        self._threads = [
            threading.Thread(target=self._work, args=(n,), name=f"sheepdog-{job_id}-{n}",
                             daemon=True)
            for n in range(min(workers, n_tasks))
        ]
        self._remaining = n_tasks
        _live_jobs.add(self)
        for thread in self._threads:
            thread.start()

    def _next_task(self) -> int | None:
        with self._lock:
            return None if self._cancelled else next(self._pending, None)

    def _work(self, thread: int) -> None:
        while (task_id := self._next_task()) is not None:
            try:
                returncode = self._run(task_id, thread)
                end = (TaskEnd("cancelled before it started", retryable=False)
                       if returncode is None else self._describe(task_id, returncode))
            except OSError as error:  # the shell vanished since submission, say
                end = TaskEnd(f"could not start {self.shell}: {error}", retryable=False)
            with self._lock:
                self.ended[task_id] = end
                self._remaining -= 1
                finished = self._remaining == 0
            if finished:  # what the tasks reported is in the database; their files can go
                shutil.rmtree(self.script.parent, ignore_errors=True)

    def _describe(self, task_id: int, returncode: int) -> TaskEnd:
        """How a task ended, with the end of its output when it failed (its log is removed)."""
        if task_id in self._over_walltime and self.walltime is not None:
            return TaskEnd(self.walltime[1], retryable=False, exit_status=returncode)
        reason = describe_exit(returncode)
        if returncode:
            self.failed_output[task_id] = self.output_tail(task_id)
            lines = self.failed_output[task_id].strip().splitlines()[-3:]
            if lines:
                reason += "; its output ended with: " + " / ".join(lines)
        return TaskEnd(reason, retryable=not self._cancelled, exit_status=returncode)

    def output_tail(self, task_id: int, limit: int = 4000) -> str:
        """The last ``limit`` bytes the task wrote (stdout and stderr), or ""."""
        if task_id in self.failed_output:
            return self.failed_output[task_id]
        try:
            with open(self.log_path(task_id), "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                log_file.seek(max(0, log_file.tell() - limit))
                return log_file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _run(self, task_id: int, thread: int) -> int | None:
        """Run one array task to its end (killed at its walltime, if it has one); None if
        it was cancelled before it started."""
        environment = dict(os.environ, **{LocalBackend.task_variable: str(task_id),
                                          CALLER_PID_VARIABLE: str(os.getpid())})
        if self.devices is not None:
            environment["CUDA_VISIBLE_DEVICES"] = self.devices[thread]
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
                    start_new_session=True,  # Ctrl-C at the caller's terminal is not theirs
                )
                self._running[task_id] = process
            try:
                returncode = process.wait(self.walltime[0] if self.walltime else None)
            except subprocess.TimeoutExpired:
                self._over_walltime.add(task_id)
                _kill_group(process)
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

    def close(self) -> None:
        """Cancel the job and remove its folder (job file and logs): the caller exits."""
        self.cancel()
        shutil.rmtree(self.script.parent, ignore_errors=True)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            running = list(self._running.values())
        for process in running:
            _kill_group(process)


def _kill_group(process: "subprocess.Popen[bytes]") -> None:
    """Kill a task and anything it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


#: Key folders this process delivered: its local workers end with it, and their keys too.
_keys_delivered: set[str] = set()


@atexit.register
def _kill_live_jobs() -> None:
    """Leave no task process, no job folder and no key behind when the caller exits."""
    for job in list(_live_jobs):
        job.close()
    for directory in list(_keys_delivered):
        shutil.rmtree(directory, ignore_errors=True)


def _folder_prefix(request_id: int, kind: str) -> str:
    """How a local folder is named: its request, its kind and the pid of its caller."""
    return f"sheepdog-{request_id}-{kind}-{os.getpid()}-"


_FOLDER = re.compile(r"sheepdog-\d+-(?:job|key)-(\d+)-")


def remove_folders_of_dead_callers() -> None:
    """Remove the job and key folders that callers killed without a word (SIGKILL) left.

    Only the caller's own folders, named with the pid of a process that has
    ended; their workers ended with it (see ``worker/lifeline.py``).
    """
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        match = _FOLDER.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        path = os.path.join(root, name)
        try:
            if os.lstat(path).st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True



class LocalBackend(Backend):
    """Array jobs as processes on this machine, ``config.workers`` at a time."""

    name = "local"
    task_variable = "SHEEPDOG_TASK_ID"
    kill_word = "cancelled"
    outlives_caller = False

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._jobs: dict[str, LocalJob] = {}
        remove_folders_of_dead_callers()

    def check(self) -> None:
        shell = self.config.shell or "python3"
        if shutil.which(shell) is None:
            raise SubmissionError(
                f"the local scheduler cannot run {shell!r}: no such executable. Set 'shell' "
                f"to a Python interpreter on this machine, or leave it unset to use "
                f"{sys.executable}")
        cores, gpus = self.resources.cores, self.resources.gpus
        if cores is not None and cores > (os.cpu_count() or 1):
            raise ValueError(f"config key 'cores' is {cores}, but this machine has "
                             f"{os.cpu_count() or 1}: the local scheduler runs each worker "
                             f"here. Ask for fewer, or use a cluster")
        if gpus is not None and len(_visible_devices()) < gpus:
            raise ValueError(
                f"config key 'gpus' is {gpus}, but CUDA_VISIBLE_DEVICES lists "
                f"{len(_visible_devices())} devices: the local scheduler shares out the GPUs "
                f"that it lists among the workers, each seeing its own. Set it to this "
                f"machine's GPUs (such as 0,1), or leave 'gpus' unset")

    def capacity(self) -> tuple[int | None, int | None]:
        """``workers``, fewer if each takes several cores or GPUs of this machine's."""
        limits = [self.config.workers or 1]
        if self.resources.cores:
            limits.append((os.cpu_count() or 1) // self.resources.cores)
        if self.resources.gpus:
            limits.append(len(_visible_devices()) // self.resources.gpus)
        return max(1, min(limits)), None

    def notes(self) -> list[str]:
        workers = self.capacity()[0] or 1
        notes = [f"at most {workers} workers at once"]
        devices = self._devices(workers)
        if devices is not None:
            notes.append(f"each worker's CUDA_VISIBLE_DEVICES: {' / '.join(devices)}")
        return notes

    def _devices(self, workers: int) -> Optional[list[str]]:
        """Each worker's ``CUDA_VISIBLE_DEVICES``: ``gpus`` of those listed, its own."""
        gpus = self.resources.gpus
        if gpus is None:
            return None
        listed = _visible_devices()
        return [",".join(listed[n * gpus:(n + 1) * gpus]) for n in range(workers)]

    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        directory = Path(tempfile.mkdtemp(prefix=_folder_prefix(request_id, "job")))
        path = directory / f"sheepdog_{request_id}.py"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(script)
        job_id = f"local-{os.getpid()}-{next(_job_numbers)}"
        _submitted_jobs.add(job_id)
        workers = min(self.capacity()[0] or 1, self.config.max_running or n_array_tasks)
        walltime, words = self.walltime_seconds(), self.limit_words("walltime")
        self._jobs[job_id] = LocalJob(
            job_id, path, n_array_tasks, workers, self.config.shell or "python3",
            (walltime, words) if walltime is not None and words else None,
            self._devices(workers))
        return job_id

    def submitted_here(self, job_id: str) -> bool:
        return _submitted_here(job_id)

    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        job = self._jobs.get(job_id)
        if job is None:
            return _ended_with_their_process(job_id, candidates)
        return {task: how for task, how in list(job.ended.items()) if task in candidates}

    def cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel()

    def deliver_key(self, request_id: int, key: str) -> str:
        """A 0600 file in a fresh 0700 directory of its own."""
        directory = tempfile.mkdtemp(prefix=_folder_prefix(request_id, "key"))
        _keys_delivered.add(directory)
        path = os.path.join(directory, "key")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(key)
        return path

    def withdraw_key(self, path: str) -> None:
        _keys_delivered.discard(os.path.dirname(path))
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def running_tasks(self, job_id: str) -> set[int]:
        job = self._jobs.get(job_id)
        return set(job.running) if job is not None else set()

    def task_output(self, job_id: str, task_id: int) -> str:
        job = self._jobs.get(job_id)
        return job.output_tail(task_id) if job is not None else ""


def _visible_devices() -> list[str]:
    """The GPUs that ``CUDA_VISIBLE_DEVICES`` lists, for the local workers to share."""
    return [device.strip() for device in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            if device.strip()]


def _submitted_here(job_id: str) -> bool:
    """Whether this process submitted the local job ``job_id`` (not the process it was
    forked from, whose record it inherited)."""
    return job_id in _submitted_jobs and job_id.startswith(f"local-{os.getpid()}-")


def _ended_with_their_process(job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
    """The tasks of another process's job, if that process has ended: they ended with it.

    A local job runs inside the process that submitted it (``local-<pid>-<n>``),
    so once that process is gone, a task that has not reported never will.
    """
    _local, pid, _number = (job_id.split("-") + ["", "", ""])[:3]
    if not pid.isdigit() or _submitted_here(job_id) or (
            int(pid) != os.getpid() and _alive(int(pid))):
        return {}  # alive: that process runs its tasks and watches them
    reason = f"the process that ran it (pid {pid}) has ended"
    return {task: TaskEnd(reason, retryable=True) for task in candidates}
