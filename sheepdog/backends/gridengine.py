"""GridEngine: qsub the job file, watch it with qstat and qacct, qdel it.

Only what is GridEngine's own lives here; ``batch.py`` does the rest. Jobs
are submitted with ``qsub -terse`` (which prints ``JOBID.1-N:1`` for an array
job) and ``-notify``, so a running task that ``qdel`` removes, or that is about
to exceed a limit such as ``h_rt``, gets SIGUSR2 first and reports itself
killed on purpose; such tasks are not retried. Array tasks that have left
``qstat`` have ended, and ``qacct`` says how (exit status, failure code). Tasks
stuck in an error state (``Eqw``: a missing shell, an unwritable ``-o`` path)
never run: they count as held, with GridEngine's reason, and are deleted.
``-l mem_grab=SIZE`` in ``ge_opts`` (the original Sheepdog's memory resource)
becomes the workers' address-space limit. Resources named in the config become
``-pe``, ``-l h_vmem`` (per slot), ``-l h_rt``, the site's GPU complex, ``-q``
and ``-P`` (docs/resources.rst).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from typing import Mapping, Optional, Sequence

from ..resources import format_memory, format_walltime
from .base import SubmissionError, TaskEnd
from .batch import HELD, PENDING, RUNNING, BatchBackend, SchedulerQueryFailed, option_value


def parse_job_id(terse_output: str) -> str:
    """The job id from ``qsub -terse`` output (``123`` or ``123.1-20:1``)."""
    match = re.match(r"\s*(\d+)", terse_output)
    if not match:
        raise SubmissionError(f"qsub did not print a job id: {terse_output.strip()!r}")
    return match.group(1)


def parse_qstat_tasks(xml_text: str, job_id: str) -> dict[int, str]:
    """Array task id -> state letters (``qw``, ``r``, ``Eqw``...) of ``job_id`` in ``qstat -xml -g d``."""
    tasks: dict[int, str] = {}
    root = ElementTree.fromstring(xml_text)
    for job in root.iter("job_list"):
        if job.findtext("JB_job_number") != job_id:
            continue
        state = job.findtext("state") or ""
        for task_text in (job.findtext("tasks") or "1").split(","):
            task_ids = _expand_task_range(task_text)
            tasks.update((task_id, state) for task_id in task_ids)
    return tasks


def _expand_task_range(text: str) -> range:
    """``5`` or ``1-10:1`` (how qstat lists pending tasks it has not split) -> ids."""
    match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", text)
    if not match:
        return range(0)
    first = int(match.group(1))
    last = int(match.group(2) or first)
    step = int(match.group(3) or 1)
    return range(first, last + 1, step)


def parse_max_array_tasks(sconf_text: str) -> Optional[int]:
    """``max_aj_tasks`` from ``qconf -sconf`` output (0 means unlimited)."""
    match = re.search(r"^max_aj_tasks\s+(\d+)", sconf_text, flags=re.MULTILINE)
    if match is None:
        return None
    return int(match.group(1)) or None


def parse_total_slots(cluster_queue_text: str) -> Optional[int]:
    """The TOTAL slots of all cluster queues, from ``qstat -g c`` output."""
    lines = cluster_queue_text.splitlines()
    header = next((line.replace("CLUSTER QUEUE", "CLUSTER_QUEUE").split()
                   for line in lines if line.startswith("CLUSTER QUEUE")), None)
    if header is None or "TOTAL" not in header:
        return None
    column = header.index("TOTAL")
    totals = [int(fields[column]) for fields in (line.split() for line in lines)
              if len(fields) == len(header) and fields[column].isdigit()]
    return sum(totals) or None


def parse_qacct(text: str) -> dict[int, dict[str, str]]:
    """Array task id -> qacct fields (``failed``, ``exit_status``, ...)."""
    records: dict[int, dict[str, str]] = {}
    for block in re.split(r"^=+\s*$", text, flags=re.MULTILINE):
        fields = {}
        for line in block.strip().splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
        task = fields.get("taskid", "")
        if task.isdigit():
            records[int(task)] = fields
        elif task == "undefined" and fields.get("jobnumber"):
            records[1] = fields
    return records


#: qacct ``failed`` code after which running the task again would not help: a
#: limit (h_rt, h_cpu, h_vmem) was enforced. (100, "assumedly after job",
#: follows both a qdel and a crash, so it says nothing; a qdel'd running task
#: reports itself, thanks to -notify.)
_LIMIT_ENFORCED = "37"


def describe_accounting(fields: dict[str, str], limits: Optional[Mapping[str, float]] = None,
                        words: Optional[Mapping[str, str]] = None) -> TaskEnd:
    """How a task ended, in GridEngine's words, from its qacct record.

    A limit enforced is said in ``words`` (by limit, ``"walltime"`` or
    ``"memory"``) when given: it was the walltime if the task ran that long
    (``limits["walltime"]`` seconds, ``ru_wallclock``), else the memory.
    """
    status_text = (fields.get("exit_status") or "0").split()[0]
    status = int(status_text) if status_text.isdigit() else 0
    reason = f"exit status {status}"
    if status > 128:
        reason += f", signal {status - 128}"
    failed = fields.get("failed", "0")
    code = failed.split()[0] if failed else "0"
    if code != "0":
        reason += f"; GridEngine: failed {failed}"
    limits, words = limits or {}, words or {}
    if code == _LIMIT_ENFORCED:
        clock = re.match(r"\s*([0-9.]+)", fields.get("ru_wallclock", ""))
        ran_out = "walltime" in limits and (
            clock is None or float(clock.group(1)) >= limits["walltime"] - 1)
        limit = "walltime" if ran_out or "memory" not in words else "memory"
        if limit in words:
            reason = f"{words[limit]} ({reason})"
    return TaskEnd(reason, retryable=code != _LIMIT_ENFORCED, exit_status=status)


def parse_memory(text: str) -> int:
    """GridEngine memory specifier to bytes: k/m/g/t are powers of 1000, K/M/G/T of 1024."""
    multipliers = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                   "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    match = re.fullmatch(r"([0-9.]+)([kKmMgGtT]?)", text.strip())
    if not match:
        raise ValueError(f"mem_grab={text!r} is not a GridEngine memory size such as 2G or 500M")
    return int(float(match.group(1)) * multipliers[match.group(2)])


def parse_time(text: str) -> float:
    """A GridEngine time (``h_rt``) in seconds: ``H:M:S`` or seconds."""
    parts = text.strip().split(":")
    if len(parts) > 3 or not all(re.fullmatch(r"\d*(?:\.\d+)?", part) for part in parts):
        raise ValueError(f"h_rt={text!r} is not a GridEngine time such as 2:00:00 or 7200")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part or 0)
    return seconds


def resource_value(options: Sequence[str], name: str) -> Optional[str]:
    """The value of ``-l name=VALUE`` in ``options`` (also in a list: ``-l a=1,name=2``)."""
    for option in options:
        match = re.search(rf"(?:^|[\s,]){re.escape(name)}=([^\s,]+)", option)
        if match:
            return match.group(1)
    return None


def live_state(letters: str) -> str:
    """The shared state of a task from qstat's state letters (``qw``, ``r``, ``Eqw``...)."""
    if "E" in letters:
        return HELD
    return RUNNING if "r" in letters or "t" in letters else PENDING


