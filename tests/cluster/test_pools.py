"""Warm pools on the real GridEngine and Slurm: reuse, sharing, separate pools, leaving.

The deadlines for a job to leave the scheduler's list are ``JOB_GONE_SECONDS``:
a removed job stays listed until the execution daemon confirms, which on a
loaded 2-core machine took over 30 s.
"""

import subprocess
import sys
import textwrap
import threading

import pytest

import sheepdog
from ..test_pools import own_jobs
from .test_faults import JOB_GONE_SECONDS, run_as_test_user, wait_until
from .test_schedulers import scheduler, with_options  # noqa: F401 - a fixture

pytestmark = pytest.mark.cluster


def listed(conf, spec, job_ids):
    """Those of ``job_ids`` that the scheduler still lists."""
    shown = run_as_test_user(conf, spec["listed"]).stdout
    return [job for job in job_ids if job in shown]


def test_a_second_map_reuses_the_first_maps_workers(scheduler):  # noqa: F811
    conf, _spec = scheduler
    with sheepdog.Session() as session:
        for _ in range(2):
            request = session.submit(abs, [(-x,) for x in range(200)], conf)
            request.wait(timeout=300)
            assert request.values() == list(range(200))
    jobs = own_jobs(conf["dbfile"])
    assert len(jobs[1]) == 1 and jobs[2] == []  # no new job id for the second


def test_three_maps_from_three_threads_share_one_pool(scheduler):  # noqa: F811
    conf, _spec = scheduler
    results = {}

    def mapping(offset):
        results[offset] = sheepdog.map(abs, [(-(offset + x),) for x in range(30)], conf,
                                       verbose=False)

    threads = [threading.Thread(target=mapping, args=(offset,)) for offset in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert results == {offset: [offset + x for x in range(30)] for offset in (0, 100, 200)}
    assert sum(len(jobs) for jobs in own_jobs(conf["dbfile"]).values()) == 1


def test_other_scheduler_options_make_another_pool(scheduler):  # noqa: F811
    conf, spec = scheduler
    other = with_options(conf, spec, ["-l h_rt=0:30:0"] if spec["options"] == "ge_opts"
                         else ["--time=30"])
    with sheepdog.Session() as session:
        for config in (conf, other):
            session.submit(abs, [(1,)], config).wait(timeout=300)
    assert [len(jobs) for jobs in own_jobs(conf["dbfile"]).values()] == [1, 1]


def test_workers_leave_after_linger_and_the_scheduler_lists_no_job(scheduler):  # noqa: F811
    conf, spec = scheduler
    with sheepdog.Session() as session:
        request = session.submit(abs, [(1,), (2,)], {**conf, "linger": 3})
        request.wait(timeout=300)
        (job_id,) = own_jobs(conf["dbfile"])[request.id]
        wait_until(lambda: not listed(conf, spec, [job_id]), 3 + JOB_GONE_SECONDS)
        reasons = {end.reason for end in request.storage.newest_launch_ends(request.id)}
    assert reasons == {"it had no work for 3 s (the pool's linger)"}


EXITS_WITH_A_WARM_POOL = """
import sheepdog
conf = {conf!r}
assert sheepdog.map(abs, [(-1,), (-2,)], conf, verbose=False) == [1, 2]
"""


def test_the_end_of_the_process_removes_its_pools_jobs(scheduler, tmp_path):  # noqa: F811
    conf, spec = scheduler
    script = textwrap.dedent(EXITS_WITH_A_WARM_POOL.format(conf={**conf, "linger": 600}))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=tmp_path)
    (jobs,) = own_jobs(conf["dbfile"]).values()
    wait_until(lambda: not listed(conf, spec, jobs), JOB_GONE_SECONDS)


def test_cancelling_the_only_request_of_a_pool_removes_its_job(scheduler):  # noqa: F811
    conf, spec = scheduler

    def forever():
        import time

        time.sleep(600)

    with sheepdog.Session() as session:
        request = session.submit(forever, [()] * 2, conf)
        wait_until(lambda: request.progress().running >= 1, 300)
        assert request.cancel() == 2
        (job_id,) = own_jobs(conf["dbfile"])[request.id]
        wait_until(lambda: not listed(conf, spec, [job_id]), JOB_GONE_SECONDS)
