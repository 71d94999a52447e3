import os
import signal
import stat
import sys
import time

from sheepdog.backends import TaskEnd
from sheepdog.backends.local import LocalBackend, describe_exit
from sheepdog.config import resolve


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_tasks_see_the_gridengine_environment_and_run_bounded(tmp_path):
    backend = LocalBackend(resolve({"scheduler": "local", "workers": 2}))
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import os, pathlib\n"
        f"pathlib.Path({str(out)!r}, os.environ['SGE_TASK_ID']).write_text("
        "os.environ['JOB_ID'] + ' ' + os.environ['SGE_TASK_LAST'])\n"
    )
    job_id = backend.submit(script, 1, 5)
    assert wait_for(lambda: len(backend.ended_tasks(job_id, {1, 2, 3, 4, 5})) == 5)
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "3", "4", "5"]
    assert (out / "3").read_text() == f"{job_id} 5"
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
    assert wait_for(lambda: backend.ended_tasks(job_id, {1}) == {
        1: TaskEnd("killed by SIGKILL", retryable=False, exit_status=-signal.SIGKILL)
    })


def test_exit_descriptions_name_signals():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_cancel_stops_tasks_not_yet_started():
    backend = LocalBackend(resolve({"scheduler": "local", "workers": 1, "shell": sys.executable}))
    job_id = backend.submit("import time; time.sleep(30)", 1, 3)
    assert wait_for(lambda: backend._jobs[job_id]._running)
    backend.cancel(job_id)
    assert wait_for(lambda: len(backend.ended_tasks(job_id, {1, 2, 3})) >= 1)
    time.sleep(0.5)
    assert list(backend.ended_tasks(job_id, {1, 2, 3})) == [1]
