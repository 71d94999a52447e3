"""One bad task never costs another task its result: crashes, unencodable errors,
refusals too small to hold an error, a full disk, and what a killed caller leaves."""

import errno
import re
import os
import subprocess
import sys
import textwrap
import time

import pytest

import sheepdog
from sheepdog.storage import payloads
from sheepdog.server import tornado_handler
from sheepdog.wire.protocol import ERROR, OUTPUT, REPORT_FLOOR_BYTES, RESULT, pack_frames
from sheepdog.server.callbacks import Callbacks
from sheepdog.storage import DiskFullError, Storage

from .conftest import SignedClient
from .test_api import max_request
from .test_faults import quick_watch  # noqa: F401 - a fixture
from .test_task_output import kept_scripts, run_array_task  # noqa: F401 - a fixture

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("crash, how", [
    ("os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV"),
    ("os._exit(3)", "exit status 3"),
])
def test_a_task_that_kills_its_process_costs_its_batch_mates_nothing(local_conf, crash, how):
    crashes = {5, 7}
    source = textwrap.dedent(f"""
        def sometimes_crashes(x):
            import os, signal
            print("working on", x)
            if x in {crashes!r}:
                {crash}
            return x * 10
        """)
    namespace = {}
    exec(compile(source, "<test>", "exec"), namespace)
    conf = {**local_conf, "chunksize": 5, "workers": 1}  # batches 1-5, 6-8 (the fair share), 9-10
    results = sheepdog.map(namespace["sometimes_crashes"], [(x,) for x in range(1, 11)], conf,
                           verbose=False)
    assert results == [None if x in crashes else x * 10 for x in range(1, 11)]
    errors = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert [args for args, _error in errors] == [(5,), (7,)]
    for (x,), error in errors:
        assert error.startswith(f"the task ended without reporting ({how} while it ran")
        assert f"working on {x}\n" in error  # its output up to the crash
    first, second = (error for _args, error in errors)
    assert "its worker went on" not in first  # 5 ended its batch
    assert "its worker went on with the 1 after it" in second


def test_a_crash_inside_a_batch_is_reported_at_once_and_only_the_crashed_task_is_retried(
        local_conf, quick_watch, tmp_path):  # noqa: F811
    calls = tmp_path / "calls"

    def crashes_on_3(x):
        import os
        import signal

        with open(calls, "a") as log:
            log.write(f"{x}\n")
        if x == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    conf = {**local_conf, "chunksize": 2, "retries": 1}  # lost_after stays 60 s
    request_id = sheepdog.map_async(crashes_on_3, [(x,) for x in range(1, 7)], conf)
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=30)
    assert [result for _args, result in results] == [1, 2, None, 4, 5, 6]
    ((args, error),) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert args == (3,) and "without reporting (killed by SIGKILL" in error
    assert "heartbeat" not in error
    ran = sorted(int(x) for x in calls.read_text().split())
    assert ran == [1, 2, 3, 3, 4, 5, 6]  # once each, and 3 again: its one retry


def test_an_exception_message_that_utf_8_cannot_encode_is_reported_with_its_chunk_mates(
        local_conf):
    def bad_byte(x):
        if x == 2:
            raise ValueError("bad \udcff byte")
        return x

    conf = {**local_conf, "chunksize": 3}
    assert sheepdog.map(bad_byte, [(1,), (2,), (3,)], conf, verbose=False) == [1, None, 3]
    ((_args, error),) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert "ValueError: bad \\udcff byte" in error


def test_a_result_refused_under_a_tiny_max_body_bytes_is_recorded_as_an_error(local_conf):
    def sized(size):
        return b"r" * size

    conf = {**local_conf, "chunksize": 2, "max_body_bytes": 60}
    assert sheepdog.map(sized, [(10,), (9000,)], conf, verbose=False) == [b"r" * 10, None]
    ((args, error),) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert args == (9000,) and len(error) > 60  # longer than any body the server takes
    assert "the result (" in error and "bytes) was refused: HTTP 413" in error


@pytest.fixture
def tiny_limit_client(storage):
    request_id = storage.create_request(b"fn", [b"a1", b"a2"], "right", "local")
    return SignedClient(Callbacks(storage, max_body_bytes=100), b"right"), request_id


