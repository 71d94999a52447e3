"""The job file that submission renders runs in a bare interpreter and its results arrive.

``map_async`` goes its whole real way (config, serialisation, database,
server, key file, ``jobscript.render`` with the settings submission builds)
up to the scheduler, which here keeps the job file. The test then runs each
array task as a compute node would: ``python -I -S job.py`` with only the
scheduler's task id in its environment, where neither sheepdog nor
cloudpickle can be imported, so the file must carry everything it needs.
"""

import os
import re
import subprocess
import sys

import pytest

import sheepdog
from sheepdog.caller import session
from sheepdog.backends.local import LocalBackend

BARE = (sys.executable, "-I", "-S")


class JobFileKeeper(LocalBackend):
    """A scheduler that keeps the job files it is given and runs nothing itself."""

    def __init__(self, config):
        super().__init__(config)
        self.jobs = []

    def submit(self, script, request_id, n_array_tasks):
        self.jobs.append((script, n_array_tasks))
        return f"kept-{len(self.jobs)}"

    def ended_tasks(self, job_id, candidates):
        return {}

    def running_tasks(self, job_id):
        return set()

    def cancel(self, job_id):
        pass


@pytest.fixture
def scheduler(monkeypatch):
    """Job files kept to be run by hand, each as one request's job: no warm pool keeps
    its worker waiting once it has run out of tasks (``linger`` 0)."""
    monkeypatch.setenv("SHEEPDOG_LINGER", "0")
    kept = []

    def create(config):
        kept.append(JobFileKeeper(config))
        return kept[-1]

    monkeypatch.setattr(session, "create_backend", create)
    return kept


def run_array_task(directory, keeper, script, task_id):
    """Run the job file as the scheduler would run array task ``task_id`` of it."""
    path = directory / "job.py"
    path.write_text(script)
    return subprocess.run([*BARE, str(path)], env={keeper.task_variable: str(task_id)},
                          cwd=directory, capture_output=True, text=True, timeout=60)


def test_neither_sheepdog_nor_cloudpickle_can_be_imported_in_the_bare_interpreter(tmp_path):
    probe = ("import importlib.util, sys\n"
             "sys.exit(any(importlib.util.find_spec(name) for name in ('sheepdog', 'cloudpickle')))")
    assert subprocess.run([*BARE, "-c", probe], cwd=tmp_path, env={}).returncode == 0


def test_a_rendered_job_file_runs_its_chunk_in_a_bare_interpreter_and_reports_back(
        local_conf, scheduler, tmp_path):
    offset = 100

    def shifted(x):
        if x == 2:
            raise ValueError(f"no {x}")
        return x + offset  # a closure: travels by value

    conf = {**local_conf, "chunksize": 2}  # HTTPS with a pinned certificate, a key file
    request_id = sheepdog.map_async(shifted, [(1,), (2,), (3,)], conf)
    (keeper,) = scheduler
    ((script, n_array_tasks),) = keeper.jobs
    assert n_array_tasks == 2
    assert "'key_file': " in script and "'certificate': '-----BEGIN CERTIFICATE-----" in script
    for task_id in (1, 2):
        finished = run_array_task(tmp_path, keeper, script, task_id)
        assert finished.returncode == 0, finished.stderr
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=30)
    assert results == [((1,), 101), ((2,), None), ((3,), 103)]
    ((args, error),) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert args == (2,) and "ValueError: no 2" in error and "in shifted" in error


def test_a_job_file_whose_key_file_is_unreadable_says_so_and_exits_with_its_own_status(
        local_conf, scheduler, tmp_path):
    from sheepdog.wire.protocol import EXIT_NO_KEY

    sheepdog.map_async(abs, [(-1,)], local_conf)
    (keeper,) = scheduler
    ((script, _n),) = keeper.jobs
    key_file = re.search(r"'key_file': '([^']+)'", script).group(1)
    os.chmod(key_file, 0)
    if os.geteuid() == 0:
        os.remove(key_file)  # root reads any file; a missing one fails the same way
    finished = run_array_task(tmp_path, keeper, script, 1)
    assert finished.returncode == EXIT_NO_KEY
    assert f"cannot read the request's key file {key_file}" in finished.stderr
