"""Warm pools: workers that outlive one request, move to the next, wait, and leave.

The protocol's side is tested in-process (``Callbacks`` with a real ``Pools``
and storage); the rest end to end on the local backend, whose workers run
the very job file a cluster's do.
"""

import http.client
import json
import threading
import time

import pytest

import sheepdog
from sheepdog.backends.local import LocalBackend
from sheepdog.caller import watcher
from sheepdog.caller.pool import Pools
from sheepdog.config import resolve
from sheepdog.server.callbacks import Callbacks
from sheepdog.storage import Storage
from sheepdog.wire import protocol
from sheepdog.wire.protocol import ARGUMENTS, HANDOVER, IDLE, unpack_frames

from .conftest import SignedClient


class Member:
    """A request as its pool sees it: an id, a key file it may withdraw, a progress."""

    def __init__(self, storage, request_id):
        self.id, self.storage, self.withdrawn, self.ended = request_id, storage, False, False

    def withdraw_key(self):
        self.withdrawn = True

    def progress(self):
        return self.storage.progress(self.id)


@pytest.fixture
def pooled(storage):
    """A pool of two requests on ``storage``: A (one task, with a recorded job of one
    worker, 1.1) and B (three tasks), and the callbacks that serve them."""
    config = resolve({"scheduler": "local", "linger": 0.3})
    pools = Pools(storage)
    pool = pools.pool_for(config, {"scheduler": "local"}, LocalBackend(config))
    first = storage.create_request(b"f-a", [b"a1"], "key-a", "local")
    second = storage.create_request(b"f-b", [b"b1", b"b2", b"b3"], "key-b", "local")
    launch = storage.add_workers(first, 1)
    storage.add_job(first, "job-7", launch, 1)
    for request_id in (first, second):
        pools.join(pool, Member(storage, request_id))
    yield pools, pool, Callbacks(storage, pools=pools), first, second
    pools.close()


def pull_path(request_id, worker, seq, size=10):
    return protocol.path(request_id, "pull", worker=worker, seq=seq, size=size)


def test_a_worker_with_nothing_left_is_handed_over_with_the_next_requests_key_and_tasks(
        pooled, storage):
    _pools, pool, callbacks, first, second = pooled
    as_a = SignedClient(callbacks, b"key-a")
    assert unpack_frames(as_a.post(pull_path(first, "1.1", 1)).data) == [(1, ARGUMENTS, b"a1")]
    storage.record_reports(first, [(1, False, b"r")])
    frames = unpack_frames(as_a.post(pull_path(first, "1.1", 2)).data)
    assert frames[0][1] == HANDOVER
    ticket = json.loads(bytes(frames[0][2]))
    assert ticket["request"] == second and ticket["key"] == "key-b"
    assert ticket["function"] == pool.function_digest(second)
    # It keeps its job and array task, under a launch of B's recorded with that job.
    new_name = ticket["worker"]
    assert new_name.endswith(".1")
    assert [(job.job_id, job.n_workers) for job in storage.jobs(second)] == [("job-7", 0)]
    assert [kind for _index, kind, _payload in frames[1:]] == [ARGUMENTS] * 2  # its share
    # In A it has ended; in B it is a worker whose requests must be signed with B's key.
    assert storage.live_workers(first) == []
    assert storage.live_workers(second) == [("job-7", 1, 1)]
    assert as_a.post(pull_path(second, new_name, 2)).status_code == 401
    as_b = SignedClient(callbacks, b"key-b")
    assert unpack_frames(as_b.post(pull_path(second, new_name, 2)).data)[0][1] == ARGUMENTS


def test_a_worker_whose_job_is_not_recorded_yet_stays_in_its_request(storage):
    config = resolve({"scheduler": "local", "linger": 5})
    pools = Pools(storage)
    pool = pools.pool_for(config, {"scheduler": "local"}, LocalBackend(config))
    first = storage.create_request(b"f", [b"a"], "key-a", "local")
    second = storage.create_request(b"g", [b"b"], "key-b", "local")
    launch = storage.add_workers(first, 1)  # its job is being submitted: no job row yet
    for request_id in (first, second):
        pools.join(pool, Member(storage, request_id))
    as_a = SignedClient(Callbacks(storage, pools=pools), b"key-a")
    worker = f"{launch}.1"
    assert unpack_frames(as_a.post(pull_path(first, worker, 1)).data)[0][1] == ARGUMENTS
    storage.record_reports(first, [(1, False, b"r")])
    assert unpack_frames(as_a.post(pull_path(first, worker, 2)).data) == [(0, IDLE, b"")]
    assert storage.live_workers(second) == []
    pools.close()


