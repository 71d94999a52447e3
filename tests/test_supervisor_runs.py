"""The supervisor (``worker/supervisor.py``) running batches in real forked runners, with a
recording client: give-backs, runners that die before any task, a post that fails while a
runner works, and a runner whose socket outlives it."""

import os
import signal
import threading
import time

import pytest

from sheepdog.wire import serialisation
from sheepdog.wire.protocol import RESULT, unpack_frames
from sheepdog.wire.settings import WorkerSettings
from sheepdog.worker.client import Identity, PermanentHTTPError
from sheepdog.worker.runner import Claims, Runner
from sheepdog.worker.spare import Runners

from .test_supervisor_parts import NoOutput, Recording, new_supervisor


def starter(function, values, kill_signals=()):
    """A ``start_runner`` for the tasks 1, 2, ... of ``values``, and the runners it started
    (which leave ``kill_signals`` to their supervisor)."""
    blob = serialisation.dumps_function(function)
    arguments = {index: memoryview(b"".join(bytes(part) for part in
                                            serialisation.dumps_argument(index, (value,))))
                 for index, value in enumerate(values, 1)}
    runners = Runners(Identity(1, b"key", "1.2"), WorkerSettings(request_id=1),
                      lambda: pytest.fail("nothing here is posted by the runner"), NoOutput(),
                      kill_signals)
    started = []

    def start(todo):
        started.append(runners.start(blob, "digest", arguments, todo, True))
        return started[-1]

    return start, started


def posted_results(client):
    return {index: serialisation.loads(payload) for route, body, _keywords in client.requests
            if route == "results" for index, kind, payload in unpack_frames(body)
            if kind == RESULT}


@pytest.mark.parametrize("leave_at, per_task, give_back_at", [
    (100.0, 3.0, 97.0), (100.0, None, 100.0), (None, 3.0, float("inf"))])
def test_unstarted_tasks_are_given_back_one_tasks_time_before_the_walltime(
        leave_at, per_task, give_back_at):
    supervisor, seen = new_supervisor(), []

    def start(todo):
        seen.append(supervisor.give_back_at)
        raise RuntimeError("stopped here")

    with pytest.raises(RuntimeError):
        supervisor.run(start, [1], 1, leave_at=leave_at, per_task=per_task)
    assert seen == [give_back_at]


def test_a_runner_that_dies_before_any_task_is_not_replaced_and_its_tasks_are_lost():
    client, started = Recording(), []

    def start(todo):
        started.append(Runner(lambda channel: 3, Claims(len(todo))))
        return started[-1]

    supervisor = new_supervisor(client)
    assert supervisor.run(start, [1, 2], 4) == 3
    assert len(started) == 1
    assert [(route, keywords) for route, _body, keywords in client.requests] == [
        ("lost", {"worker": "1.2", "task": 1, "seq": 4}),
        ("lost", {"worker": "1.2", "task": 2, "seq": 4})]


def slow_first(x):
    import time

    if x == 1:
        time.sleep(1.5)
    return x


def test_a_task_running_past_the_limit_gives_the_rest_of_its_batch_back():
    client = Recording()
    start, _started = starter(slow_first, [1, 2, 3])
    supervisor = new_supervisor(client)
    assert supervisor.run(start, [1, 2, 3], 2, give_back_after=0.3) == 0
    assert ("release", b"[2, 3]", {"worker": "1.2", "seq": 2}) in client.requests
    assert posted_results(client) == {1: 1}
    assert supervisor.given_back == {2, 3}


def second_blocks(x):
    import time

    if x == 2:
        time.sleep(600)
    return x


def test_a_post_that_fails_while_a_runner_works_takes_the_runner_down_with_it():
    client = Recording(results=[PermanentHTTPError(403, "forbidden")])
    start, started = starter(second_blocks, [1, 2])
    try:
        with pytest.raises(PermanentHTTPError):
            new_supervisor(client).run(start, [1, 2], 1)
        status = started[0].wait()  # killed: not 600 s from now
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        started[0].kill()


def leaves_a_child(x):
    import os
    import time

    pid = os.fork()
    if pid == 0:  # holds the runner's socket, and everything else, for two minutes
        time.sleep(120)
        os._exit(0)
    return pid


def test_a_runner_whose_socket_outlives_it_still_ends_its_batch():
    client = Recording()
    start, _started = starter(leaves_a_child, [1])
    began = time.monotonic()
    try:
        assert new_supervisor(client).run(start, [1], 1) == 0
        assert time.monotonic() - began < 60
    finally:
        for pid in posted_results(client).values():
            os.kill(pid, signal.SIGKILL)


def test_a_kill_notice_while_a_runner_starts_is_answered_once_that_runner_is_known(
        monkeypatch):
    """The scheduler's notice may come after the runner began its tasks but before the
    supervisor has it: answered then, it would find no runner to stop and reap."""
    client = Recording()
    supervisor = new_supervisor(client)
    supervisor.kill_signals = [signal.SIGUSR2]
    start, started = starter(lambda x: sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                             [1], [signal.SIGUSR2])
    answered_with = []
    monkeypatch.setattr(supervisor, "on_kill_notice",
                        lambda connect: answered_with.append(supervisor.runner))
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: supervisor.on_kill_notice(
        None))
    try:
        def start_then_notice(todo):
            runner = start(todo)
            # The runner is running, not yet known. To this thread: the test process has
            # other threads, which would take a signal sent to the process (a worker has none).
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
            time.sleep(0.1)  # a notice not held would be answered here
            return runner

        supervisor.run(start_then_notice, [1], 1)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert answered_with == started
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])  # nothing is left held,
    assert posted_results(client) == {1: []}  # in the runner either: f ran with none
