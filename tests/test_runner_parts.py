"""The worker's runner (``worker/runner.py``) in parts: what one task reports, how reports
reach the supervisor, which tasks a runner may claim, the version check, and the forked
process's life."""

import ctypes
import os
import pickle
import signal
import socket
import sys
import threading

import pytest

from sheepdog.wire import serialisation
from sheepdog.wire.modules import VersionReport, package_versions
from sheepdog.wire.protocol import (
    ALONE_BYTES,
    DISK_FULL_STATUS,
    ERROR,
    EXCEPTION,
    RAN,
    RESULT,
    SECONDS,
    VERSIONS,
    split_frames,
)
from sheepdog.wire.settings import WorkerSettings
from sheepdog.worker import runner as runner_module
from sheepdog.worker.client import PermanentHTTPError
from sheepdog.worker.runner import (
    ENDED,
    POSTED,
    RUNNER_KINDS,
    STARTED,
    Claims,
    Loaded,
    Runner,
    RunnerReports,
    compare_versions,
    memory_words,
    refused_result,
    run_one,
    run_tasks,
)


@pytest.mark.parametrize("size, words", [
    (8 << 30, "8G"), (1536 << 20, "1536M"), (1 << 30, "1G"), (2 << 40, "2T"), (3 << 10, "3K"),
    (1000, "1000 bytes"),
])
def test_a_memory_limit_is_named_in_the_largest_unit_that_divides_it(size, words):
    assert memory_words(size) == words


def test_a_refused_result_says_whether_the_disk_was_full():
    assert (refused_result(5, PermanentHTTPError(413, "big"))
            == "the result (5 bytes) was refused: HTTP 413: big")
    assert (refused_result(5, PermanentHTTPError(DISK_FULL_STATUS, "full"))
            == "the caller could not store the result (5 bytes): HTTP 507: full")


class Kept:
    """Reports as ``run_one`` hands them over: (index, kind, payload bytes)."""

    def __init__(self):
        self.reports = []

    def report(self, index, kind, payload):
        if isinstance(payload, list):
            payload = b"".join(bytes(part) for part in payload)
        self.reports.append((index, kind, bytes(payload)))

    def kinds(self):
        return [kind for _index, kind, _payload in self.reports]

    def of(self, kind):
        [payload] = [payload for _index, each, payload in self.reports if each == kind]
        return payload


def call(*arguments, **keywords):
    return memoryview(b"".join(bytes(part) for part in
                               serialisation.dumps_call(0, arguments, keywords)))


def test_a_task_reports_how_long_it_ran_then_its_result():
    kept = Kept()
    run_one(lambda x, y=0: x + y, 4, call(1, y=2), kept)
    assert kept.kinds() == [RAN, RESULT]
    assert all(index == 4 for index, _kind, _payload in kept.reports)
    assert 0 <= SECONDS.unpack(kept.of(RAN))[0] < 10
    assert serialisation.loads(kept.of(RESULT)) == 3


def raises_value_error(x):
    raise ValueError(f"bad {x}")


def test_a_task_that_raises_reports_its_time_its_traceback_from_f_and_its_exception():
    kept = Kept()
    run_one(raises_value_error, 1, call(7), kept)
    assert kept.kinds() == [RAN, ERROR, EXCEPTION]
    assert 0 <= SECONDS.unpack(kept.of(RAN))[0] < 10
    text = kept.of(ERROR).decode()
    assert text.startswith("Traceback (most recent call last):")
    assert "raises_value_error" in text and "ValueError: bad 7" in text
    assert "run_one" not in text  # it starts at the user's function
    assert str(pickle.loads(kept.of(EXCEPTION))) == "bad 7"


def raises_memory_error():
    raise MemoryError()


def test_a_memory_error_under_a_limit_says_the_limit_ended_the_task():
    kept = Kept()
    run_one(raises_memory_error, 1, call(), kept, memory_limit=8 << 30)
    assert kept.of(ERROR).decode().startswith("killed: over its memory limit of 8G\nTraceback")
    kept = Kept()
    run_one(raises_memory_error, 1, call(), kept)
    assert kept.of(ERROR).decode().startswith("Traceback")
    kept = Kept()
    run_one(raises_value_error, 1, call(1), kept, memory_limit=8 << 30)
    assert kept.of(ERROR).decode().startswith("Traceback")


