"""Workers that pull their tasks: every task once, in batches, on a lease, within the limits."""

import os
import sqlite3
import time
from contextlib import closing

import sheepdog
from sheepdog import Storage
from sheepdog.server.callbacks import Callbacks
from sheepdog.storage.payloads import PayloadFile
from sheepdog.wire import protocol
from sheepdog.wire.protocol import ALONE_BYTES, ARGUMENTS, WAIT, unpack_frames

from .conftest import SignedClient
from .test_api import max_request
from .test_faults import quick_watch  # noqa: F401 - a fixture


def handed_out_by_pull(dbfile, request_id):
    """The tasks each pull handed out, by (worker, pull number), of tasks not since handed
    out again: read from the database file itself, as no part of sheepdog needs it."""
    held = {}
    with closing(sqlite3.connect(dbfile)) as raw:
        for launch, array_task, batch, index in raw.execute(
                "SELECT w.launch, w.array_task, t.batch, t.idx FROM tasks t JOIN workers w "
                "ON w.id = t.worker WHERE t.request_id = ? ORDER BY t.idx", (request_id,)):
            held.setdefault((f"{launch}.{array_task}", batch), []).append(index)
    return held


def test_every_task_runs_exactly_once_in_batches_that_grow_and_never_overlap(local_conf,
                                                                            tmp_path):
    runs = tmp_path / "runs"

    def recorded(x):
        import os

        with open(runs, "a") as log:
            log.write(f"{x} {os.getppid()}\n")  # the runner's parent: its worker
        return -x

    conf = {**local_conf, "workers": 3}
    assert sheepdog.map(recorded, [(x,) for x in range(500)], conf, verbose=False) == \
        [-x for x in range(500)]
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert sorted(int(x) for x, _worker in lines) == list(range(500))
    assert 1 <= len({worker for _x, worker in lines}) <= 3
    batches = handed_out_by_pull(local_conf["dbfile"], max_request(local_conf))
    handed_out = [index for batch in batches.values() for index in batch]
    assert sorted(handed_out) == list(range(1, 501))  # each task in exactly one batch
    assert all(len(batch) == 1 for (_worker, pull), batch in batches.items() if pull == 1)
    assert max(len(batch) for batch in batches.values()) > 8  # trivial tasks: large batches
    assert len(batches) < 100


def test_a_killed_workers_tasks_are_run_by_another_worker_without_a_new_job(
        local_conf, tmp_path, quick_watch):  # noqa: F811
    """The worker holding task 5 is SIGKILLed whole (as a node failure would end it): its
    tasks go back in the queue and the living worker runs them, long before lost_after."""
    marker, runs = tmp_path / "killed", tmp_path / "runs"
    caller_group = os.getpgid(0)

    def kills_its_worker_once(x):
        import os
        import signal
        import time

        with open(runs, "a") as log:
            log.write(f"{x}\n")
        if x == 5 and not os.path.exists(marker):
            marker.touch()
            if os.getpgid(0) == caller_group:
                raise RuntimeError("the task shares the test's process group: not killing it")
            os.killpg(0, signal.SIGKILL)  # the worker and its runner
        time.sleep(0.2)
        return x

    conf = {**local_conf, "workers": 2, "retries": 1, "chunksize": 1}  # lost_after: 60 s
    started = time.monotonic()
    request_id = sheepdog.map_async(kills_its_worker_once, [(x,) for x in range(1, 41)], conf)
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=50)
    assert time.monotonic() - started < 50
    assert [result for _args, result in results] == list(range(1, 41))
    assert sorted(int(x) for x in runs.read_text().split()) == sorted([*range(1, 41), 5])
    assert len(Storage(local_conf["dbfile"]).jobs(request_id)) == 1


