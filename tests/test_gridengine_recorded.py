"""The GridEngine backend fed real, recorded qsub, qstat and qacct output.

The recordings in ``tests/support/recorded/gridengine`` (its README says how each was
made) come from the test cluster; here a head node that answers commands with
them stands in for the SSH shell, so the parsers and ``ended_tasks`` (error
states, the accounting grace period) are pinned without a cluster.
"""

import shlex
import sys
import types
from pathlib import Path

import pytest

from sheepdog.backends import SubmissionError, TaskEnd
from sheepdog.backends.gridengine import (
    GridEngineBackend,
    _expand_task_range,
    describe_accounting,
    parse_job_id,
    parse_max_array_tasks,
    parse_qacct,
    parse_qstat_tasks,
    parse_total_slots,
)
from sheepdog.config import resolve
from sheepdog.remote.shells import Shell
from sheepdog.remote.ssh import CommandResult

RECORDED = Path(__file__).parent / "support" / "recorded" / "gridengine"


def recorded(name):
    return (RECORDED / name).read_text()


#: The jobs in the qstat snapshots, by what they were made to show.
JOBS = dict(line.split() for line in recorded("jobs-in-qstat.txt").splitlines())
SPLIT, ERROR, HELD, RANGE, PLAIN = (JOBS[name] for name in ("split", "error", "held", "range",
                                                            "plain"))
ENDS = parse_job_id(recorded("qsub-terse-ends.txt"))
OVER_H_RT = parse_job_id(recorded("qsub-terse-h_rt.txt"))
SINGLE = parse_job_id(recorded("qsub-terse-single.txt"))

DETAILED = recorded("qstat-running-pending-eqw.xml")
RANGES = recorded("qstat-ranges.xml")
AFTER = recorded("qstat-after.xml")

#: The tasks of each job at the moment of the snapshots, as the recording shows them.
AT_THE_SNAPSHOT = {
    SPLIT: {1: "r", 2: "r", 3: "qw", 4: "qw", 5: "qw", 6: "qw"},
    ERROR: {1: "Eqw", 2: "Eqw", 3: "Eqw"},
    HELD: {1: "hqw", 2: "hqw", 4: "hqw", 5: "hqw"},  # task 3 was deleted
    RANGE: {1: "r", **{task: "qw" for task in range(2, 41)}},
    PLAIN: {1: "r"},  # not an array: qstat lists no task, and it counts as task 1
}


class RecordedHead(Shell):
    """A head node that answers with recorded output, and notes what it was asked to run."""

    where = "headnode"

    def __init__(self, qstat=DETAILED, accounting=None):
        self.qstat = qstat
        #: job id -> recorded ``qacct -j`` output; other jobs have no record yet.
        self.accounting = dict(accounting or {})
        self.commands = []
        self.uploaded = {}

    def run(self, argv, timeout=120.0, once=False):
        command = shlex.join(argv)
        self.commands.append(command)
        if command == "qstat -xml -g d":
            return CommandResult(0, self.qstat, "")
        if command == f"qstat -j {ERROR}":
            return CommandResult(0, recorded("qstat-j-eqw.txt"), "")
        if argv[:2] == ["qstat", "-j"]:
            return CommandResult(1, "", recorded("qstat-j-not-found.txt").replace("999999999",
                                                                                   argv[2]))
        if argv[:2] == ["qacct", "-j"]:
            if argv[2] in self.accounting:
                return CommandResult(0, self.accounting[argv[2]], "")
            not_found = recorded("qacct-not-found.txt").replace("999999999", argv[2])
            return CommandResult(1, "", not_found)
        if command == "qstat -g c":
            return CommandResult(0, recorded("qstat-g-c.txt"), "")
        if command == "qconf -sconf":
            return CommandResult(0, recorded("qconf-sconf.txt"), "")
        if argv[0] == "qsub":
            return CommandResult(0, recorded("qsub-terse-array.txt"), "")
        if argv[0] in ("qdel", "rm"):
            return CommandResult(0, "", "")
        raise AssertionError(f"the backend ran {command!r}, which this head node has no "
                             f"recording of")

    def put(self, text, path):
        self.uploaded[path] = text
        return f"/home/sheepdog/{path}"


