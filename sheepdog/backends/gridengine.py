"""GridEngine over SSH: qsub the job file, watch it with qstat and qacct, qdel it.

The job file is uploaded by SFTP into ``ssh_dir`` on the head node, submitted
with ``qsub -terse`` (which prints ``JOBID.1-N:1`` for an array job) and then
removed, since qsub keeps its own copy. Array tasks that have left ``qstat``
have ended; ``qacct`` says how (exit status, failure code). Tasks stuck in an
error state (``Eqw``: a missing shell, an unwritable ``-o`` path) never run, so
they count as ended too, with GridEngine's reason, and are deleted. Jobs are
submitted with ``-notify``, so a running task that ``qdel`` removes is warned
and reports itself deleted; such tasks, and those killed for exceeding a limit
such as ``h_rt``, are not retried.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import xml.etree.ElementTree as ElementTree
from typing import Optional

from .. import ssh
from ..tunnel import Tunnel
from . import Backend, SubmissionError, TaskEnd

#: This session's tunnels, one per head node and local server port, kept open for reuse.
_tunnels: dict[tuple[ssh.Destination, int], Tunnel] = {}
_tunnels_lock = threading.Lock()

#: Seconds a task may be missing from qstat without a qacct record before it counts as ended.
ACCOUNTING_GRACE_SECONDS = 15.0


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


def describe_accounting(fields: dict[str, str]) -> TaskEnd:
    """How a task ended, in GridEngine's words, from its qacct record."""
    status_text = (fields.get("exit_status") or "0").split()[0]
    status = int(status_text) if status_text.isdigit() else 0
    reason = f"exit status {status}"
    if status > 128:
        reason += f", signal {status - 128}"
    failed = fields.get("failed", "0")
    code = failed.split()[0] if failed else "0"
    if code != "0":
        reason += f"; GridEngine: failed {failed}"
    return TaskEnd(reason, retryable=code != _LIMIT_ENFORCED, exit_status=status)


