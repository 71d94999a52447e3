"""Slurm: sbatch the job file as an array, watch it with squeue and sacct, scancel it.

Only what is Slurm's own lives here; ``batch.py`` does the rest. Jobs are
submitted with ``sbatch --parsable`` (which prints ``123`` or
``123;cluster``) and ``--array=1-N%max_running``; each task finds its index in
``SLURM_ARRAY_TASK_ID``. ``squeue -r`` lists live tasks one per line; a task
that Slurm holds (held by a user or an administrator, or requeued and held)
will not run by itself, so it counts as ended, with Slurm's reason, and is
cancelled. ``sacct`` says how ended tasks ended: a task cancelled, over its
time limit or out of memory is not retried; a node failure or a preemption
may be. Slurm sends SIGTERM before it kills a task on ``scancel`` or at its
time limit, which workers report, so such tasks are never mistaken for
crashes. Where accounting is off (``sacct`` fails), a task that left the
queue without reporting is lost after a grace period, retryable unless it
was warned. ``--mem`` in ``slurm_opts`` also becomes the workers'
address-space limit, so a greedy task fails with ``MemoryError`` instead of
being killed. Resources named in the config become ``--cpus-per-task``,
``--mem``, ``--time``, ``--gres=gpu:N``, ``--partition`` and ``--account``
(docs/resources.rst).
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Optional, Sequence

from ..config import Config
from ..resources import format_memory, format_walltime
from ..wire.protocol import index_spec
from ..remote.shells import Shell
from .base import SubmissionError, TaskEnd
from .batch import HELD, PENDING, RUNNING, BatchBackend, SchedulerQueryFailed, option_value

#: squeue's compact states, translated; anything not listed is pending.
_LIVE_STATES = {"R": RUNNING, "CG": RUNNING, "CF": RUNNING, "S": RUNNING, "ST": RUNNING,
                "RH": HELD, "SE": HELD}
#: Reasons for which a pending task waits on a person, not on resources.
_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin", "job requeued in held state")
#: sacct's final states: (words for the reason, whether running it again could help).
_ENDINGS = {
    "COMPLETED": ("it exited", True),
    "FAILED": ("it failed", True),
    "CANCELLED": ("cancelled (scancel)", False),
    "TIMEOUT": ("over its time limit (TIMEOUT)", False),
    "OUT_OF_MEMORY": ("out of memory (OUT_OF_MEMORY)", False),
    "NODE_FAIL": ("its node failed (NODE_FAIL)", True),
    "PREEMPTED": ("preempted (PREEMPTED)", True),
    "BOOT_FAIL": ("its node failed to boot (BOOT_FAIL)", True),
    "DEADLINE": ("past its deadline (DEADLINE)", False),
}
_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_job_id(output: str) -> str:
    """The job id from ``sbatch --parsable`` output (``123`` or ``123;cluster``)."""
    match = re.match(r"\s*(\d+)(?:;\S+)?\s*$", output)
    if not match:
        raise SubmissionError(f"sbatch did not print a job id: {output.strip()!r}")
    return match.group(1)


def parse_squeue(output: str, job_id: str) -> dict[int, tuple[str, str]]:
    """Array task -> (state code, reason) from ``squeue -r -h -o '%i %t %r'``.

    Pending tasks that Slurm has not split yet may still show as a range,
    ``123_[5-10%2]``; it is expanded.
    """
    tasks: dict[int, tuple[str, str]] = {}
    for line in output.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 2:
            continue
        job, _, spec = fields[0].partition("_")
        if job != job_id or not spec:
            continue
        state, reason = fields[1], fields[2].strip() if len(fields) > 2 else ""
        for task in _expand(spec):
            tasks[task] = (state, reason)
    return tasks


def _expand(spec: str) -> list[int]:
    """``4`` or ``[5-10,12%2]`` -> the task ids."""
    spec = spec.strip("[]").split("%")[0]
    tasks: list[int] = []
    for part in spec.split(","):
        first, dash, last = part.partition("-")
        if first.isdigit() and (not dash or last.isdigit()):
            tasks.extend(range(int(first), int(last if dash else first) + 1))
    return tasks


def live_state(state: str, reason: str) -> str:
    if state == "PD" and reason.strip("()") in _HELD_REASONS:
        return HELD
    return _LIVE_STATES.get(state, PENDING)


def parse_sacct(output: str, job_id: str, words: Optional[Mapping[str, str]] = None
                ) -> dict[int, TaskEnd]:
    """Array task -> how it ended, from ``sacct -X -P -n --format=JobID,State,ExitCode``.

    Tasks that never ran share one record (``123_[3-6%2]``), which is
    expanded. ``words`` replace a state's own (see :func:`describe_ending`). Records of tasks not yet ended, and the single ``JOBID`` record
    that sacct shows for a moment before the per-task ones, are left out.
    """
    ended: dict[int, TaskEnd] = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3:
            continue
        job, _, spec = fields[0].partition("_")
        ending = describe_ending(fields[1], fields[2], words) if job == job_id and spec else None
        if ending is not None:
            ended.update((task, ending) for task in _expand(spec))
    return ended


def describe_ending(state: str, exit_code: str, words: Optional[Mapping[str, str]] = None
                    ) -> Optional[TaskEnd]:
    """How a task ended, in Slurm's words; None for a state that is not an end.

    ``words`` say a state better where they can, by state: "killed at its
    walltime of 0:30:00 (TIMEOUT)" rather than "over its time limit (TIMEOUT)".
    """
    word = state.split()[0] if state.strip() else ""
    if word not in _ENDINGS:
        return None
    what, retryable = _ENDINGS[word]
    what = (words or {}).get(word, what)
    status_text, _, signal_text = exit_code.partition(":")
    status = int(status_text) if status_text.isdigit() else 0
    signal = int(signal_text) if signal_text.isdigit() else 0
    reason = f"{what}: exit status {status}"
    if signal:
        reason += f", signal {signal}"
    if state.strip() != word:
        reason += f" ({state.strip()})"
    return TaskEnd(reason, retryable, exit_status=status)


def parse_total_cpus(sinfo_output: str) -> Optional[int]:
    """The total CPUs from ``sinfo -h -o %C`` (``allocated/idle/other/total``)."""
    totals = [int(line.split("/")[-1]) for line in sinfo_output.split()
              if re.fullmatch(r"\d+/\d+/\d+/\d+", line)]
    return sum(totals) or None


def parse_max_array_size(config_output: str) -> Optional[int]:
    """The most tasks an array may have, from ``scontrol show config`` (MaxArraySize - 1)."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", config_output, flags=re.MULTILINE)
    return int(match.group(1)) - 1 if match else None


