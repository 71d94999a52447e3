"""The parts of the worker's loop (``worker/loop.py``) that decide without a server: the
Python check, the kill notices, the walltime, the process's age and the kept functions."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import types

import pytest

from sheepdog.worker import loop


def test_a_python_of_the_callers_minor_version_is_accepted_and_another_is_named_with_a_fix():
    assert loop.python_mismatch(sys.version_info[:2]) is None
    other = (sys.version_info[0], sys.version_info[1] + 1)
    assert loop.python_mismatch(other) == (
        f"this worker runs Python {sys.version.split()[0]} ({sys.executable}), but the "
        f"function was shipped from Python {other[0]}.{other[1]}; code objects only load "
        f"into the same minor version: set 'shell' in the config to a Python "
        f"{other[0]}.{other[1]} interpreter on the workers")


def test_kill_signals_are_taken_by_name_and_names_this_system_lacks_are_left_out():
    settings = types.SimpleNamespace(kill_signals=("SIGUSR2", "SIGNOTHING", "SIGTERM"))
    assert loop.kill_signal_numbers(settings) == [signal.SIGUSR2, signal.SIGTERM]


class _Noticed:
    def __init__(self):
        self.connects = []

    def on_kill_notice(self, connect):
        self.connects.append(connect)


@pytest.fixture
def saved_handlers():
    saved = {number: signal.getsignal(number) for number in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_a_kill_notice_posts_what_is_held_and_exits_as_the_signal_would(saved_handlers,
                                                                          monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    supervisor, connect = _Noticed(), object()
    loop.report_kill_notices(connect, supervisor, [signal.SIGUSR2])
    signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)
    assert supervisor.connects == [connect]
    assert exits == [128 + signal.SIGUSR2]


def test_a_second_kill_notice_waits_for_the_first_ones_exit(saved_handlers, monkeypatch):
    """The scheduler may warn twice; a second notice run inside the first one's wait for
    its runner found that runner reaped, and the worker crashed before it said why."""
    exits, connects = [], []
    monkeypatch.setattr(os, "_exit", exits.append)

    class NoticedTwice:
        def on_kill_notice(self, connect):
            connects.append(connect)
            if len(connects) == 1:  # the second notice comes while the first is answered
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        loop.report_kill_notices(object(), NoticedTwice(), [signal.SIGUSR2])
        signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)
        assert len(connects) == 1 and exits == [128 + signal.SIGUSR2]
        assert signal.SIGUSR2 in signal.sigpending()  # held until the exit
        signal.sigwait([signal.SIGUSR2])  # taken here, not by the handler restored after
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_sigusr1_is_ignored_unless_it_is_a_kill_notice(saved_handlers):
    supervisor = _Noticed()
    loop.report_kill_notices(object(), supervisor, [signal.SIGUSR2])
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    loop.report_kill_notices(object(), supervisor, [signal.SIGUSR1])
    assert callable(signal.getsignal(signal.SIGUSR1))


@pytest.fixture
def clock(monkeypatch):
    """``time.monotonic`` held at 1000 (settable), and a process that has just started."""
    now = types.SimpleNamespace(value=1000.0)
    monkeypatch.setattr(loop.time, "monotonic", lambda: now.value)
    monkeypatch.setattr(loop, "seconds_since_start", lambda: 0.0)
    return now


@pytest.mark.parametrize("seconds, margin", [(200, 10.0), (50, 5.0), (5, 1.0)])
def test_a_worker_leaves_ten_seconds_or_a_tenth_of_its_walltime_early_and_at_least_a_second(
        clock, seconds, margin):
    assert loop.Walltime(seconds).deadline == pytest.approx(1000.0 + seconds - margin)


def test_the_walltime_counts_from_the_start_of_the_process(clock, monkeypatch):
    monkeypatch.setattr(loop, "seconds_since_start", lambda: 7.0)
    assert loop.Walltime(200).deadline == pytest.approx(1000.0 + 200 - 10 - 7)


def test_without_a_walltime_every_wanted_task_fits():
    walltime = loop.Walltime(None)
    assert walltime.deadline is None
    assert walltime.left() == float("inf")
    assert walltime.tasks_that_fit(1e9, 7) == 7


def test_tasks_fit_in_what_is_left_with_a_safety_factor(clock):
    walltime = loop.Walltime(None)
    walltime.deadline = 1030.0
    assert walltime.left() == pytest.approx(30.0)
    assert walltime.tasks_that_fit(2.0, 100) == 10  # 30 / (1.5 * 2)
    assert walltime.tasks_that_fit(2.0, 7) == 7
    assert walltime.tasks_that_fit(None, 7) == 1  # no time per task known yet: one
    clock.value = 1029.5
    assert walltime.tasks_that_fit(None, 7) == 1
    clock.value = 1030.0
    assert walltime.tasks_that_fit(None, 7) == 0  # none is left: leave
    clock.value = 1031.0
    assert walltime.tasks_that_fit(2.0, 7) == 0


def test_the_age_of_a_process_is_read_from_proc():
    code = ("import time; time.sleep(0.5); from sheepdog.worker.loop import seconds_since_start;"
            " print(seconds_since_start())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert 0.5 <= float(out.stdout) < 60


def fake_proc(monkeypatch, stat, uptime):
    files = {"/proc/self/stat": stat, "/proc/uptime": uptime}
    monkeypatch.setattr("builtins.open", lambda name, _mode: io.BytesIO(files[name]))
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_CLK_TCK": 100}[name])


def test_the_age_of_a_process_counts_from_its_start_in_clock_ticks_whatever_its_name(
        monkeypatch):
    fields = b" ".join(b"%d" % number for number in range(4, 53)).replace(b" 22 ", b" 1000 ")  # fields 4 on
    fake_proc(monkeypatch, b"42 (a) b) S " + fields, b"10.25 20.0\n")
    assert loop.seconds_since_start() == pytest.approx(0.25)  # 10.25 s up, started at 10 s
    fake_proc(monkeypatch, b"42 (ab) S " + fields, b"9.5 20.0\n")
    assert loop.seconds_since_start() == 0.0  # never less


def test_the_age_of_a_process_is_zero_where_the_system_does_not_say(monkeypatch):
    def no_proc(*_arguments, **_keywords):
        raise FileNotFoundError("/proc/self/stat")

    monkeypatch.setattr("builtins.open", no_proc)
    assert loop.seconds_since_start() == 0.0


class _FunctionServer:
    def __init__(self, blob):
        self.blob, self.routes = blob, []

    def request(self, route, *_arguments, **_keywords):
        self.routes.append(route)
        return bytearray(self.blob)


def test_a_fetched_function_is_kept_by_its_digest():
    functions = {}
    blob, digest = loop._fetch_function(_FunctionServer(b"f1"), functions)
    assert (bytes(blob), digest) == (b"f1", hashlib.sha256(b"f1").hexdigest())
    assert functions == {digest: blob}


def test_a_worker_keeps_the_last_sixteen_functions_and_forgets_the_oldest():
    functions = {}
    for number in range(loop.KEPT_FUNCTIONS):
        loop._fetch_function(_FunctionServer(b"f%d" % number), functions)
    oldest, second = list(functions)[:2]
    _blob, digest = loop._fetch_function(_FunctionServer(b"new"), functions)
    assert len(functions) == 16
    assert oldest not in functions
    assert second in functions and digest in functions
