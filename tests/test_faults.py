"""Faults on the local backend: silence, crashes, retries, Ctrl-C, version mismatch."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from pathlib import Path

import sheepdog
from sheepdog.storage import Storage
from sheepdog.storage.states import FAILED
from sheepdog.worker import loop as worker
from sheepdog.server.host import Server

from .test_api import max_request

ROOT = Path(__file__).resolve().parents[1]


def test_task_that_falls_silent_is_lost_after_lost_after(local_conf):
    def freeze():
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)  # a hung node: alive, but silent

    conf = {**local_conf, "heartbeat_seconds": 0.5, "lost_after": 3}
    started = time.monotonic()
    assert sheepdog.map(freeze, [()], conf, verbose=False) == [None]
    assert time.monotonic() - started < 30
    (error,) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert "no heartbeat for 3 s" in error[1]
    sheepdog.cancel(max_request(local_conf), local_conf["dbfile"])  # reap the frozen process


@pytest.fixture
def quick_watch(monkeypatch):
    """Look at the heartbeats and the scheduler every 0.2 s rather than every 2 s."""
    from sheepdog.caller import watcher

    monkeypatch.setattr(watcher, "WATCH_SECONDS", 0.2)


def test_a_task_running_longer_than_lost_after_is_kept_alive_by_its_heartbeats(
        local_conf, quick_watch):
    def outlives_lost_after(x):
        import time

        time.sleep(3.5)
        return x

    conf = {**local_conf, "heartbeat_seconds": 0.3, "lost_after": 1.5}
    assert sheepdog.map(outlives_lost_after, [(1,), (2,)], conf, verbose=False) == [1, 2]
    assert sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"]) == []


def test_a_worker_killed_whole_loses_the_tasks_it_held_and_says_how_at_once(
        local_conf, quick_watch):
    """Argument 3 takes its whole worker down (a node failure would), in its retry too: the
    tasks that worker held are reported lost with how it ended, within seconds rather than
    after lost_after, and the other workers run the rest."""
    caller_group = os.getpgid(0)

    def takes_its_array_task_down(x):
        import os
        import signal

        if x == 3:
            if os.getpgid(0) == caller_group:
                raise RuntimeError("the task shares the test's process group: not killing it")
            os.killpg(0, signal.SIGKILL)  # the worker and everything it started
        return x

    conf = {**local_conf, "chunksize": 2, "retries": 1}  # lost_after stays 60 s
    request_id = sheepdog.map_async(takes_its_array_task_down, [(x,) for x in range(1, 7)], conf)
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=30)
    values = [result for _args, result in results]
    assert values[2] is None and all(value in (x, None) for x, value in enumerate(values, 1))
    errors = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert [args for args, _error in errors] == [(x,) for x, value in enumerate(values, 1)
                                                 if value is None]
    for _args, error in errors:  # 3, and any task its worker held with it
        assert "its worker ended without reporting it (killed by SIGKILL" in error
        assert "heartbeat" not in error


def test_a_task_that_always_crashes_runs_once_plus_exactly_its_retries(
        local_conf, tmp_path, quick_watch):
    runs = str(tmp_path / "runs")

    def always_crashes():
        import os
        import signal

        with open(runs, "a") as log:
            log.write("ran\n")
        os.kill(os.getpid(), signal.SIGKILL)

    conf = {**local_conf, "retries": 2}
    assert sheepdog.map(always_crashes, [()], conf, verbose=False) == [None]
    with open(runs) as log:
        assert log.read().splitlines() == ["ran"] * 3
    (error,) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert "killed by SIGKILL" in error[1]


def test_results_of_a_batch_too_large_for_the_server_all_arrive_one_by_one(local_conf):
    """The server refuses the batch (413); each result, sent alone, fits."""

    def three_kilobytes(n):
        return bytes([n]) * 3000

    conf = {**local_conf, "chunksize": 4, "max_body_bytes": 5000}
    results = sheepdog.map(three_kilobytes, [(n,) for n in range(8)], conf, verbose=False)
    assert results == [bytes([n]) * 3000 for n in range(8)]


def test_a_result_too_large_for_the_server_becomes_an_error_naming_its_size(local_conf):
    def sized(size):
        return b"r" * size

    conf = {**local_conf, "chunksize": 3, "max_body_bytes": 5000}
    results = sheepdog.map(sized, [(1000,), (9000,), (1000,)], conf, verbose=False)
    assert results == [b"r" * 1000, None, b"r" * 1000]
    ((args, error),) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert args == (9000,)
    assert "the result (" in error and "bytes) was refused: HTTP 413" in error
    assert "over the limit of 5000 bytes" in error


def test_crashed_task_is_retried_once_and_its_result_arrives(local_conf, tmp_path):
    marker = str(tmp_path / f"crashed-{uuid.uuid4().hex}")

    def crashes_once(x):
        import os
        import signal

        if x == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 10

    conf = {**local_conf, "retries": 1}
    assert sheepdog.map(crashes_once, [(1,), (2,), (3,)], conf, verbose=False) == [10, 20, 30]
    assert os.path.exists(marker)


def test_without_retries_a_crash_is_reported_lost_with_its_signal(local_conf):
    def crash():
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    assert sheepdog.map(crash, [()], local_conf, verbose=False) == [None]
    (error,) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert "killed by SIGKILL" in error[1]


def test_function_that_raised_is_retried_only_when_asked(local_conf, tmp_path):
    marker = str(tmp_path / "raised")

    def raises_once():
        import os

        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first time")
        return "second time"

    assert sheepdog.map(raises_once, [()], {**local_conf, "retries": 1}, verbose=False) == [None]
    os.remove(marker)
    conf = {**local_conf, "retries": 1, "retry_failed": True}
    assert sheepdog.map(raises_once, [()], conf, verbose=False) == ["second time"]


def test_retry_failed_stops_after_retries(local_conf, tmp_path, quick_watch):
    """A task that always raises, with retries 1 and retry_failed: two runs, then failed."""
    runs = tmp_path / "runs"

    def always_raises():
        with open(runs, "a") as log:
            log.write("ran\n")
        raise ValueError("every time")

    conf = {**local_conf, "retries": 1, "retry_failed": True}
    request_id = sheepdog.map_async(always_raises, [()], conf)
    try:  # a retry without end would otherwise never return
        sheepdog.wait(request_id, local_conf["dbfile"], timeout=30)
    finally:
        sheepdog.cancel(request_id, local_conf["dbfile"])
    assert runs.read_text().splitlines() == ["ran"] * 2
    (error,) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert "ValueError: every time" in error[1]
    (_args, state, _result), = Storage(local_conf["dbfile"]).results(request_id)
    assert state == FAILED


def test_no_resubmission_when_no_worker_reached_the_caller(local_conf, quick_watch):
    """Every worker exits before its first pull (its interpreter is /bin/false): one job
    and a clear "no worker is left to run it" within seconds, not a new job at every
    watch."""
    conf = {**local_conf, "shell": "/bin/false", "workers": 2}
    started = time.monotonic()
    request_id = sheepdog.map_async(abs, [(-1,), (-2,)], conf)
    try:
        sheepdog.wait(request_id, local_conf["dbfile"], timeout=15)
    finally:
        jobs = Storage(local_conf["dbfile"]).jobs(request_id)
        sheepdog.cancel(request_id, local_conf["dbfile"])
    assert time.monotonic() - started < 15
    assert len(jobs) == 1
    errors = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert len(errors) == 2
    assert all("no worker is left to run it" in text for _args, text in errors)


FOREVER_SCRIPT = textwrap.dedent("""
    import sheepdog, time
    def forever():
        time.sleep(600)
    sheepdog.map(forever, [()] * 2, {"scheduler": "local", "dbfile": "db.sqlite"})
