import os
import random
import sqlite3
from contextlib import closing

import pytest

from sheepdog.storage import SCHEMA_VERSION, Storage, StorageError
from sheepdog.storage.payloads import PayloadFile
from sheepdog.storage.states import STATES
from sheepdog.wire.protocol import ALONE_BYTES


def make_request(storage, n=3):
    return storage.create_request(b"function", [b"args%d" % i for i in range(n)], "s3cret", "local")


def lease(storage, request_id, size):
    """A new worker pulls up to ``size`` tasks: (its name, the tasks it holds)."""
    worker = f"{storage.add_workers(request_id, 1)}.1"
    return worker, storage.pull(request_id, worker, 1, size)


def integrity_check(storage):
    """What SQLite finds checking the file of ``storage``, closed first: "ok" if sound."""
    storage.close()
    with closing(sqlite3.connect(storage.dbfile)) as raw:
        return raw.execute("PRAGMA integrity_check").fetchone()[0]


def test_request_and_tasks_are_stored_in_order(storage):
    request_id = make_request(storage)
    assert storage.n_tasks(request_id) == 3
    assert storage.function(request_id) == b"function"
    assert storage.task_arguments(request_id, [1, 3]) == {1: b"args0", 3: b"args2"}
    assert storage.task_arguments(request_id, [1, 2, 3, 4]) == {1: b"args0", 2: b"args1", 3: b"args2"}
    assert storage.task_arguments(request_id, [4]) == {}
    assert storage.request_secret(request_id) == "s3cret"


def test_first_report_wins_and_is_counted_once(storage):
    request_id = make_request(storage)
    assert storage.record_reports(request_id, [(1, False, b"first")]) == 1
    assert storage.record_reports(request_id, [(1, False, b"second")]) == 0
    assert storage.record_reports(request_id, [(1, True, "late error".encode())]) == 0
    assert not storage.record_lost(request_id, 1, "late loss")
    progress = storage.progress(request_id)
    assert (progress.done, progress.failed, progress.lost, progress.pending) == (1, 0, 0, 2)
    assert storage.results(request_id)[0] == (b"args0", "done", b"first")


def test_states_move_pending_running_then_finished(storage):
    request_id = make_request(storage)
    assert storage.record_reports(request_id, [(1, False, b"r")]) == 1
    assert lease(storage, request_id, 1)[1] == [2]
    assert storage.progress(request_id).running == 1
    assert storage.record_reports(request_id, [(2, True, "boom".encode())]) == 1
    assert storage.record_lost(request_id, 3, "killed")
    progress = storage.progress(request_id)
    assert progress.complete and (progress.done, progress.failed, progress.lost) == (1, 1, 1)
    assert storage.errors(request_id) == [(b"args1", "failed", "boom"), (b"args2", "lost", "killed")]
    assert storage.open_indices(request_id) == []


def test_results_survive_reopening(dbfile):
    first = Storage(dbfile)
    request_id = make_request(first)
    first.record_reports(request_id, [(2, False, b"kept")])
    first.close()
    assert Storage(dbfile).results(request_id)[1] == (b"args1", "done", b"kept")


def test_database_uses_wal_and_records_schema_version(storage, dbfile):
    make_request(storage)
    with sqlite3.connect(dbfile) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