@pytest.fixture
def head():
    return RecordedHead()


@pytest.fixture
def clock(monkeypatch):
    """The monotonic clock of ``ended_tasks``, moved on by hand: ``clock.now += seconds``."""
    fake = types.SimpleNamespace(now=1000.0)
    fake.monotonic = lambda: fake.now
    monkeypatch.setattr(sys.modules[GridEngineBackend.ended_tasks.__module__], "time", fake)
    return fake


def backend(head):
    return GridEngineBackend(resolve({"host": "headnode"}), shell=head)


def test_qsub_terse_output_gives_the_job_id_of_an_array_and_of_a_plain_job():
    assert parse_job_id(recorded("qsub-terse-array.txt")) == SPLIT
    for name, qacct in [("qsub-terse-ends.txt", "qacct-ends.txt"),
                        ("qsub-terse-h_rt.txt", "qacct-h_rt.txt"),
                        ("qsub-terse-single.txt", "qacct-single.txt")]:
        job_id = parse_job_id(recorded(name))
        assert {fields["jobnumber"] for fields in parse_qacct(recorded(qacct)).values()} == {job_id}


def test_qsub_output_without_a_job_id_is_a_submission_error():
    with pytest.raises(SubmissionError, match="did not print a job id: 'Unable to run job"):
        parse_job_id('Unable to run job: unknown resource "no_such_resource".\n')


def test_detailed_qstat_lists_every_task_of_each_job_in_its_state():
    for job_id, tasks in AT_THE_SNAPSHOT.items():
        assert parse_qstat_tasks(DETAILED, job_id) == tasks


def test_qstat_task_ranges_expand_to_the_tasks_the_detailed_listing_shows():
    """Without -g d the waiting tasks come as ranges and lists (2-40:1, 1,2,4,5): each
    task of them counts, the last of a range too."""
    for job_id, tasks in AT_THE_SNAPSHOT.items():
        assert parse_qstat_tasks(RANGES, job_id) == tasks


@pytest.mark.parametrize("text, tasks", [
    ("7", [7]), ("3-6:1", [3, 4, 5, 6]), ("2-40:1", list(range(2, 41))),
    ("1-9:4", [1, 5, 9]), ("1-10:4", [1, 5, 9]), ("4-4:1", [4]), ("12-13", [12, 13]),
    (" 5 ", [5]), ("", []), ("x-3", []), ("1-3:1:2", []),
])
def test_task_ranges_as_qstat_writes_them(text, tasks):
    assert list(_expand_task_range(text)) == tasks


def test_jobs_that_left_qstat_have_no_tasks_listed():
    for job_id in [*AT_THE_SNAPSHOT, ENDS, OVER_H_RT, SINGLE]:
        assert parse_qstat_tasks(AFTER, job_id) == {}


def test_qacct_gives_one_record_per_array_task_and_task_1_for_a_plain_job():
    ends = parse_qacct(recorded("qacct-ends.txt"))
    assert {task: fields["exit_status"].split()[0] for task, fields in ends.items()} == {
        1: "0", 2: "3", 3: "137"}
    assert ends[3]["failed"] == "100 : assumedly after job"
    assert sorted(parse_qacct(recorded("qacct-deleted.txt"))) == [1, 2]  # 3-6 never ran
    for name in ("qacct-h_rt.txt", "qacct-single.txt"):
        assert list(parse_qacct(recorded(name))) == [1]
    assert parse_qacct(recorded("qacct-not-found.txt")) == {}


