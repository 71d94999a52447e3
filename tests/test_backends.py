"""The contract every batch scheduler backend keeps, fed its scheduler's recorded output.

A :class:`RecordedShell` stands in for the head node: it answers each command
with what the real scheduler printed (``tests/support/recorded/<scheduler>/``, whose
README says how each file was made). Every backend passes the same tests in
:class:`Contract`; each scheduler's subclass only says, as data, which
recording shows what. The golden header files pin each backend's own
rendering of a job's header.
"""

from pathlib import Path
from typing import NamedTuple

import pytest

from sheepdog.backends import SubmissionError, create
from sheepdog.backends.batch import PENDING, RUNNING
from sheepdog.config import resolve
from sheepdog.remote.ssh import CommandResult

RECORDED = Path(__file__).parent / "support" / "recorded"
GOLDEN = Path(__file__).parent / "support" / "golden"


def recorded(name):
    return (RECORDED / name).read_text()


def ok(text):
    return CommandResult(0, text, "")


class RecordedShell:
    """A head node that answers commands with recorded output, and notes what it ran."""

    where = "headnode"

    def __init__(self, answers):
        #: command prefix -> CommandResult; the longest prefix that matches wins
        self.answers = answers
        self.commands = []
        self.files = {}

    def run(self, argv, timeout=120.0, once=False):
        self.commands.append(list(argv))
        command = " ".join(argv)
        matches = [prefix for prefix in self.answers if command.startswith(prefix)]
        return self.answers[max(matches, key=len)] if matches else ok("")

    def script(self, text, timeout=120.0):
        return self.run(["sh", "-c", text], timeout)

    def put(self, text, path):
        self.files[f"/home/user/{path}"] = text
        return f"/home/user/{path}"

    def reverse_route(self, local_port, python):
        return None

    def close(self):
        pass


class Scene(NamedTuple):
    """A job as the scheduler's recorded output showed it at one moment."""

    job: str
    answers: dict
    #: task -> (retryable, words its reason must contain), for tasks that have ended
    ended: dict
    #: task -> shared state, for tasks still live
    live: dict


