"""Reading every result of a request a chunk at a time (``storage/results.py``) and
loading many payloads at once (``serialisation.load_many``): the same values as a task
at a time, at every chunk boundary, whatever state each task is in."""

import pickle

import numpy as np
import pytest

from sheepdog.storage import Storage
from sheepdog.storage.payloads import PayloadFile, payload_bytes
from sheepdog.wire import serialisation
from sheepdog.wire.protocol import ALONE_BYTES


def one_at_a_time(storage, request_id):
    """Each task's value as the per-task reading gives it: None unless done, else loaded."""
    return [serialisation.load_or_describe(payload_bytes(result or b""))[1]
            if state == "done" else None
            for _arguments, state, result in storage.results(request_id, with_arguments=False)]


def a_request_in_every_state(storage):
    """Eleven tasks: done (one with a result kept in a file, one whose result does not
    load, one whose result row is gone), failed (one with a result row), lost, running,
    pending."""
    request_id = storage.create_request(b"fn", [b"a"] * 11, "s", "local")
    big = serialisation.dumps(b"x" * ALONE_BYTES)
    storage.record_reports(request_id, [
        (1, False, serialisation.dumps(1)), (2, False, serialisation.dumps("two")),
        (3, True, b"boom"), (5, False, big), (6, False, b"not a pickle"),
        (8, False, serialisation.dumps(8)), (9, False, serialisation.dumps(9)),
        (10, False, serialisation.dumps(10))])
    storage.record_lost(request_id, 4, "killed")
    storage.record_unloadable(request_id, 10, "cannot be loaded")  # failed, its row kept
    worker = f"{storage.add_workers(request_id, 1)}.1"
    assert storage.pull(request_id, worker, 1, 1) == [7]
    with storage.database.write() as db:  # as if the row had been lost
        db.execute("DELETE FROM results WHERE request_id = ? AND idx = 9", (request_id,))
    return request_id


@pytest.mark.parametrize("size", [1, 2, 3, 4, 10, 11, 1000])
def test_chunks_of_any_size_give_the_values_that_a_task_at_a_time_gives(storage, size):
    request_id = a_request_in_every_state(storage)
    chunks = list(storage.result_chunks.loaded(request_id, size))
    assert [chunk.first for chunk in chunks] == list(range(1, 12, size))
    values = [value for chunk in chunks for value in chunk.values]
    expected = one_at_a_time(storage, request_id)
    assert values == [1, "two", None, None, b"x" * ALONE_BYTES, None, None, 8, None, None, None]
    assert [value if index not in (6, 9) else None
            for index, value in enumerate(expected, 1)] == values
    unloadable = {index: reason for chunk in chunks for index, reason in chunk.unloadable.items()}
    assert unloadable == {6: expected[5], 9: expected[8]}
    assert unloadable[9].startswith("EOFError")


def test_a_result_kept_in_a_file_is_given_as_its_file(storage):
    request_id = a_request_in_every_state(storage)
    ((first, payloads),) = storage.result_chunks.chunks(request_id, 100)
    assert first == 1 and isinstance(payloads[4], PayloadFile)
    assert [payloads[index - 1] for index in (3, 4, 7, 11)] == [None] * 4
    assert payloads[8] == b""


def test_reading_chunks_holds_one_snapshot_and_leaves_no_transaction_open(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 4, "s", "local")
    storage.record_reports(request_id, [(1, False, serialisation.dumps(1))])
    chunks = storage.result_chunks.chunks(request_id, 2)
    assert next(chunks) == (1, [serialisation.dumps(1), None])
    other = Storage(storage.dbfile)  # another connection reports meanwhile
    other.record_reports(request_id, [(2, False, serialisation.dumps(2)),
                                      (3, False, serialisation.dumps(3))])
    assert next(chunks) == (3, [None, None])  # as things stood when reading began
    assert next(chunks, None) is None
    assert not storage.database.connection().in_transaction
    assert [chunk.values for chunk in storage.result_chunks.loaded(request_id, 2)] == [
        [1, 2], [3, None]]


def test_reading_left_half_way_closes_its_transaction(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 4, "s", "local")
    chunks = storage.result_chunks.chunks(request_id, 2)
    next(chunks)
    chunks.close()
    assert not storage.database.connection().in_transaction
    assert storage.record_reports(request_id, [(1, False, serialisation.dumps(1))]) == 1


class Counted:
    """Counts how often it is loaded."""

    loads = 0

    def __reduce__(self):
        return _count_load, ()


def _count_load():
    Counted.loads += 1
    return "loaded"


def test_many_payloads_load_each_once_and_a_bad_one_costs_only_itself():
    Counted.loads = 0
    payloads = [pickle.dumps(Counted()), None, b"broken", pickle.dumps(Counted()), b""]
    values, reasons = serialisation.load_many(payloads)
    assert values == ["loaded", None, None, "loaded", None]
    assert Counted.loads == 2
    assert set(reasons) == {2, 4}
    assert reasons[2] == serialisation.load_or_describe(b"broken")[1]


def test_many_payloads_that_may_name_numpy_go_through_the_unpickler_that_mends_its_names(
        monkeypatch):
    asked = []
    find_class = serialisation._Unpickler.find_class

    def noting(self, module_name, name):
        asked.append(module_name)
        return find_class(self, module_name, name)

    monkeypatch.setattr(serialisation._Unpickler, "find_class", noting)
    values, _ = serialisation.load_many([pickle.dumps(np.float64(2.5)), pickle.dumps(1)])
    assert values == [2.5, 1] and any(name.startswith("numpy") for name in asked)


def test_many_payloads_with_buffers_out_of_band_or_numpy_load_as_loads_does():
    array = np.arange(serialisation.out_of_band_bytes, dtype=np.uint8)
    payloads = [serialisation.dumps(array), serialisation.dumps(np.float64(2.5)),
                serialisation.dumps(3)]
    assert serialisation.dumps(array).startswith(b"SDB1")
    values, reasons = serialisation.load_many(payloads)
    assert reasons == {} and values[1:] == [2.5, 3]
    assert np.array_equal(values[0], array) and values[0].flags.writeable
