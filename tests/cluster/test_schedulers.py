"""The same guarantees on every scheduler: each test runs against the real GridEngine and Slurm.

What differs between the schedulers (their option key, how to ask for a time
limit or memory, how one task is removed by hand, their words) is in
:data:`SCHEDULERS`; the tests themselves are the same.
"""

import os
import time
import uuid

import pytest

import sheepdog
from sheepdog import SubmissionError
from sheepdog.config import DEFAULT_GE_OPTS
from sheepdog.storage import Storage

from ..support.quickstart import QUICKSTART, run_doctest
from .test_faults import JOB_GONE_SECONDS, run_as_test_user, wait_until

pytestmark = pytest.mark.cluster

SCHEDULERS = {
    "gridengine": {
        "options": "ge_opts",
        "base": list(DEFAULT_GE_OPTS),
        "time_limit": ["-l h_rt=0:0:4"],
        "time_limit_words": ["h_rt", "failed 37"],
        "memory": ["-l mem_grab=300M"],
        "remove_one": "qdel {job} -t {task}",
        "removed_words": "deleted (qdel)",
        "refused": ["-l no_such_resource=1"],
        "refused_words": "qsub refused the job.*no_such_resource",
        "listed": "qstat",
        "cancel_job": "qdel {job}",
    },
    "slurm": {
        "options": "slurm_opts",
        "base": [],
        "time_limit": ["--time=0:01"],  # one minute: Slurm checks limits every 30 s
        "time_limit_words": ["TIMEOUT"],
        "memory": ["--mem=300M"],
        "remove_one": "scancel {job}_{task}",
        "removed_words": "cancelled (scancel)",
        "refused": ["--partition=no_such_partition"],
        "refused_words": "sbatch refused the job.*partition",
        "listed": "squeue -h",
        "cancel_job": "scancel {job}",
    },
}


@pytest.fixture(params=list(SCHEDULERS))
def scheduler(request, cluster_conf):
    """(config, what differs) for each scheduler of the test cluster."""
    name = request.param
    if name == "slurm" and not os.environ.get("SHEEPDOG_SLURM"):
        pytest.skip("no Slurm on the test cluster (run ci/slurm-up.sh)")
    spec = SCHEDULERS[name]
    conf = {**cluster_conf, "scheduler": name, spec["options"]: spec["base"]}
    return conf, spec


def with_options(conf, spec, options, **more):
    return {**conf, spec["options"]: [*spec["base"], *options], **more}


def last_request(conf):
    import sqlite3

    with sqlite3.connect(conf["dbfile"]) as raw:
        return raw.execute("SELECT max(id) FROM requests").fetchone()[0]


def holder(dbfile, request_id, index):
    """(job id, array task) of the worker that holds running task ``index``, if any."""
    import sqlite3

    with sqlite3.connect(dbfile) as raw:
        return raw.execute(
            "SELECT j.job_id, w.array_task FROM tasks t JOIN workers w ON w.id = t.worker "
            "JOIN jobs j ON j.request_id = w.request_id AND j.launch = w.launch "
            "WHERE t.request_id = ? AND t.idx = ? AND t.state = 'running'",
            (request_id, index)).fetchone()


def sleepy(x):
    import time

    time.sleep(30 if x == 7 else 1)
    return x * 10


def test_quickstart_examples_return_what_the_quickstart_shows(scheduler):
    conf, _spec = scheduler
    results = run_doctest(QUICKSTART, conf)
    assert results.failed == 0 and results.attempted == 17


def test_two_hundred_tasks(scheduler):
    conf, _spec = scheduler
    assert sheepdog.map(pow, [(n, 2) for n in range(200)], conf) == [n * n for n in range(200)]


def test_large_buffers_travel_both_ways(scheduler):
    conf, _spec = scheduler
    buffers = [bytearray(os.urandom(16 << 20)) for _ in range(2)]

    def reversed_copy(data):
        return data[::-1]

    assert sheepdog.map(reversed_copy, [(data,) for data in buffers], conf) == \
        [data[::-1] for data in buffers]


def test_a_worker_removed_by_hand_loses_its_batch_not_retried_and_map_returns(scheduler):
    """The worker that holds task 7 is removed (qdel/scancel of its array task): 7 is lost
    and not retried, and the other workers run every other task, without a new job."""
    conf, spec = scheduler
    storage = Storage(conf["dbfile"])
    request_id = sheepdog.map_async(sleepy, [(x,) for x in range(1, 21)], {**conf, "retries": 1})
    wait_until(lambda: holder(conf["dbfile"], request_id, 7) is not None)
    job_id, array_task = holder(conf["dbfile"], request_id, 7)
    command = spec["remove_one"].format(job=job_id, task=array_task)
    assert run_as_test_user(conf, command).status == 0
    results = sheepdog.get_results(request_id, conf["dbfile"], timeout=90)
    assert [r for _a, r in results] == [x * 10 if x != 7 else None for x in range(1, 21)]
    ((args, error),) = sheepdog.get_errors(request_id, conf["dbfile"])
    assert args == (7,) and spec["removed_words"] in error
    assert "its log: " in error and job_id in error.split("its log: ")[1]
    assert len(storage.jobs(request_id)) == 1