def parse_time(text: str) -> float:
    """A Slurm time limit (``--time``) in seconds: minutes, MM:SS, H:MM:SS, D-H, D-H:MM or
    D-H:MM:SS."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        raise ValueError(f"--time={text!r} is not a Slurm time limit such as 2:00:00 or 90")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:  # D-H[:MM[:SS]]
        return (((days * 24 + (first or 0)) * 60 + (second or 0)) * 60) + (third or 0)
    if third is not None:  # H:MM:SS
        return ((first or 0) * 60 + (second or 0)) * 60 + third
    return (first or 0) * 60 + (second or 0)  # minutes, or MM:SS


def parse_memory(text: str) -> int:
    """A Slurm memory size (``--mem``): megabytes by default, K/M/G/T in powers of 1024."""
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not match:
        raise ValueError(f"--mem={text!r} is not a Slurm memory size such as 2G or 500M")
    return int(match.group(1)) * _UNITS[match.group(2)]


class SlurmBackend(BatchBackend):
    """Array jobs with sbatch, on the login node over SSH or on this machine."""

    name = "slurm"
    task_variable = "SLURM_ARRAY_TASK_ID"
    kill_word = "cancelled (scancel)"
    kill_signals = ("SIGTERM",)
    header_prefix = "#SBATCH"
    options_key = "slurm_opts"
    submit_program = "sbatch"
    controller = "the Slurm controller (slurmctld)"
    unreachable = re.compile(r"unable to contact slurm controller|slurm_load_ctl_conf|"
                             r"socket timed out|connection refused", re.IGNORECASE)
    refused_option = re.compile(r"invalid (?:partition|account|qos|generic resource|gres|"
                                r"option|feature|time limit|memory)|unrecognized option|"
                                r"requested node configuration is not available|"
                                r"memory specification|access denied", re.IGNORECASE)
    no_record = TaskEnd("removed from Slurm before it ran (no accounting record)",
                        retryable=False)

    def __init__(self, config: Config, shell: Optional[Shell] = None) -> None:
        super().__init__(config, shell)
        self._reasons: dict[str, str] = {}

    def check(self) -> None:
        super().check()
        self.memory_limit()  # raises on a malformed --mem
        self.walltime_seconds()  # and on a malformed --time

    def memory_limit(self) -> Optional[int]:
        mem = option_value(self.options, "--mem")
        return parse_memory(mem) if mem else super().memory_limit()

    def walltime_seconds(self) -> Optional[float]:
        """``walltime``, or ``--time``/``-t`` in ``slurm_opts``, in the whole minutes that
        Slurm rounds a time limit up to."""
        time_limit = option_value(self.options, "--time") or option_value(self.options, "-t")
        seconds = parse_time(time_limit) if time_limit else super().walltime_seconds()
        return None if seconds is None else math.ceil(seconds / 60) * 60

    def resource_patterns(self) -> dict[str, str]:
        return {"cores": r"^\s*(?:--cpus-per-task\b|-c\b)", "memory": r"^\s*--mem\b",
                "walltime": r"^\s*(?:--time\b|-t\b)",
                "gpus": r"^\s*(?:--gres[= ]\S*gpu|--gpus\b|-G\b)",
                "queue": r"^\s*(?:--partition\b|-p\b)", "account": r"^\s*(?:--account\b|-A\b)"}

    def resource_directives(self) -> list[str]:
        wanted = self.resources
        lines = [f"--cpus-per-task={wanted.cores}"] if wanted.cores else []
        lines += [f"--mem={format_memory(wanted.memory)}"] if wanted.memory else []
        lines += [f"--time={format_walltime(wanted.walltime)}"] if wanted.walltime else []
        lines += [f"--gres=gpu:{wanted.gpus}"] if wanted.gpus else []
        lines += [f"--partition={wanted.queue}"] if wanted.queue else []
        lines += [f"--account={wanted.account}"] if wanted.account else []
        return lines

    def directives(self, n_array_tasks: int) -> list[str]:
        limit = f"%{self.config.max_running}" if self.config.max_running else ""
        logs = f"{self.config.ssh_dir}/sheepdog-%A_%a"
        return [f"--array=1-{n_array_tasks}{limit}", "--job-name=sheepdog",
                f"--output={logs}.out", f"--error={logs}.err", *self.resource_directives(),
                *self.options]

    def submit_argv(self, path: str) -> list[str]:
        return ["sbatch", "--parsable", path]

    def parse_job_id(self, output: str) -> str:
        return parse_job_id(output)

    def list_queue(self, job_ids: Sequence[str]) -> str:
        result = self.run(["squeue", "-r", "-h", "-j", ",".join(job_ids), "-o", "%i %t %r"])
        if result.status != 0:
            if "Invalid job id" in result.stderr:
                return ""  # gone from the queue (one job asked about): its tasks have ended
            raise SchedulerQueryFailed(f"squeue failed: {result.stderr.strip()}")
        return result.stdout

    def tasks_in(self, listing: str, job_id: str) -> dict[int, str]:
        listed = parse_squeue(listing, job_id)
        self._reasons[job_id] = "; ".join(sorted({reason for state, reason in listed.values()
                                                  if live_state(state, reason) == HELD}))
        return {task: live_state(state, reason) for task, (state, reason) in listed.items()}

    def held_reason(self, job_id: str) -> str:
        return self._reasons.get(job_id) or "Slurm holds the task"

    def accounting(self, job_id: str) -> Optional[dict[int, TaskEnd]]:
        result = self.run(["sacct", "-X", "-P", "-n", "-j", job_id,
                           "--format=JobID,State,ExitCode"])
        if result.status != 0:
            return None  # accounting is off: the queue and the heartbeats must do
        words = {state: f"{said} ({state})" for state, limit in
                 (("TIMEOUT", "walltime"), ("OUT_OF_MEMORY", "memory"))
                 if (said := self.limit_words(limit)) is not None}
        return parse_sacct(result.stdout, job_id, words)

    def cancel_argv(self, job_id: str, tasks: Sequence[int] = ()) -> list[str]:
        return ["scancel", f"{job_id}_[{index_spec(sorted(tasks))}]" if tasks else job_id]

    def query_capacity(self) -> tuple[Optional[int], Optional[int]]:
        """CPUs (``sinfo``) and the largest array (``MaxArraySize``)."""
        cpus, limits = self.run_side_by_side(["sinfo", "-h", "-o", "%C"],
                                             ["scontrol", "show", "config"])
        return parse_total_cpus(cpus.stdout), parse_max_array_size(limits.stdout)

    def log_pattern(self, job_id: str, task_id: int) -> str:
        pattern = option_value(self.options, "--error") or \
            f"{self.config.ssh_dir}/sheepdog-%A_%a.err"
        return pattern.replace("%A", job_id).replace("%a", str(task_id)).replace("%j", "*")