def test_max_running_bounds_the_workers_of_a_job(local_conf):
    def worker_pid(x):
        import os
        import time

        time.sleep(0.05)
        return os.getppid()

    conf = {**local_conf, "workers": 4, "max_running": 2}
    pids = sheepdog.map(worker_pid, [(x,) for x in range(40)], conf, verbose=False)
    assert 1 <= len(set(pids)) <= 2
    (job,) = Storage(local_conf["dbfile"]).jobs(max_request(local_conf))
    assert job.n_workers == 2


def lease(storage, request_id, size, seq=1):
    """A new worker pulls up to ``size`` tasks: (its name, the tasks it holds)."""
    worker = f"{storage.add_workers(request_id, 1)}.1"
    return worker, storage.pull(request_id, worker, seq, size)


def test_a_late_loss_from_a_worker_that_no_longer_holds_the_task_changes_nothing(storage):
    """Worker A fell silent; its task went to B. A's crash report, arriving late, must not
    knock over B's run (it once lost the task's result)."""
    request_id = storage.create_request(b"f", [b"a"], "k", "local")
    first, held = lease(storage, request_id, 1)
    assert storage.lose_silent(request_id, time.time() + 1, "silent") == held == [1]
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [1]
    _second, again = lease(storage, request_id, 1)
    assert again == [1]
    assert not storage.lose_held(request_id, first, 1, 1, "killed by SIGKILL")
    assert storage.progress(request_id).running == 1


def test_a_replayed_release_or_loss_of_an_earlier_batch_moves_nothing(storage):
    """A worker gave task 1 back (pull 1), then took it again (pull 2): a captured release
    or loss of pull 1, replayed now, must neither run it twice nor burn a retry."""
    request_id = storage.create_request(b"f", [b"a"], "k", "local")
    worker, held = lease(storage, request_id, 1)
    assert storage.release(request_id, worker, 1, held) == [1]
    assert storage.pull(request_id, worker, 2, 1) == [1]
    assert storage.release(request_id, worker, 1, [1]) == []
    assert not storage.lose_held(request_id, worker, 1, 1, "killed by SIGKILL")
    assert storage.progress(request_id).running == 1
    assert storage.lose_held(request_id, worker, 2, 1, "killed by SIGKILL")  # its own batch


def test_a_replayed_release_is_refused_by_the_server_too(storage):
    """The same through the signed routes: the path names the batch, so the replay is
    signed for pull 1 and cannot be moved to pull 2."""
    request_id = storage.create_request(b"f", [b"a"], "k", "local")
    worker, held = lease(storage, request_id, 1)
    client = SignedClient(Callbacks(storage), b"k")
    release = protocol.path(request_id, "release", worker=worker, seq=1)
    assert client.post(release, data=b"[1]").status_code == 200
    assert storage.pull(request_id, worker, 2, 1) == [1]
    replayed = client.post(release, data=b"[1]")
    assert replayed.status_code == 200 and replayed.data.strip() == b"released 0 of 1"
    assert storage.progress(request_id).running == 1


def test_a_pull_hands_out_no_more_argument_bytes_than_fit(storage, monkeypatch):
    from sheepdog.storage import leases

    monkeypatch.setattr(leases, "PULL_BYTES", 1000)
    request_id = storage.create_request(b"f", [b"x" * 300] * 40, "k", "local")
    _worker, held = lease(storage, request_id, 40)
    assert held == [1, 2, 3]  # 900 bytes; a fourth would pass 1000
    big = storage.create_request(b"f", [b"y" * 5000] * 2, "k", "local")
    assert lease(storage, big, 2)[1] == [1]  # one always goes, whatever its size


def test_arguments_that_fill_a_pulls_byte_cap_exactly_go_out_together(storage, monkeypatch):
    from sheepdog.storage import leases

    monkeypatch.setattr(leases, "PULL_BYTES", 1000)
    request_id = storage.create_request(b"f", [b"x" * 500] * 3, "k", "local")
    assert lease(storage, request_id, 3)[1] == [1, 2]  # 1000 bytes fit; 1500 do not


