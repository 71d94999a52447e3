"""Large payloads: kept in files, streamed, loaded in place, and never lost or doubled."""

import os
import stat

import pytest

import sheepdog
from sheepdog.storage import payloads
from sheepdog.wire import protocol, serialisation
from sheepdog.worker.client import Client, PermanentHTTPError
from sheepdog.storage.payloads import PayloadFile, payload_bytes
from sheepdog.server.host import Server
from sheepdog.storage import Storage

np = pytest.importorskip("numpy")

BIG = protocol.ALONE_BYTES * 3  # bytes: well over the size that goes to a file


def big_array(seed=0):
    return np.random.default_rng(seed).random(BIG // 8)


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _dirs, names in os.walk(directory) for name in names)


def test_arrays_travel_out_of_band_and_load_writable_and_aligned():
    array = big_array()
    parts = serialisation.dumps_parts((array, b"small"))
    assert any(isinstance(part, memoryview) and part.obj is not None for part in parts)
    assert sum(memoryview(part).nbytes for part in parts) < array.nbytes + 1024
    for data in (b"".join(parts), bytearray(b"".join(parts))):  # read-only or not
        loaded, small = serialisation.loads(data)
        assert small == b"small" and np.array_equal(loaded, array)
        assert loaded.flags.writeable and loaded.flags.aligned


def test_an_array_loaded_from_a_writable_buffer_is_not_copied():
    data = bytearray(b"".join(serialisation.dumps_parts(big_array())))
    loaded = serialisation.loads(data)
    loaded[0] = -1.0
    assert -1.0 in np.frombuffer(data, dtype=loaded.dtype)  # a view of the buffer


def test_small_buffers_stay_in_the_pickle():
    assert serialisation.dumps_parts(np.ones(10)) == [serialisation.dumps(np.ones(10))]


def test_frame_payloads_are_aligned_views_of_the_body():
    frames = [(1, protocol.RESULT, b"abc"), (2, protocol.RESULT, [b"x" * 5, b"y" * 30])]
    body = bytearray(b"".join(protocol.pack_frames(frames)))
    unpacked = protocol.unpack_frames(body)
    assert [bytes(payload) for _i, _k, payload in unpacked] == [b"abc", b"x" * 5 + b"y" * 30]
    start = np.frombuffer(body, np.uint8).ctypes.data
    for _index, _kind, payload in unpacked:
        assert payload.obj is body  # a view, not a copy
        assert (np.frombuffer(payload, np.uint8).ctypes.data - start) % 16 == 0


def test_a_large_result_of_a_small_argument_is_stored(storage):
    request_id = storage.create_request(b"fn", [b"small"], "s", "local")
    assert storage.record_reports(request_id, [(1, False, bytes(BIG))]) == 1
    assert bytes(payload_bytes(storage.results(request_id)[0][2])) == bytes(BIG)


def test_large_arguments_and_results_live_in_private_files(storage):
    argument = serialisation.dumps_parts((big_array(1),))
    request_id = storage.create_request(b"fn", [argument, b"small"], "s", "local")
    (stored,) = storage.task_arguments(request_id, [1]).values()
    assert isinstance(stored, PayloadFile) and len(stored) == sum(map(len, map(memoryview, argument)))
    assert storage.task_arguments(request_id, [2]) == {2: b"small"}
    result = bytes(BIG)
    assert storage.record_reports(request_id, [(1, False, result)]) == 1
    assert storage.record_reports(request_id, [(1, False, b"y" * BIG)]) == 0  # first wins
    _args, state, stored_result = Storage(storage.dbfile).results(request_id)[0]
    assert state == "done" and bytes(payload_bytes(stored_result)) == result
    assert files_under(storage.payloads.root) == [
        f"{request_id}/arguments-1", f"{request_id}/results-1"]  # no staging files left
    for root, dirs, names in os.walk(storage.payloads.root):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        for name in names:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600