VERSION_1_SCHEMA = """
CREATE TABLE requests (id INTEGER PRIMARY KEY, created REAL NOT NULL, secret TEXT NOT NULL,
    function BLOB NOT NULL, n_tasks INTEGER NOT NULL, backend TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}');
CREATE TABLE tasks (request_id INTEGER NOT NULL, idx INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', error TEXT, updated REAL, heartbeat REAL,
    kill_notice REAL, attempts INTEGER NOT NULL DEFAULT 1, retryable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, idx)) WITHOUT ROWID;
CREATE TABLE arguments (request_id INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx));
CREATE TABLE results (request_id INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx));
CREATE TABLE jobs (request_id INTEGER NOT NULL, job_id TEXT NOT NULL, submitted REAL NOT NULL,
    chunksize INTEGER NOT NULL, indices TEXT);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
INSERT INTO requests VALUES (1, 0, 's', x'00', 3, 'local', '{}');
INSERT INTO arguments VALUES (1, 1, x'a1'), (1, 2, x'a2'), (1, 3, x'a3');
INSERT INTO tasks (request_id, idx, state) VALUES (1, 1, 'done'), (1, 2, 'running'),
    (1, 3, 'pending');
INSERT INTO results VALUES (1, 1, x'b1');
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_upgraded_in_place(dbfile):
    with sqlite3.connect(dbfile) as raw:
        raw.executescript(VERSION_1_SCHEMA)
    storage = Storage(dbfile)
    progress = storage.progress(1)
    assert (progress.done, progress.running, progress.pending) == (1, 1, 1)
    assert storage.record_reports(1, [(2, False, b"r2")]) == 1
    assert [row[1:] for row in storage.results(1)] == [
        ("done", b"\xb1"), ("done", b"r2"), ("pending", None)]
    assert storage.progress(1).done == 2


def test_newer_schema_is_refused_clearly(dbfile):
    with sqlite3.connect(dbfile) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        Storage(dbfile)


def test_not_a_database_is_refused_clearly(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not sqlite " * 100)
    with pytest.raises(StorageError, match="not a usable sheepdog database"):
        Storage(path)


def test_unknown_request_is_a_key_error(storage):
    with pytest.raises(KeyError, match="request 42"):
        storage.results(42)


def test_jobs_are_recorded_per_request(storage):
    request_id = make_request(storage)
    storage.add_job(request_id, "123", launch=storage.add_workers(request_id, 2), n_workers=2)
    storage.add_job(request_id, "124", launch=storage.add_workers(request_id, 1), n_workers=1)
    assert storage.jobs(request_id) == [("123", 1, 2), ("124", 2, 1)]
    assert storage.live_workers(request_id) == [("123", 1, 1), ("123", 1, 2), ("124", 2, 1)]


def test_a_late_report_replaces_lost_and_cancelled(storage):
    request_id = make_request(storage)
    assert storage.record_lost(request_id, 1, "silent")
    assert storage.record_reports(request_id, [(1, False, b"late but real")]) == 1
    assert storage.cancel_open(request_id, "by user") == 2
    assert storage.record_reports(request_id, [(2, True, "late error".encode())]) == 1
    assert [row[1] for row in storage.results(request_id)] == ["done", "failed", "cancelled"]


def test_losing_a_requests_open_tasks_leaves_its_finished_ones_and_is_not_retried(storage):
    request_id = make_request(storage)
    storage.record_reports(request_id, [(1, False, b"kept")])
    assert storage.lose_open(request_id, "never submitted") == 2
    assert [row[1:] for row in storage.errors(request_id)] == [
        ("lost", "never submitted"), ("lost", "never submitted")]
    assert storage.requeue(request_id, max_attempts=5, failed_too=False) == []
    assert [row[1] for row in storage.results(request_id)] == ["done", "lost", "lost"]


def test_lost_tasks_are_requeued_for_a_limited_number_of_attempts(storage):
    request_id = make_request(storage)
    storage.record_lost(request_id, 1, "crash", retryable=True)
    storage.record_lost(request_id, 2, "qdel", retryable=False)
    storage.record_reports(request_id, [(3, True, "raised".encode())])
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [1]
    assert storage.progress(request_id).pending == 1
    storage.record_lost(request_id, 1, "crash again", retryable=True)
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == []
    assert storage.requeue(request_id, max_attempts=2, failed_too=True) == [3]


def test_a_silent_worker_ends_and_loses_the_tasks_it_holds(storage):
    import time

    request_id = make_request(storage, 4)
    worker, held = lease(storage, request_id, 2)
    assert storage.lose_silent(request_id, time.time() - 60, "silent") == []
    assert storage.lose_silent(request_id, time.time() + 1, "silent") == held == [1, 2]
    assert storage.pull(request_id, worker, 2, 2) == []  # an ended worker gets nothing more
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [1, 2]


def test_database_file_is_private(dbfile):
    import stat

    Storage(dbfile)
    assert stat.S_IMODE(os.stat(dbfile).st_mode) == 0o600


VERSION_2_SCHEMA = VERSION_1_SCHEMA.replace("PRAGMA user_version = 1;", """
ALTER TABLE arguments ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
CREATE TABLE task_counts (request_id INTEGER NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (request_id, state)) WITHOUT ROWID;
INSERT INTO task_counts SELECT request_id, state, count(*) FROM tasks GROUP BY request_id, state;
CREATE TRIGGER count_task_states AFTER UPDATE OF state ON tasks WHEN OLD.state != NEW.state
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE request_id = OLD.request_id AND state = OLD.state;
    INSERT INTO task_counts VALUES (NEW.request_id, NEW.state, 1)
        ON CONFLICT (request_id, state) DO UPDATE SET n = n + 1;
