"""The spare runner (``worker/spare.py``), forked for real from the test process: which
batches it takes, what it runs, and how it ends when it gets none."""

import os
import socket

import pytest

from sheepdog.wire import serialisation
from sheepdog.wire.protocol import RESULT, VERSIONS, split_frames
from sheepdog.wire.settings import WorkerSettings
from sheepdog.worker import spare as spare_module
from sheepdog.worker.client import Identity
from sheepdog.worker.runner import ENDED, RUNNER_KINDS, STARTED
from sheepdog.worker.spare import SPARE_BATCH_BYTES, Runners


def doubled(x):
    return 2 * len(x) if isinstance(x, bytes) else 2 * x


class NoOutput:
    def tails(self, start, end):
        return []

    def positions(self):
        return b""


def no_client():
    raise AssertionError("no result here is large enough to be posted by the runner")


@pytest.fixture
def runners():
    made = Runners(Identity(1, b"key", "1.1"), WorkerSettings(request_id=1), no_client,
                   NoOutput(), [])
    yield made
    made.discard()


BLOB = serialisation.dumps_function(doubled)


def arguments_of(*values):
    return {index: memoryview(b"".join(bytes(part) for part in
                                       serialisation.dumps_argument(index, (value,))))
            for index, value in enumerate(values)}


def reports_of(runner):
    """The runner's messages until it ends, (index, kind, payload), and its exit status."""
    data = bytearray()
    while piece := runner.channel.recv(1 << 20):
        data += piece
    frames, used = split_frames(data, RUNNER_KINDS)
    assert used == len(data)
    reports = [(index, kind, bytes(payload)) for index, kind, payload in frames]
    return reports, os.waitstatus_to_exitcode(runner.wait())


def results_of(reports):
    return {index: serialisation.loads(payload) for index, kind, payload in reports
            if kind == RESULT}


def test_a_batch_of_the_prepared_function_runs_in_the_spare_without_telling_versions_again(
        runners):
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    runners.prepare(BLOB, "d1")  # a spare is forked once
    assert runners.spare is spare
    runner = runners.start(BLOB, "d1", arguments_of(1, 2, 3), [0, 1, 2], True)
    assert runner is spare and runners.spare is None
    reports, status = reports_of(runner)
    assert results_of(reports) == {0: 2, 1: 4, 2: 6}
    assert [index for index, kind, _payload in reports if kind == STARTED] == [0, 1, 2]
    assert reports[-1][:2] == (2, ENDED)
    assert VERSIONS not in {kind for _index, kind, _payload in reports}
    assert status == 0


def test_the_spare_takes_a_batch_that_comes_in_many_reads(runners, monkeypatch):
    real = socket.socket.recv_into

    def in_small_pieces(self, view, *arguments):
        return real(self, view[:1000], *arguments)

    monkeypatch.setattr(socket.socket, "recv_into", in_small_pieces)
    runners.prepare(BLOB, "d1")
    runner = runners.start(BLOB, "d1", arguments_of(b"x" * 20_000, 5), [0, 1], True)
    assert runner is not None
    reports, _status = reports_of(runner)
    assert results_of(reports) == {0: 40_000, 1: 10}


def test_a_batch_of_another_function_gets_a_runner_of_its_own_and_the_spare_is_killed(runners):
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    runner = runners.start(BLOB, "d2", arguments_of(4), [0], True)
    assert runner is not spare
    assert spare.status is not None  # killed, and reaped
    reports, status = reports_of(runner)
    assert results_of(reports) == {0: 8} and status == 0


def argument_of_size(size):
    """Arguments whose pickled bytes are exactly ``size`` long."""
    for length in range(size, size - 100, -1):
        arguments = arguments_of(b"x" * length)
        if arguments[0].nbytes == size:
            return arguments
    raise AssertionError(f"no argument pickles to {size} bytes")


@pytest.mark.parametrize("size, to_spare", [(SPARE_BATCH_BYTES, True),
                                            (SPARE_BATCH_BYTES + 1, False)])
def test_arguments_up_to_the_spares_limit_go_to_it_and_larger_ones_to_a_runner_of_their_own(
        runners, size, to_spare):
    assert SPARE_BATCH_BYTES == 64 * 1024
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    arguments = argument_of_size(size)
    runner = runners.start(BLOB, "d1", arguments, [0], True)
    assert (runner is spare) == to_spare
    reports, _status = reports_of(runner)
    assert len(results_of(reports)) == 1


def test_a_spare_that_died_meanwhile_is_replaced_by_a_new_runner(runners):
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    spare.kill()
    while spare.poll() is None:
        pass
    runner = runners.start(BLOB, "d1", arguments_of(7), [0], True)
    assert runner is not spare
    reports, _status = reports_of(runner)
    assert results_of(reports) == {0: 14}


def test_a_spare_whose_supervisor_closes_its_channel_ends_without_error(runners):
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    spare.channel.shutdown(socket.SHUT_WR)
    assert os.waitstatus_to_exitcode(spare.wait()) == 0


def test_a_spare_that_the_worker_discards_is_killed_and_forgotten(runners):
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    runners.discard()
    assert runners.spare is None
    assert spare.status is not None
    runners.discard()  # nothing left to kill


def test_handing_a_batch_to_a_spare_whose_channel_is_closed_says_it_could_not(runners):
    runners.prepare(BLOB, "d1")
    spare = runners.spare
    spare.channel.close()
    assert spare_module._hand_batch(spare, runners.me, arguments_of(1), [0]) is False
