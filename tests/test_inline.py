"""The ``inline`` scheduler: tasks run in the caller's own thread, for debugging."""

import os
import subprocess
import sys
import textwrap
import threading
import traceback
from pathlib import Path

import pytest

import sheepdog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inline_conf(dbfile):
    return {"scheduler": "inline", "dbfile": dbfile}


def where_am_i(x):
    import os
    import threading

    return x, os.getpid(), threading.get_ident()


def inverse(x):
    return 1 / x  # the line a traceback names


INVERSE_LINE = inverse.__code__.co_firstlineno + 1


def test_tasks_run_here_in_order_and_their_results_are_stored(inline_conf):
    here = (os.getpid(), threading.get_ident())
    results = sheepdog.map(where_am_i, [(1,), (2,), (3,)], inline_conf)
    assert results == [(x, *here) for x in (1, 2, 3)]
    request_id = sheepdog.map_async(where_am_i, [(4,)], inline_conf)  # run before it returns
    assert sheepdog.get_results(request_id, inline_conf["dbfile"], block=False) == [
        ((4,), (4, *here))]


def test_what_would_not_travel_fails_as_it_would_on_a_cluster(inline_conf):
    with pytest.raises(sheepdog.SerialisationError):
        sheepdog.map(id, [(threading.Lock(),)], inline_conf)
    assert sheepdog.map(threading.Lock, [()], inline_conf) == [None]
    request_id = sheepdog.map_async(threading.Lock, [()], inline_conf)
    [(_args, error)] = sheepdog.get_errors(request_id, inline_conf["dbfile"])
    assert error.startswith("the result could not be serialised:")


def test_errors_are_stored_with_the_real_traceback_and_raised_as_themselves(inline_conf):
    dbfile = inline_conf["dbfile"]
    request_id = sheepdog.map_async(inverse, [(2,), (0,)], inline_conf)
    [(args, error)] = sheepdog.get_errors(request_id, dbfile)
    assert args == (0,) and f'File "{__file__}", line {INVERSE_LINE}, in inverse' in error
    with pytest.raises(ZeroDivisionError) as raised:
        sheepdog.map(inverse, [(0,)], inline_conf, errors="raise")
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert (frames[-1].filename, frames[-1].lineno, frames[-1].name) == (
        __file__, INVERSE_LINE, "inverse")


def test_the_executor_runs_each_submit_at_once_in_this_thread(inline_conf):
    with sheepdog.Executor(inline_conf) as executor:
        future = executor.submit(where_am_i, 5)
        assert future.done() and future.result() == (5, os.getpid(), threading.get_ident())
        assert list(executor.map(where_am_i, [6, 7], chunksize=2)) == [
            (x, os.getpid(), threading.get_ident()) for x in (6, 7)]
        failed = executor.submit(inverse, x=0)
    error = failed.exception()
    assert isinstance(error, ZeroDivisionError)
    assert traceback.extract_tb(error.__traceback__)[-1].name == "inverse"


def test_a_breakpoint_in_the_function_stops_inside_it(inline_conf, monkeypatch):
    stops = []

    def record(*args, **kwargs):
        caller = sys._getframe(1)
        stops.append((caller.f_code.co_name, caller.f_locals.get("x")))

    def stop_here(x):
        breakpoint()
        return x + 1

    monkeypatch.setattr(sys, "breakpointhook", record)
    assert sheepdog.map(stop_here, [(1,), (2,)], inline_conf) == [2, 3]
    assert stops == [("stop_here", 1), ("stop_here", 2)]


def test_pdb_driven_through_stdin_stops_at_the_breakpoint_and_reads_the_arguments(tmp_path):
    script = tmp_path / "debug_me.py"
    script.write_text(textwrap.dedent(f"""
        import sheepdog

        def scaled(x):
            y = x * 7
            breakpoint()
            return y

        print("results", sheepdog.map(scaled, [(6,)], {{"scheduler": "inline",
              "dbfile": {str(tmp_path / "debug.sqlite")!r}}}, verbose=False))
    """))
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONBREAKPOINT": "pdb.set_trace"}
    finished = subprocess.run([sys.executable, str(script)], input="p ('seen', x, y)\nc\n",
                              capture_output=True, text=True, timeout=120, env=environment,
                              cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "(Pdb)" in finished.stdout and "('seen', 6, 42)" in finished.stdout
    assert "return y" in finished.stdout  # pdb shows the function's own next line
    assert "results [42]" in finished.stdout


def test_retried_failures_run_again_here(inline_conf, tmp_path):
    marker = tmp_path / "tried"

    def fails_once(path):
        import os
        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first try")
        return "second try"

    config = {**inline_conf, "retries": 1, "retry_failed": True}
    assert sheepdog.map(fails_once, [(str(marker),)], config) == ["second try"]
