import os
import signal
import stat
import sys
import time

from sheepdog.backends.local import LocalBackend, describe_exit
from sheepdog.config import resolve


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_tasks_see_their_array_task_id_and_run_at_most_workers_at_once(tmp_path):
    backend = LocalBackend(resolve({"scheduler": "local", "workers": 2}))
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import os, pathlib, time\n"
        f"task = os.environ[{backend.task_variable!r}]\n"
        f"running = pathlib.Path({str(tmp_path)!r}, 'running-' + task)\n"
        "running.touch()\n"
        f"at_once = len(list(pathlib.Path({str(tmp_path)!r}).glob('running-*')))\n"
        "time.sleep(0.2)\n"
        "running.unlink()\n"
        f"pathlib.Path({str(out)!r}, task).write_text(str(at_once))\n"
    )
    job_id = backend.submit(script, 1, 5)
    assert wait_for(lambda: len(backend.ended_tasks(job_id, {1, 2, 3, 4, 5})) == 5)
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "3", "4", "5"]
    assert max(int(p.read_text()) for p in out.iterdir()) <= 2
    assert {end.reason for end in backend.ended_tasks(job_id, {1, 2, 3, 4, 5}).values()} == {
        "exit status 0"
    }


def test_job_file_is_private(tmp_path):
    backend = LocalBackend(resolve({"scheduler": "local"}))
    script = "import os, sys, stat; print(oct(os.stat(sys.argv[0]).st_mode)); import time; time.sleep(5)"
    job_id = backend.submit(script, 1, 1)
    job = backend._jobs[job_id]
    assert wait_for(lambda: job._running)
    mode = os.stat(job.script).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(job.script.parent).st_mode) == 0o700
    backend.cancel(job_id)
    assert wait_for(lambda: 1 in backend.ended_tasks(job_id, {1}))
    end = backend.ended_tasks(job_id, {1})[1]
    assert end.reason.startswith("killed by SIGKILL")
    assert (end.retryable, end.exit_status) == (False, -signal.SIGKILL)


def test_exit_descriptions_name_signals():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_tasks_still_queued_when_the_job_is_cancelled_never_start(tmp_path):
    """Each task marks its start; after cancel, only the one already running has."""
    backend = LocalBackend(resolve({"scheduler": "local", "workers": 1, "shell": sys.executable}))
    script = (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(tmp_path)!r}, 'started-' + os.environ[{backend.task_variable!r}])"
        ".touch()\n"
        "time.sleep(30)\n"
    )
    job_id = backend.submit(script, 1, 3)
    assert wait_for(lambda: (tmp_path / "started-1").exists())
    backend.cancel(job_id)
    job = backend._jobs[job_id]
    started = lambda: sorted(path.name for path in tmp_path.glob("started-*"))  # noqa: E731
    # Done once the job's threads have ended, or as soon as a queued task starts anyway.
    assert wait_for(lambda: not any(t.is_alive() for t in job._threads) or len(started()) > 1)
    assert started() == ["started-1"]
    ended = backend.ended_tasks(job_id, {1, 2, 3})
    assert list(ended) == [1] and ended[1].reason.startswith("killed by SIGKILL")


def test_a_job_of_an_earlier_process_that_had_this_pid_ended_with_it():
    """Where every run gets the same pid (a container's first process), a job id's pid
    does not say that this process submitted it: its own record does."""
    backend = LocalBackend(resolve({"scheduler": "local"}))
    earlier = f"local-{os.getpid()}-{10**9}"  # never submitted here
    assert not backend.submitted_here(earlier)
    assert set(backend.ended_tasks(earlier, {1, 2})) == {1, 2}