def test_arguments_kept_in_files_count_toward_a_pulls_byte_cap_with_their_real_size(
        storage, monkeypatch):
    """Arguments of ALONE_BYTES and more are kept in files, with an empty row in the
    database: a pull must count them as what they weigh, not as that empty row."""
    from sheepdog.storage import leases

    monkeypatch.setattr(leases, "PULL_BYTES", 3 * ALONE_BYTES + ALONE_BYTES // 2)
    arguments = [b"s" * 300, *[bytes([n]) * ALONE_BYTES for n in range(8)], b"t" * 300]
    request_id = storage.create_request(b"f", arguments, "k", "local")
    kept = storage.task_arguments(request_id, list(range(1, 11)))
    assert all(isinstance(kept[index], PayloadFile) for index in range(2, 10))  # in files
    worker = f"{storage.add_workers(request_id, 1)}.1"
    seen = []
    for seq in range(1, 11):
        held = storage.pull(request_id, worker, seq, 10)
        if not held:
            break
        sizes = [len(payload) for payload in storage.task_arguments(request_id, held).values()]
        assert len(held) == 1 or sum(sizes) <= leases.PULL_BYTES, (held, sizes)
        seen += held
        storage.record_reports(request_id, [(index, False, b"r") for index in held])
    assert sorted(seen) == list(range(1, 11))  # and every task went out in the end


def test_a_worker_can_give_back_only_what_it_holds(storage):
    """Two workers each hold tasks; one releasing the other's tasks moves nothing."""
    request_id = storage.create_request(b"f", [b"a", b"b", b"c", b"d"], "k", "local")
    launch = storage.add_workers(request_id, 2)
    first, second = f"{launch}.1", f"{launch}.2"
    assert storage.pull(request_id, first, 1, 2, least=2) == [1, 2]
    assert storage.pull(request_id, second, 1, 2, least=2) == [3, 4]
    client = SignedClient(Callbacks(storage), b"k")
    release = f"/requests/{request_id}/workers/{first}/release/1"
    assert client.post(release, data=b"[3, 4]").data == b"released 0 of 2\n"
    assert storage.release(request_id, second, 1, [1]) == []
    assert storage.progress(request_id).running == 4
    assert storage.pull(request_id, first, 1, 2) == [1, 2]  # asked again: each holds its own
    assert storage.pull(request_id, second, 1, 2) == [3, 4]
    assert client.post(release, data=b"[2, 3]").data == b"released 1 of 2\n"  # its own only
    assert storage.progress(request_id).pending == 1
    assert storage.pull(request_id, second, 1, 2) == [3, 4]


def test_an_idle_worker_asks_again_and_runs_what_a_busy_worker_gives_back(storage):
    """Nothing pending while another worker holds several tasks: WAIT, not "leave"; the
    tasks given back then go to the worker that asked again."""
    request_id = storage.create_request(b"f", [b"a", b"b", b"c"], "k", "local")
    launch = storage.add_workers(request_id, 2)
    busy, idle = f"{launch}.1", f"{launch}.2"
    assert storage.pull(request_id, busy, 1, 3, least=3) == [1, 2, 3]
    client = SignedClient(Callbacks(storage), b"k")
    pull = f"/requests/{request_id}/workers/{idle}/pull"
    assert unpack_frames(client.post(f"{pull}/1/3/1").data) == [(0, WAIT, b"")]
    assert unpack_frames(client.post(f"{pull}/1/3/1").data) == [(0, WAIT, b"")]  # still
    released = client.post(f"/requests/{request_id}/workers/{busy}/release/1", data=b"[2, 3]")
    assert released.data == b"released 2 of 2\n"
    assert unpack_frames(client.post(f"{pull}/1/3/1").data) == [(2, ARGUMENTS, b"b")]
    assert unpack_frames(client.post(f"{pull}/2/3/1").data) == [(3, ARGUMENTS, b"c")]
    storage.record_reports(request_id, [(1, False, b"r"), (2, False, b"r"), (3, False, b"r")])
    assert client.post(f"{pull}/3/3/1").data == b""  # nothing left, nothing held: it leaves
    assert storage.progress(request_id).done == 3


def test_a_task_that_holds_up_its_batch_gives_the_rest_to_an_idle_worker(local_conf, tmp_path):
    """End to end: the supervisor of the worker stuck in task 1 gives task 2 back, and the
    other worker, which was told to wait, runs it long before task 1 ends."""
    runs = tmp_path / "runs"

    def recorded(x):
        import os
        import time

        with open(runs, "a") as log:
            log.write(f"{x} {os.getppid()} {time.time()}\n")  # the runner's parent: its worker
        if x == 1:
            time.sleep(7)  # past the give-back time of a fixed chunksize (4 s)
        return x

    conf = {**local_conf, "workers": 2, "chunksize": 2}
    assert sheepdog.map(recorded, [(x,) for x in range(1, 9)], conf, verbose=False) == \
        list(range(1, 9))
    runs_of = {int(x): (worker, float(when)) for x, worker, when in
               (line.split() for line in runs.read_text().splitlines())}
    assert sorted(runs_of) == list(range(1, 9)) and len(runs.read_text().splitlines()) == 8
    batches = handed_out_by_pull(local_conf["dbfile"], max_request(local_conf))
    (stuck,) = [worker for (worker, _pull), batch in batches.items() if 1 in batch]
    (took_over,) = [worker for (worker, _pull), batch in batches.items() if 2 in batch]
    assert took_over != stuck  # given back, and run by the other worker
    assert runs_of[2][0] != runs_of[1][0]
    assert runs_of[2][1] < runs_of[1][1] + 7  # while task 1 still ran


def test_workers_whose_job_was_never_recorded_do_not_count_as_alive(storage):
    request_id = storage.create_request(b"f", [b"a"], "k", "local")
    launch = storage.add_workers(request_id, 2)
    assert not storage.any_worker_alive(request_id)  # its submitter died before add_job
    storage.add_job(request_id, "7", launch, 2)
    assert storage.any_worker_alive(request_id)


def test_the_workers_of_a_job_never_submitted_end_as_not_worth_repeating(storage):
    request_id = storage.create_request(b"f", [b"a"], "k", "local")
    launch = storage.add_workers(request_id, 2)
    assert storage.live_counts([request_id]) == {request_id: 2}  # yet to start
    storage.end_launch(request_id, launch, "its job was never submitted: refused")
    assert storage.live_counts([request_id]) == {}
    assert storage.newest_launch_ends(request_id) == [
        ("its job was never submitted: refused", False, False)] * 2


def test_a_worker_that_leaves_still_holding_tasks_loses_them(storage):
    request_id = storage.create_request(b"f", [b"a", b"b"], "k", "local")
    worker, held = lease(storage, request_id, 1)
    assert storage.pull(request_id, worker, 2, 1) == [2]
    assert storage.record_reports(request_id, [(2, False, b"r")]) == 1
    assert storage.pull(request_id, worker, 3, 1) == []  # nothing left: it leaves
    assert storage.progress(request_id).lost == len(held) == 1
    assert storage.errors(request_id) == [(b"a", "lost", "its worker left without reporting it")]
    assert storage.newest_launch_ends(request_id) == [("it ran out of tasks", True, True)]
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == held  # retried


def test_batches_never_ask_for_more_than_a_pull_may_carry():
    from sheepdog.wire import protocol
    from sheepdog.worker.batching import BatchSize

    batch = BatchSize()
    for _ in range(12):
        batch.took(batch.size, 1e-9 * batch.size)
    assert batch.size == protocol.MAX_PULL
    assert BatchSize(chunksize=10 ** 9).size == protocol.MAX_PULL


def test_a_runner_that_dies_before_its_first_task_reports_the_batch_lost(local_conf):
    """Loading f (here, its namespace) kills the runner: its tasks are lost and say how,
    rather than held forever by a worker that went on."""
    import os as os_module

    class ExitsWhenLoaded:
        def __reduce__(self):
            return os_module._exit, (9,)

    conf = {**local_conf, "workers": 1}
    started = time.monotonic()
    results = sheepdog.map(lambda x: x, [(1,), (2,), (3,)], conf,
                           {"poison": ExitsWhenLoaded()}, verbose=False)
    assert results == [None, None, None] and time.monotonic() - started < 30
    errors = sheepdog.get_errors(max_request(local_conf), local_conf["dbfile"])
    assert len(errors) == 3
    assert all("runner ended before it started the task (exit status 9" in error
               for _args, error in errors)


def test_a_pull_takes_at_least_the_tasks_its_worker_finds_worth_a_pull(storage):
    """The fair share would cut a batch of trivial tasks to a sliver at the end of the
    queue; the worker's ``least`` keeps each pull worth its round trip."""
    request_id = storage.create_request(b"f", [b"a"] * 100, "k", "local")
    launch = storage.add_workers(request_id, 10)
    assert storage.pull(request_id, f"{launch}.1", 1, 100) == list(range(1, 6))  # 100/20
    assert storage.pull(request_id, f"{launch}.2", 1, 100, least=30) == list(range(6, 36))


def test_a_worker_the_scheduler_ended_loses_its_tasks_and_they_may_run_again(storage):
    request_id = storage.create_request(b"f", [b"a", b"b", b"c"], "k", "local")
    worker, held = lease(storage, request_id, 2)
    assert storage.end_worker(request_id, worker, "killed by SIGKILL", True, "; warned") == \
        held == [1, 2]
    assert storage.errors(request_id) == [(b"a", "lost", "killed by SIGKILL"),
                                          (b"b", "lost", "killed by SIGKILL")]
    assert storage.newest_launch_ends(request_id) == [("killed by SIGKILL", True, True)]
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [1, 2]
    assert storage.end_worker(request_id, "9.1", "killed", True) == []  # no such worker


def test_a_worker_ended_after_a_kill_notice_loses_its_tasks_for_good(storage):
    """The scheduler warned it: it was removed on purpose, whatever the end looked like."""
    request_id = storage.create_request(b"f", [b"a", b"b"], "k", "local")
    worker, held = lease(storage, request_id, 1)
    assert storage.worker_kill_notice(request_id, worker)
    assert storage.end_worker(request_id, worker, "killed by SIGKILL", True, "; warned") == held
    assert storage.errors(request_id) == [(b"a", "lost", "killed by SIGKILL; warned")]
    assert storage.newest_launch_ends(request_id) == [("killed by SIGKILL; warned", False, True)]
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == []


def test_a_worker_that_ended_in_a_way_not_worth_repeating_loses_its_tasks_for_good(storage):
    request_id = storage.create_request(b"f", [b"a", b"b"], "k", "local")
    worker, held = lease(storage, request_id, 1)
    assert storage.end_worker(request_id, worker, "out of memory", False) == held
    assert storage.newest_launch_ends(request_id) == [("out of memory", False, True)]
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == []


def test_every_task_a_worker_takes_gives_back_or_loses_wakes_whoever_waits_for_a_change(storage):
    """The Executor's watcher and ``as_completed`` sleep in ``wait_for_change``: each move
    of a task between a worker and the queue must wake them."""
    request_id = storage.create_request(b"f", [b"a"] * 8, "k", "local")
    launch = storage.add_workers(request_id, 4)
    moves = [
        lambda: storage.pull(request_id, f"{launch}.1", 1, 2, least=2),
        lambda: storage.release(request_id, f"{launch}.1", 1, [2]),
        lambda: storage.lose_held(request_id, f"{launch}.1", 1, 1, "killed by SIGSEGV"),
        lambda: storage.pull(request_id, f"{launch}.2", 1, 1),
        lambda: storage.leave(request_id, f"{launch}.2", "idle too long"),
        lambda: storage.pull(request_id, f"{launch}.3", 1, 1),
        lambda: storage.end_worker(request_id, f"{launch}.3", "killed by SIGKILL", True),
        lambda: storage.pull(request_id, f"{launch}.4", 1, 1),
        lambda: storage.lose_silent(request_id, time.time() + 1, "silent"),
    ]
    for move in moves:
        seen = storage.change_count
        assert move(), move
        assert storage.change_count > seen


def pool_worker(storage, n_tasks):
    """Request A of a warm pool, with ``n_tasks`` tasks, and a worker of a recorded job;
    request B of the same pool, with one task: (A, the worker, B)."""
    first = storage.create_request(b"f", [b"a"] * n_tasks, "k", "local")
    second = storage.create_request(b"f", [b"b"], "k", "local")
    launch = storage.add_workers(first, 1)
    storage.add_job(first, "7", launch, 1)
    return first, f"{launch}.1", second


def test_a_pool_worker_handed_over_keeps_its_job_and_array_task_and_starts_afresh(storage):
    first, worker, second = pool_worker(storage, 2)
    for seq in (1, 2):
        assert storage.pull(first, worker, seq, 1) == [seq]
        storage.record_reports(first, [(seq, False, b"r")])
    assert storage.hand_over(first, worker, 3, second) == "1.1"
    assert [tuple(job) for job in storage.jobs(second)] == [("7", 1, 0)]
    assert storage.live_workers(second) == [("7", 1, 1)]
    assert storage.newest_launch_ends(first) == [
        (f"it went on to request {second} of its pool", True, True)]
    assert storage.pull(second, "1.1", 1, 1) == [1]  # its first pull there


def test_a_pool_worker_that_ended_or_is_unknown_or_has_no_job_is_not_handed_over(storage):
    first, worker, second = pool_worker(storage, 1)
    assert storage.hand_over(first, "5.1", 1, second) is None  # no such worker
    no_job = f"{storage.add_workers(first, 1)}.1"
    assert storage.hand_over(first, no_job, 1, second) is None  # its job not recorded yet
    assert storage.hand_over(first, worker, 3, second) is None  # not its next pull
    assert storage.leave(first, worker, "idle too long")
    assert not storage.leave(first, worker, "idle too long")  # only once
    assert storage.hand_over(first, worker, 1, second) is None  # it has ended
    assert storage.live_workers(second) == []


def test_a_repeated_pull_of_a_pool_worker_gets_its_tasks_again_rather_than_moving(storage):
    """The answer to pull 1 was lost and the worker asks again, while B now waits: moving
    it would lose the tasks that pull 1 handed out, which it never received."""
    first, worker, second = pool_worker(storage, 2)
    assert storage.pull(first, worker, 1, 2, least=2) == [1, 2]  # nothing left pending
    assert storage.hand_over(first, worker, 1, second) is None
    assert storage.pull(first, worker, 1, 2) == [1, 2]
    assert storage.progress(first).running == 2


def test_only_workers_that_pulled_and_then_fell_silent_lose_their_tasks(storage):
    """A worker yet to start (never pulled) may wait in the scheduler's queue for long;
    one whose heartbeat came after the cut-off is alive."""
    request_id = storage.create_request(b"f", [b"a", b"b", b"c"], "k", "local")
    launch = storage.add_workers(request_id, 3)
    silent, beating = f"{launch}.1", f"{launch}.2"
    assert storage.pull(request_id, silent, 1, 1) == [1]
    assert storage.pull(request_id, beating, 1, 1) == [2]
    cut_off = time.time()
    while time.time() <= cut_off:  # the heartbeat below must come strictly later
        pass
    assert storage.worker_heartbeat(request_id, beating)
    assert not storage.worker_heartbeat(request_id, f"{launch}.9")
    assert storage.lose_silent(request_id, cut_off, "it fell silent") == [1]
    assert storage.errors(request_id) == [(b"a", "lost", "it fell silent")]
    assert storage.newest_launch_ends(request_id) == [("it fell silent", True, True)]
    assert storage.live_counts([request_id]) == {request_id: 2}  # the beating, the unstarted
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [1]
