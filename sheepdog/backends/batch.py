"""What every batch scheduler backend shares: submit, watch and cancel through a Shell.

A scheduler module (``gridengine.py``, ``slurm.py``) subclasses
:class:`BatchBackend` and only declares what differs: its header lines, the
task-id variable, its commands and the parsers for their output, how its own
states and exit codes translate into how a task ended (and whether that may
be retried), its capacity, and its options key. How to submit a job file,
which tasks have ended, when accounting is late, and how key files are
delivered live here, once.

Ending rules, for an array task that the scheduler no longer lists as live:
its accounting record says how it ended (:meth:`BatchBackend.parse_accounting`);
with no record yet, it is given ``accounting_grace`` seconds, after which
:attr:`BatchBackend.no_record` says what to conclude. A task the scheduler
holds and will never run by itself (GridEngine's ``Eqw``, Slurm's held) has
ended too, with the scheduler's reason, and is removed.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import logging
import re
import secrets
import threading
import time
from typing import ClassVar, NamedTuple, Optional, Sequence

from ..config import OPTIONS_KEYS, Config
from ..userconfig import config_file_path
from ..remote.shells import LocalShell, Shell, SSHShell
from ..remote.ssh import CommandResult, SSHError, destination_for, get
from .base import Backend, SubmissionError, TaskEnd

log = logging.getLogger(__name__)

#: Shared task states that a scheduler's live states translate into.
PENDING, RUNNING, HELD = "pending", "running", "held"


#: How long one listing of the queue answers for every job asked about, and how long a
#: job stays among those a listing covers after it was last asked about.
LISTING_SECONDS, ASKED_SECONDS = 2.0, 60.0


class _Listing(NamedTuple):
    """One listing of the scheduler's queue: when, for which jobs, and its text."""

    at: float
    jobs: frozenset[str]
    text: str


class SchedulerQueryFailed(RuntimeError):
    """The scheduler could not say which tasks are live (say, its daemon restarts).

    Nothing is concluded from such a look: the next one, a few seconds later,
    may succeed.
    """


def shell_for(config: Config) -> Shell:
    """The head node over SSH when the config names one, else this machine."""
    return SSHShell(get(destination_for(config))) if config.host else LocalShell()