def test_a_task_killed_by_a_signal_is_retried_and_every_result_arrives(scheduler):
    conf, _spec = scheduler
    marker = f"/tmp/sheepdog-killed-once-{uuid.uuid4().hex}"

    def dies_once(x):
        import os
        import signal
        import time

        time.sleep(0.5)
        if x == 7 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 10

    try:
        results = sheepdog.map(dies_once, [(x,) for x in range(1, 21)], {**conf, "retries": 1})
        assert os.path.exists(marker)  # 7 was killed once
    finally:
        if os.path.exists(marker):
            os.remove(marker)
    assert results == [x * 10 for x in range(1, 21)]


def test_a_task_over_its_time_limit_is_lost_with_the_schedulers_reason_and_not_retried(
        scheduler):
    conf, spec = scheduler

    def too_slow():
        import time

        time.sleep(300)

    started = time.monotonic()
    conf = with_options(conf, spec, spec["time_limit"], retries=1)
    assert sheepdog.map(too_slow, [()], conf) == [None]
    assert time.monotonic() - started < 150
    ((_args, error),) = sheepdog.get_errors(last_request(conf), conf["dbfile"])
    assert all(words in error for words in spec["time_limit_words"]), error
    assert len(Storage(conf["dbfile"]).jobs(last_request(conf))) == 1


def allocate(megabytes):
    return len(bytearray(megabytes * 2**20))


def test_a_memory_limit_makes_a_greedy_task_fail_with_memory_error(scheduler):
    conf, spec = scheduler
    conf = with_options(conf, spec, spec["memory"])
    assert sheepdog.map(allocate, [(1,), (600,)], conf, verbose=False) == [2**20, None]
    (error,) = sheepdog.get_errors(last_request(conf), conf["dbfile"])
    assert "MemoryError" in error[1]


def test_a_refused_submission_raises_at_once_with_the_schedulers_words(scheduler):
    conf, spec = scheduler
    started = time.monotonic()
    with pytest.raises(SubmissionError, match=spec["refused_words"]):
        sheepdog.map_async(abs, [(1,)], with_options(conf, spec, spec["refused"]))
    assert time.monotonic() - started < 30


def test_a_worker_interpreter_that_does_not_exist_ends_in_a_clear_error(scheduler):
    conf, spec = scheduler
    started = time.monotonic()
    assert sheepdog.map(abs, [(-1,), (-2,)], {**conf, "shell": "/usr/bin/python9.9"}) == \
        [None, None]
    assert time.monotonic() - started < 90
    errors = sheepdog.get_errors(last_request(conf), conf["dbfile"])
    assert len(errors) == 2
    job_id = Storage(conf["dbfile"]).jobs(last_request(conf))[0].job_id
    wait_until(lambda: job_id not in run_as_test_user(conf, spec["listed"]).stdout,
               JOB_GONE_SECONDS)


def test_cancel_removes_the_job_and_marks_its_tasks_cancelled(scheduler):
    conf, spec = scheduler

    def forever():
        import time

        time.sleep(600)

    storage = Storage(conf["dbfile"])
    request_id = sheepdog.map_async(forever, [()] * 3, conf)
    wait_until(lambda: storage.progress(request_id).running >= 1)
    assert sheepdog.cancel(request_id, conf["dbfile"]) == 3
    job_id = storage.jobs(request_id)[0].job_id
    wait_until(lambda: job_id not in run_as_test_user(conf, spec["listed"]).stdout,
               JOB_GONE_SECONDS)
    assert storage.progress(request_id).cancelled == 3


def test_a_task_silent_past_lost_after_is_lost_and_retried(scheduler):
    """A worker stopped with SIGSTOP sends no heartbeats: its task is lost, then rerun."""
    conf, spec = scheduler
    marker = f"/tmp/sheepdog-stopped-once-{uuid.uuid4().hex}"

    def stops_once(x):
        import os
        import signal

        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGSTOP)
        return x + 1

    conf = {**conf, "retries": 1, "heartbeat_seconds": 1, "lost_after": 4}
    try:
        assert sheepdog.map(stops_once, [(1,)], conf) == [2]
        jobs = Storage(conf["dbfile"]).jobs(last_request(conf))
        assert len(jobs) == 2
    finally:
        if os.path.exists(marker):
            os.remove(marker)
        for job in Storage(conf["dbfile"]).jobs(last_request(conf)):  # the stopped one stays
            run_as_test_user(conf, spec["cancel_job"].format(job=job.job_id))