class Contract:
    scheduler: str
    options: dict
    submit_output: str
    job_id: str
    scenes: list
    #: (scene index, task): a task gone from the queue with no accounting record yet
    lagging: tuple
    #: what cancel runs for a job id
    cancel_argv: list
    #: the commands that remove held tasks of scene 0 (if any are held)
    held_removal: list
    memory: tuple  # (options with a memory size, bytes)

    def backend(self, answers=None, **conf):
        config = resolve({"scheduler": self.scheduler, "host": "headnode", **self.options, **conf})
        backend = create(config)
        backend.shell = RecordedShell(answers or {})
        return backend

    def test_submit_returns_the_job_id_and_leaves_no_job_file_behind(self):
        backend = self.backend({backend_submit(self): ok(self.submit_output)})
        assert backend.submit("#!/usr/bin/python3\n", 7, 3) == self.job_id
        (path,) = backend.shell.files
        assert backend.shell.commands[-1] == ["rm", "-f", path]

    def test_a_refused_submission_carries_the_schedulers_words(self):
        backend = self.backend({backend_submit(self): CommandResult(1, "", "no such queue")})
        with pytest.raises(SubmissionError, match="refused the job: no such queue"):
            backend.submit("#!/usr/bin/python3\n", 7, 3)

    def test_options_are_blamed_only_when_the_scheduler_refused_one(self):
        for said, blamed in ((self.refused_option_words, True), ("disk quota exceeded", False)):
            backend = self.backend({backend_submit(self): CommandResult(1, "", said)})
            with pytest.raises(SubmissionError) as refused:
                backend.submit("#!/usr/bin/python3\n", 7, 3)
            assert (f"check {backend.options_key}" in str(refused.value)) is blamed, said

    def test_a_scheduler_that_cannot_be_reached_is_named_and_the_options_are_not_blamed(self):
        backend = self.backend({backend_submit(self): CommandResult(1, "", self.down_words)})
        with pytest.raises(SubmissionError) as refused:
            backend.submit("#!/usr/bin/python3\n", 7, 3)
        message = str(refused.value)
        assert f"could not reach {backend.controller} from headnode" in message
        assert "check" not in message and self.down_words in message

    def test_no_host_and_no_scheduler_commands_here_says_no_cluster_is_configured(self):
        missing = CommandResult(127, "", "qsub: command not found")
        backend = self.backend({backend_submit(self): missing}, host=None)
        with pytest.raises(SubmissionError) as refused:
            backend.submit("#!/usr/bin/python3\n", 7, 3)
        message = str(refused.value)
        assert message.startswith("no cluster is configured") and "bashrc" not in message
        assert all(way in message for way in ("'host'", "'scheduler': 'local'", "profile"))

    def test_a_scheduler_command_missing_from_a_non_interactive_shell_is_explained(self):
        missing = CommandResult(127, "", "bash: line 1: command not found")
        backend = self.backend({backend_submit(self): missing})
        with pytest.raises(SubmissionError, match="was not found on headnode.*bashrc"):
            backend.submit("#!/usr/bin/python3\n", 7, 3)

    def test_every_recorded_ending_is_told_apart(self):
        for scene in self.scenes:
            backend = self.backend(scene.answers)
            ended = backend.ended_tasks(scene.job, set(scene.ended) | set(scene.live))
            assert set(ended) == set(scene.ended), scene.job
            for task, (retryable, words) in scene.ended.items():
                assert ended[task].retryable is retryable, (scene.job, task, ended[task])
                assert words in ended[task].reason, (scene.job, task, ended[task])

    def test_live_tasks_are_pending_running_or_held(self):
        for scene in self.scenes:
            live = self.backend(scene.answers).live_tasks(scene.job)
            assert {task: live[task] for task in scene.live} == scene.live, scene.job

    def test_one_listing_of_the_queue_answers_for_the_jobs_asked_about_lately(self, monkeypatch):
        """A warm pool's look asks about each of its jobs: the scheduler is asked once a
        look, not once a job; a job submitted or cancelled here is listed afresh."""
        clock = [1000.0]
        monkeypatch.setattr("sheepdog.backends.batch.time.monotonic", lambda: clock[0])
        scene, other = self.scenes[0], "424242"
        backend = self.backend(scene.answers)
        for job in (scene.job, other, scene.job, other):
            backend.running_tasks(job)
        assert backend.queries == (1 if backend.lists_every_job else 2)
        clock[0] += 3  # the next look
        for job in (scene.job, other):
            backend.running_tasks(job)
        assert backend.queries == (2 if backend.lists_every_job else 3)
        if not backend.lists_every_job:  # both jobs, in one listing
            assert other in " ".join(backend.shell.commands[-1])
        backend.cancel(other)
        backend.running_tasks(scene.job)
        assert backend.queries == (3 if backend.lists_every_job else 4)

    def test_running_tasks_are_those_the_scheduler_runs(self):
        scene = self.scenes[0]
        expected = {task for task, state in scene.live.items() if state == RUNNING}
        assert self.backend(scene.answers).running_tasks(scene.job) == expected

    def test_held_tasks_are_removed_from_the_queue(self):
        scene = self.scenes[0]
        backend = self.backend(scene.answers)
        backend.ended_tasks(scene.job, set(scene.ended) | set(scene.live))
        for argv in self.held_removal:
            assert argv in backend.shell.commands

    def test_a_task_without_accounting_yet_is_given_a_grace_period(self, monkeypatch):
        index, task = self.lagging
        scene = self.scenes[index]
        clock = [1000.0]
        monkeypatch.setattr("sheepdog.backends.batch.time.monotonic", lambda: clock[0])
        backend = self.backend(scene.answers)
        assert task not in backend.ended_tasks(scene.job, {task})
        clock[0] += backend.accounting_grace + 1
        assert backend.ended_tasks(scene.job, {task})[task] == backend.no_record

    def test_a_tasks_log_is_named_with_where_it_is(self):
        location = self.backend().log_location("4321", 7)
        assert "4321" in location and "7" in location and location.endswith("on headnode")

    def test_cancel_removes_the_whole_job(self):
        backend = self.backend()
        backend.cancel(self.job_id)
        assert backend.shell.commands[-1] == self.cancel_argv

    def test_a_memory_size_in_the_options_becomes_the_workers_limit(self):
        options, expected = self.memory
        assert self.backend(**options).memory_limit() == expected
        assert self.backend(**{key: [] for key in options}).memory_limit() is None

    def test_options_for_another_scheduler_are_refused_naming_the_right_key(self):
        other = {"gridengine": "slurm_opts", "slurm": "ge_opts"}[self.scheduler]
        backend = self.backend(**{other: ["-x"]})
        with pytest.raises(ValueError, match=f"use '{backend.options_key}'"):
            backend.check()

    def test_the_header_matches_the_golden_file(self):
        """Regenerate after an intended change with ``python -m tests.support.regenerate_golden``."""
        header = "\n".join(self.backend(max_running=4).header(250)) + "\n"
        assert header == (GOLDEN / f"header-{self.scheduler}.txt").read_text()


def backend_submit(contract):
    return {"gridengine": "qsub", "slurm": "sbatch"}[contract.scheduler]


GE = "gridengine/"
GE_JOBS = dict(line.split() for line in recorded(GE + "jobs-in-qstat.txt").splitlines())
GE_ENDS = recorded(GE + "qsub-terse-ends.txt").split(".")[0].strip()
GE_H_RT = recorded(GE + "qsub-terse-h_rt.txt").strip()