def test_arguments_that_cannot_be_loaded_fail_the_task_saying_so_without_running_it():
    kept, ran = Kept(), []
    run_one(ran.append, 1, memoryview(b"not a pickle"), kept)
    assert ran == [] and kept.kinds() == [ERROR]
    assert kept.of(ERROR).decode().startswith("the arguments could not be loaded on this worker:\n")


def test_a_result_that_cannot_be_serialised_fails_the_task_saying_so():
    kept = Kept()
    run_one(lambda: threading.Lock(), 1, call(), kept)
    assert kept.kinds() == [RAN, ERROR]
    assert kept.of(ERROR).decode().startswith("the result could not be serialised:\n")


class Posting:
    def __init__(self, *failures):
        self.requests, self.failures = [], list(failures)

    def request(self, route, body=None, **keywords):
        self.requests.append((route, bytes(b"".join(bytes(part) for part in body)
                                           if isinstance(body, list) else body), keywords))
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_reports_go_to_the_supervisor_with_the_next_start_in_one_write(pair):
    ours, theirs = pair
    reports = RunnerReports(theirs, lambda: pytest.fail("nothing is large"))
    reports.report(1, RESULT, [b"small"])
    reports.report(1, EXCEPTION, b"s" * (1 << 16))  # large: sent as it is, not copied
    reports.started(2, b"p2")
    reports.report(2, ERROR, b"e")
    reports.ended(2, b"p3")
    assert (reports.pending, reports.large) == ([], False)
    assert received_from(ours, theirs) == [(1, RESULT, b"small"), (1, EXCEPTION, b"s" * (1 << 16)),
                           (2, STARTED, b"p2"), (2, ERROR, b"e"), (2, ENDED, b"p3")]


def received_from(ours, theirs):
    """What the runner's end ``theirs`` has sent to ``ours`` so far."""
    data = bytearray()
    ours.setblocking(False)
    try:
        while piece := ours.recv(1 << 20):
            data += piece
    except BlockingIOError:
        pass
    frames, used = split_frames(data, RUNNER_KINDS)
    assert used == len(data)
    return [(index, kind, bytes(payload)) for index, kind, payload in frames]


def test_nothing_is_sent_before_a_task_boundary(pair):
    ours, theirs = pair
    reports = RunnerReports(theirs, lambda: None)
    reports.report(1, RESULT, b"r")
    assert received_from(ours, theirs) == []
    reports.send()
    assert received_from(ours, theirs) == [(1, RESULT, b"r")]


def test_a_large_result_is_posted_by_the_runner_on_one_connection_and_marked_posted(pair):
    ours, theirs = pair
    client, connected = Posting(), []
    reports = RunnerReports(theirs, lambda: connected.append(client) or client)
    large = b"L" * ALONE_BYTES
    reports.report(1, RESULT, [large[:10], large[10:]])
    reports.report(2, RESULT, large)
    reports.send()
    assert len(connected) == 1
    assert client.requests == [("result", large, {"task": 1}), ("result", large, {"task": 2})]
    assert received_from(ours, theirs) == [(1, POSTED, b""), (2, POSTED, b"")]


@pytest.mark.parametrize("status", [413, DISK_FULL_STATUS])
def test_a_large_result_the_server_refuses_becomes_an_error_that_says_why(pair, status):
    ours, theirs = pair
    reports = RunnerReports(theirs, lambda: Posting(PermanentHTTPError(status, "no")))
    reports.report(1, RESULT, b"L" * ALONE_BYTES)
    reports.send()
    [(index, kind, text)] = received_from(ours, theirs)
    assert (index, kind) == (1, ERROR)
    assert text.decode() == refused_result(ALONE_BYTES, PermanentHTTPError(status, "no"))


def test_a_large_result_refused_otherwise_raises(pair):
    _ours, theirs = pair
    reports = RunnerReports(theirs, lambda: Posting(PermanentHTTPError(403, "no")))
    with pytest.raises(PermanentHTTPError):
        reports.report(1, RESULT, b"L" * ALONE_BYTES)


def test_a_result_just_under_the_posting_size_goes_through_the_supervisor(pair):
    ours, theirs = pair
    reports = RunnerReports(theirs, lambda: pytest.fail("not large enough to post"))
    reports.report(1, RESULT, b"l" * (ALONE_BYTES - 1))
    data = bytearray()
    reader = threading.Thread(target=read_to_end, args=(ours, data))
    reader.start()
    reports.send()
    theirs.shutdown(socket.SHUT_WR)
    reader.join(timeout=60)
    assert split_frames(data, RUNNER_KINDS)[0] == [(1, RESULT, b"l" * (ALONE_BYTES - 1))]


