"""Sessions and request handles: any process can wait for, serve and finish a request."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import sheepdog
from sheepdog import SubmissionError

ROOT = Path(__file__).resolve().parents[1]


def run_script(source, *args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(source), *args],
                            env=env or dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


SUBMIT_AND_DIE = '''
    import os, sys, time
    import sheepdog

    def slow(x):
        import os, time
        if os.environ.get("SHEEPDOG_TEST_FIRST_CALLER") and x > 2:
            time.sleep(60)  # still running, or not started, when the caller dies
        return x * 10

    os.environ["SHEEPDOG_TEST_FIRST_CALLER"] = "1"  # local tasks inherit it
    conf = {"scheduler": "local", "dbfile": sys.argv[1], "workers": 2, "retries": int(sys.argv[2])}
    request_id = sheepdog.map_async(slow, [(x,) for x in range(1, 7)], conf)
    print(request_id, flush=True)
    storage = sheepdog.Storage(sys.argv[1])
    while storage.progress(request_id).done < 2:
        time.sleep(0.1)
    os.kill(os.getpid(), 9)  # as a crash, or kill -9, would end the caller
'''


def kill_caller_after_two_results(dbfile, retries):
    caller = run_script(SUBMIT_AND_DIE, dbfile, str(retries))
    request_id = int(caller.stdout.readline())
    caller.wait(60)
    assert caller.returncode == -signal.SIGKILL
    return request_id


def test_a_later_process_reruns_what_died_with_the_caller_and_gets_every_result(dbfile):
    """kill -9 of the caller: its local tasks die with it, and are retried by whoever waits."""
    request_id = kill_caller_after_two_results(dbfile, retries=1)
    results = sheepdog.get_results(request_id, dbfile, timeout=60)
    assert [result for _args, result in results] == [10, 20, 30, 40, 50, 60]
    assert len(sheepdog.Storage(dbfile).jobs(request_id)) == 2  # the rerun, submitted here


def test_as_completed_in_a_later_process_serves_and_reruns_what_died_with_the_caller(dbfile):
    request_id = kill_caller_after_two_results(dbfile, retries=1)
    assert sorted(sheepdog.as_completed(request_id, dbfile, timeout=60)) == [
        (x, 10 * x) for x in range(1, 7)]


def test_tasks_that_died_with_their_caller_are_lost_with_the_reason_and_the_rest_run(dbfile):
    """Without retries, what the dead caller's workers held is lost; what they had not
    pulled yet is run by a job that the waiting process submits."""
    request_id = kill_caller_after_two_results(dbfile, retries=0)
    results = sheepdog.get_results(request_id, dbfile, timeout=60)
    values = [result for _args, result in results]
    assert values[:2] == [10, 20] and None in values
    assert all(value in (10 * x, None) for x, value in enumerate(values, 1))
    errors = sheepdog.get_errors(request_id, dbfile)
    assert [args for args, _error in errors] == [(x,) for x, value in enumerate(values, 1)
                                                 if value is None]
    assert all("the process that ran it (pid" in error for _args, error in errors)


def quick(x):
    return x + 100


def test_reading_never_creates_a_database_and_names_those_nearby(tmp_path, local_conf):
    sheepdog.map(quick, [(1,)], local_conf, verbose=False)
    typo = tmp_path / "sheepdgo.sqlite"
    with pytest.raises(FileNotFoundError) as raised:
        sheepdog.get_results(1, str(typo))
    assert str(typo) in str(raised.value) and "sheepdog.sqlite" in str(raised.value)
    assert not typo.exists()
    with pytest.raises(FileNotFoundError):
        sheepdog.get_errors(1, str(typo))
    assert not typo.exists()


def test_an_unknown_request_is_a_key_error_naming_the_database(local_conf):
    sheepdog.map(quick, [(1,)], local_conf, verbose=False)
    with pytest.raises(KeyError, match="request 99 is not in .*; it holds requests 1 to 1"):
        sheepdog.get_results(99, local_conf["dbfile"])


def test_a_local_shell_that_does_not_exist_is_refused_before_anything_is_stored(local_conf):
    with pytest.raises(SubmissionError, match="no such executable"):
        sheepdog.map(quick, [(1,)], {**local_conf, "shell": "/no/such/python3"})
    assert not os.path.exists(local_conf["dbfile"])


def test_a_job_the_scheduler_refuses_leaves_its_tasks_lost_saying_why(local_conf,
                                                                      monkeypatch):
    from sheepdog.caller.request import Request

    def refused(*_args, **_kwargs):
        raise SubmissionError("the scheduler refused the job: no such queue")

    monkeypatch.setattr(Request, "submit_job", refused)
    with sheepdog.Session() as session:
        with pytest.raises(SubmissionError, match="no such queue"):
            session.submit(quick, [(1,), (2,)], {**local_conf, "linger": 0})
        storage = session.storage(local_conf["dbfile"])
        assert [error for _arguments, _state, error in storage.errors(1)] == [
            "the job was never submitted: the scheduler refused the job: no such queue"] * 2


@pytest.mark.parametrize("linger", [0, 60])
def test_a_local_request_leaves_no_temporary_folders_behind(local_conf, monkeypatch, tmp_path,
                                                            linger):
    """Without a pool, each request's folders go with it; a warm pool's go when its
    session closes (the default session's, when the process ends)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def fails(x):
        raise ValueError(x)

    conf = {**local_conf, "linger": linger}
    assert sheepdog.map(quick, [(1,), (2,)], conf, verbose=False) == [101, 102]
    assert sheepdog.map(fails, [(1,)], conf, verbose=False) == [None]
    if linger:
        sheepdog.api.default_session().close()  # the pool's workers wait until then
    deadline = time.monotonic() + 10
    while list(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the job's last thread removes the folder as it ends
    assert list(scratch.iterdir()) == []


CTRL_C = '''
    import sys
    import sheepdog

    def slow(marker):
        import signal, time

        def note(signum, frame):
            open(marker, "w").close()

        signal.signal(signal.SIGINT, note)
        time.sleep(30)

    print("started", flush=True)
    sheepdog.map(slow, [(sys.argv[2],), (sys.argv[2],)],
                 {"scheduler": "local", "dbfile": sys.argv[1]})
'''


def test_ctrl_c_at_a_terminal_reaches_the_caller_not_its_local_tasks(dbfile, tmp_path):
    """A terminal sends SIGINT to its whole foreground process group."""
    marker = tmp_path / "a task got SIGINT"
    caller = run_script(CTRL_C, dbfile, str(marker), start_new_session=True)
    assert caller.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if sheepdog.Storage(dbfile).progress(1).running == 2:
                break
        except (KeyError, sheepdog.StorageError):
            pass
        time.sleep(0.1)
    os.killpg(caller.pid, signal.SIGINT)
    _out, err = caller.communicate(timeout=30)
    assert "sheepdog: cancelled request 1" in err
    assert not marker.exists()
    assert sheepdog.Storage(dbfile).progress(1).cancelled == 2


def test_status_shows_cancelled_tasks_as_cancelled(local_conf):
    from sheepdog.cli import commands as cli

    def slow(x):
        import time
        time.sleep(30)

    request_id = sheepdog.map_async(slow, [(1,), (2,)], local_conf)
    sheepdog.cancel(request_id, local_conf["dbfile"])
    line = subprocess.run(
        [sys.executable, "-m", "sheepdog", "status", str(request_id), "--dbfile",
         local_conf["dbfile"]], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert "2 cancelled" in line
    assert cli  # the command under test


class LoadsBadly:
    """Pickles fine, but loading it raises (as a result needing a module the caller lacks)."""

    def __reduce__(self):
        return int, ("not a number",)


def unloadable_for_one(x):
    return LoadsBadly() if x == 1 else x


def test_a_result_that_cannot_be_loaded_here_becomes_its_tasks_error_alone(local_conf):
    results = sheepdog.map(unloadable_for_one, [(1,), (2,)], local_conf, verbose=False)
    assert results == [None, 2]
    ((args, error),) = sheepdog.get_errors(1, local_conf["dbfile"])
    assert args == (1,) and "could not be loaded in this process" in error
    assert "ValueError" in error and "not a number" in error
    assert sheepdog.Storage(local_conf["dbfile"]).progress(1).failed == 1


STARTS_AND_DIES = '''
    import os, sys, time
    import sheepdog

    def stays(pids):
        import os, time
        with open(pids, "a") as out:
            out.write(f"{os.getpid()}\\n")
        time.sleep(120)

    conf = {"scheduler": "local", "dbfile": sys.argv[1], "workers": 2, "dashboard": False}
    request_id = sheepdog.map_async(stays, [(sys.argv[2],), (sys.argv[2],)], conf)
    if sys.argv[3] == "kill-at-once":  # before its workers have even started
        os.kill(os.getpid(), 9)
    while len(open(sys.argv[2]).read().split()) < 2 if os.path.exists(sys.argv[2]) else True:
        time.sleep(0.05)
    print("running", flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), 9)
'''


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended too
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, at any of the three steps
        return False


def job_file_processes(folder):
    """The pids of processes running a job file that lives below ``folder``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if str(folder).encode() in cmdline.read():
                    found.append(int(pid))
        except OSError:
            pass
    return [pid for pid in found if alive(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_local_workers_end_with_a_caller_killed_before_they_started(dbfile, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    caller = run_script(STARTS_AND_DIES, dbfile, str(tmp_path / "pids"), "kill-at-once",
                        env=dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(scratch)))
    caller.wait(60)
    # A worker started just before its caller died is still starting Python and reading
    # its job file, which takes seconds when both cores are busy; then it leaves.
    deadline = time.monotonic() + 30
    while job_file_processes(scratch) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_file_processes(scratch) == []


@pytest.mark.parametrize("ending", ["kill", "exit"])
def test_local_tasks_and_their_job_folder_end_with_the_caller(dbfile, tmp_path, monkeypatch,
                                                             ending):
    """Killed (SIGKILL) or exiting, the caller leaves no task running: none retries a
    vanished server for retry_seconds; an exit also removes the job's folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    pids = tmp_path / "pids"
    caller = run_script(STARTS_AND_DIES, dbfile, str(pids), ending,
                        env=dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(scratch)))
    assert caller.stdout.readline() == "running\n"
    caller.wait(60)
    tasks = [int(pid) for pid in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in tasks)
    if ending == "exit":
        assert list(scratch.iterdir()) == []  # its job folders and its keys
    else:  # killed without a word: the next local backend removes what it left
        assert len(list(scratch.iterdir())) == 2  # a job folder and a key folder
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        from sheepdog.backends.local import LocalBackend
        from sheepdog.config import resolve

        LocalBackend(resolve({"scheduler": "local"}))
        assert list(scratch.iterdir()) == []
