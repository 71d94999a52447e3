"""sheepdog.Executor and sheepdog.as_completed, end to end on the local backend."""

import asyncio
import concurrent.futures
import logging
import threading
import time
import traceback
from pathlib import Path

import pytest

import sheepdog
from sheepdog.storage.states import CANCELLED, DONE
from sheepdog.storage import Storage

from .support.quickstart import run_doctest


def wait_for_file(path, timeout=60):
    """Used inside tasks: block until ``path`` exists."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return "released"


def stored(dbfile):
    """(request ids, jobs of each) as the database holds them."""
    storage = Storage(dbfile)
    try:
        return {request_id: storage.jobs(request_id) for request_id in storage.request_ids()}
    finally:
        storage.close()


def test_many_submits_in_a_short_time_go_out_as_one_array_job(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        futures = [executor.submit(pow, x, 2) for x in range(20)]
        assert [future.result(timeout=60) for future in futures] == [x * x for x in range(20)]
    requests = stored(local_conf["dbfile"])
    assert list(requests) == [1] and len(requests[1]) == 1


def test_max_batch_submits_go_out_at_once_without_waiting_for_the_window(local_conf):
    with sheepdog.Executor(local_conf, batch_seconds=600, max_batch=2) as executor:
        futures = [executor.submit(abs, -x) for x in (1, 2)]
        assert [future.result(timeout=60) for future in futures] == [1, 2]


def test_submits_from_many_threads_within_the_window_go_out_together(local_conf):
    with sheepdog.Executor(local_conf, batch_seconds=0.5) as executor:
        with concurrent.futures.ThreadPoolExecutor(4) as threads:
            futures = list(threads.map(lambda x: executor.submit(pow, x, 3), range(12)))
        assert sorted(future.result(timeout=60) for future in futures) == [
            x ** 3 for x in range(12)]
    assert [len(jobs) for jobs in stored(local_conf["dbfile"]).values()] == [1]


def test_submits_keep_their_window_when_the_pools_warmth_cannot_be_told(local_conf,
                                                                         monkeypatch, caplog):
    """Asking whether the pool is warm only decides whether to skip the window: when the
    question fails, the window holds (and the failure is logged for debugging)."""
    def fails(_config):
        raise RuntimeError("no answer")

    caplog.set_level(logging.DEBUG, logger="sheepdog.executor")
    session = sheepdog.Session()
    monkeypatch.setattr(session, "pool_is_warm", fails)
    try:
        with sheepdog.Executor(local_conf, session=session, batch_seconds=600) as executor:
            first = executor.submit(abs, -1)
            time.sleep(0.3)  # time enough for a submitter that skipped the window to send it
            second = executor.submit(abs, -2)
        assert [first.result(timeout=60), second.result(timeout=60)] == [1, 2]
    finally:
        session.close()
    assert list(stored(local_conf["dbfile"])) == [1]
    (record,) = [r for r in caplog.records if "whether the pool is warm" in r.getMessage()]
    assert record.getMessage() == "could not tell whether the pool is warm"
    assert record.exc_info[1].args == ("no answer",)


def test_a_batch_whose_first_functions_futures_were_all_cancelled_still_sends_the_rest(
        local_conf):
    executor = sheepdog.Executor(local_conf, batch_seconds=600)
    try:
        cancelled = executor.submit(pow, 2, 2)
        assert cancelled.cancel()
        kept = executor.submit(abs, -3)
        executor.shutdown(wait=False)  # the window ends: the batch goes out
        assert kept.result(timeout=60) == 3
    finally:
        executor.shutdown()


def test_a_refused_request_of_a_batch_fails_only_its_own_futures(local_conf, monkeypatch):
    session = sheepdog.Session()
    submit = session.submit_serialised

    def refuse_pow(function_blob, arguments, config, origins, name, *rest):
        if name[-1] == "pow":
            raise sheepdog.SubmissionError("refused: pow")
        return submit(function_blob, arguments, config, origins, name, *rest)

    monkeypatch.setattr(session, "submit_serialised", refuse_pow)
    try:
        with sheepdog.Executor(local_conf, session=session, batch_seconds=600) as executor:
            refused = executor.submit(pow, 2, 2)
            kept = executor.submit(abs, -3)
        assert str(refused.exception(timeout=60)) == "refused: pow"
        assert kept.result(timeout=60) == 3
    finally:
        session.close()


@pytest.mark.parametrize("linger, own_jobs", [(60, [1, 0]), (0, [1, 1])])
def test_submits_of_two_functions_go_out_as_one_request_each(local_conf, linger, own_jobs):
    """Each request of a warm pool is served by the first one's workers (no job of its
    own); without a pool (``linger`` 0), each request is a job."""
    with sheepdog.Executor({**local_conf, "linger": linger}) as executor:
        squares = [executor.submit(pow, x, 2) for x in range(3)]
        absolutes = [executor.submit(abs, -x) for x in range(3)]
    assert [future.result() for future in squares] == [0, 1, 4]
    assert [future.result() for future in absolutes] == [0, 1, 2]
    assert [len([job for job in jobs if job.n_workers])
            for jobs in stored(local_conf["dbfile"]).values()] == own_jobs


def test_futures_work_with_the_standard_as_completed_and_wait(local_conf):
    def slow_identity(x):
        import time
        time.sleep(x)
        return x

    with sheepdog.Executor({**local_conf, "workers": 3}) as executor:
        futures = [executor.submit(slow_identity, x) for x in (1.5, 0.0, 0.5)]
        assert all(isinstance(future, concurrent.futures.Future) for future in futures)
        finished = [future.result() for future in
                    concurrent.futures.as_completed(futures, timeout=60)]
        done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert finished == [0.0, 0.5, 1.5]
    assert done == set(futures) and not not_done


class MyError(Exception):
    """An exception class of the user's own: it travels by value, both ways."""


