"""Tasks one by one: what storage says changed, cancelling pending tasks, and what a
finished task comes to (TaskError, TaskLost) for a future."""

import pickle
import time

import pytest

import sheepdog
from sheepdog.caller.outcomes import TaskError, TaskLost

ZERO_DIVISION = ('Traceback (most recent call last):\n  File "<dynamic-code>", line 2, in f\n'
                 'ZeroDivisionError: division by zero\n')


def pull(storage, request_id, count):
    """A worker takes ``count`` tasks, as a worker's pull does; their indices."""
    worker = f"{storage.add_workers(request_id, 1)}.1"
    return storage.pull(request_id, worker, 1, count)


def test_task_changes_are_the_tasks_that_moved_since_a_time(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 4, "secret", "local")
    assert storage.task_changes(request_id, 0.0, 1, False) == []
    assert pull(storage, request_id, 2) == [1, 2]
    assert pull(storage, request_id, 1) == [3]
    storage.record_reports(request_id, [(1, False, b"one"), (2, True, ZERO_DIVISION.encode())],
                           outputs=[(2, "stdout", b"printed")])
    changes = {change.task: change for change in storage.task_changes(request_id, 0.0, 1, False)}
    assert {task: change.state for task, change in changes.items()} == {
        1: "done", 2: "failed", 3: "running"}
    assert changes[1].result == b"one" and changes[2].error == ZERO_DIVISION
    assert changes[2].output == {"stdout": "printed"}
    later = time.time() + 60
    assert storage.task_changes(request_id, later, 1, False) == []


def test_a_lost_task_with_attempts_left_is_marked_to_go_again(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 2, "secret", "local")
    pull(storage, request_id, 2)
    storage.record_lost(request_id, 1, "its worker died", retryable=True)
    storage.record_lost(request_id, 2, "removed on purpose", retryable=False)
    again = {change.task: change.again
             for change in storage.task_changes(request_id, 0.0, 2, False)}
    assert again == {1: True, 2: False}
    assert all(not change.again for change in storage.task_changes(request_id, 0.0, 1, False))


def test_cancel_tasks_moves_only_pending_tasks_which_are_then_never_handed_out(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 3, "secret", "local")
    assert pull(storage, request_id, 1) == [1]
    assert sorted(storage.cancel_tasks(request_id, [1, 2], "its future was cancelled")) == [2]
    assert pull(storage, request_id, 5) == [3]
    assert storage.progress(request_id).cancelled == 1


def test_task_error_rebuilds_a_builtin_exception_and_keeps_the_traceback():
    error = TaskError(2, ZERO_DIVISION, {"stderr": "a warning"})
    assert error.exception_type == "ZeroDivisionError"
    assert isinstance(error.exception, ZeroDivisionError)
    assert str(error.exception) == "division by zero" and error.__cause__ is error.exception
    assert str(error).startswith("task 2 raised ZeroDivisionError on its worker; its traceback:")
    assert "in f" in str(error) and "a warning" in str(error)


@pytest.mark.parametrize("last_line, name", [
    ("mymodule.MyError: mine", "mymodule.MyError"),
    ("f.<locals>.Local: local", "f.<locals>.Local"),
    ("UnicodeDecodeError: 'utf-8' codec can't decode", "UnicodeDecodeError"),  # 5 arguments
])
def test_task_error_names_an_exception_it_cannot_rebuild(last_line, name):
    error = TaskError(1, f"Traceback (most recent call last):\n  File \"x\", line 1\n{last_line}")
    assert error.exception_type == name and error.exception is None and error.__cause__ is None


def test_task_error_of_a_text_without_a_traceback_names_no_exception():
    error = TaskError(1, "the result arrived but could not be loaded in this process: X: y")
    assert (error.exception_type, error.exception) == (None, None)
    assert "task 1 raised an error on its worker" in str(error)


def test_task_error_and_task_lost_survive_pickling():
    error = pickle.loads(pickle.dumps(TaskError(3, ZERO_DIVISION, {"stdout": "out"})))
    assert (error.index, error.output, error.exception_type) == (3, {"stdout": "out"},
                                                                  "ZeroDivisionError")
    lost = pickle.loads(pickle.dumps(TaskLost(4, "killed by SIGKILL")))
    assert (lost.index, lost.reason, str(lost)) == (4, "killed by SIGKILL",
                                                   "task 4 was lost: killed by SIGKILL")


def test_a_lost_task_that_is_retried_settles_its_future_with_the_retry(local_conf, tmp_path):
    marker = str(tmp_path / "first-attempt")

    def crash_once():
        import os
        import signal
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return "second attempt"

    with sheepdog.Executor({**local_conf, "retries": 1}) as executor:
        assert executor.submit(crash_once).result(timeout=60) == "second attempt"


def test_as_completed_yields_a_retried_task_once_with_its_last_attempt(local_conf, tmp_path):
    marker = str(tmp_path / "first-attempt")

    def crash_once(x):
        import os
        import signal
        if x == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    request_id = sheepdog.map_async(crash_once, [(1,), (2,), (3,)], {**local_conf, "retries": 1})
    finished = list(sheepdog.as_completed(request_id, local_conf["dbfile"], timeout=60))
    assert sorted(finished) == [(1, 1), (2, 2), (3, 3)]


def test_as_completed_names_the_two_ways_to_take_errors(storage, dbfile):
    request_id = storage.create_request(b"f", [b"a"], "k", "local")
    with pytest.raises(ValueError, match=r"^errors must be 'raise' or 'yield', not 'ignore'$"):
        next(sheepdog.as_completed(request_id, dbfile, errors="ignore"))
