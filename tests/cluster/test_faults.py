"""Faults on the real GridEngine: every one ends in a result or a clear error, in bounded time."""

import os
import time
import uuid

import pytest

from .test_gridengine import last_request

import sheepdog
from sheepdog import api, ssh
from sheepdog.config import DEFAULT_GE_OPTS, resolve
from sheepdog.storage import Storage

pytestmark = pytest.mark.cluster


def run_as_test_user(conf, command):
    return ssh.get(ssh.destination_for(resolve(conf))).run(command)


def wait_until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {seconds} s")


def state_of(storage, request_id, index):
    return storage.results(request_id)[index - 1][1]


def sleepy(x):
    import time

    time.sleep(30 if x == 7 else 1)
    return x * 10


def test_task_removed_with_qdel_is_lost_and_map_returns(cluster_conf):
    storage = Storage(cluster_conf["dbfile"])
    request_id = sheepdog.map_async(sleepy, [(x,) for x in range(1, 21)],
                                    {**cluster_conf, "retries": 1})
    wait_until(lambda: state_of(storage, request_id, 7) == "running")
    job_id = storage.jobs(request_id)[0].job_id
    assert run_as_test_user(cluster_conf, f"qdel {job_id} -t 7").status == 0
    started = time.monotonic()
    results = sheepdog.get_results(request_id, cluster_conf["dbfile"], timeout=90)
    assert time.monotonic() - started < 90
    assert [r for _a, r in results] == [x * 10 if x != 7 else None for x in range(1, 21)]
    ((args, error),) = sheepdog.get_errors(request_id, cluster_conf["dbfile"])
    assert args == (7,) and "deleted (qdel)" in error
    assert len(storage.jobs(request_id)) == 1  # a qdel'd task is not retried


def test_task_killed_by_a_signal_is_retried_and_every_result_arrives(cluster_conf, tmp_path):
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
        results = sheepdog.map(dies_once, [(x,) for x in range(1, 21)],
                               {**cluster_conf, "retries": 1})
    finally:
        if os.path.exists(marker):
            os.remove(marker)
    assert results == [x * 10 for x in range(1, 21)]
    storage = Storage(cluster_conf["dbfile"])
    request_id = last_request(cluster_conf)
    jobs = storage.jobs(request_id)
    assert len(jobs) == 2 and jobs[1].indices == (7,)
    assert storage.progress(request_id).done == 20


def test_task_over_its_h_rt_is_lost_with_the_schedulers_reason(cluster_conf):
    def too_slow():
        import time

        time.sleep(120)

    conf = {**cluster_conf, "ge_opts": [*DEFAULT_GE_OPTS, "-l h_rt=0:0:4"], "retries": 1}
    started = time.monotonic()
    assert sheepdog.map(too_slow, [()], conf) == [None]
    assert time.monotonic() - started < 90
    request_id = last_request(cluster_conf)
    ((_args, error),) = sheepdog.get_errors(request_id, cluster_conf["dbfile"])
    assert "h_rt" in error and "failed 37" in error


def test_server_down_for_twenty_seconds_loses_no_result(cluster_conf):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = {**cluster_conf, "port": port}

    def slow_square(x):
        import time

        time.sleep(4)
        return x * x

    storage = Storage(conf["dbfile"])
    request_id = sheepdog.map_async(slow_square, [(x,) for x in range(20)], conf)
    wait_until(lambda: storage.progress(request_id).running >= 4)
    server = api.default_session().servers[(storage.dbfile, "https")]
    server.stop()
    assert not server.running
    time.sleep(20)
    api.default_session().server(resolve(conf), api.default_session().storage(conf["dbfile"]))
    results = sheepdog.get_results(request_id, conf["dbfile"], timeout=180)
    assert [r for _a, r in results] == [x * x for x in range(20)]
    progress = storage.progress(request_id)
    assert (progress.done, progress.lost, progress.failed) == (20, 0, 0)


def test_missing_worker_interpreter_ends_in_a_clear_error(cluster_conf):
    started = time.monotonic()
    conf = {**cluster_conf, "shell": "/usr/bin/python9.9"}
    assert sheepdog.map(abs, [(-1,), (-2,)], conf) == [None, None]
    assert time.monotonic() - started < 60
    request_id = last_request(cluster_conf)
    errors = sheepdog.get_errors(request_id, cluster_conf["dbfile"])
    assert len(errors) == 2
    assert all('unable to find shell "/usr/bin/python9.9"' in e for _a, e in errors)
    job_id = Storage(cluster_conf["dbfile"]).jobs(request_id)[0].job_id
    wait_until(lambda: job_id not in run_as_test_user(cluster_conf, "qstat").stdout, 30)


def test_cancel_removes_the_job_and_marks_tasks_cancelled(cluster_conf):
    def forever():
        import time

        time.sleep(600)

    storage = Storage(cluster_conf["dbfile"])
    request_id = sheepdog.map_async(forever, [()] * 3, cluster_conf)
    wait_until(lambda: storage.progress(request_id).running >= 1)
    assert sheepdog.cancel(request_id, cluster_conf["dbfile"]) == 3
    job_id = storage.jobs(request_id)[0].job_id
    wait_until(lambda: job_id not in run_as_test_user(cluster_conf, "qstat").stdout, 30)
    assert storage.progress(request_id).cancelled == 3
    assert sheepdog.get_results(request_id, cluster_conf["dbfile"], timeout=5) == [((), None)] * 3


def test_workers_without_the_key_file_are_named_within_seconds(cluster_conf, monkeypatch):
    """As on a cluster whose compute nodes do not share the head node's home directory."""
    from sheepdog.backends.gridengine import GridEngineBackend

    missing = "/home/nobody-here/.sheepdog/sheepdog_1.key"
    monkeypatch.setattr(GridEngineBackend, "deliver_key", lambda self, rid, key: missing)
    started = time.monotonic()
    with pytest.raises(sheepdog.CallbackError) as raised:
        sheepdog.map(abs, [(-1,), (-2,)], cluster_conf, verbose=False)
    assert time.monotonic() - started < 60
    message = str(raised.value)
    assert f"cannot read the request's key file {missing}" in message
    assert "No such file or directory" in message  # the worker's stderr, read over SSH
    assert "key_in_job_file" in message


def test_cancel_from_another_process_removes_the_job_from_gridengine(cluster_conf):
    """The other process rebuilds the backend from the database and qdels over its own SSH."""
    import subprocess
    import sys

    def forever():
        import time

        time.sleep(600)

    storage = Storage(cluster_conf["dbfile"])
    request_id = sheepdog.map_async(forever, [()] * 3, cluster_conf)
    wait_until(lambda: storage.progress(request_id).running >= 1)
    job_id = storage.jobs(request_id)[0].job_id
    program = f"import sheepdog; print(sheepdog.cancel({request_id}, {cluster_conf['dbfile']!r}))"
    other = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           timeout=120, cwd=os.path.dirname(os.path.dirname(sheepdog.__file__)))
    assert (other.returncode, other.stdout) == (0, "3\n"), other.stderr
    wait_until(lambda: job_id not in run_as_test_user(cluster_conf, "qstat").stdout, 30)
    assert sheepdog.get_results(request_id, cluster_conf["dbfile"], timeout=30) == [((), None)] * 3
