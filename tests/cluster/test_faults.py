"""Faults on the real GridEngine: every one ends in a result or a clear error, in bounded time."""

import os
import time

import pytest

from .test_gridengine import last_request

import sheepdog
from sheepdog import api
from sheepdog.remote import ssh
from sheepdog.config import resolve
from sheepdog.storage import Storage

pytestmark = pytest.mark.cluster


def run_as_test_user(conf, command):
    return ssh.get(ssh.destination_for(resolve(conf))).run(command)


#: How long a deleted job may stay in qstat/squeue. The scheduler lists it until the
#: execution daemon confirms the kill, which on a loaded 2-core machine took over 30 s;
#: a job nobody deleted (a sleeping task, or one stuck in Eqw) stays forever, so this
#: bound still catches a missing qdel or scancel.
JOB_GONE_SECONDS = 90


def wait_until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {seconds} s")


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
    server = api.default_session().server_of(storage.dbfile)
    server.stop()
    assert not server.running
    time.sleep(20)
    api.default_session().owner(conf["dbfile"]).server(resolve(conf))  # on the same port
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
    wait_until(lambda: job_id not in run_as_test_user(cluster_conf, "qstat").stdout, JOB_GONE_SECONDS)


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
    wait_until(lambda: job_id not in run_as_test_user(cluster_conf, "qstat").stdout, JOB_GONE_SECONDS)
    assert sheepdog.get_results(request_id, cluster_conf["dbfile"], timeout=30) == [((), None)] * 3