def test_accounting_is_told_in_gridengines_words_and_says_whether_a_retry_could_help():
    ends = parse_qacct(recorded("qacct-ends.txt"))
    assert describe_accounting(ends[1]) == TaskEnd("exit status 0", True, 0)
    assert describe_accounting(ends[2]) == TaskEnd("exit status 3", True, 3)
    assert describe_accounting(ends[3]) == TaskEnd(
        "exit status 137, signal 9; GridEngine: failed 100 : assumedly after job", True, 137)
    (deleted, _) = parse_qacct(recorded("qacct-deleted.txt")).values()
    assert describe_accounting(deleted) == TaskEnd(
        "exit status 140, signal 12; GridEngine: failed 100 : assumedly after job", True, 140)
    (over_h_rt,) = parse_qacct(recorded("qacct-h_rt.txt")).values()
    assert describe_accounting(over_h_rt) == TaskEnd(
        "exit status 140, signal 12; GridEngine: failed 37  : qmaster enforced h_rt, h_cpu, "
        "or h_vmem limit", False, 140)


@pytest.mark.parametrize("fields, end", [
    ({"exit_status": "128", "failed": "0"}, TaskEnd("exit status 128", True, 128)),
    ({"exit_status": "129", "failed": "0"}, TaskEnd("exit status 129, signal 1", True, 129)),
    ({}, TaskEnd("exit status 0", True, 0)),
    ({"exit_status": "-", "failed": ""}, TaskEnd("exit status 0", True, 0)),
])
def test_accounting_with_a_signal_at_the_edge_or_fields_missing(fields, end):
    """Exit statuses above 128 name a signal; a record without its usual fields says no more
    than it knows (the recorded ones cover what qacct prints)."""
    assert describe_accounting(fields) == end


def test_tasks_still_listed_have_not_ended_however_long_they_wait(head, clock):
    watcher = backend(head)
    for _look in range(3):
        for job_id, tasks in AT_THE_SNAPSHOT.items():
            if job_id != ERROR:
                assert watcher.ended_tasks(job_id, set(tasks)) == {}
        clock.now += GridEngineBackend.accounting_grace + 1
    assert not [command for command in head.commands if command.startswith(("qacct", "qdel"))]


def test_tasks_listed_as_ranges_have_not_ended_either(head, clock):
    head.qstat = RANGES
    watcher = backend(head)
    for _look in range(2):
        assert watcher.ended_tasks(RANGE, set(range(1, 41))) == {}
        assert watcher.ended_tasks(SPLIT, set(range(1, 7))) == {}
        clock.now += GridEngineBackend.accounting_grace + 1


def test_tasks_in_error_state_end_with_gridengines_reason_and_are_deleted(head, clock):
    ended = backend(head).ended_tasks(ERROR, {1, 2, 3})
    assert sorted(ended) == [1, 2, 3]
    for end in ended.values():
        assert 'unable to find shell "/nonexistent/python9.9"' in end.reason
        assert not end.retryable
    assert f"qdel {ERROR} -t 1-3" in head.commands


def test_the_error_state_reason_is_every_reason_qstat_gives_and_a_default_without_one(head):
    reasons = [line.split(":", 1)[1].strip() for line in recorded("qstat-j-eqw.txt").splitlines()
               if line.startswith("error reason")]
    assert len(reasons) == 3 and all(reason.endswith(
        ': unable to find shell "/nonexistent/python9.9"') for reason in reasons)
    watcher = backend(head)
    assert watcher.held_reason(ERROR) == "; ".join(reasons)
    assert watcher.held_reason(SPLIT) == "GridEngine put the task in error state"  # gone


def test_a_failing_qstat_concludes_nothing(head, clock, caplog):
    """qstat fails while qmaster restarts; no task may be taken for ended because of it."""
    failing = "error: commlib error: got select error (Connection refused)\n"
    head.run = lambda argv, timeout=120.0, once=False: CommandResult(1, "", failing)
    watcher = backend(head)
    for _look in range(2):
        assert watcher.ended_tasks(SPLIT, set(range(1, 7))) == {}
        assert watcher.running_tasks(SPLIT) == set()
        clock.now += GridEngineBackend.accounting_grace + 1
    assert f"qstat failed: {failing.strip()}" in caplog.text


def test_cancelling_deletes_the_job_and_the_header_asks_for_warnings(head):
    watcher = backend(head)
    watcher.cancel(SPLIT)
    assert head.commands == [f"qdel {SPLIT}"]
    assert watcher.directives(6) == ["-S /usr/bin/python3", "-t 1-6", "-notify",
                                     "-wd $HOME/.sheepdog/", "-o $HOME/.sheepdog/",
                                     "-e $HOME/.sheepdog/"]