class BatchBackend(Backend):
    """A batch scheduler reached through a :class:`~sheepdog.remote.shells.Shell`."""

    #: Starts each header line, as in ``#$`` or ``#SBATCH``.
    header_prefix: ClassVar[str]
    #: The config key with this scheduler's own options, as in ``ge_opts``.
    options_key: ClassVar[str]
    #: Seconds an ended task may lack an accounting record before :attr:`no_record` applies.
    accounting_grace: ClassVar[float] = 15.0
    #: What an ended task with no accounting record (after the grace) is taken for.
    no_record: ClassVar[TaskEnd]
    #: The scheduler's commands, for messages ("qsub was not found ...").
    submit_program: ClassVar[str]
    #: The daemon that takes submissions, for messages when it cannot be reached.
    controller: ClassVar[str]
    #: What the submit command says when it cannot reach ``controller``.
    unreachable: ClassVar["re.Pattern[str]"]
    #: What it says when it refuses one of the user's options (a queue, a resource...).
    refused_option: ClassVar["re.Pattern[str]"]
    #: Whether :meth:`list_queue` lists every job of the user's, whichever are asked about.
    lists_every_job: ClassVar[bool] = False

    def __init__(self, config: Config, shell: Optional[Shell] = None) -> None:
        super().__init__(config)
        self.shell = shell if shell is not None else shell_for(config)
        self._missing_since: dict[tuple[str, int], float] = {}
        #: The job file's name of each job submitted here (schedulers name logs after it).
        self.job_names: dict[str, str] = {}
        self._capacity: Optional[tuple[Optional[int], Optional[int]]] = None
        self._listing: Optional[_Listing] = None
        self._asked: dict[str, float] = {}  # job id -> when it was last asked about
        self._listing_lock = threading.Lock()

    # -- what each scheduler declares --------------------------------------

    @property
    def options(self) -> tuple[str, ...]:
        """The user's options for this scheduler (the value of :attr:`options_key`)."""
        return tuple(getattr(self.config, self.options_key))

    @abc.abstractmethod
    def directives(self, n_array_tasks: int) -> list[str]:
        """The options of the job, without :attr:`header_prefix`."""

    @abc.abstractmethod
    def submit_argv(self, path: str) -> list[str]:
        """The command that submits the job file at ``path``."""

    @abc.abstractmethod
    def parse_job_id(self, output: str) -> str:
        """The job id from the submit command's output."""

    @abc.abstractmethod
    def list_queue(self, job_ids: Sequence[str]) -> str:
        """One listing of the scheduler's queue that shows the tasks of ``job_ids``
        (raises :class:`SchedulerQueryFailed`)."""

    @abc.abstractmethod
    def tasks_in(self, listing: str, job_id: str) -> dict[int, str]:
        """Array task -> shared state (PENDING, RUNNING, HELD) of the tasks of ``job_id``
        in ``listing`` (from :meth:`list_queue`)."""

    def live_tasks(self, job_id: str) -> dict[int, str]:
        """Array task -> shared state (PENDING, RUNNING, HELD) of the tasks still listed."""
        return self.tasks_in(self.list_queue([job_id]), job_id)

    @abc.abstractmethod
    def accounting(self, job_id: str) -> Optional[dict[int, TaskEnd]]:
        """How the job's ended tasks ended, by array task; None when accounting is off."""

    @abc.abstractmethod
    def cancel_argv(self, job_id: str, tasks: Sequence[int] = ()) -> list[str]:
        """The command that removes the job, or only ``tasks`` of it."""

    @abc.abstractmethod
    def resource_directives(self) -> list[str]:
        """The options that ask for the resources named in the config (``cores``...)."""

    @abc.abstractmethod
    def resource_patterns(self) -> dict[str, str]:
        """Resource key -> a pattern that finds an option asking for it in :attr:`options`."""

    def held_reason(self, job_id: str) -> str:
        """Why the scheduler holds the job's tasks, in its words."""
        return "the scheduler holds the task"

    def query_capacity(self) -> tuple[Optional[int], Optional[int]]:
        """(slots, largest array), asked of the scheduler; None where unknown."""
        return None, None

    def log_pattern(self, job_id: str, task_id: int) -> str:
        """Where (as a shell glob) the task's stderr is written on the scheduler's machines."""
        return f"$HOME/*{job_id}*{task_id}*"

    # -- shared behaviour ----------------------------------------------------

    def check(self) -> None:
        """Options meant for another scheduler are a mistake worth naming."""
        for field in dataclasses.fields(Config):
            if (field.name in OPTIONS_KEYS and field.name != self.options_key
                    and getattr(self.config, field.name) != field.default):
                raise ValueError(f"config key {field.name!r} holds another scheduler's "
                                 f"options; for {self.name}, use {self.options_key!r}")
        named = dataclasses.asdict(self.resources)
        for key, pattern in self.resource_patterns().items():
            clash = next((option for option in self.options if re.search(pattern, option)), None)
            if named[key] is not None and clash is not None:
                raise ValueError(f"config key {key!r} and the {self.options_key} option "
                                 f"{clash!r} both ask for {key}; keep one of them")

    def header(self, n_array_tasks: int) -> list[str]:
        return [f"{self.header_prefix} {line}" for line in self.directives(n_array_tasks)]

    def capacity(self) -> tuple[Optional[int], Optional[int]]:
        """Asked of the scheduler once per backend."""
        if self._capacity is None:
            self._capacity = self.query_capacity()
        return self._capacity

    def run(self, argv: Sequence[str], once: bool = False) -> CommandResult:
        """Run a scheduler command; a missing program is explained, not just reported."""
        result = self.shell.run(argv, once=once)
        if result.status != 127 and "command not found" not in result.stderr:
            return result
        if self.config.host is None:
            raise SubmissionError(
                f"no cluster is configured: {argv[0]} is not on this machine and the config "
                f"names no 'host'. Choose one: {{'host': 'HEADNODE'}} to submit over SSH "
                f"from here; {{'scheduler': 'local'}} to run the tasks as processes of this "
                f"machine; or a profile with either in {config_file_path()} (see the "
                f"configuration page of the docs)")
        raise SubmissionError(
            f"{argv[0]} was not found on {self.shell.where} by a non-interactive command "
            f"({result.stderr.strip()}). Make the scheduler's environment load for such "
            f"commands, e.g. in ~/.bashrc on the head node, above any line that returns "
            f"early for non-interactive shells (see the SSH page of the docs)"
        )

    def run_side_by_side(self, *argvs: Sequence[str]) -> list[CommandResult]:
        """Run scheduler queries at once, each on a channel of its own (each costs a round
        trip to the head node and the command's start there); their results, in order."""
        with concurrent.futures.ThreadPoolExecutor(len(argvs), "sheepdog-query") as running:
            return list(running.map(self.run, argvs))

    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        """Upload the job file (private), submit it, and remove it: the scheduler keeps a copy."""
        name = f"sheepdog_{request_id}_{secrets.token_hex(4)}.py"
        path = self.shell.put(script, f"{self.config.ssh_dir}/{name}")
        try:
            result = self.run(self.submit_argv(path), once=True)  # a second job otherwise
        finally:
            self._forget_listing()
            self.shell.run(["rm", "-f", path])
        if result.status != 0:
            raise SubmissionError(self.refusal(result.stderr.strip() or result.stdout.strip()))
        job_id = self.parse_job_id(result.stdout)
        self.job_names[job_id] = name
        return job_id

    def refusal(self, said: str) -> str:
        """Why the submit command failed, pointing at the options only when they are why."""
        if self.unreachable.search(said):
            return (f"{self.submit_program} could not reach {self.controller} from "
                    f"{self.shell.where}: {said}. The scheduler is down, or cannot be reached "
                    f"from there; nothing was submitted, and your options were not looked at")
        if self.refused_option.search(said):
            return (f"{self.submit_program} refused the job: {said}; check "
                    f"{self.options_key} {list(self.options)}")
        return f"{self.submit_program} refused the job: {said}"

    def _live(self, job_id: str) -> Optional[dict[int, str]]:
        """The live tasks of ``job_id``, from a listing of the queue that also answers for
        the other jobs asked about lately (a pool's look asks about each of its jobs, and
        the scheduler is asked once); None when the scheduler could not say."""
        now = time.monotonic()
        with self._listing_lock:
            self._asked[job_id] = now
            listing = self._listing
            if (listing is None or now - listing.at > LISTING_SECONDS
                    or not (self.lists_every_job or job_id in listing.jobs)):
                self._asked = {job: at for job, at in self._asked.items()
                               if now - at <= ASKED_SECONDS}
                jobs = sorted(self._asked)
                self.queries += 1
                try:
                    listing = _Listing(now, frozenset(jobs), self.list_queue(jobs))
                except (SchedulerQueryFailed, SSHError) as error:
                    log.warning("%s: %s; looking again later", self.name, error)
                    return None
                self._listing = listing
        return self.tasks_in(listing.text, job_id)

    def _forget_listing(self) -> None:
        """A job was submitted or cancelled here: the next look lists the queue again."""
        with self._listing_lock:
            self._listing = None

    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        live = self._live(job_id)
        if live is None:
            return {}
        ended: dict[int, TaskEnd] = {}
        held = sorted(task for task in candidates if live.get(task) == HELD)
        if held:
            reason = self.held_reason(job_id)
            for task in held:
                ended[task] = TaskEnd(f"{self.name} holds it and will not run it: {reason}",
                                      retryable=False)
            self.run(self.cancel_argv(job_id, held))
            self._forget_listing()
        missing = sorted(task for task in candidates if task not in live)
        if not missing:
            return ended
        self.queries += 1
        try:
            records = self.accounting(job_id)
        except SSHError as error:  # the connection dropped: conclude nothing this time
            log.warning("%s: %s; looking again later", self.name, error)
            return ended
        now = time.monotonic()
        for task in missing:
            first_seen = self._missing_since.setdefault((job_id, task), now)
            if records is not None and task in records:
                ended[task] = records[task]
            elif now - first_seen > self.accounting_grace:
                ended[task] = self.no_record if records is not None else TaskEnd(
                    f"it left {self.name}'s queue, and {self.name} keeps no accounting here",
                    retryable=True)
        return ended

    def running_tasks(self, job_id: str) -> set[int]:
        live = self._live(job_id) or {}
        return {task for task, state in live.items() if state == RUNNING}

    def cancel(self, job_id: str) -> None:
        self.run(self.cancel_argv(job_id))
        self._forget_listing()

    def deliver_key(self, request_id: int, key: str) -> str:
        """A 0600 file in the 0700 ``ssh_dir``: private, and seen by compute nodes that
        share the home directory (which the default working directory needs anyway)."""
        return self.shell.put(key, f"{self.config.ssh_dir}/sheepdog_{request_id}_"
                                   f"{secrets.token_hex(8)}.key")

    def withdraw_key(self, path: str) -> None:
        self.shell.run(["rm", "-f", path])

    def task_output(self, job_id: str, task_id: int) -> str:
        """The tail of the task's stderr file, found by :meth:`log_pattern`.

        Job ids come round again (and start afresh when a scheduler is
        reinstalled), so of several matching files the newest is read.
        """
        pattern = self.log_pattern(job_id, task_id)
        result = self.shell.script(
            f'f=$(ls -t {pattern} 2>/dev/null | head -n 1); [ -n "$f" ] && tail -c 4000 "$f"')
        return result.stdout

    def log_location(self, job_id: str, task_id: int) -> Optional[str]:
        return f"{self.log_pattern(job_id, task_id)} on {self.shell.where}"

    def reverse_route(self, local_port: int) -> Optional[tuple[str, int]]:
        return self.shell.reverse_route(local_port, self.config.shell or "python3")

    def close(self) -> None:
        self.shell.close()


def option_value(options: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` in options such as ``["-e /tmp/", "--mem=2G"]``, if given."""
    for option in options:
        match = re.match(rf"\s*{re.escape(flag)}(?:=|\s+)(\S+)", option)
        if match:
            return match.group(1)
    return None
