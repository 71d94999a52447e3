"""A task's stdout and stderr: the scheduler's files keep all of it, even across a
crash, and the last 64 KB of each task's part come back with its error, and
through ``sheepdog logs``."""

import os
import re
import subprocess
import sys

import pytest

import sheepdog
from sheepdog.caller import session
from sheepdog.cli import commands as cli
from sheepdog.backends.local import LocalBackend
from sheepdog.wire.protocol import OUTPUT_TAIL_BYTES

from .test_api import max_request


class JobFileKeeper(LocalBackend):
    """A scheduler that keeps the job files it is given, for the test to run as it likes."""

    def __init__(self, config):
        super().__init__(config)
        self.scripts = []

    def submit(self, script, request_id, n_array_tasks):
        self.scripts.append(script)
        return f"kept-{len(self.scripts)}"

    def ended_tasks(self, job_id, candidates):
        return {}

    def running_tasks(self, job_id):
        return set()


@pytest.fixture
def kept_scripts(monkeypatch):
    """The job files submitted from now on, which nothing runs unless the test does.

    Each models one request's job, run by hand: no warm pool keeps its worker
    waiting for another request once it has run out of tasks (``linger`` 0).
    """
    monkeypatch.setenv("SHEEPDOG_LINGER", "0")
    keepers = []

    def create(config):
        keepers.append(JobFileKeeper(config))
        return keepers[-1]

    monkeypatch.setattr(session, "create_backend", create)
    return lambda: [script for keeper in keepers for script in keeper.scripts]


def run_array_task(script, task_id, directory, stdout, stderr):
    """Run one array task as the scheduler would, with stdout and stderr where it says.

    PYTHONUNBUFFERED is left out: on a cluster nothing sets it for the worker.
    """
    path = directory / "job.py"
    path.write_text(script)
    variable = re.search(r"'task_variable': '(\w+)'", script).group(1)
    environment = {name: value for name, value in os.environ.items()
                   if name != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, str(path)], env={**environment, variable: str(task_id)},
                          cwd=directory, stdout=stdout, stderr=stderr, timeout=60).returncode


def test_a_failed_tasks_prints_and_logging_come_with_its_error(local_conf):
    def noisy(x):
        import logging

        print(f"computing {x}")
        logging.warning("about to fail on %s", x)
        if x == 2:
            raise ValueError(f"no {x}")
        return x

    assert sheepdog.map(noisy, [(1,), (2,)], local_conf, verbose=False) == [1, None]
    ((args, error),) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    traceback, section = error.split("\n\n--- the task's stdout and stderr", 1)
    assert args == (2,) and traceback.endswith("ValueError: no 2")
    assert "computing 2\n" in section and "WARNING:root:about to fail on 2" in section
    assert "computing 1" not in section  # each task's own part only
    assert section.endswith("--- end of the task's stdout and stderr ---")


def test_a_task_that_closes_or_replaces_its_streams_costs_the_next_task_nothing(local_conf):
    """One batch of seven in one runner: tasks 1, 3 and 5 close sys.stdout, replace
    sys.stderr or close descriptor 1; the task after each still prints and succeeds,
    and its output is kept."""
    def rude(x):
        import io
        import os
        import sys

        print(f"task {x} here")
        print(f"task {x} on stderr", file=sys.stderr)
        if x == 1:
            sys.stdout.close()
        elif x == 3:
            sys.stderr = io.StringIO()
        elif x == 5:
            os.close(1)
        return x

    conf = {**local_conf, "chunksize": 7, "workers": 1}
    assert sheepdog.map(rude, [(x,) for x in range(7)], conf, verbose=False) == list(range(7))
    request_id = max_request(local_conf)
    storage = sheepdog.api.default_session().storage(local_conf["dbfile"])
    for index in (3, 5, 7):  # the tasks after each (x = index - 1)
        shown = "".join(storage.task_logs(request_id, index)[0].output.values())
        assert f"task {index - 1} here" in shown and f"task {index - 1} on stderr" in shown


def test_output_written_right_before_a_crash_reaches_the_output_file_and_the_database(
        local_conf, kept_scripts, tmp_path):
    def crashes_mid_line(x):
        import os
        import sys

        print("first line")
        print("no newline yet", end="")
        sys.stderr.write("nor here")
        os._exit(3)

    request_id = sheepdog.map_async(crashes_mid_line, [(1,)], local_conf)
    (script,) = kept_scripts()
    with open(tmp_path / "task.o", "wb") as output:
        run_array_task(script, 1, tmp_path, output, subprocess.STDOUT)
    written = (tmp_path / "task.o").read_text()
    assert "first line\nno newline yetnor here" in written
    assert "task 1 ended without reporting (exit status 3)" in written  # the worker said so
    ((_args, error),) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert error.startswith("the task ended without reporting (exit status 3 while it ran")
    assert "first line\nno newline yetnor here" in error