""")


def wait_until_running(dbfile, count, seconds=30):
    """The Storage of ``dbfile`` once request 1 has ``count`` tasks running."""
    storage = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(dbfile):
            storage = storage or sheepdog.Storage(dbfile)
            try:
                if storage.progress(1).running == count:
                    return storage
            except KeyError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"request 1 in {dbfile} did not have {count} tasks running")


def test_ctrl_c_in_a_script_cancels_and_says_so(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", FOREVER_SCRIPT], cwd=tmp_path, stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    storage = wait_until_running(tmp_path / "db.sqlite", 2)
    waiting = read_until(process.stderr.fileno(), b" finished")  # map waits: its progress
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    err = waiting + err
    assert err.rstrip().endswith("\nKeyboardInterrupt: sheepdog.map of request 1 interrupted")
    assert "Traceback" not in err
    assert "sheepdog: cancelled request 1" in err and "2 unfinished tasks marked cancelled" in err
    assert storage.progress(1).cancelled == 2


def read_until(descriptor, text, seconds=30):
    import select

    seen = b""
    deadline = time.monotonic() + seconds
    while text not in seen:
        ready, _, _ = select.select([descriptor], [], [], max(0, deadline - time.monotonic()))
        assert ready and time.monotonic() < deadline, (
            f"no {text!r} within {seconds} s; got {seen!r}")
        read = os.read(descriptor, 4096)
        assert read, f"no {text!r} before the stream ended; got {seen!r}"
        seen += read
    return seen.decode()


def test_answering_n_to_the_ctrl_c_prompt_leaves_the_tasks_alone(tmp_path):
    import pty

    terminal, child_side = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", FOREVER_SCRIPT], cwd=tmp_path, stdin=child_side,
        stdout=child_side, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    os.close(child_side)
    try:
        storage = wait_until_running(tmp_path / "db.sqlite", 2)
        # Interrupted once map waits (its progress shows): the prompt then names the two
        # tasks running (test_api covers a Ctrl-C while the dashboard starts).
        read_until(process.stderr.fileno(), b" finished")
        process.send_signal(signal.SIGINT)
        prompt = read_until(process.stderr.fileno(), b"[Y/n] ")  # input() prompts on stderr
        assert ("sheepdog: interrupted. The 2 unfinished tasks of request 1 keep running "
                "while this question waits.\n") in prompt
        assert ("  y: cancel them.  n: leave them running, but only while this script runs, "
                "and it ends now unless it catches KeyboardInterrupt; a later "
                "sheepdog.get_results(1, ") in prompt
        assert prompt.endswith("sheepdog: cancel the 2 unfinished tasks of request 1? [Y/n] ")
        os.write(terminal, b"n\n")
        _out, err = process.communicate(timeout=30)
    finally:
        os.close(terminal)
    assert err.rstrip().endswith("KeyboardInterrupt: sheepdog.map of request 1 interrupted")
    assert "cancelled request" not in err and "Traceback" not in err
    assert "sheepdog: request 1 keeps running while this Python process lives" in err
    assert f"sheepdog.get_results(1, {str(tmp_path / 'db.sqlite')!r})" in err
    assert storage.progress(1).cancelled == 0


def test_worker_on_another_python_version_reports_both_versions(storage, monkeypatch):
    request_id = storage.create_request(b"not loaded", [b"args"], "pw", "local")
    launch = storage.add_workers(request_id, 1)
    server = Server(storage, port=0, use_tls=False).start()
    monkeypatch.setenv("SGE_TASK_ID", "1")
    try:
        from sheepdog.wire import serialisation

        settings = {"urls": [server.url("127.0.0.1")], "request_id": request_id, "key": "pw",
                    "launch": launch, "task_variable": "SGE_TASK_ID",
                    "python": [3, 99], "retry_seconds": 5, "heartbeat_seconds": 10}
        assert worker.run(settings) == 1
    finally:
        server.stop()
    ((_args, state, error),) = storage.errors(request_id)
    assert state == "failed" and "Python 3.99" in error and sys.version.split()[0] in error


def test_sheepdog_serve_in_another_process_collects_an_earlier_request(local_conf):
    """The caller's server goes away; `sheepdog serve` on the same port takes its place."""
    from sheepdog import api

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def slow(x):
        import time

        time.sleep(3)
        return x + 1

    conf = {**local_conf, "port": port}
    request_id = sheepdog.map_async(slow, [(1,), (2,)], conf)
    storage = sheepdog.Storage(local_conf["dbfile"])
    api.default_session().server_of(storage.dbfile).stop()
    serve = subprocess.Popen(
        [sys.executable, "-m", "sheepdog", "serve", "--dbfile", local_conf["dbfile"],
         "--port", str(port), "--bind", "127.0.0.1"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.DEVNULL,
    )
    try:
        results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=60)
    finally:
        serve.terminate()
        serve.wait(10)
    assert results == [((1,), 2), ((2,), 3)]