class NeedsTwoArguments(Exception):
    """Pickles, but its pickle cannot be loaded: ``__init__`` takes other arguments than
    the ``args`` it leaves."""

    def __init__(self, name, code):
        super().__init__(f"{name} failed with {code}")


class HoldsALock(Exception):
    """Cannot be pickled at all."""

    def __init__(self):
        import threading

        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_my_error(x):
    print("said before raising")
    raise MyError(f"mine: {x}")


def test_a_raising_task_raises_its_own_exception_with_the_remote_traceback(local_conf):
    def inverse(x):
        return 1 / x

    with sheepdog.Executor(local_conf) as executor:
        future = executor.submit(inverse, 0)
        try:
            future.result(timeout=60)
        except ZeroDivisionError as error:
            raised = error
    remote = raised.__cause__
    assert isinstance(remote, sheepdog.RemoteTraceback) and remote.index == 1
    assert "in inverse" in remote.traceback
    assert remote.traceback.rstrip().endswith("ZeroDivisionError: division by zero")
    printed = "".join(traceback.format_exception(raised))
    assert "in inverse" in printed and "direct cause of the following exception" in printed


def test_an_exception_class_of_the_users_own_is_rebuilt_and_caught_by_its_class(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        try:
            executor.submit(raise_my_error, 7).result(timeout=60)
        except MyError as error:  # the class of this module, shipped by value both ways
            raised = error
    assert type(raised) is MyError and raised.args == ("mine: 7",)
    assert "in raise_my_error" in raised.__cause__.traceback
    assert "said before raising" in "".join(raised.__cause__.output.values())
    assert "said before raising" in str(raised.__cause__)


@pytest.mark.parametrize("kind, arguments, why", [
    (NeedsTwoArguments, ("x", 3), "could not be rebuilt in this process (TypeError"),
    (HoldsALock, (), "could not be pickled on the worker (TypeError"),
])
def test_an_exception_that_cannot_be_rebuilt_gives_task_error_saying_why(local_conf, kind,
                                                                         arguments, why):
    def fail(kind, *arguments):
        raise kind(*arguments)

    with sheepdog.Executor(local_conf) as executor:
        error = executor.submit(fail, kind, *arguments).exception(timeout=60)
    assert isinstance(error, sheepdog.TaskError) and why in error.why and why in str(error)
    assert error.exception_type.endswith(kind.__name__)
    assert "in fail" in error.remote_traceback


def test_a_task_that_fails_otherwise_gives_task_error_as_before(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        error = executor.submit(threading.Lock).exception(timeout=60)
    assert isinstance(error, sheepdog.TaskError) and error.why is None
    assert "the result could not be serialised" in error.remote_traceback


def test_a_task_that_kills_its_process_group_raises_task_lost(local_conf):
    def die():
        import os
        import signal
        os.killpg(os.getpgrp(), signal.SIGKILL)

    with sheepdog.Executor({**local_conf, "retries": 0}) as executor:
        future = executor.submit(die)
        with pytest.raises(sheepdog.TaskLost) as raised:
            future.result(timeout=60)
    assert raised.value.index == 1 and "SIGKILL" in raised.value.reason


def blocked_executor(local_conf, tmp_path, n_pending):
    """An executor on one worker slot whose first task blocks until released.

    Returns (executor, blocker future, the pending futures, their marker
    files, the release file). Each pending task writes its marker file.
    """
    release = str(tmp_path / "release")
    markers = [str(tmp_path / f"ran-{n}") for n in range(n_pending)]

    def task(marker):
        if marker is None:
            return wait_for_file(release)
        with open(marker, "w") as handle:
            handle.write("ran")
        return marker

    executor = sheepdog.Executor({**local_conf, "workers": 1, "chunksize": 1})
    blocker = executor.submit(task, None)
    pending = [executor.submit(task, marker) for marker in markers]
    deadline = time.monotonic() + 60
    while not blocker.running():
        assert time.monotonic() < deadline, "the first task never started"
        time.sleep(0.02)
    return executor, blocker, pending, markers, release


def test_cancelled_pending_futures_never_run(local_conf, tmp_path):
    executor, blocker, pending, markers, release = blocked_executor(local_conf, tmp_path, 3)
    assert not blocker.cancel()  # it runs
    assert [future.cancel() for future in pending[:2]] == [True, True]
    open(release, "w").close()
    assert blocker.result(timeout=60) == "released"
    assert pending[2].result(timeout=60) == markers[2]
    executor.shutdown()
    assert all(future.cancelled() for future in pending[:2])
    assert [marker for marker in markers if (tmp_path / marker).exists()] == [markers[2]]
    storage = Storage(local_conf["dbfile"])
    assert [state for _args, state, _result in storage.results(1)] == [
        DONE, CANCELLED, CANCELLED, DONE]


def test_a_future_cancelled_while_its_batch_is_being_sent_never_runs(local_conf, tmp_path,
                                                                      monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="sheepdog.executor")
    marker = tmp_path / "ran"
    session = sheepdog.Session()
    submit = session.submit_serialised
    sending, proceed = threading.Event(), threading.Event()

    def slow_submit(*arguments):
        sending.set()
        assert proceed.wait(60)
        return submit(*arguments)

    def task(kept):
        if not kept:
            marker.write_text("ran")
        return kept

    monkeypatch.setattr(session, "submit_serialised", slow_submit)
    try:
        with sheepdog.Executor(local_conf, session=session) as executor:
            cancelled, kept = executor.submit(task, False), executor.submit(task, True)
            assert sending.wait(60)
            assert cancelled.cancel()
            proceed.set()
            assert kept.result(timeout=60) is True
    finally:
        proceed.set()
        session.close()
    assert not marker.exists()
    storage = Storage(local_conf["dbfile"])
    assert [state for _args, state, _result in storage.results(1)] == [CANCELLED, DONE]
    assert [error for _args, _state, error in storage.errors(1)] == ["its future was cancelled"]
    assert "request 1: tasks [1] cancelled with their futures" in caplog.messages


def running_process(pid):
    """Whether process ``pid`` runs (not ended, nor a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, before the open or the read
        return False


def test_a_request_with_cancelled_futures_removes_its_workers_once_the_rest_settle(
        local_conf, tmp_path):
    """Its warm pool would keep the worker waiting for more work for ``linger`` (60 s);
    a request the user cancelled part of ends its jobs as soon as its last task does."""
    release = str(tmp_path / "release")

    def worker_of(x):
        import os

        if x == 0:
            wait_for_file(release)
        return os.getppid()  # the runner's parent: its worker

    executor = sheepdog.Executor({**local_conf, "workers": 1, "chunksize": 1})
    try:
        blocker = executor.submit(worker_of, 0)
        cancelled, rest = executor.submit(worker_of, 1), executor.submit(worker_of, 2)
        deadline = time.monotonic() + 60
        while not blocker.running():
            assert time.monotonic() < deadline, "the first task never started"
            time.sleep(0.02)
        assert cancelled.cancel()
        open(release, "w").close()
        workers = {blocker.result(timeout=60), rest.result(timeout=60)}  # the pool may grow
        deadline = time.monotonic() + 30
        while any(running_process(worker) for worker in workers):
            assert time.monotonic() < deadline, "a worker still waits for work"
            time.sleep(0.05)
    finally:
        open(release, "w").close()
        executor.shutdown()


def its_worker():
    import os

    return os.getppid()  # the runner's parent: its worker


def test_shutdown_closes_the_executors_own_session_but_not_one_it_was_given(local_conf):
    """Closing a session ends its warm pool's workers; one the caller gave the executor is
    the caller's to close, and its workers serve the next executor on it."""
    with sheepdog.Session() as session:
        with sheepdog.Executor(local_conf, session=session) as executor:
            worker = executor.submit(its_worker).result(timeout=60)
        with sheepdog.Executor(local_conf, session=session) as executor:
            assert executor.submit(its_worker).result(timeout=60) == worker
    executor = sheepdog.Executor(local_conf)
    worker = executor.submit(its_worker).result(timeout=60)
    executor.shutdown()
    deadline = time.monotonic() + 30
    while running_process(worker):  # not left waiting for work for linger (60 s)
        assert time.monotonic() < deadline, "the executor's own session was left open"
        time.sleep(0.05)


def test_a_task_cancelled_in_the_database_cancels_its_pending_future(local_conf, tmp_path):
    """Cancelled from elsewhere (another process, the dashboard) before any worker took
    it, the task's future is cancelled, not a running future that raises."""
    executor, blocker, pending, _markers, release = blocked_executor(local_conf, tmp_path, 1)
    try:
        storage = Storage(local_conf["dbfile"])
        assert storage.cancel_tasks(1, [2], "cancelled elsewhere") == [2]
        storage.close()
        with pytest.raises(concurrent.futures.CancelledError):
            pending[0].result(timeout=60)
        assert pending[0].cancelled()
    finally:
        open(release, "w").close()
        executor.shutdown()
    assert blocker.result() == "released"


def test_a_cancelled_future_reaches_the_standard_waiters(local_conf, tmp_path):
    """concurrent.futures.wait counts a cancelled future as done, and as_completed yields
    it: whether its task was already sent out, or it was cancelled before it was."""
    executor, blocker, pending, _markers, release = blocked_executor(local_conf, tmp_path, 1)
    unsent = sheepdog.Executor(local_conf, batch_seconds=600)  # holds what is submitted
    try:
        queued = unsent.submit(abs, -1)
        for future in (pending[0], queued):
            assert future.cancel()
            done, not_done = concurrent.futures.wait([future], timeout=5)
            assert (done, not_done) == ({future}, set())
            assert list(concurrent.futures.as_completed([future], timeout=5)) == [future]
            first = concurrent.futures.wait([blocker, future], timeout=5,
                                            return_when=concurrent.futures.FIRST_COMPLETED)
            assert first.done == {future}
    finally:
        open(release, "w").close()
        unsent.shutdown()
        executor.shutdown()
    assert blocker.result() == "released" and pending[0].cancelled() and queued.cancelled()


def test_shutdown_with_cancel_futures_cancels_what_has_not_started(local_conf, tmp_path):
    executor, blocker, pending, markers, release = blocked_executor(local_conf, tmp_path, 2)
    executor.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="^this sheepdog Executor has been shut down: make a "
                                           "new one to submit more$"):
        executor.submit(abs, 1)
    open(release, "w").close()
    assert blocker.result(timeout=60) == "released"
    executor.shutdown(wait=True)
    assert all(future.cancelled() for future in pending)
    assert not any((tmp_path / marker).exists() for marker in markers)


FORGETS_SHUTDOWN = """
import sys
import sheepdog

executor = sheepdog.Executor({"scheduler": "local", "dbfile": sys.argv[1]})
print(executor.submit(abs, -4).result(timeout=60), flush=True)
"""


def test_a_script_that_never_shuts_its_executor_down_still_exits(dbfile):
    from .test_session import run_script

    script = run_script(FORGETS_SHUTDOWN, dbfile)
    try:
        out, err = script.communicate(timeout=60)
    finally:
        script.kill()  # if it hangs at exit
    assert (script.returncode, out) == (0, "4\n"), err


def test_shutdown_waits_for_every_future(local_conf):
    def nap(x):
        import time
        time.sleep(0.5)
        return x

    executor = sheepdog.Executor(local_conf)
    futures = [executor.submit(nap, x) for x in range(3)]
    executor.shutdown()  # waits unless told not to, as concurrent.futures' executors do
    assert all(future.done() for future in futures)
    assert [future.result() for future in futures] == [0, 1, 2]


def test_leaving_the_with_block_waits_for_every_future(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        futures = [executor.submit(abs, -x) for x in range(3)]
    assert all(future.done() for future in futures)


def test_shutdown_with_cancel_futures_cancels_submits_not_yet_sent(local_conf):
    executor = sheepdog.Executor(local_conf, batch_seconds=600)
    futures = [executor.submit(abs, -x) for x in range(3)]
    executor.shutdown(cancel_futures=True)
    assert all(future.cancelled() for future in futures)


def test_leaving_the_with_block_by_an_exception_cancels_what_has_not_started(local_conf, tmp_path):
    release = tmp_path / "release"
    with pytest.raises(KeyboardInterrupt):
        with sheepdog.Executor({**local_conf, "workers": 1, "chunksize": 1}) as executor:
            blocker = executor.submit(wait_for_file, str(release))
            later = executor.submit(wait_for_file, str(tmp_path))  # same function: same job
            while not blocker.running():
                time.sleep(0.02)
            threading.Timer(0.5, release.touch).start()
            raise KeyboardInterrupt
    assert later.cancelled() and blocker.result() == "released"


def test_map_yields_in_order_and_times_out(local_conf):
    def nap(seconds):
        import time
        time.sleep(seconds)
        return seconds

    with sheepdog.Executor({**local_conf, "workers": 3}) as executor:
        assert list(executor.map(nap, [1.0, 0.0, 0.5])) == [1.0, 0.0, 0.5]
        assert list(executor.map(pow, [2, 3], [3, 2])) == [8, 9]
        results = executor.map(nap, [2.5], timeout=0.5)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        results.close()  # its futures are cancelled, if not running; this one runs on


def test_map_past_its_deadline_raises_at_once_for_a_result_not_yet_in(local_conf, tmp_path):
    release = tmp_path / "release"
    with sheepdog.Executor(local_conf) as executor:
        results = executor.map(wait_for_file, [str(release)], timeout=0.2)
        time.sleep(0.5)  # the deadline passes while the task waits for its file
        releaser = threading.Timer(0.3, release.touch)
        releaser.start()  # its result comes soon after: not waited for, past the deadline
        try:
            with pytest.raises(concurrent.futures.TimeoutError):
                next(results)
        finally:
            releaser.join()


SCALE = 1000


def scaled(x):
    return x * SCALE


def test_the_executors_namespace_overrides_the_globals_its_functions_use(local_conf):
    with sheepdog.Executor(local_conf, {"SCALE": 2}) as executor:
        assert executor.submit(scaled, 3).result(timeout=60) == 6
        assert list(executor.map(scaled, [1, 2], timeout=60)) == [2, 4]


def test_keyword_arguments_travel_with_submit_and_map_takes_its_own_by_keyword(local_conf):
    def describe(x, /, fn=None, *, scale=1):
        return (x * scale, fn)

    with sheepdog.Executor(local_conf) as executor:
        mixed = [executor.submit(describe, 2, scale=10), executor.submit(describe, 3),
                 executor.submit(describe, 4, fn="named fn")]  # fn is submit's positional-only
        assert executor.submit(sorted, [2, 1, 3], reverse=True).result(timeout=60) == [3, 2, 1]
        assert [future.result(timeout=60) for future in mixed] == [
            (20, None), (3, None), (4, "named fn")]
        assert list(executor.map(describe, [1, 2], timeout=60, chunksize=2)) == [
            (1, None), (2, None)]
    function_requests = [jobs for jobs in stored(local_conf["dbfile"]).values()]
    assert len(function_requests) == 3  # describe's mixed submits went out as one request


def test_executor_map_honours_chunksize_as_the_tasks_a_worker_takes_at_a_time(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        assert list(executor.map(abs, [-1, -2, -3], chunksize=3)) == [1, 2, 3]
        assert list(executor.map(abs, [-4])) == [4]
        with pytest.raises(ValueError, match="^chunksize must be at least 1, not 0$"):
            executor.map(abs, [-1], chunksize=0)
    storage = Storage(local_conf["dbfile"])
    try:
        assert [storage.request_config(request_id)["chunksize"]
                for request_id in storage.request_ids()] == [3, None]
    finally:
        storage.close()


def test_unserialisable_arguments_fail_at_submit(local_conf):
    with sheepdog.Executor(local_conf) as executor:  # calls are numbered from 0, in turn
        with pytest.raises(sheepdog.SerialisationError, match=r"^argument 0 \("):
            executor.submit(id, threading.Lock())
        with pytest.raises(sheepdog.SerialisationError, match=r"^argument 2 \("):
            executor.map(id, [1, threading.Lock()])
        with pytest.raises(sheepdog.SerialisationError, match=r"^argument 3 \("):
            executor.submit(id, 1, lock=threading.Lock())
        with pytest.raises(TypeError, match="^fn must be callable, not int$"):
            executor.submit(3)
        assert executor.submit(abs, -3).result(timeout=60) == 3


def test_an_executor_says_what_it_follows_and_shuts_down_unused(local_conf):
    executor = sheepdog.Executor(local_conf)
    assert repr(executor) == "<sheepdog.Executor local 0 requests followed>"
    executor.shutdown()  # nothing was ever submitted
    assert repr(executor) == "<sheepdog.Executor local 0 requests followed, shut down>"
    with sheepdog.Executor(local_conf):
        pass


def test_a_future_can_be_awaited_while_the_event_loop_runs_other_coroutines(local_conf):
    def nap(seconds):
        import time
        time.sleep(seconds)
        return "woke"

    async def main(executor):
        loop = asyncio.get_running_loop()
        beats = []

        def beat():
            beats.append(loop.time())
            loop.call_later(0.05, beat)

        beat()
        return await asyncio.wrap_future(executor.submit(nap, 1.0)), len(beats)

    with sheepdog.Executor(local_conf) as executor:
        result, ticks = asyncio.run(main(executor))
    assert result == "woke" and ticks >= 10


def test_as_completed_yields_in_finishing_order_and_raises_at_a_failed_task(local_conf):
    def nap_then_invert(seconds):
        import time
        time.sleep(seconds)
        return 1 / seconds

    dbfile = local_conf["dbfile"]
    config = {**local_conf, "workers": 3}
    request_id = sheepdog.map_async(nap_then_invert, [(1.0,), (0.5,), (2.0,)], config)
    assert list(sheepdog.as_completed(request_id, dbfile, timeout=60)) == [
        (2, 2.0), (1, 1.0), (3, 0.5)]
    failing = sheepdog.map_async(nap_then_invert, [(0.5,), (0,), (1.5,)], config)
    finished = []
    with pytest.raises(ZeroDivisionError) as raised:
        for index, result in sheepdog.as_completed(failing, dbfile, timeout=60):
            finished.append(index)
    assert raised.value.__cause__.index == 2
    every = dict(sheepdog.as_completed(failing, dbfile, timeout=60, errors="yield"))
    assert every[1] == 2.0 and every[3] == pytest.approx(1 / 1.5)
    assert isinstance(every[2], ZeroDivisionError)


def test_as_completed_times_out(local_conf):
    def nap(seconds):
        import time
        time.sleep(seconds)

    request_id = sheepdog.map_async(nap, [(30,)], local_conf)
    with pytest.raises(TimeoutError, match="0 of 1 tasks finished after 0.5 s"):
        list(sheepdog.as_completed(request_id, local_conf["dbfile"], timeout=0.5))
    sheepdog.cancel(request_id, local_conf["dbfile"])


def test_as_completed_notices_a_worker_that_died_without_a_word(local_conf):
    """No report comes, so nothing wakes the waiting: it must look at the scheduler itself."""
    def dies_whole():
        import os
        import signal
        import time

        time.sleep(0.5)  # after the start of its batch was told
        os.killpg(os.getpgrp(), signal.SIGKILL)

    request_id = sheepdog.map_async(dies_whole, [()], {**local_conf, "retries": 0})
    ((index, error),) = sheepdog.as_completed(request_id, local_conf["dbfile"], timeout=60,
                                              errors="yield")
    assert index == 1 and isinstance(error, sheepdog.TaskLost)


def test_executor_page_examples_run_on_the_local_backend(local_conf):
    page = (Path(__file__).resolve().parents[1] / "docs" / "executor.rst").read_text()
    results = run_doctest(page, local_conf)
    assert results.failed == 0 and results.attempted == 30


def test_futures_whose_workers_cannot_reach_the_caller_each_get_the_callback_error(local_conf,
                                                                                  caplog):
    caplog.set_level(logging.WARNING, logger="sheepdog.executor")
    conf = {**local_conf, "localhost": "127.0.0.2", "connect_timeout": 1, "retry_seconds": 120}
    with sheepdog.Executor(conf) as executor:
        futures = [executor.submit(abs, -x) for x in (1, 2)]
        errors = [future.exception(timeout=60) for future in futures]
    assert all(isinstance(error, sheepdog.CallbackError) for error in errors)
    assert "none has called back" in str(errors[0])
    assert f"request 1: {errors[0]}" in caplog.messages


def test_a_job_the_scheduler_refuses_is_every_futures_error(local_conf):
    with sheepdog.Executor({**local_conf, "shell": "/nonexistent/python3"}) as executor:
        futures = [executor.submit(abs, -x) for x in range(3)]
        errors = [future.exception(timeout=60) for future in futures]
    assert all(isinstance(error, sheepdog.SubmissionError) for error in errors)
    assert "/nonexistent/python3" in str(errors[0])