def test_what_c_code_printed_reaches_the_output_file_too(local_conf, kept_scripts, tmp_path):
    def prints_from_c(x):
        import ctypes

        ctypes.CDLL(None).printf(b"from C, buffered by stdio\n")
        return x

    request_id = sheepdog.map_async(prints_from_c, [(1,)], local_conf)
    (script,) = kept_scripts()
    with open(tmp_path / "task.o", "wb") as output:
        assert run_array_task(script, 1, tmp_path, output, subprocess.STDOUT) == 0
    assert (tmp_path / "task.o").read_text() == "from C, buffered by stdio\n"
    assert sheepdog.get_results(request_id, local_conf["dbfile"]) == [((1,), 1)]


def test_stdout_and_stderr_in_files_of_their_own_are_kept_as_two_streams(
        local_conf, kept_scripts, tmp_path):
    def talks_on_both(x):
        import sys

        print("to stdout")
        print("to stderr", file=sys.stderr)
        raise RuntimeError("failed")

    request_id = sheepdog.map_async(talks_on_both, [(1,)], local_conf)
    (script,) = kept_scripts()
    with open(tmp_path / "task.o", "wb") as stdout, open(tmp_path / "task.e", "wb") as stderr:
        run_array_task(script, 1, tmp_path, stdout, stderr)
    assert (tmp_path / "task.o").read_text() == "to stdout\n"
    assert "to stderr\n" in (tmp_path / "task.e").read_text()
    ((_args, error),) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert "--- the task's stdout (its last 64 KB at most) ---\nto stdout\n--- end" in error
    assert "--- the task's stderr (its last 64 KB at most) ---\nto stderr\n--- end" in error


def test_output_that_goes_to_no_file_still_arrives_but_is_not_kept(
        local_conf, kept_scripts, tmp_path):
    def talks(x):
        print("to a pipe")
        raise RuntimeError("failed")

    request_id = sheepdog.map_async(talks, [(1,)], local_conf)
    (script,) = kept_scripts()
    path = tmp_path / "job.py"
    path.write_text(script)
    variable = re.search(r"'task_variable': '(\w+)'", script).group(1)
    finished = subprocess.run([sys.executable, str(path)], env={**os.environ, variable: "1"},
                              capture_output=True, text=True, timeout=60)
    assert finished.stdout == "to a pipe\n"
    ((_args, error),) = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert "RuntimeError: failed" in error and "---" not in error


def test_a_chatty_task_keeps_the_last_64_kb_and_says_how_much_went(local_conf):
    def chatty(x):
        for line in range(20_000):
            print(f"line {line:05d} " + "." * 40)
        raise ValueError("after all that")

    assert sheepdog.map(chatty, [(1,)], local_conf, verbose=False) == [None]
    ((_args, error),) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    section = error.split("--- the task's stdout and stderr (its last 64 KB at most) ---\n")[1]
    kept = section.split("\n--- end of")[0]
    assert re.match(r"\[\.\.\. \d+ earlier bytes not kept\]\n", kept)
    assert "line 19999" in kept and "line 00000" not in kept
    assert OUTPUT_TAIL_BYTES - 100 < len(kept.encode()) < OUTPUT_TAIL_BYTES + 100


def test_sheepdog_logs_shows_any_tasks_output_and_lists_those_that_failed(local_conf, capsys):
    def talks(x):
        print(f"working on {x}")
        if x == 2:
            raise ValueError("two")
        return x

    sheepdog.map(talks, [(1,), (2,), (3,)], local_conf, verbose=False)
    request_id, dbfile = str(max_request(local_conf)), local_conf["dbfile"]
    assert cli.main(["logs", request_id, "3", "--dbfile", dbfile]) == cli.EXIT_UNSUCCESSFUL
    assert capsys.readouterr().out == (
        "=== task 3: done ===\n--- stdout and stderr (the last part) ---\nworking on 3\n")
    assert cli.main(["logs", request_id, "--dbfile", dbfile]) == cli.EXIT_UNSUCCESSFUL
    listing = capsys.readouterr().out
    assert listing.startswith("=== task 2: failed ===\nTraceback (most recent call last):")
    assert "ValueError: two\n--- stdout and stderr (the last part) ---\nworking on 2\n" in listing
    assert "task 1" not in listing and "task 3" not in listing
    assert cli.main(["logs", request_id, "4", "--dbfile", dbfile]) == cli.EXIT_USAGE
    assert "has no task 4: its tasks are 1 to 3" in capsys.readouterr().err


def test_sheepdog_logs_of_a_missing_database_names_it_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "typo.sqlite"
    assert cli.main(["logs", "1", "--dbfile", str(missing)]) == cli.EXIT_USAGE
    assert f"no sheepdog database at {missing}" in capsys.readouterr().err
    assert not missing.exists()