def read_to_end(channel, data):
    while piece := channel.recv(1 << 20):
        data += piece


def test_a_runner_claims_its_tasks_in_turn_until_it_is_stopped_or_resumed():
    claims = Claims(3)
    assert claims.stop() == 0  # nothing claimed yet
    claims.resume(3)
    assert claims.claim(0) and claims.claim(1)
    assert claims.stop() == 2
    assert not claims.claim(2)
    assert claims.stop() == 2
    claims.resume(3)
    assert claims.claim(2)
    assert not claims.claim(3)
    assert claims.stop() == 3


def test_claims_are_shared_with_a_forked_runner():
    claims = Claims(5)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if claims.claim(0) and claims.claim(1) else 1)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert claims.stop() == 2


def test_a_spare_may_claim_nothing_before_its_batch():
    assert not Claims(0).claim(0)


def settings(mismatch="warn", **more):
    return WorkerSettings(request_id=1, version_mismatch=mismatch, **more)


OTHER_PYTHON = {"python": "2.7.0"}


def test_versions_are_told_with_the_first_task_and_fail_the_tasks_only_under_error():
    kept = Kept()
    assert compare_versions(OTHER_PYTHON, settings("warn"), kept, [5, 6]) is None
    [(index, kind, payload)] = kept.reports
    assert (index, kind) == (5, VERSIONS)
    assert b"2.7.0" in payload
    kept = Kept()
    problem = compare_versions(OTHER_PYTHON, settings("error"), kept, [5])
    assert kept.kinds() == [VERSIONS]
    assert problem.startswith("this worker (")
    assert "has other versions than the caller: " in problem
    assert "The request's 'version_mismatch' is 'error'" in problem
    two = {"python": "2.7.0", "pytest": "0.1"}
    differences = VersionReport(socket.gethostname(), sys.executable, two,
                                package_versions(two)).differences()
    assert len(differences) == 2
    assert compare_versions(two, settings("error"), Kept(), [5]) == (
        f"this worker ({socket.gethostname()}, {sys.executable}) has other versions than the "
        f"caller: {differences[0]}; {differences[1]}. The request's 'version_mismatch' is "
        f"'error', so its tasks do not run here: install the caller's versions on the "
        f"workers, or set 'version_mismatch' to 'warn'")
    same = {"python": sys.version.split()[0]}
    assert compare_versions(same, settings("error"), Kept(), [5]) is None


def test_versions_are_not_looked_up_when_ignored_or_for_no_task():
    for mismatch, first in (("ignore", [1]), ("error", [])):
        kept = Kept()
        assert compare_versions(OTHER_PYTHON, settings(mismatch), kept, first) is None
        assert kept.reports == []


def test_a_function_that_cannot_be_loaded_says_so_for_every_task(monkeypatch):
    limits = []
    monkeypatch.setattr(runner_module, "limit_memory", limits.append)
    loaded = Loaded(b"junk", settings(memory_limit=1 << 30))
    assert limits == [1 << 30]
    assert loaded.function is None
    assert loaded.problem.startswith("the function could not be loaded on this worker:\n")
    loaded = Loaded(serialisation.dumps_function(len), settings())
    assert loaded.problem is None and loaded.function is len
    assert limits == [1 << 30]  # no limit: none set


class NoOutput:
    def positions(self):
        return b"pos"


def run_batch(pair, values, claims=None, versions_told=False, mismatch="warn", blob=None):
    ours, theirs = pair
    arguments = {index: call(value) for index, value in enumerate(values)}
    loaded = Loaded(blob or serialisation.dumps_function(abs), settings(mismatch))
    status = run_tasks(loaded, arguments, list(arguments), theirs, lambda: None,
                       settings(mismatch), NoOutput(), claims or Claims(len(values)),
                       versions_told)
    return status, received_from(ours, theirs), arguments


def test_a_runner_starts_runs_and_ends_each_task_of_its_batch_telling_versions_once(pair):
    status, frames, arguments = run_batch(pair, [-1, -2])
    assert status == 0
    assert [(index, kind) for index, kind, _payload in frames] == [
        (0, VERSIONS), (0, STARTED), (0, RAN), (0, RESULT), (1, STARTED), (1, RAN),
        (1, RESULT), (1, ENDED)]
    assert [payload for _index, kind, payload in frames if kind in (STARTED, ENDED)] == [
        b"pos"] * 3
    assert arguments == {}  # each task's arguments are let go once it runs