@pytest.mark.parametrize("use_tls", [True, False])
def test_large_payloads_cross_the_server_whole(storage, use_tls):
    argument = os.urandom(BIG)
    request_id = storage.create_request(b"fn", [argument, b"small"], "right", "local")
    worker = f"{storage.add_workers(request_id, 1)}.1"
    server = Server(storage, port=0, use_tls=use_tls).start()
    try:
        client = Client([server.url("127.0.0.1")], request_id, b"right", 5,
                        server.certificate.decode() if use_tls else None)
        ((index, kind, payload),) = protocol.unpack_frames(
            client.request("pull", worker=worker, seq=1, size=1))
        assert (index, kind, bytes(payload)) == (1, protocol.ARGUMENTS, argument)
        result = [b"r" * 100, os.urandom(BIG)]
        assert client.request("result", result, task=1) == b"stored\n"
        assert client.request("result", result, task=1) == b"already recorded\n"
        assert client.request("pull", worker=worker, seq=2, size=1) == b"".join(
            protocol.pack_frames([(2, protocol.ARGUMENTS, b"small")]))  # the connection still works
        assert client.request("result", result[::-1], task=2) == b"stored\n"
        client.close()
    finally:
        server.stop()
    stored = [payload_bytes(result) for _args, _state, result in storage.results(request_id)]
    assert [bytes(payload) for payload in stored] == [b"".join(result), b"".join(result[::-1])]
    assert not [name for name in files_under(storage.payloads.root) if ".part" in name]


def test_an_unauthorised_large_result_is_refused_before_it_is_read(storage):
    request_id = storage.create_request(b"fn", [b"a"], "right", "local")
    server = Server(storage, port=0, use_tls=False).start()
    try:
        client = Client([server.url("127.0.0.1")], request_id, b"wrong", 5)
        with pytest.raises(PermanentHTTPError) as refused:
            client.request("result", bytes(BIG), task=1)
        assert refused.value.status == 401
    finally:
        server.stop()
    assert storage.progress(request_id).pending == 1


def test_map_moves_large_arrays_both_ways(local_conf):
    def scaled(array, factor):
        return array * factor

    arrays = [big_array(seed) for seed in range(3)]
    results = sheepdog.map(scaled, [(array, 2.0) for array in arrays], local_conf, verbose=False)
    for array, result in zip(arrays, results):
        assert np.array_equal(result, array * 2.0) and result.flags.writeable
    (made,) = sheepdog.map(lambda n: np.full(n, 7.0), [(BIG // 8,)], local_conf, verbose=False)
    assert made.nbytes == BIG and float(made.sum()) == 7.0 * (BIG // 8)  # from a small argument
    rid = sheepdog.map_async(scaled, [(arrays[0], 1.0)], local_conf)
    ((argument, result),) = sheepdog.get_results(rid, local_conf["dbfile"])
    assert np.array_equal(argument[0], arrays[0]) and np.array_equal(result, arrays[0])


def test_progress_counts_follow_every_transition(storage):
    request_id = storage.create_request(b"fn", [b"a%d" % i for i in range(6)], "s", "local")
    worker = f"{storage.add_workers(request_id, 1)}.1"
    assert storage.pull(request_id, worker, 1, 4) == [1, 2, 3]  # its fair share of 6
    storage.record_reports(request_id, [(1, False, b"r"), (2, True, b"boom")])
    storage.record_lost(request_id, 3, "killed", retryable=True)
    storage.requeue(request_id, max_attempts=2, failed_too=False)
    storage.cancel_open(request_id, "cancelled")
    storage.record_reports(request_id, [(5, False, b"late")])
    counted = dict(storage.database.connection().execute(
        "SELECT state, count(*) FROM tasks WHERE request_id = ? GROUP BY state", (request_id,)))
    progress = storage.progress(request_id)
    assert {state: getattr(progress, state) for state in counted} == counted
    assert (progress.done, progress.failed, progress.cancelled, progress.total) == (2, 1, 3, 6)


def test_loading_many_payload_files_keeps_no_files_open(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 40, "s", "local")
    storage.record_reports(request_id, [(i, False, bytes(BIG)) for i in range(1, 41)])
    loaded = [payload_bytes(result) for _args, _state, result in storage.results(request_id)]
    # Only this test's payload files count: other tests' threads open and close sockets.
    assert open_files_below(storage.database.payloads.root) == [] and all(map(len, loaded))


def open_files_below(directory):
    """The files below ``directory`` that this process holds open."""
    found = []
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(os.path.realpath(directory) + os.sep):
            found.append(target)
    return found


def test_a_very_large_payload_file_is_mapped_copy_on_write(tmp_path):
    path = tmp_path / "payload"
    path.write_bytes(bytes(payloads.MAP_BYTES))
    view = PayloadFile(str(path), payloads.MAP_BYTES).read()
    view[0] = 1
    assert view[0] == 1 and path.read_bytes()[:1] == b"\0"  # the file is unchanged
