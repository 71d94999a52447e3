"""Each task's own times: the worker measures how long ``f`` ran and says when a task
begins, so durations are the function's, not its batch's, and the tasks a worker holds
but has not started are told apart from those running."""

import statistics
import time

import sheepdog
from sheepdog.storage import Storage
from sheepdog.wire.protocol import BEGUN, ERROR, RAN, RESULT, SECONDS, pack_frames


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_tasks_of_a_tenth_of_a_second_show_a_median_near_a_tenth_with_default_batching(
        local_conf):
    assert sheepdog.map(nap, [(0.1,)] * 40, {**local_conf, "workers": 2},
                        verbose=False) == [0.1] * 40
    storage = Storage(local_conf["dbfile"])
    durations = storage.dashboard_durations(1)
    assert len(durations) == 40
    assert 0.09 <= statistics.median(durations) <= 0.15
    assert storage.progress(1).queued == 0


def make_running(storage, n):
    request_id = storage.create_request(b"f", [b"a"] * n, "secret", "local", {},
                                        ("__main__", "work"))
    worker = f"{storage.add_workers(request_id, 1)}.1"
    assert storage.pull(request_id, worker, 1, n, n) == list(range(1, n + 1))
    return request_id


def test_a_worker_holds_running_tasks_apart_from_those_queued_in_its_batch(storage):
    request_id = make_running(storage, 4)
    assert (storage.progress(request_id).running, storage.progress(request_id).queued) == (4, 4)
    storage.tasks.record_reports(request_id, [], begun=[1, 2])
    progress = storage.progress(request_id)
    assert (progress.running, progress.executing, progress.queued) == (4, 2, 2)
    summary, = storage.request_summaries()
    assert (summary.executing, summary.function) == (2, "__main__.work")
    storage.tasks.record_reports(request_id, [(1, False, b"r")], ran=[(1, 0.25)])
    progress = storage.progress(request_id)
    assert (progress.running, progress.executing, progress.queued) == (3, 1, 2)
    assert storage.dashboard_durations(request_id) == [0.25]


def test_a_tasks_seconds_are_kept_once_and_only_for_a_task_that_reported(storage):
    request_id = make_running(storage, 2)
    storage.tasks.record_reports(request_id, [], ran=[(2, 9.0)])  # no report yet: ignored
    storage.tasks.record_reports(request_id, [(1, True, b"it raised")], ran=[(1, 0.5)])
    storage.tasks.record_reports(request_id, [(1, False, b"late")], ran=[(1, 7.0)])
    assert storage.dashboard_durations(request_id) == [0.5]


def test_the_server_takes_begun_and_ran_frames_beside_reports(storage):
    from sheepdog.server.callbacks import Callbacks

    request_id = make_running(storage, 3)
    body = b"".join(pack_frames([(1, BEGUN, b""), (2, BEGUN, b""), (2, RAN, SECONDS.pack(0.1)),
                                 (2, RESULT, b"r"), (3, RAN, SECONDS.pack(0.2)),
                                 (3, ERROR, b"boom")]))
    reply = Callbacks(storage)._results(request_id, memoryview(body))
    assert reply.status == 200
    progress = storage.progress(request_id)
    assert (progress.executing, progress.done, progress.failed) == (1, 1, 1)
    assert sorted(storage.dashboard_durations(request_id)) == [0.1, 0.2]
    bad = b"".join(pack_frames([(1, RAN, b"\x00" * 3)]))
    assert Callbacks(storage)._results(request_id, memoryview(bad)).status == 400
