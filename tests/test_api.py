import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

import sheepdog
from sheepdog import api
from sheepdog.wire import serialisation

from .support.quickstart import QUICKSTART, run_doctest

ROOT = Path(__file__).resolve().parents[1]

def test_quickstart_examples_run_verbatim_on_the_local_backend(local_conf):
    results = run_doctest(QUICKSTART, {**local_conf, "scheduler": "local"})
    assert results.failed == 0 and results.attempted == 17


def test_quickstart_import_idiom_with_numpy(local_conf):
    pytest.importorskip("numpy")
    text = """
>>> def g(x):
...     return np.mean(x)
>>> def f(x):
...     import numpy as np
...     global np
...     return g(x)
>>> [float(mean) for mean in sheepdog.map(f, [([1, 2, 3],), ([4, 6],)], conf, verbose=False)]
[2.0, 5.0]
"""
    results = run_doctest(text, local_conf, {"sheepdog": sheepdog, "conf": local_conf})
    assert results.failed == 0 and results.attempted == 3


def test_lambda_and_closure_run_remotely(local_conf):
    assert sheepdog.map(lambda x: x * 10, [(1,), (2,)], local_conf) == [10, 20]
    base = 5

    def add_base(x):
        return x + base

    assert sheepdog.map(add_base, [(1,), (2,)], local_conf) == [6, 7]


def test_raising_task_gives_none_and_its_traceback(local_conf, capsys):
    def inverse(x):
        return 1 / x

    assert sheepdog.map(inverse, [(2,), (0,), (4,)], local_conf) == [0.5, None, 0.25]
    request_id = sheepdog.map_async(inverse, [(0,)], local_conf) - 1
    errors = sheepdog.get_errors(request_id, local_conf["dbfile"])
    assert len(errors) == 1 and errors[0][0] == (0,)
    assert "ZeroDivisionError: division by zero" in errors[0][1]
    assert "in inverse" in errors[0][1] and "run_one" not in errors[0][1]
    assert f"get_errors({request_id}, " in capsys.readouterr().err


def test_errors_raise_raises_the_first_failure_in_argument_order_naming_the_request(local_conf):
    def slow_inverse(x, seconds):
        import time
        time.sleep(seconds)
        return 1 / x

    # Task 3 fails first in time; task 2 comes first in argument order.
    args = [(2, 0), (0, 1.5), ("x", 0), (4, 0)]
    with pytest.raises(ZeroDivisionError) as raised:
        sheepdog.map(slow_inverse, args, {**local_conf, "workers": 4}, errors="raise",
                     verbose=False)
    note = "\n".join(raised.value.__notes__)
    request_id = int(note.split("of request ")[1].split()[0])
    assert f"task 2 of request {request_id}" in note and f"get_results({request_id}, " in note
    assert "in slow_inverse" in raised.value.__cause__.traceback
    results = sheepdog.get_results(request_id, local_conf["dbfile"])
    assert [result for _args, result in results] == [0.5, None, None, 0.25]
    assert sheepdog.map(slow_inverse, [(4, 0)], local_conf, errors="raise") == [0.25]
    with pytest.raises(ValueError, match="errors must be 'none' or 'raise'"):
        sheepdog.map(slow_inverse, [(4, 0)], local_conf, errors="ignore")


def test_unpicklable_argument_is_refused_before_anything_is_stored(local_conf):
    with pytest.raises(sheepdog.SerialisationError, match="argument 1"):
        sheepdog.map_async(len, [("ok",), (threading.Lock(),)], local_conf)
    if os.path.exists(local_conf["dbfile"]):
        with sqlite3.connect(local_conf["dbfile"]) as raw:
            assert raw.execute("SELECT count(*) FROM requests").fetchone()[0] == 0


def test_bad_config_is_refused_before_anything_is_stored(local_conf):
    with pytest.raises(ValueError, match="unknown config key"):
        sheepdog.map_async(len, [("x",)], {**local_conf, "colour": "blue"})
    assert not os.path.exists(local_conf["dbfile"])


def test_non_tuple_argument_explains_how_to_write_it(local_conf):
    with pytest.raises(TypeError, match=r"write \(3,\)"):
        sheepdog.map(abs, [3], local_conf)


def test_empty_args_give_an_empty_list(local_conf):
    assert sheepdog.map(abs, [], local_conf) == []


def test_async_results_come_back_in_argument_order(local_conf):
    request_id = sheepdog.map_async(pow, [(2, n) for n in range(12)], {**local_conf, "workers": 4})
    assert isinstance(request_id, int)
    results = sheepdog.get_results(request_id, local_conf["dbfile"])
    assert results == [((2, n), 2**n) for n in range(12)]