END;
UPDATE tasks SET state = 'failed', error = 'it raised' WHERE idx = 3;
PRAGMA user_version = 2;
""")


def test_a_version_2_database_is_upgraded_in_place_with_its_rows_kept(dbfile):
    with sqlite3.connect(dbfile) as raw:
        raw.executescript(VERSION_2_SCHEMA)
    storage = Storage(dbfile)
    with sqlite3.connect(dbfile) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
    progress = storage.progress(1)
    assert (progress.done, progress.running, progress.failed) == (1, 1, 1)
    assert storage.errors(1) == [(b"\xa3", "failed", "it raised")]
    assert storage.record_reports(1, [(2, False, b"r2")], [(2, "stdout", b"printed")]) == 1
    assert (storage.progress(1).done, storage.progress(1).running) == (2, 0)
    assert [row[1:] for row in storage.results(1)] == [
        ("done", b"\xb1"), ("done", b"r2"), ("failed", None)]
    assert storage.task_logs(1, 2)[0].output == {"stdout": "printed"}
    assert integrity_check(storage) == "ok"


VERSION_3_SCHEMA = VERSION_2_SCHEMA.replace("PRAGMA user_version = 2;", """
CREATE TABLE outputs (request_id INTEGER NOT NULL, idx INTEGER NOT NULL, stream TEXT NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (request_id, idx, stream));
UPDATE tasks SET heartbeat = 1000 WHERE idx = 2;
INSERT INTO jobs VALUES (1, '77', 0, 2, NULL);
PRAGMA user_version = 3;
""")


def test_a_version_3_database_of_static_chunks_is_upgraded_and_its_tasks_go_on(dbfile):
    """A request made before workers pulled: its rows stay, its running task is judged by
    its own old heartbeat, and what is pending is pulled by the new workers."""
    import time

    with sqlite3.connect(dbfile) as raw:
        raw.executescript(VERSION_3_SCHEMA)
        raw.execute("UPDATE tasks SET state = 'pending', error = NULL WHERE idx = 3")
    storage = Storage(dbfile)
    assert storage.jobs(1) == [("77", 0, 0)]
    assert storage.live_workers(1) == []  # the old job's array tasks are not workers
    assert storage.lose_silent(1, time.time() - 60, "silent") == [2]  # heartbeat at 1000
    assert storage.requeue(1, max_attempts=2, failed_too=False) == [2]
    worker = f"{storage.add_workers(1, 1)}.1"
    assert storage.pull(1, worker, 1, 10) == [2]  # half of what is pending: its fair share
    assert storage.pull(1, worker, 1, 10) == [2]  # asked again: the same, not more
    assert storage.pull(1, worker, 2, 10) == [3]
    assert storage.record_reports(1, [(2, False, b"r2"), (3, False, b"r3")]) == 2
    assert storage.progress(1).complete
    assert integrity_check(storage) == "ok"


def test_a_version_4_database_is_upgraded_and_keeps_the_exception_of_a_failed_task(dbfile):
    """Version 5 keeps beside a failed task's error text the exception it raised, pickled;
    a later report does not replace it, and a retry takes it away with the error."""
    from sheepdog.storage import schema

    version_4 = VERSION_3_SCHEMA.replace(
        "PRAGMA user_version = 3;", schema._UPGRADE_TO_4 + ";\nPRAGMA user_version = 4;")
    with sqlite3.connect(dbfile) as raw:
        raw.executescript(version_4)
    storage = Storage(dbfile)
    with sqlite3.connect(dbfile) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
    assert storage.tasks.task_exception(1, 3) is None  # failed before exceptions were kept
    assert storage.tasks.record_reports(1, [(2, True, b"it raised")], (), [(2, b"pickled")]) == 1
    assert storage.tasks.record_reports(1, [(2, True, b"again")], (), [(2, b"later")]) == 0
    assert storage.tasks.task_exception(1, 2) == b"pickled"
    assert storage.errors(1)[0][2] == "it raised"  # the error text is kept as it came
    assert storage.requeue(1, max_attempts=2, failed_too=True) == [2, 3]
    assert storage.tasks.task_exception(1, 2) is None
    assert integrity_check(storage) == "ok"


def test_the_transition_table_moves_only_tasks_in_the_states_it_names(storage):
    from sheepdog.storage import states

    request_id = make_request(storage, 4)
    with storage.database.write() as db:
        assert sorted(states.apply(db, "cancel", request_id, [1, 2], reason="by user")) == [1, 2]
        assert states.apply(db, "cancel", request_id, [1], reason="again") == []
        assert states.apply(db, "finish", request_id, [1]) == [1]  # a report beats cancelled
        assert states.apply(db, "lose", request_id, [1], reason="x") == []  # never a report
        assert states.apply(db, "requeue", request_id, where="1") == []  # nothing lost yet
        assert sorted(states.apply(db, "fail", request_id, {3: "boom", 4: "bang"})) == [3, 4]
    assert [error for _args, _state, error in storage.errors(request_id)] == [
        "by user", "boom", "bang"]
    every_target = {transition.target for transition in states.TRANSITIONS.values()}
    assert every_target == set(states.STATES)


def test_a_done_task_whose_result_cannot_be_loaded_becomes_failed_with_the_reason(storage):
    request_id = make_request(storage)
    storage.record_reports(request_id, [(1, False, b"result"), (2, True, b"boom")])
    reason = "its result needs a module the caller lacks: No module named 'gone'"
    assert not storage.record_unloadable(request_id, 2, reason)  # failed already: unchanged
    assert not storage.record_unloadable(request_id, 3, reason)  # pending: not done yet
    assert storage.record_unloadable(request_id, 1, reason)
    assert storage.errors(request_id) == [(b"args0", "failed", reason),
                                          (b"args1", "failed", "boom")]
    assert storage.open_indices(request_id) == [3]


def test_output_that_comes_with_an_accepted_report_is_kept_and_a_duplicate_runs_is_not(storage):
    request_id = make_request(storage)
    assert storage.record_reports(request_id, [(1, True, b"boom")],
                                  [(1, "stdout and stderr", b"first run")]) == 1
    assert storage.record_reports(request_id, [(1, False, b"late")],
                                  [(1, "stdout and stderr", b"second run")]) == 0
    storage.record_reports(request_id, [], [(1, "stdout and stderr", b"third run, alone")])
    ((_args, state, error),) = storage.errors(request_id)
    assert state == "failed" and error.startswith("boom\n\n--- the task's stdout and stderr")
    assert "first run" in error and "second run" not in error and "third" not in error


def test_output_posted_after_its_report_or_for_a_crashed_task_is_kept(storage):
    request_id = make_request(storage)
    storage.record_reports(request_id, [(1, False, b"big result, posted alone")])
    storage.record_reports(request_id, [], [(1, "stdout", b"out"), (1, "stderr", b"err"),
                                            (99, "stdout", b"no such task")])
    assert storage.task_logs(request_id, 1)[0].output == {"stdout": "out", "stderr": "err"}
    worker, held = lease(storage, request_id, 1)
    assert held == [2]
    storage.record_reports(request_id, [], [(2, "stdout and stderr", b"Fatal Python error")])
    assert storage.lose_held(request_id, worker, 1, 2, "killed by SIGSEGV")
    ((_args, state, error),) = storage.errors(request_id)
    assert state == "lost" and "killed by SIGSEGV" in error and "Fatal Python error" in error
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [2]


def test_a_crash_after_a_kill_notice_is_not_retried(storage):
    request_id = make_request(storage)
    worker, held = lease(storage, request_id, 1)
    assert storage.worker_kill_notice(request_id, worker)
    assert storage.lose_held(request_id, worker, 1, held[0], "killed by SIGKILL")
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == []


def test_a_requeued_task_leaves_its_old_output_behind(storage):
    request_id = make_request(storage)
    storage.record_reports(request_id, [(1, True, b"boom")], [(1, "stdout", b"old")])
    storage.requeue(request_id, max_attempts=2, failed_too=True)
    assert storage.task_logs(request_id, 1) == [(1, "pending", None, {})]


def test_task_logs_name_the_failed_tasks_or_the_one_asked_for(storage):
    request_id = make_request(storage)
    storage.record_reports(request_id, [(1, False, b"r"), (2, True, b"boom")],
                           [(1, "stdout", b"ok"), (2, "stderr", b"\xffnot utf-8")])
    assert storage.task_logs(request_id) == [(2, "failed", "boom", {"stderr": "\ufffdnot utf-8"})]
    assert storage.task_logs(request_id, 1) == [(1, "done", None, {"stdout": "ok"})]
    with pytest.raises(KeyError, match="no task 4: its tasks are 1 to 3"):
        storage.task_logs(request_id, 4)


def test_a_full_disk_is_named_and_what_was_stored_stays(storage, monkeypatch):
    import errno

    from sheepdog.storage import payloads
    from sheepdog.storage import DiskFullError

    request_id = make_request(storage)
    storage.record_reports(request_id, [(1, False, b"kept")])

    def full(descriptor, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(payloads, "write_all", full)
    with pytest.raises(DiskFullError, match=r"the disk that holds .*\.payloads \(mounted at /"):
        storage.record_reports(request_id, [(2, False, b"x" * (2 << 20))])
    assert [name for name in os.listdir(storage.payloads.root) if name.endswith(".part")] == []
    assert storage.results(request_id)[0][1:] == ("done", b"kept")
    assert storage.progress(request_id).pending == 2


def test_sqlite_finding_the_database_full_is_a_disk_full_error(storage):
    from sheepdog.storage import DiskFullError, StorageError

    request_id = make_request(storage)
    connection = storage.database.connection()
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")  # as full as a disk can be
    with pytest.raises(DiskFullError, match=f"holds {storage.dbfile}") as raised:
        storage.create_request(b"function", [b"x" * 100_000] * 10, "s", "local")
    assert isinstance(raised.value, StorageError)
    assert not connection.in_transaction
    connection.execute(f"PRAGMA max_page_count = {2**31}")
    assert storage.request_ids() == [request_id] and storage.progress(request_id).pending == 3


def test_a_version_5_database_is_upgraded_and_its_requests_gain_names_and_task_times(dbfile):
    """Version 6 keeps each request's function name and each task's own times; a request
    made before has no name, and its durations still come from lease to report."""
    from sheepdog.storage import schema

    version_5 = VERSION_3_SCHEMA.replace(
        "PRAGMA user_version = 3;", schema._UPGRADE_TO_4 + ";\n" + schema._UPGRADE_TO_5
        + ";\nPRAGMA user_version = 5;")
    with sqlite3.connect(dbfile) as raw:
        raw.executescript(version_5)
        raw.execute("UPDATE tasks SET started = 100, updated = 102 WHERE idx = 1")
    storage = Storage(dbfile)
    with sqlite3.connect(dbfile) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
    old, = storage.request_summaries()
    assert (old.function_name, old.function, old.executing) == (None, "?", 0)
    assert storage.dashboard_durations(1) == [2.0]  # from lease to report, as before
    new = storage.create_request(b"f", [b"a"], "s", "local", {}, ("__main__", "simulate"))
    assert storage.request_summaries(new)[0].function == "__main__.simulate"
    assert integrity_check(storage) == "ok"


def test_progress_counts_zero_in_states_no_task_is_in_and_every_ended_task_as_finished(storage):
    request_id = storage.create_request(b"f", [b"a"] * 4, "k", "local")

    def counts():
        p = storage.progress(request_id)
        return (p.pending, p.running, p.done, p.failed, p.lost, p.cancelled, p.queued,
                p.finished, p.complete)

    assert counts() == (4, 0, 0, 0, 0, 0, 0, 0, False)
    assert storage.cancel_tasks(request_id, [4], "cancelled by the user") == [4]
    worker = f"{storage.add_workers(request_id, 1)}.1"
    assert storage.pull(request_id, worker, 1, 3, least=3) == [1, 2, 3]
    storage.record_reports(request_id, [(1, False, b"r"), (2, True, b"it raised")])
    assert storage.lose_held(request_id, worker, 1, 3, "killed by SIGKILL")
    assert counts() == (0, 0, 1, 1, 1, 1, 0, 4, True)


def test_a_result_that_follows_a_failed_report_in_the_same_body_is_stored(storage):
    request_id = make_request(storage)
    assert storage.record_reports(request_id, [(1, True, b"boom"), (2, False, b"r2")]) == 2
    assert storage.results(request_id)[:2] == [(b"args0", "failed", None),
                                               (b"args1", "done", b"r2")]


def test_a_result_of_exactly_alone_bytes_is_kept_in_a_file_and_counted_by_its_size(storage):
    request_id = make_request(storage)
    result = b"r" * ALONE_BYTES
    assert storage.record_reports(request_id, [(1, False, result)]) == 1
    stored = storage.results(request_id)[0][2]
    assert isinstance(stored, PayloadFile) and stored.size == ALONE_BYTES
    # the row of a result kept in a file holds no bytes of it
    assert storage.request_sizes([request_id]) == {
        request_id: len(b"function") + 3 * len(b"args0") + ALONE_BYTES}


def test_the_errors_of_tasks_whose_arguments_are_kept_in_files_name_those_files(storage):
    large = b"a" * ALONE_BYTES
    request_id = storage.create_request(b"function", [large, b"small"], "s3cret", "local")
    storage.record_reports(request_id, [(1, True, b"boom"), (2, True, b"bang")])
    (arguments, state, error), second = storage.errors(request_id)
    assert isinstance(arguments, PayloadFile) and arguments.size == ALONE_BYTES
    assert (state, error) == ("failed", "boom") and second == (b"small", "failed", "bang")
    with open(arguments.path, "rb") as kept:
        assert kept.read() == large


def test_the_logs_of_a_task_beyond_the_request_say_which_tasks_it_has(storage):
    request_id = make_request(storage)
    with pytest.raises(KeyError) as raised:
        storage.task_logs(request_id, 4)
    assert raised.value.args == (f"request {request_id} has no task 4: its tasks are 1 to 3",)


@pytest.mark.parametrize("seed", range(6))
def test_the_count_of_each_state_matches_the_tasks_after_any_sequence_of_moves(storage, seed):
    """``progress`` reads ``task_counts``, which the moves keep; the rows are the truth."""
    rng = random.Random(seed)
    request_id = make_request(storage, n=40)
    workers = []

    def some_tasks():  # unknown indices too, and one twice at times
        chosen = rng.sample(range(1, 46), rng.randint(1, 8))
        return chosen + chosen[:rng.randint(0, 1)]

    moves = [
        lambda: workers.append(lease(storage, request_id, rng.randint(1, 6))[0]),
        lambda: storage.record_reports(request_id, [
            (index, rng.random() < 0.3, b"error" if rng.random() < 0.3 else b"result")
            for index in some_tasks()]),
        lambda: storage.record_lost(request_id, rng.randint(1, 40), "lost", rng.random() < 0.5),
        lambda: storage.cancel_tasks(request_id, some_tasks(), "cancelled"),
        lambda: storage.requeue(request_id, 3, rng.random() < 0.5),
        lambda: storage.record_unloadable(request_id, rng.randint(1, 40), "unloadable"),
        lambda: workers and storage.end_worker(request_id, rng.choice(workers), "ended",
                                               rng.random() < 0.5),
        lambda: workers and storage.release(request_id, rng.choice(workers), 1, some_tasks()),
    ]
    for _ in range(120):
        rng.choice(moves)()
        progress = storage.progress(request_id)
        rows = dict(storage.database.connection().execute(
            "SELECT state, count(*) FROM tasks WHERE request_id = ? GROUP BY state",
            (request_id,)))
        assert {state: getattr(progress, state) for state in STATES} == {
            state: rows.get(state, 0) for state in STATES}
        assert progress.finished + progress.pending + progress.running == progress.total == 40