def test_versions_told_before_are_not_told_again_unless_they_may_fail_the_tasks(pair):
    _status, frames, _arguments = run_batch(pair, [-1], versions_told=True)
    assert VERSIONS not in [kind for _index, kind, _payload in frames]
    _status, frames, _arguments = run_batch(pair, [-1], versions_told=True, mismatch="error")
    assert VERSIONS in [kind for _index, kind, _payload in frames]


def test_a_runner_whose_function_cannot_load_fails_each_task_with_why(pair):
    status, frames, _arguments = run_batch(pair, [1, 2], blob=b"junk")
    assert status == 1
    errors = [(index, payload) for index, kind, payload in frames if kind == ERROR]
    assert [index for index, _payload in errors] == [0, 1]
    assert all(payload.startswith(b"the function could not be loaded") for _i, payload in errors)


def test_a_runner_starts_nothing_it_may_not_claim(pair):
    claims = Claims(3)
    claims.resume(1)
    claims.stop()
    claims.resume(2)
    status, frames, arguments = run_batch(pair, [-1, -2, -3], claims=claims)
    assert status == 0
    assert [(index, kind) for index, kind, _payload in frames if kind != VERSIONS] == [
        (0, STARTED), (0, RAN), (0, RESULT), (1, STARTED), (1, RAN), (1, RESULT), (1, ENDED)]
    assert list(arguments) == [2]
    stopped = Claims(0)
    status, frames, _arguments = run_batch(pair, [-1], claims=stopped)
    assert [kind for _index, kind, _payload in frames if kind != VERSIONS] == []


def forked(target, kill_signals=()):
    return Runner(target, Claims(0), kill_signals)


def test_a_runner_ends_with_its_targets_status_and_runs_its_own_exit_handlers(capfd):
    import atexit

    atexit.register(print, "the supervisor's handler")
    try:
        def target(channel):
            atexit.register(print, "the runner's handler")
            return 3

        runner = forked(target)
        assert os.waitstatus_to_exitcode(runner.wait()) == 3
        assert runner.wait() == runner.status
    finally:
        atexit.unregister(print)
    out = capfd.readouterr().out
    assert "the runner's handler" in out
    assert "the supervisor's handler" not in out


def test_a_runner_whose_target_raises_says_so_and_exits_1(capfd):
    def target(channel):
        raise RuntimeError("broken target")

    runner = forked(target)
    assert os.waitstatus_to_exitcode(runner.wait()) == 1
    assert "RuntimeError: broken target" in capfd.readouterr().err


C_BUFFERS = []


def test_what_c_code_buffered_in_a_runner_is_flushed_at_its_end(capfd):
    def target(channel):
        c_library = ctypes.CDLL(None)
        stdout = ctypes.c_void_p.in_dll(c_library, "stdout")
        buffer = ctypes.create_string_buffer(8192)  # buffered (_IOFBF), even under python -u
        C_BUFFERS.append(buffer)  # alive until the runner's end flushes it
        c_library.setvbuf(stdout, buffer, 0, len(buffer))
        c_library.printf(b"from C, buffered\n")
        return 0

    runner = forked(target)
    assert os.waitstatus_to_exitcode(runner.wait()) == 0
    assert "from C, buffered" in capfd.readouterr().out


def test_a_runner_is_polled_running_stopped_continued_and_ended_and_can_be_killed_once():
    def target(channel):
        channel.recv(1)
        return 0

    runner = forked(target)
    assert runner.poll() is None and not runner.stopped
    os.kill(runner.pid, signal.SIGSTOP)
    while not runner.stopped:
        assert runner.poll() is None
    os.kill(runner.pid, signal.SIGCONT)
    while runner.stopped:
        assert runner.poll() is None
    runner.kill()
    while runner.poll() is None:
        pass
    assert os.WIFSIGNALED(runner.status) and os.WTERMSIG(runner.status) == signal.SIGKILL
    runner.kill()  # ended: nothing to kill
    assert runner.wait() == runner.status


def test_a_runner_leaves_the_kill_notice_to_its_supervisor():
    def target(channel):
        channel.sendall(b"r")  # ready
        channel.recv(1)
        return 5

    runner = forked(target, [signal.SIGUSR2])
    assert runner.channel.recv(1) == b"r"
    os.kill(runner.pid, signal.SIGUSR2)
    runner.channel.sendall(b"go")
    assert os.waitstatus_to_exitcode(runner.wait()) == 5