class TestGridEngine(Contract):
    scheduler = "gridengine"
    #: What Debian's qsub 8.1.9 printed for a missing resource, and with its qmaster down.
    refused_option_words = 'Unable to run job: unknown resource "no_such_resource".'
    down_words = ("error: commlib error: got select error (Connection refused)\nUnable to "
                  'run job: unable to send message to qmaster using port 6444 on host "vm": '
                  "got send error")
    options = {"ge_opts": ["-wd $HOME/.sheepdog/", "-l h_rt=1:00:00"]}
    submit_output = recorded(GE + "qsub-terse-array.txt")
    job_id = GE_JOBS["split"]
    cancel_argv = ["qdel", GE_JOBS["split"]]
    memory = ({"ge_opts": ["-l h_rt=60,mem_grab=2G"]}, 2 * 2**30)
    scenes = [
        # Job "error" in Eqw, beside "split" with 1-2 running and 3-6 waiting.
        Scene(GE_JOBS["error"], {
            "qstat -xml -g d": ok(recorded(GE + "qstat-running-pending-eqw.xml")),
            "qstat -j": ok(recorded(GE + "qstat-j-eqw.txt")),
        }, {1: (False, 'unable to find shell "/nonexistent/python9.9"'),
            2: (False, "holds it"), 3: (False, "holds it")}, {}),
        Scene(GE_JOBS["split"], {
            "qstat -xml -g d": ok(recorded(GE + "qstat-running-pending-eqw.xml")),
        }, {}, {1: RUNNING, 2: RUNNING, 3: PENDING, 6: PENDING}),
        # The same job after qdel: 1-2 killed while running (warned), 3-6 never ran.
        Scene(GE_JOBS["split"], {
            "qstat -xml -g d": ok(recorded(GE + "qstat-after.xml")),
            "qacct -j": ok(recorded(GE + "qacct-deleted.txt")),
        }, {1: (True, "exit status 140, signal 12"), 2: (True, "failed 100")}, {}),
        # Exit 0 without reporting, exit 3, killed by SIGKILL: all may be retried.
        Scene(GE_ENDS, {
            "qstat -xml -g d": ok(recorded(GE + "qstat-after.xml")),
            "qacct -j": ok(recorded(GE + "qacct-ends.txt")),
        }, {1: (True, "exit status 0"), 2: (True, "exit status 3"),
            3: (True, "exit status 137, signal 9")}, {}),
        # Over h_rt: not retried.
        Scene(GE_H_RT, {
            "qstat -xml -g d": ok(recorded(GE + "qstat-after.xml")),
            "qacct -j": ok(recorded(GE + "qacct-h_rt.txt")),
        }, {1: (False, "failed 37")}, {}),
    ]
    lagging = (2, 4)  # task 4 of "split" after qdel: deleted before it ran, no record
    held_removal = [["qdel", GE_JOBS["error"], "-t", "1-3"]]

    def test_a_scheduler_that_cannot_answer_concludes_nothing(self):
        backend = self.backend({"qstat": CommandResult(1, "", "error: commlib error")})
        assert backend.ended_tasks(self.job_id, {1, 2}) == {}
        assert backend.running_tasks(self.job_id) == set()


SL = "slurm/"
SL_JOBS = dict(line.split() for line in recorded(SL + "jobs.txt").splitlines())
SQUEUE = "squeue -r -h -j"
SACCT = "sacct -X -P -n -j"
NOT_FOUND = CommandResult(1, "", recorded(SL + "squeue-not-found.txt"))