def test_non_blocking_get_results_shows_none_for_unfinished(local_conf):
    def slow(x):
        import time

        time.sleep(30)

    request_id = sheepdog.map_async(slow, [(1,)], local_conf)
    assert sheepdog.get_results(request_id, local_conf["dbfile"], block=False) == [((1,), None)]
    with pytest.raises(TimeoutError, match="0 of 1"):
        sheepdog.wait(request_id, local_conf["dbfile"], timeout=0.5)


def test_results_are_read_back_from_a_new_process(local_conf):
    request_id = sheepdog.map_async(str.upper, [("a",), ("b",)], local_conf)
    sheepdog.wait(request_id, local_conf["dbfile"])
    program = (
        "import sheepdog\n"
        f"print(sheepdog.get_results({request_id}, {local_conf['dbfile']!r}, block=False))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert output.strip() == "[(('a',), 'A'), (('b',), 'B')]"


def test_function_typed_into_python_stdin_runs(local_conf, tmp_path):
    program = textwrap.dedent(f"""
        import sheepdog
        def f(a, b):
            return a * b
        print(sheepdog.map(f, [(2, 3), (4, 5)], {local_conf!r}, verbose=False))
    """)
    output = subprocess.run(
        [sys.executable, "-"], input=program, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert output.strip() == "[6, 20]"


def test_two_calls_in_one_session_share_the_server(local_conf, tmp_path):
    sheepdog.map(abs, [(-1,)], local_conf)
    server = api.default_session().server_of(local_conf["dbfile"], "https")
    sheepdog.map(abs, [(-2,)], local_conf)
    assert api.default_session().server_of(local_conf["dbfile"], "https") is server
    other = {**local_conf, "dbfile": str(tmp_path / "other.sqlite")}
    assert sheepdog.map(abs, [(-3,)], other) == [3]
    assert api.default_session().server_of(other["dbfile"], "https") is not server


def max_request(conf):
    with sqlite3.connect(conf["dbfile"]) as raw:
        return raw.execute("SELECT max(id) FROM requests").fetchone()[0]


def test_module_missing_on_the_worker_is_a_clear_error(local_conf, monkeypatch):
    only_here = types.ModuleType("only_on_the_caller")
    monkeypatch.setitem(sys.modules, "only_on_the_caller", only_here)
    # As if it were installed here, and so sent by name: the workers lack it.
    monkeypatch.setattr(serialisation, "module_is_installed", lambda name: True)

    def uses_it():
        return only_here

    assert sheepdog.map(uses_it, [()], local_conf, verbose=False) == [None]
    (error,) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert "could not be loaded" in error[1] and "only_on_the_caller" in error[1]


def test_task_that_dies_without_reporting_is_lost_not_waited_for(local_conf):
    def die():
        os._exit(3)

    assert sheepdog.map(die, [()], local_conf, verbose=False) == [None]
    (error,) = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert "without reporting (exit status 3" in error[1]


def test_public_names_are_pinned():
    assert sorted(sheepdog.__all__) == sorted([
        "CallbackError", "Config", "DiskFullError", "Executor", "RemoteTraceback", "Request",
        "SSHError", "SerialisationError", "Server", "Session", "Storage", "StorageError",
        "SubmissionError",
        "TaskError", "TaskLost", "UnsafePathError", "__version__", "as_completed", "cancel",
        "get_errors", "get_results", "job_script", "map", "map_async", "map_sync", "wait",
    ])
    assert sheepdog.map_sync is sheepdog.map


def test_a_call_needing_another_scheme_leaves_the_earlier_server_running(local_conf):
    """Workers of earlier requests may still call the first server back."""
    sheepdog.map(abs, [(-1,)], local_conf, verbose=False)
    first = api.default_session().server_of(local_conf["dbfile"], "https")
    assert sheepdog.map(abs, [(-2,)], {**local_conf, "tls": False}, verbose=False) == [2]
    plain = api.default_session().server_of(local_conf["dbfile"], "http")
    assert first.running and plain.running and plain is not first


def test_cancel_from_another_process_ends_the_wait_of_this_one(local_conf):
    def forever(x):
        import time

        time.sleep(600)

    request_id = sheepdog.map_async(forever, [(1,), (2,)], {**local_conf, "workers": 2})
    storage = sheepdog.Storage(local_conf["dbfile"])
    deadline = time.monotonic() + 30
    while storage.progress(request_id).running < 2 and time.monotonic() < deadline:
        storage.wait_for_change(storage.change_count, 0.2)
    program = f"import sheepdog; print(sheepdog.cancel({request_id}, {local_conf['dbfile']!r}))"
    other = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert (other.returncode, other.stdout) == (0, "2\n"), other.stderr
    try:
        assert sheepdog.get_results(request_id, local_conf["dbfile"], timeout=10) == [
            ((1,), None), ((2,), None)]
        errors = sheepdog.get_errors(request_id, local_conf["dbfile"])
        assert [error for _args, error in errors] == ["cancelled by the user"] * 2
    finally:
        sheepdog.cancel(request_id, local_conf["dbfile"])  # this process runs the tasks: stop them


def test_reading_functions_use_the_dbfile_of_your_settings(local_conf, monkeypatch):
    monkeypatch.setenv("SHEEPDOG_DBFILE", local_conf["dbfile"])
    request_id = sheepdog.map_async(abs, [(-3,)], {"scheduler": "local"})
    assert sheepdog.get_results(request_id, timeout=60) == [((-3,), 3)]
    assert sheepdog.get_errors(request_id) == []


def test_get_results_restarting_an_orphaned_local_request_says_so(local_conf, caplog):
    program = textwrap.dedent(f"""
        import os, time, sheepdog
        from sheepdog.backends import local
        def slow(x):
            import time
            time.sleep(1)
            return 2 * x
        request = sheepdog.map_async(slow, [(1,), (2,)], {{**{local_conf!r}, "retries": 1}})
        print(request, flush=True)
        storage = sheepdog.Storage({local_conf["dbfile"]!r})
        while storage.progress(request).running < 2:
            time.sleep(0.02)
        for job in list(local._live_jobs):  # as if this process's end had taken them along
            for process in list(job._running.values()):
                process.kill()
        os._exit(0)
    """)
    request_id = int(subprocess.run([sys.executable, "-c", program], capture_output=True,
                                    text=True, check=True, cwd=ROOT, timeout=60).stdout)
    with caplog.at_level("WARNING", logger="sheepdog.caller.watcher"):
        results = sheepdog.get_results(request_id, local_conf["dbfile"])
    assert results == [((1,), 2), ((2,), 4)]
    assert (f"request {request_id}: no worker is left for its 2 unfinished tasks (local "
            f"workers end with the Python process that started them); restarting them in new "
            f"workers of this process") in caplog.messages


def test_an_uncaught_interruption_of_map_ends_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    api._one_line_for_interruptions()
    sys.excepthook(api.Interrupted, api.Interrupted("sheepdog.map of request 7 interrupted"),
                   None)
    assert capsys.readouterr().err == "KeyboardInterrupt: sheepdog.map of request 7 interrupted\n"


def sleep_long(seconds):
    import time

    time.sleep(seconds)
    return seconds


def interrupt_map_in(monkeypatch, owner, method, f, conf):
    """Run ``map`` with Ctrl-C pressed in ``owner.method``; the request's id, once map has
    raised :class:`api.Interrupted` (any other KeyboardInterrupt fails the test rather
    than end pytest's run)."""

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, method, interrupted)
    try:
        sheepdog.map(f, [(30,), (30,)], conf, verbose=False)
    except KeyboardInterrupt as error:
        assert isinstance(error, api.Interrupted), repr(error)
    else:
        raise AssertionError("map was not interrupted")
    return max_request(conf)


def test_ctrl_c_while_map_starts_the_dashboard_cancels_the_submitted_tasks(
        local_conf, monkeypatch, capsys):
    """Ctrl-C once the job is submitted, but before ``map`` had its request (while the
    dashboard starts, Flask's import taking a few tenths of a second), is answered as
    one in the wait: the tasks that would run on are cancelled, and map says so."""
    from sheepdog.caller.session import Session

    request_id = interrupt_map_in(monkeypatch, Session, "_show_dashboard", sleep_long,
                                  local_conf)
    assert f"sheepdog: cancelled request {request_id}" in capsys.readouterr().err
    assert sheepdog.Storage(local_conf["dbfile"]).progress(request_id).cancelled == 2


def test_ctrl_c_while_the_job_is_submitted_cancels_its_tasks(local_conf, monkeypatch, capsys):
    """Ctrl-C while the scheduler takes the job (the request is stored, its job may or may
    not exist): map answers it as one in the wait, so no task is left waiting for a job
    that may never have been made."""
    from sheepdog.caller.request import Request

    request_id = interrupt_map_in(monkeypatch, Request, "submit_job", abs,
                                  {**local_conf, "linger": 0})
    assert f"sheepdog: cancelled request {request_id}" in capsys.readouterr().err
    assert sheepdog.Storage(local_conf["dbfile"]).progress(request_id).cancelled == 2