def test_errors_and_output_fit_whatever_max_body_bytes_and_results_do_not(
        tiny_limit_client, storage):
    client, request_id = tiny_limit_client
    prefix = f"/requests/{request_id}/tasks"
    error = "e" * 10_000
    assert client.post(f"{prefix}/1/result", data=b"r" * 10_000).status_code == 413
    assert client.post(f"{prefix}/1/error", data=error.encode()).status_code == 200
    output = b"".join(pack_frames([(1, OUTPUT, b"o" * 100_000)]))
    assert client.post(f"{prefix}/1/output", data=output).status_code == 200
    too_long = b"e" * (REPORT_FLOOR_BYTES + 1)
    assert client.post(f"{prefix}/2/error", data=too_long).status_code == 413
    ((_args, state, text),) = storage.errors(request_id)
    assert state == "failed" and text.startswith(error) and "o" * 1000 in text


def test_a_report_that_the_disk_cannot_hold_is_answered_507_naming_the_disk(
        tiny_limit_client, storage, monkeypatch):
    client, request_id = tiny_limit_client

    def full(descriptor, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(payloads, "write_all", full)
    big = b"".join(pack_frames([(1, RESULT, b"r" * (2 << 20))]))
    response = SignedClient(Callbacks(storage), b"right").post(
        f"/requests/{request_id}/results", data=big)
    assert response.status_code == 507
    assert f"the disk that holds {storage.payloads.root}" in response.data.decode()
    small = b"".join(pack_frames([(2, ERROR, b"boom")]))
    assert client.post(f"/requests/{request_id}/results", data=small).status_code == 200


def with_setting(script, name, value):
    """The job file with one setting changed or added."""
    script = re.sub(rf"\n ?'{name}': [^\n]*,\n", "\n", script)
    return script.replace("SETTINGS = {", f"SETTINGS = {{{name!r}: {value!r}, ", 1)


def with_disk_full_seconds(script, seconds):
    """The job file with a shorter wait for a full disk than the default."""
    return with_setting(script, "disk_full_seconds", seconds)


def test_a_result_that_the_callers_disk_cannot_hold_fails_its_task_naming_the_disk(
        local_conf, kept_scripts, tmp_path, monkeypatch):  # noqa: F811
    def write_unless_large(descriptor, data):
        if memoryview(data).nbytes >= 1 << 20:  # results go to files in 4 MB writes
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_all(descriptor, data)

    real_write_all = payloads.write_all
    monkeypatch.setattr(tornado_handler, "write_all", write_unless_large)  # into its file
    monkeypatch.setattr(payloads, "write_all", write_unless_large)

    def sized(size):
        return b"r" * size

    request_id = sheepdog.map_async(sized, [(10,), (3 << 20,), (20,)], {**local_conf,
                                                                        "chunksize": 3})
    (script,) = kept_scripts()
    with open(tmp_path / "task.o", "wb") as output:
        status = run_array_task(with_disk_full_seconds(script, 1), 1, tmp_path, output,
                                subprocess.STDOUT)
    assert status == 0, (tmp_path / "task.o").read_text()
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=30)
    assert [result for _args, result in results] == [b"r" * 10, None, b"r" * 20]
    ((_args, error),) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert error.startswith("the caller could not store the result (")
    assert f"bytes): HTTP 507: the disk that holds {local_conf['dbfile']}.payloads (" in error
    assert "is full or over its quota" in error


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system of its own (mounting one needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount_point)],
                   check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_on_a_really_full_disk_results_stored_stay_and_the_rest_name_the_disk(
        small_disk, kept_scripts, tmp_path):  # noqa: F811
    conf = {"scheduler": "local", "dbfile": str(small_disk / "sheepdog.sqlite"), "chunksize": 3}

    def sized(size):
        return b"r" * size

    request_id = sheepdog.map_async(sized, [(1 << 20,), (3 << 20,), (30,)], conf)
    (script,) = kept_scripts()
    with open(tmp_path / "task.o", "wb") as output:
        run_array_task(with_disk_full_seconds(script, 1), 1, tmp_path, output,
                       subprocess.STDOUT)
    results = sheepdog.get_results(request_id, conf["dbfile"], timeout=30)
    assert [result for _args, result in results] == [b"r" * (1 << 20), None, b"r" * 30]
    ((_args, error),) = sheepdog.get_errors(request_id, conf["dbfile"])
    assert f"(mounted at {small_disk}" in error and "is full or over its quota" in error
    assert [name for name in os.listdir(conf["dbfile"] + ".payloads")
            if name.endswith(".part")] == []

    # Now not even a request fits. Unbuffered: a buffered file would keep what did not
    # fit, and raise again as it closes.
    with open(small_disk / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(DiskFullError, match=f"mounted at {small_disk}"):
        sheepdog.map_async(sized, [(5 << 20,)], conf)


KILLED_WHILE_STAGING = """
import os, sys
sys.path.insert(0, {repository!r})
from sheepdog.storage import Storage

storage = Storage({dbfile!r})
descriptor, path = storage.new_staging_file(1, 1)
os.write(descriptor, b"half a result")
print(path, flush=True)
if {killed!r}:
    os._exit(9)
sys.stdin.readline()  # alive until the test says
"""


def stage_in_another_process(dbfile, killed):
    """(process, staging file it wrote); the process ended at once, or waits for stdin."""
    program = KILLED_WHILE_STAGING.format(repository=REPOSITORY, dbfile=dbfile, killed=killed)
    process = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_a_staging_file_left_by_a_killed_caller_is_removed_at_the_next_start(dbfile):
    process, leftover = stage_in_another_process(dbfile, killed=True)
    assert process.wait(timeout=30) == 9 and os.path.exists(leftover)
    assert Storage(dbfile).payloads.root == os.path.dirname(leftover)
    assert not os.path.exists(leftover)


def test_a_staging_file_that_a_live_caller_is_writing_is_kept(dbfile):
    process, live = stage_in_another_process(dbfile, killed=False)
    try:
        stale = live.replace(".part", "-stale.part")
        with open(stale, "wb") as old:
            old.write(b"a day and more old")
        two_days_ago = time.time() - 2 * 86400
        os.utime(stale, (two_days_ago, two_days_ago))
        Storage(dbfile)
        assert os.path.exists(live) and not os.path.exists(stale)
    finally:
        process.communicate("\n", timeout=30)
    Storage(dbfile)  # the live one is gone: what it left goes too
    assert not os.path.exists(live)


def test_a_kill_notice_posts_what_finished_and_takes_the_running_task_down_at_once(
        local_conf, kept_scripts, tmp_path):  # noqa: F811
    import signal

    def second_blocks(x):
        import os
        import sys
        import time

        if x == 2:
            sys.stderr.write(f"runner {os.getpid()} blocks\n")
            time.sleep(600)
        return x

    request_id = sheepdog.map_async(second_blocks, [(1,), (2,), (3,)],
                                    {**local_conf, "chunksize": 3})
    (script,) = kept_scripts()
    path = tmp_path / "job.py"
    path.write_text(with_setting(script, "kill_signals", ["SIGUSR2"]))
    variable = re.search(r"'task_variable': '(\w+)'", script).group(1)
    worker = subprocess.Popen([sys.executable, str(path)], env={**os.environ, variable: "1"},
                              stderr=subprocess.PIPE, text=True)
    runner = int(re.match(r"runner (\d+) blocks", worker.stderr.readline()).group(1))
    started = time.monotonic()
    worker.send_signal(signal.SIGUSR2)
    # "At once": long before the blocked task's 600 s, with room for a busy machine.
    assert worker.wait(timeout=90) == 128 + signal.SIGUSR2 and time.monotonic() - started < 60
    with pytest.raises(ProcessLookupError):  # killed, and reaped by its supervisor
        os.kill(runner, 0)
    storage = Storage(local_conf["dbfile"])
    assert [row[1:] for row in storage.results(request_id, with_arguments=False)][0][0] == "done"
    assert storage.end_worker(request_id, "1.1", "killed", retryable=True) == [2]
    assert storage.requeue(request_id, max_attempts=5, failed_too=True) == []  # on purpose