def test_an_idle_worker_is_held_then_leaves_once_its_pool_has_lingered(pooled, storage):
    pools, pool, callbacks, first, second = pooled
    pools.forget(second)  # nothing to move to
    as_a = SignedClient(callbacks, b"key-a")
    as_a.post(pull_path(first, "1.1", 1))
    storage.record_reports(first, [(1, False, b"r")])
    idle = callbacks.respond("POST", pull_path(first, "1.1", 2),
                             _signed(b"key-a", pull_path(first, "1.1", 2)), b"")
    assert idle.held and unpack_frames(b"".join(map(bytes, idle.parts))) == [(0, IDLE, b"")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = as_a.post(pull_path(first, "1.1", 2))
        if not unpack_frames(answer.data):
            break
        time.sleep(0.05)
    assert answer.data == b""  # no frames: it leaves
    (end,) = [end for end in storage.newest_launch_ends(first) if "linger" in end.reason]
    assert end.retryable and "0.3 s" in end.reason


def test_a_worker_whose_request_has_work_moves_only_to_a_request_without_workers(
        pooled, storage):
    _pools, pool, _callbacks, first, second = pooled
    storage.add_workers(second, 1)  # B has a live worker already
    third = storage.create_request(b"f-c", [b"c1"], "key-c", "local")
    again = storage.create_request(b"f-a", [b"a2", b"a3"], "key-a2", "local")
    launch = storage.add_workers(again, 2)
    storage.add_job(again, "job-8", launch, 2)
    for request_id in (third, again):
        pool.add(Member(storage, request_id))
    assert pool.handover_target(again) == third  # C has none: one of A2's two goes
    storage.add_workers(third, 1)
    assert pool.handover_target(again) is None  # each has workers; A2 keeps its own


def test_closing_a_pool_wakes_its_held_pulls_and_sends_its_workers_away(pooled, storage):
    pools, pool, callbacks, first, second = pooled
    pools.forget(second)
    as_a = SignedClient(callbacks, b"key-a")
    as_a.post(pull_path(first, "1.1", 1))
    storage.record_reports(first, [(1, False, b"r")])
    assert unpack_frames(as_a.post(pull_path(first, "1.1", 2)).data) == [(0, IDLE, b"")]
    pools.close()
    assert as_a.post(pull_path(first, "1.1", 2)).data == b""


def test_work_that_arrives_while_an_idle_pull_looks_for_it_wakes_that_pull(
        pooled, storage, monkeypatch):
    """A request made after the pull found nothing, but before it began to wait, must
    not leave it asleep until its next recheck (here 20 s; 5 s in the product)."""
    from sheepdog.server import tornado_handler
    from sheepdog.server.host import Server

    monkeypatch.setattr(tornado_handler, "HOLD_SECONDS", 20.0)
    monkeypatch.setattr(tornado_handler, "RECHECK_SECONDS", 20.0)
    pools, pool, _callbacks, first, second = pooled
    pools.forget(second)
    server = Server(storage, port=0, use_tls=False, pools=pools).start()
    respond = Callbacks.respond
    arrived = []

    def respond_then_work_arrives(callbacks, *args, **kwargs):
        reply = respond(callbacks, *args, **kwargs)
        if reply.held and not arrived:  # it found nothing; now, before it waits:
            arrived.append(storage.create_request(b"f-c", [b"c1"], "key-c", "local"))
            pools.join(pool, Member(storage, arrived[0]))
        return reply

    monkeypatch.setattr(Callbacks, "respond", respond_then_work_arrives)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        def pull(seq):
            path = pull_path(first, "1.1", seq)
            connection.request("POST", path, body=b"",
                               headers=protocol.auth_headers(b"key-a", "POST", path, b""))
            return unpack_frames(connection.getresponse().read())

        assert [kind for _index, kind, _data in pull(1)] == [ARGUMENTS]
        storage.record_reports(first, [(1, False, b"r")])
        asked = time.monotonic()
        frames = pull(2)
        waited = time.monotonic() - asked
    finally:
        connection.close()
        server.stop()
    assert [kind for _index, kind, _data in frames] == [HANDOVER, ARGUMENTS]
    assert json.loads(bytes(frames[0][2]))["request"] == arrived[0]
    assert waited < 10


def _signed(key, path):
    from email.message import Message

    headers = Message()
    for name, value in protocol.auth_headers(key, "POST", path, b"").items():
        headers[name] = value
    return headers


# -- end to end, on the local backend ---------------------------------------------------


def own_jobs(dbfile):
    """The jobs that started workers, per request (not those whose workers came from
    another request of the pool)."""
    storage = Storage(dbfile)
    try:
        return {request_id: [job.job_id for job in storage.jobs(request_id) if job.n_workers]
                for request_id in storage.request_ids()}
    finally:
        storage.close()


def double(x):
    return 2 * x


def test_a_second_map_reuses_the_first_maps_workers(local_conf):
    conf = {**local_conf, "workers": 2}
    with sheepdog.Session() as session:
        for _ in range(2):
            request = session.submit(double, [(x,) for x in range(50)], conf)
            request.wait(timeout=120)
            assert request.values() == [2 * x for x in range(50)]
    jobs = own_jobs(local_conf["dbfile"])
    assert len(jobs[1]) == 1 and jobs[2] == []


def test_maps_from_three_threads_share_one_pool(local_conf):
    conf = {**local_conf, "workers": 2}
    results = {}

    def mapping(offset):
        results[offset] = sheepdog.map(double, [(offset + x,) for x in range(20)], conf,
                                       verbose=False)

    threads = [threading.Thread(target=mapping, args=(offset,)) for offset in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {offset: [2 * (offset + x) for x in range(20)]
                       for offset in (0, 100, 200)}
    assert sum(len(jobs) for jobs in own_jobs(local_conf["dbfile"]).values()) == 1


def test_requests_with_different_options_get_different_pools(local_conf):
    with sheepdog.Session() as session:
        for max_running in (1, 2):
            session.submit(double, [(1,)], {**local_conf, "max_running": max_running}
                           ).wait(timeout=120)
    assert [len(jobs) for jobs in own_jobs(local_conf["dbfile"]).values()] == [1, 1]


def test_linger_zero_gives_each_request_its_own_job(local_conf):
    with sheepdog.Session() as session:
        for _ in range(2):
            session.submit(double, [(1,)], {**local_conf, "linger": 0}).wait(timeout=120)
    assert [len(jobs) for jobs in own_jobs(local_conf["dbfile"]).values()] == [1, 1]


def test_idle_workers_leave_after_linger(local_conf):
    with sheepdog.Session() as session:
        request = session.submit(double, [(x,) for x in range(4)],
                                 {**local_conf, "workers": 2, "linger": 1})
        request.wait(timeout=120)
        deadline = time.monotonic() + 60
        while request.storage.live_workers(request.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert request.storage.live_workers(request.id) == []
        reasons = {end.reason for end in request.storage.newest_launch_ends(request.id)}
    assert reasons == {"it had no work for 1 s (the pool's linger)"}


def test_closing_the_session_ends_its_pools_workers_at_once(local_conf):
    session = sheepdog.Session()
    request = session.submit(double, [(1,)], {**local_conf, "linger": 600})
    request.wait(timeout=120)
    backend = request.backend
    (job_id,) = own_jobs(local_conf["dbfile"])[request.id]
    assert backend.running_tasks(job_id)  # waiting for more work
    started = time.monotonic()
    session.close()
    while backend.running_tasks(job_id) and time.monotonic() - started < 30:
        time.sleep(0.05)
    assert not backend.running_tasks(job_id)


def test_a_dependent_executor_call_on_a_warm_pool_submits_no_job(local_conf):
    with sheepdog.Executor({**local_conf, "workers": 1}) as executor:
        value = 1
        for _ in range(5):
            value = executor.submit(double, value).result(timeout=60)
    assert value == 32
    jobs = own_jobs(local_conf["dbfile"])
    assert sum(len(own) for own in jobs.values()) == 1 and len(jobs) == 5


def test_requests_that_ended_leave_their_pool_as_its_worker_goes_on(local_conf, monkeypatch):
    """A request whose tasks all finished, and whose worker went on to the next request,
    leaves the pool when the next one ends, not at the pool's next look at its workers
    (which a loop of dependent calls, each over in milliseconds, never reaches): every
    pull asks after each member, so a pool that kept them all slowed each call down."""
    monkeypatch.setattr(watcher, "WATCH_SECONDS", 3600.0)  # no look at the workers meanwhile
    with sheepdog.Session() as session:
        with sheepdog.Executor({**local_conf, "workers": 1}, session=session) as executor:
            value = 1
            for _ in range(12):
                value = executor.submit(double, value).result(timeout=60)
            database = session.owner(local_conf["dbfile"])
            newest = max(database.storage.request_ids())
            members = database.pools.of(newest).request_ids()
    assert value == 2 ** 12
    assert newest in members and len(members) <= 2, members


def calls_so_far(_x):
    """How many calls this process has seen: state a batch leaves in its runner (in its
    environment, which no reload of the function resets)."""
    import os

    calls = int(os.environ.get("SHEEPDOG_TEST_CALLS", "0")) + 1
    os.environ["SHEEPDOG_TEST_CALLS"] = str(calls)
    return calls


def test_each_batch_of_a_warm_worker_runs_in_a_new_process(local_conf):
    """The runner forked ahead for the next batch (the spare) starts from the worker's
    state, not from what the batch before left in its runner."""
    with sheepdog.Executor({**local_conf, "workers": 1}) as executor:
        counts = [executor.submit(calls_so_far, x).result(timeout=60) for x in range(4)]
    assert counts == [1, 1, 1, 1]


def sized(n):
    return b"x" * n


def test_a_spare_runner_posts_a_large_result_for_the_request_it_was_handed(local_conf):
    """The spare is forked while its worker serves one request and handed a task of the
    next; a result of 1 MB or more, which the runner posts itself, must be signed for
    that next request, or it would never arrive."""
    big = protocol.ALONE_BYTES + 1
    with sheepdog.Executor({**local_conf, "workers": 1}) as executor:
        assert executor.submit(sized, 1).result(timeout=60) == b"x"
        assert len(executor.submit(sized, big).result(timeout=60)) == big
        assert len(executor.submit(sized, big).result(timeout=60)) == big
    jobs = own_jobs(local_conf["dbfile"])
    assert sum(len(own) for own in jobs.values()) == 1 and len(jobs) == 3


def test_a_small_map_is_served_while_a_large_one_runs(local_conf):
    def short_sleep(x):
        import time
        time.sleep(0.01)
        return x

    conf = {**local_conf, "workers": 2}
    with sheepdog.Session() as session:
        large = session.submit(short_sleep, [(x,) for x in range(3000)], conf)
        while not large.progress().done:
            time.sleep(0.02)
        small = session.submit(double, [(x,) for x in range(10)], conf)
        small.wait(timeout=60)
        assert small.values() == [2 * x for x in range(10)]
        assert large.progress().pending > 0  # it was not left until the large one ended
        large.cancel()


def test_workers_leave_before_their_walltime_and_new_ones_run_every_task_once(
        local_conf, tmp_path, caplog):
    """Workers whose walltime is 8 s take no batch that would outrun it, give back what
    they have not started, and leave; the pool starts others. Each task runs once, none
    is lost or failed, and no worker is killed at its walltime."""
    runs = tmp_path / "runs"

    def logged(x):
        import time

        with open(runs, "a") as log:
            log.write(f"{x}\n")
        time.sleep(0.25)
        return x

    conf = {**local_conf, "workers": 2, "walltime": 8}
    with sheepdog.Session() as session, caplog.at_level("WARNING"):
        request = session.submit(logged, [(x,) for x in range(80)], conf)
        request.wait(timeout=300)
        progress = request.progress()
        ends = {end.reason for end in request.storage.newest_launch_ends(request.id)}
        jobs = own_jobs(local_conf["dbfile"])[request.id]
    assert (progress.done, progress.failed, progress.lost) == (80, 0, 0)
    assert sorted(int(x) for x in runs.read_text().split()) == list(range(80))
    assert len(jobs) >= 2  # 80 tasks of 0.25 s on two workers outlast a walltime of 8 s
    assert not any("walltime" in reason and "killed" in reason for reason in ends), ends
    # Nor are they said to have ended with an earlier process, as in a later get_results.
    assert not any("end with the Python process" in line for line in caplog.messages)