class GridEngineBackend(Backend):
    """Submits array jobs with qsub on the head node, over SSH."""

    name = "gridengine"
    task_variable = "SGE_TASK_ID"
    kill_word = "deleted (qdel)"

    def __init__(self, config) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config)
        self._missing_since: dict[tuple[str, int], float] = {}
        self._capacity: Optional[tuple[Optional[int], Optional[int]]] = None

    @property
    def connection(self) -> ssh.Connection:
        return ssh.get(ssh.destination_for(self.config))

    def directives(self, n_array_tasks: int) -> list[str]:
        # -notify: qdel warns a running task (SIGUSR2), so it can say it was deleted.
        limit = [f"-tc {self.config.max_running}"] if self.config.max_running else []
        return [f"-S {self.config.shell}", f"-t 1-{n_array_tasks}", "-notify", *limit,
                *self.config.ge_opts]

    def capacity(self) -> tuple[Optional[int], Optional[int]]:
        """Slots (``qstat -g c``) and ``max_aj_tasks`` (``qconf -sconf``), asked once."""
        if self._capacity is None:
            slots = parse_total_slots(self._run("qstat -g c").stdout)
            max_array = parse_max_array_tasks(self._run("qconf -sconf").stdout)
            self._capacity = (slots, max_array)
        return self._capacity

    def _run(self, command: str) -> ssh.CommandResult:
        result = self.connection.run(command)
        if result.status == 127 or "command not found" in result.stderr:
            program = command.split()[0]
            raise SubmissionError(
                f"{program} was not found on {self.config.host} by a non-interactive SSH "
                f"command ({result.stderr.strip()}). Make GridEngine's environment load for "
                f"such commands, e.g. add 'source $SGE_ROOT/default/common/settings.sh' to "
                f"~/.bashrc on the head node, above any line that returns early for "
                f"non-interactive shells"
            )
        return result

    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        name = f"sheepdog_{request_id}_{secrets.token_hex(4)}.py"
        remote = self.connection.upload(script, f"{self.config.ssh_dir}/{name}")
        try:
            result = self._run(f"qsub -terse {ssh.quote(remote)}")
        finally:
            self.connection.run(f"rm -f {ssh.quote(remote)}")
        if result.status != 0:
            raise SubmissionError(
                f"qsub refused the job: {result.stderr.strip() or result.stdout.strip()}; "
                f"check ge_opts {list(self.config.ge_opts)}"
            )
        return parse_job_id(result.stdout)

    def _error_reasons(self, job_id: str) -> str:
        detail = self._run(f"qstat -j {job_id}").stdout
        reasons = [line.split(":", 1)[1].strip() for line in detail.splitlines()
                   if line.startswith("error reason")]
        return "; ".join(reasons) or "GridEngine put the task in error state"

    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        listed = parse_qstat_tasks(self._run("qstat -xml -g d").stdout, job_id)
        ended: dict[int, TaskEnd] = {}
        errored = sorted(task for task, state in listed.items() if "E" in state and task in candidates)
        if errored:
            reason = self._error_reasons(job_id)
            for task in errored:
                ended[task] = TaskEnd(f"GridEngine error state: {reason}", retryable=False)
            self._run(f"qdel {job_id} -t {errored[0]}-{errored[-1]}")
        missing = sorted(task for task in candidates if task not in listed)
        if not missing:
            return ended
        accounting: Optional[dict[int, dict[str, str]]] = None
        now = time.monotonic()
        for task in missing:
            first_seen = self._missing_since.setdefault((job_id, task), now)
            if accounting is None:
                accounting = parse_qacct(self._run(f"qacct -j {job_id}").stdout)
            if task in accounting:
                ended[task] = describe_accounting(accounting[task])
            elif now - first_seen > ACCOUNTING_GRACE_SECONDS:
                # A task that never ran leaves no accounting: it was deleted (qdel).
                ended[task] = TaskEnd(
                    "deleted from GridEngine before it ran (no accounting record)", retryable=False
                )
        return ended

    def cancel(self, job_id: str) -> None:
        self._run(f"qdel {job_id}")

    def deliver_key(self, request_id: int, key: str) -> str:
        """A 0600 file in the 0700 ``ssh_dir``: private, and seen by compute nodes that
        share the home directory (which the default ``-wd $HOME/.sheepdog/`` needs anyway)."""
        name = f"sheepdog_{request_id}_{secrets.token_hex(8)}.key"
        return self.connection.upload(key, f"{self.config.ssh_dir}/{name}")

    def withdraw_key(self, path: str) -> None:
        self.connection.run(f"rm -f {ssh.quote(path)}")

    def running_tasks(self, job_id: str) -> set[int]:
        listed = parse_qstat_tasks(self._run("qstat -xml -g d").stdout, job_id)
        return {task for task, state in listed.items() if "r" in state and "E" not in state}

    def task_output(self, job_id: str, task_id: int) -> str:
        """The tail of the task's ``-e`` file: in the ``-e`` directory of ``ge_opts``, else
        in the working directory or the home directory, as GridEngine names it."""
        directories = []
        for option in self.config.ge_opts:
            flag, _, value = option.strip().partition(" ")
            if flag in ("-e", "-wd") and value.strip():
                directories.append(value.strip().rstrip("/"))
        directories.append("$HOME")
        # Left unquoted on purpose: the remote shell expands $HOME and the glob.
        patterns = " ".join(f"{directory}/*.e{job_id}.{task_id}" for directory in directories)
        result = self.connection.run(
            f"for f in {patterns}; do if [ -f \"$f\" ]; then tail -c 4000 \"$f\"; break; fi; done")
        return result.stdout

    def reverse_route(self, local_port: int) -> Optional[tuple[str, int]]:
        """A tunnel back to this machine through the head node (see ``tunnel.py``)."""
        key = (self.connection.target, local_port)
        with _tunnels_lock:
            if key not in _tunnels:
                _tunnels[key] = Tunnel(self.connection, local_port,
                                       python=self.config.shell or "python3")
            return _tunnels[key].open()

    def close(self) -> None:
        self.connection.close()