class GridEngineBackend(BatchBackend):
    """Array jobs with qsub, on the head node over SSH or on this machine."""

    name = "gridengine"
    task_variable = "SGE_TASK_ID"
    kill_word = "deleted (qdel)"
    kill_signals = ("SIGUSR2",)
    header_prefix = "#$"
    options_key = "ge_opts"
    submit_program = "qsub"
    controller = "the GridEngine master (sge_qmaster)"
    unreachable = re.compile(r"unable to (?:contact|send message to) qmaster|commlib error|"
                             r"cannot reach qmaster", re.IGNORECASE)
    refused_option = re.compile(r"unknown (?:resource|queue|option|parallel environment|"
                                r"project)|invalid option|-l option|job was rejected|"
                                r"not a valid|denied", re.IGNORECASE)
    no_record = TaskEnd("deleted from GridEngine before it ran (no accounting record)",
                        retryable=False)

    def check(self) -> None:
        super().check()
        self.memory_limit()  # raises on a malformed mem_grab
        self.walltime_seconds()  # and on a malformed h_rt
        if self.resources.gpus is not None and self.config.gpu_resource is None:
            raise ValueError(
                f"config key 'gpus' is {self.resources.gpus}, but GridEngine has no standard "
                f"GPU resource: set 'gpu_resource' to your site's GPU complex (the name in "
                f"`qconf -sc`, such as 'gpu'), and sheepdog asks for -l <gpu_resource>=N")

    def memory_limit(self) -> Optional[int]:
        """Bytes of ``memory``, or of ``-l mem_grab=SIZE`` in ``ge_opts``: workers enforce it."""
        mem_grab = resource_value(self.options, "mem_grab")
        return parse_memory(mem_grab) if mem_grab else super().memory_limit()

    def walltime_seconds(self) -> Optional[float]:
        """``walltime``, or ``-l h_rt=`` in ``ge_opts``."""
        h_rt = resource_value(self.options, "h_rt")
        return parse_time(h_rt) if h_rt else super().walltime_seconds()

    def resource_patterns(self) -> dict[str, str]:
        patterns = {"cores": r"^\s*-pe\b", "memory": r"(?:^|[\s,])(?:h_vmem|mem_grab)=",
                    "walltime": r"(?:^|[\s,])h_rt=", "queue": r"^\s*-q\b",
                    "account": r"^\s*-P\b"}
        if self.config.gpu_resource:
            patterns["gpus"] = rf"(?:^|[\s,]){re.escape(self.config.gpu_resource)}="
        return patterns

    def resource_directives(self) -> list[str]:
        """``h_vmem`` counts per slot, so it is ``memory`` shared among the ``cores``."""
        wanted = self.resources
        lines = [f"-pe {self.config.pe_name} {wanted.cores}"] if wanted.cores else []
        if wanted.memory is not None:
            lines.append(f"-l h_vmem={format_memory(-(-wanted.memory // (wanted.cores or 1)))}")
        if wanted.walltime is not None:
            lines.append(f"-l h_rt={format_walltime(wanted.walltime)}")
        if wanted.gpus is not None:
            lines.append(f"-l {self.config.gpu_resource}={wanted.gpus}")
        lines += [f"-q {wanted.queue}"] if wanted.queue else []
        lines += [f"-P {wanted.account}"] if wanted.account else []
        return lines

    def directives(self, n_array_tasks: int) -> list[str]:
        # -notify: qdel warns a running task (SIGUSR2), so it can say it was deleted.
        limit = [f"-tc {self.config.max_running}"] if self.config.max_running else []
        return [f"-S {self.config.shell}", f"-t 1-{n_array_tasks}", "-notify", *limit,
                *self.resource_directives(), *self.options]

    def submit_argv(self, path: str) -> list[str]:
        return ["qsub", "-terse", path]

    def parse_job_id(self, output: str) -> str:
        return parse_job_id(output)

    lists_every_job = True

    def list_queue(self, job_ids: Sequence[str]) -> str:
        result = self.run(["qstat", "-xml", "-g", "d"])
        if result.status != 0:
            raise SchedulerQueryFailed(f"qstat failed: {result.stderr.strip()}")
        return result.stdout

    def tasks_in(self, listing: str, job_id: str) -> dict[int, str]:
        listed = parse_qstat_tasks(listing, job_id)
        return {task: live_state(letters) for task, letters in listed.items()}

    def held_reason(self, job_id: str) -> str:
        detail = self.run(["qstat", "-j", job_id]).stdout
        reasons = [line.split(":", 1)[1].strip() for line in detail.splitlines()
                   if line.startswith("error reason")]
        return "; ".join(reasons) or "GridEngine put the task in error state"

    def accounting(self, job_id: str) -> Optional[dict[int, TaskEnd]]:
        records = parse_qacct(self.run(["qacct", "-j", job_id]).stdout)
        walltime = self.walltime_seconds()
        limits = {} if walltime is None else {"walltime": walltime}
        words = {limit: said for limit in ("walltime", "memory")
                 if (said := self.limit_words(limit)) is not None}
        return {task: describe_accounting(fields, limits, words)
                for task, fields in records.items()}

    def cancel_argv(self, job_id: str, tasks: Sequence[int] = ()) -> list[str]:
        return ["qdel", job_id, "-t", f"{min(tasks)}-{max(tasks)}"] if tasks else ["qdel", job_id]

    def query_capacity(self) -> tuple[Optional[int], Optional[int]]:
        """Slots (``qstat -g c``) and ``max_aj_tasks`` (``qconf -sconf``)."""
        slots, limits = self.run_side_by_side(["qstat", "-g", "c"], ["qconf", "-sconf"])
        return parse_total_slots(slots.stdout), parse_max_array_tasks(limits.stdout)

    def log_pattern(self, job_id: str, task_id: int) -> str:
        """``<dir>/<job name>.e<job>.<task>`` in the ``-e`` directory, else ``-wd``, else home."""
        directory = option_value(self.options, "-e") or option_value(self.options, "-wd")
        directories = [directory.rstrip("/")] if directory else []
        name = self.job_names.get(job_id, "*")  # known for the jobs submitted here
        return " ".join(f"{d}/{name}.e{job_id}.{task_id}" for d in [*directories, "$HOME"])
