"""Workers that pull their tasks: every task once, in batches, on a lease, within the limits."""

import os
import time

import sheepdog
from sheepdog import Storage

from .test_api import max_request
from .test_faults import quick_watch  # noqa: F401 - a fixture


def test_every_task_runs_exactly_once_in_batches_that_grow_and_never_overlap(local_conf,
                                                                            tmp_path):
    runs = tmp_path / "runs"

    def recorded(x):
        import os

        with open(runs, "a") as log:
            log.write(f"{x} {os.getppid()}\n")  # the runner's parent: its worker
        return -x

    conf = {**local_conf, "workers": 3}
    assert sheepdog.map(recorded, [(x,) for x in range(500)], conf, verbose=False) == \
        [-x for x in range(500)]
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert sorted(int(x) for x, _worker in lines) == list(range(500))
    assert 1 <= len({worker for _x, worker in lines}) <= 3
    batches = Storage(local_conf["dbfile"]).batches(max_request(local_conf))
    handed_out = [index for batch in batches.values() for index in batch]
    assert sorted(handed_out) == list(range(1, 501))  # each task in exactly one batch
    assert all(len(batch) == 1 for (_worker, pull), batch in batches.items() if pull == 1)
    assert max(len(batch) for batch in batches.values()) > 8  # trivial tasks: large batches
    assert len(batches) < 100


def test_a_killed_workers_tasks_are_run_by_another_worker_without_a_new_job(
        local_conf, tmp_path, quick_watch):  # noqa: F811
    """The worker holding task 5 is SIGKILLed whole (as a node failure would end it): its
    tasks go back in the queue and the living worker runs them, long before lost_after."""
    marker, runs = tmp_path / "killed", tmp_path / "runs"
    caller_group = os.getpgid(0)

    def kills_its_worker_once(x):
        import os
        import signal
        import time

        with open(runs, "a") as log:
            log.write(f"{x}\n")
        if x == 5 and not os.path.exists(marker):
            marker.touch()
            if os.getpgid(0) == caller_group:
                raise RuntimeError("the task shares the test's process group: not killing it")
            os.killpg(0, signal.SIGKILL)  # the worker and its runner
        time.sleep(0.2)
        return x

    conf = {**local_conf, "workers": 2, "retries": 1, "chunksize": 1}  # lost_after: 60 s
    started = time.monotonic()
    request_id = sheepdog.map_async(kills_its_worker_once, [(x,) for x in range(1, 41)], conf)
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=50)
    assert time.monotonic() - started < 50
    assert [result for _args, result in results] == list(range(1, 41))
    assert sorted(int(x) for x in runs.read_text().split()) == sorted([*range(1, 41), 5])
    assert len(Storage(local_conf["dbfile"]).jobs(request_id)) == 1


def test_max_running_bounds_the_workers_of_a_job(local_conf):
    def worker_pid(x):
        import os
        import time

        time.sleep(0.05)
        return os.getppid()

    conf = {**local_conf, "workers": 4, "max_running": 2}
    pids = sheepdog.map(worker_pid, [(x,) for x in range(40)], conf, verbose=False)
    assert 1 <= len(set(pids)) <= 2
    (job,) = Storage(local_conf["dbfile"]).jobs(max_request(local_conf))
    assert job.n_workers == 2