def test_workers_that_cannot_reach_the_caller_are_diagnosed_within_connect_timeout(local_conf):
    """Nothing answers where the workers were told to call: a clear error, not a long wait."""
    conf = {**local_conf, "localhost": "127.0.0.2", "connect_timeout": 3, "retry_seconds": 120}
    started = time.monotonic()
    with pytest.raises(sheepdog.CallbackError) as raised:
        sheepdog.map(abs, [(-1,), (-2,)], conf, verbose=False)
    assert time.monotonic() - started < 30
    message = str(raised.value)
    assert "none has called back on https://127.0.0.2:" in message
    assert "ConnectionRefusedError" in message  # the worker's own words, from its stderr
    assert "{'callback': 'tunnel'}" in message and "'localhost'" in message
    errors = sheepdog.get_errors(1, conf["dbfile"])
    assert len(errors) == 2 and all("none has called back" in text for _args, text in errors)


def test_a_worker_that_cannot_read_the_key_file_is_named_at_once(local_conf, monkeypatch):
    from sheepdog.backends.local import LocalBackend

    monkeypatch.setattr(LocalBackend, "deliver_key",
                        lambda self, request_id, key: "/nonexistent/sheepdog.key")
    started = time.monotonic()
    with pytest.raises(sheepdog.CallbackError) as raised:
        sheepdog.map(abs, [(-1,), (-2,)], local_conf, verbose=False)
    assert time.monotonic() - started < 20
    message = str(raised.value)
    assert "cannot read the request's key file /nonexistent/sheepdog.key" in message
    assert "No such file or directory" in message and "home directory" in message