class TestSlurm(Contract):
    scheduler = "slurm"
    #: What Debian's sbatch 22.05 prints for a missing partition, and with slurmctld down.
    refused_option_words = ("sbatch: error: invalid partition specified: no_such_partition\n"
                            "sbatch: error: Batch job submission failed: Invalid partition "
                            "name specified")
    down_words = ("sbatch: error: Batch job submission failed: Unable to contact slurm "
                  "controller (connect failure)")
    options = {"slurm_opts": ["--time=1:00:00", "--partition=debug"]}
    submit_output = recorded(SL + "sbatch-parsable-array.txt")
    job_id = SL_JOBS["split"]
    cancel_argv = ["scancel", SL_JOBS["split"]]
    memory = ({"slurm_opts": ["--mem=2G"]}, 2 * 2**30)
    scenes = [
        # "requeued": 47_1 requeue-held (SE), 47_2 pending in held state, 47_3 waiting again.
        Scene(SL_JOBS["requeued"], {SQUEUE: ok(recorded(SL + "squeue-r-i-t-r.txt")),
                                    SACCT: ok(recorded(SL + "sacct-queue.txt"))},
              {1: (False, "holds it"), 2: (False, "job requeued in held state")},
              {3: PENDING}),
        Scene(SL_JOBS["split"], {SQUEUE: ok(recorded(SL + "squeue-r-i-t-r.txt")),
                                 SACCT: ok(recorded(SL + "sacct-queue.txt"))},
              {}, {1: RUNNING, 2: RUNNING, 3: PENDING, 6: PENDING}),
        Scene(SL_JOBS["held"], {SQUEUE: ok(recorded(SL + "squeue-r-i-t-r.txt"))},
              {task: (False, "JobHeldUser") for task in range(1, 6)}, {}),
        # scancel of "split": two running tasks cancelled, four that never ran in one record.
        Scene(SL_JOBS["split"], {SQUEUE: NOT_FOUND,
                                 SACCT: ok(recorded(SL + "sacct-cancelled.txt"))},
              {task: (False, "cancelled (scancel)") for task in range(1, 7)}, {}),
        # Exit 0 without reporting, exit 3, killed by SIGKILL, by SIGTERM: may be retried.
        Scene(SL_JOBS["ends"], {SQUEUE: ok(""), SACCT: ok(recorded(SL + "sacct-ends.txt"))},
              {1: (True, "exit status 0"), 2: (True, "exit status 3"),
               3: (True, "signal 9"), 4: (True, "signal 15")}, {}),
        Scene(SL_JOBS["timelimit"], {SQUEUE: ok(""),
                                     SACCT: ok(recorded(SL + "sacct-timeout.txt"))},
              {1: (False, "TIMEOUT")}, {}),
        Scene(SL_JOBS["node_fail"], {SQUEUE: ok(""),
                                     SACCT: ok(recorded(SL + "sacct-node-fail.txt"))},
              {1: (True, "NODE_FAIL")}, {}),
        # Over --mem without cgroups: FAILED 0:9, as a crash.
        Scene(SL_JOBS["oom"], {SQUEUE: ok(""), SACCT: ok(recorded(SL + "sacct-oom.txt"))},
              {1: (True, "signal 9")}, {}),
        # sacct's first answer for a new job: one record for the whole array.
        Scene(SL_JOBS["lag"], {SQUEUE: ok(""), SACCT: ok(
            recorded(SL + "sacct-lag.txt").split("# 1.3")[0])}, {}, {}),
    ]
    lagging = (8, 2)  # a task of "lag" before its own record appears
    held_removal = [["scancel", f"{SL_JOBS['requeued']}_[1-2]"]]

    def test_sbatch_output_with_a_cluster_name_gives_the_job_id(self):
        backend = self.backend({"sbatch": ok(recorded(SL + "sbatch-parsable-cluster.txt"))})
        assert backend.submit("#!/usr/bin/python3\n", 1, 1) == SL_JOBS["cluster"]

    def test_without_accounting_a_task_gone_from_the_queue_is_lost_after_the_grace(
            self, monkeypatch):
        clock = [1000.0]
        monkeypatch.setattr("sheepdog.backends.batch.time.monotonic", lambda: clock[0])
        off = CommandResult(1, "", "sacct: error: Slurm accounting storage is disabled")
        backend = self.backend({SQUEUE: ok(""), SACCT: off})
        assert backend.ended_tasks("99", {1}) == {}
        clock[0] += backend.accounting_grace + 1
        (end,) = backend.ended_tasks("99", {1}).values()
        assert end.retryable and "keeps no accounting" in end.reason

    def test_capacity_is_the_total_cpus_and_the_largest_array(self):
        backend = self.backend({"sinfo": ok(recorded(SL + "sinfo-C.txt")),
                                "scontrol show config": ok(recorded(SL + "scontrol-show-config.txt"))})
        assert backend.capacity() == (8, 100000)


def test_a_tasks_output_is_read_from_its_own_log_when_job_ids_come_round_again(tmp_path):
    """A stale log of an earlier job with the same id (ids restart) is not taken for it."""
    import os
    import time

    from sheepdog.remote.shells import LocalShell

    config = resolve({"scheduler": "gridengine", "ge_opts": [f"-e {tmp_path}/"]})
    backend = create(config)
    backend.shell = LocalShell()
    (tmp_path / "sheepdog_1_old.py.e5.1").write_text("an earlier job's words\n")
    os.utime(tmp_path / "sheepdog_1_old.py.e5.1", (time.time() - 3600,) * 2)
    (tmp_path / "sheepdog_7_new.py.e5.1").write_text("this job's words\n")
    assert backend.task_output("5", 1) == "this job's words\n"  # the newest, unnamed
    backend.job_names["5"] = "sheepdog_1_old.py"
    assert backend.task_output("5", 1) == "an earlier job's words\n"  # the one named