def test_tasks_that_left_qstat_end_as_their_accounting_says(head, clock):
    head.qstat = AFTER
    head.accounting = {ENDS: recorded("qacct-ends.txt"), OVER_H_RT: recorded("qacct-h_rt.txt")}
    watcher = backend(head)
    ended = watcher.ended_tasks(ENDS, {1, 2, 3})
    assert {task: end.exit_status for task, end in ended.items()} == {1: 0, 2: 3, 3: 137}
    assert watcher.ended_tasks(ENDS, {2}) == {2: TaskEnd("exit status 3", True, 3)}
    (over_h_rt,) = watcher.ended_tasks(OVER_H_RT, {1}).values()
    assert "h_rt" in over_h_rt.reason and not over_h_rt.retryable


def test_a_task_gone_from_qstat_waits_for_its_accounting_record(head, clock):
    """qmaster writes the record a little after the task leaves qstat."""
    head.qstat = AFTER
    watcher = backend(head)
    assert watcher.ended_tasks(ENDS, {3}) == {}
    clock.now += GridEngineBackend.accounting_grace - 1
    assert watcher.ended_tasks(ENDS, {3}) == {}
    head.accounting[ENDS] = recorded("qacct-ends.txt")
    (end,) = watcher.ended_tasks(ENDS, {3}).values()
    assert end.exit_status == 137 and "signal 9" in end.reason


def test_tasks_deleted_before_they_ran_end_once_the_grace_period_is_over(head, clock):
    head.qstat = AFTER
    head.accounting = {SPLIT: recorded("qacct-deleted.txt")}
    watcher = backend(head)
    ended = watcher.ended_tasks(SPLIT, set(range(1, 7)))
    assert sorted(ended) == [1, 2]  # killed while running: accounted for at once
    clock.now += GridEngineBackend.accounting_grace - 1
    assert sorted(watcher.ended_tasks(SPLIT, {3, 4, 5, 6})) == []
    clock.now += 2
    never_ran = watcher.ended_tasks(SPLIT, {3, 4, 5, 6})
    assert never_ran == {task: TaskEnd("deleted from GridEngine before it ran (no accounting "
                                       "record)", retryable=False) for task in (3, 4, 5, 6)}


def test_the_grace_period_counts_from_when_each_task_was_first_missed(head, clock):
    head.qstat = AFTER
    watcher = backend(head)
    assert watcher.ended_tasks(SPLIT, {3}) == {}
    clock.now += GridEngineBackend.accounting_grace - 1
    assert watcher.ended_tasks(SPLIT, {3, 4}) == {}
    clock.now += 2
    assert list(watcher.ended_tasks(SPLIT, {3, 4})) == [3]


def test_only_running_tasks_count_as_running(head):
    watcher = backend(head)
    assert watcher.running_tasks(SPLIT) == {1, 2}
    assert watcher.running_tasks(RANGE) == {1} and watcher.running_tasks(PLAIN) == {1}
    assert watcher.running_tasks(ERROR) == set() and watcher.running_tasks(HELD) == set()


def test_capacity_is_read_from_the_cluster_once(head):
    watcher = backend(head)
    assert watcher.capacity() == (16, 75000)
    assert watcher.capacity() == (16, 75000)
    assert sorted(head.commands) == ["qconf -sconf", "qstat -g c"]
    assert parse_total_slots(recorded("qstat-g-c.txt")) == 16
    assert parse_max_array_tasks(recorded("qconf-sconf.txt")) == 75000


def test_submission_uploads_the_job_file_submits_it_and_removes_it(head):
    job_id = backend(head).submit("#!/usr/bin/python3\n", 7, 6)
    assert job_id == SPLIT
    ((path, text),) = head.uploaded.items()
    assert path.startswith(".sheepdog/sheepdog_7_") and text == "#!/usr/bin/python3\n"
    assert head.commands == [f"qsub -terse /home/sheepdog/{path}", f"rm -f /home/sheepdog/{path}"]
