"""The user's own code travels however it is imported, and fails as it would at home;
the packages it uses by name are compared between the caller and its workers.

The first tests write a small project (a package and two modules beside a
script) into a folder that no worker has on its path, and run the script in a
fresh Python with the local backend, as a user would.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest

import sheepdog

ROOT = Path(__file__).resolve().parents[1]

PROJECT = {
    "mylib.py": """
        def parse(text):
            return int(text) * 2


        class Scaler:
            def __init__(self, factor):
                self.factor = factor

            def scale(self, x):
                return x * self.factor


        def fails(x):
            raise ValueError(f"bad {x}")
        """,
    "other.py": """
        import mylib


        def triple(x):
            return 3 * mylib.parse(str(x))
        """,
    "tools/__init__.py": """
        from .helpers import shout
        """,
    "tools/helpers.py": """
        def shout(text):
            return text.upper() + "!"
        """,
    "tools/numbers.py": """
        from . import helpers


        def double(x):
            return 2 * x


        def loud(x):
            return helpers.shout(str(x))


        def louder(x):
            from .helpers import shout
            return shout(str(x)) + "!"
        """,
}

SCRIPT = """
    import sys

    import sheepdog
    import mylib
    import mylib as ml
    import tools.numbers
    import other
    from mylib import parse
    from tools import shout

    SCALER = mylib.Scaler(3)


    class Job:
        def run(self, x):
            return other.triple(x)


    JOB = Job()


    def task(x):
        import tools.helpers as helpers
        from tools.numbers import louder
        return [mylib.parse(x), ml.parse(x), parse(x), tools.numbers.double(int(x)),
                SCALER.scale(int(x)), JOB.run(int(x)), helpers.shout(x), shout(x),
                tools.numbers.loud(x), louder(x)]


    def fails_in_helper(x):
        return mylib.fails(x)


    def fails_here(x):
        raise KeyError(x)


    config = {"scheduler": "local", "dbfile": sys.argv[1]}
    print(sheepdog.map(task, [("1",), ("2",)], config, verbose=False))
    print(sheepdog.map(JOB.run, [(1,)], config, verbose=False))
    for function in (fails_in_helper, fails_here):
        request = sheepdog.map_async(function, [("x",)], config)
        sheepdog.get_results(request, config["dbfile"])
        print(sheepdog.get_errors(request, config["dbfile"])[0][1])
    """


def write_project(folder, files):
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def run_script(tmp_path, script=SCRIPT, files=PROJECT):
    project = tmp_path / "project"
    write_project(project, {**files, "script.py": script})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("SHEEPDOG_")}
    environment["PYTHONPATH"] = str(ROOT)  # sheepdog itself; never the project
    return subprocess.run(
        [sys.executable, str(project / "script.py"), str(tmp_path / "sheepdog.sqlite")],
        capture_output=True, text=True, cwd=elsewhere, env=environment, timeout=180)


@pytest.fixture(scope="module")
def script_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("travel")
    return tmp_path / "project", run_script(tmp_path)


def test_own_modules_travel_however_they_are_imported(script_run):
    _project, completed = script_run
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == ("[[2, 2, 2, 2, 3, 6, '1!', '1!', '1!', '1!!'], "
                        "[4, 4, 4, 4, 6, 12, '2!', '2!', '2!', '2!!']]")
    assert lines[1] == "[6]"


def test_traceback_names_the_callers_files_and_shows_their_lines(script_run):
    project, completed = script_run
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert f'File "{project / "script.py"}", line 31, in fails_in_helper' in output
    assert "    return mylib.fails(x)\n" in output
    assert f'File "{project / "mylib.py"}", line 14, in fails' in output
    assert '    raise ValueError(f"bad {x}")\n' in output and "ValueError: bad x" in output
    assert f'File "{project / "script.py"}", line 35, in fails_here' in output
    assert "    raise KeyError(x)\n" in output


def test_compiled_module_of_the_users_is_refused_at_submit_naming_it(tmp_path):
    script = """
        import sys
        import types

        import sheepdog

        fast = types.ModuleType("fastmath")
        fast.__file__ = sys.argv[1] + ".fastmath.cpython-311-x86_64-linux-gnu.so"
        sys.modules["fastmath"] = fast
        import fastmath

        try:
            sheepdog.map(lambda x: fastmath.add(x), [(1,)], {"scheduler": "local",
                                                            "dbfile": sys.argv[1]})
        except sheepdog.SerialisationError as error:
            print(error)
        """
    completed = run_script(tmp_path, script, {})
    assert completed.returncode == 0, completed.stderr
    assert "the module 'fastmath'" in completed.stdout
    assert "is a compiled extension that is not installed" in completed.stdout


def numpy_total(values):
    return int(numpy.sum(values))


def version_warnings(messages):
    return [message for message in messages if "has other versions than the caller" in message]


def test_a_worker_whose_versions_equal_the_callers_is_not_warned_about(local_conf, caplog):
    with caplog.at_level("WARNING"):
        assert sheepdog.map(numpy_total, [([1, 2],), ([3],)], local_conf, verbose=False) == [3, 3]
    assert version_warnings(caplog.messages) == []


def test_a_worker_with_another_minor_version_is_warned_about_once(local_conf, caplog,
                                                                   monkeypatch):
    worker_version = numpy.__version__
    monkeypatch.setattr(numpy, "__version__", "0.1.0")  # the caller's, as the function carries it
    config = {**local_conf, "workers": 2}
    with caplog.at_level("WARNING"):
        assert sheepdog.map(numpy_total, [([1, 2],), ([3],), ([4],)], config,
                            verbose=False) == [3, 3, 4]
    assert version_warnings(caplog.messages) == [
        f"request 1: the worker on {socket.gethostname()} ({sys.executable}) has other "
        f"versions than the caller: numpy 0.1.0 in the caller, {worker_version} on the worker; "
        f"its results may differ, or its tasks fail (config key 'version_mismatch')"]


def test_version_mismatch_error_fails_the_tasks_saying_why(local_conf, monkeypatch):
    worker_version = numpy.__version__
    monkeypatch.setattr(numpy, "__version__", "0.1.0")
    config = {**local_conf, "version_mismatch": "error"}
    assert sheepdog.map(numpy_total, [([1, 2],)], config, verbose=False) == [None]
    ((_arguments, error),) = sheepdog.get_errors(1, local_conf["dbfile"])
    assert (f"has other versions than the caller: numpy 0.1.0 in the caller, {worker_version} "
            f"on the worker. The request's 'version_mismatch' is 'error', so its tasks do not "
            f"run here") in error


def test_version_mismatch_takes_only_warn_error_or_ignore(local_conf):
    with pytest.raises(ValueError, match="config key 'version_mismatch' is 'loud'; choose one "
                                         "of warn, error, ignore"):
        sheepdog.map(abs, [(1,)], {**local_conf, "version_mismatch": "loud"})
