"""What ``sheepdog list`` reads instead of every task: each request's size, kept as its rows
are written and removed, and when its last task finished, kept by the count of moves. Both
must equal what counting the rows gives, after every kind of write, in any process, and in
a database made before they were kept."""

import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

import sheepdog
from sheepdog.api import default_session
from sheepdog.storage import Storage, schema
from sheepdog.wire.protocol import ALONE_BYTES

ROOT = Path(__file__).resolve().parent.parent
#: The tables whose ``data`` is a request's payload in the database.
PAYLOAD_TABLES = ("arguments", "results", "outputs", "exceptions")


def counted(dbfile, request_id):
    """The request's bytes counted row by row (and file by file), as ``list`` once did."""
    with closing(sqlite3.connect(dbfile)) as raw:
        size = raw.execute("SELECT length(function) FROM requests WHERE id = ?",
                           (request_id,)).fetchone()[0]
        for table in PAYLOAD_TABLES:
            size += raw.execute(f"SELECT coalesce(sum(length(data)), 0) FROM {table} "
                                f"WHERE request_id = ?", (request_id,)).fetchone()[0]
    files = Path(dbfile + ".payloads", str(request_id))
    return size + sum(path.stat().st_size for path in files.glob("*") if path.is_file())


def last_finish(dbfile, request_id):
    """When the request's last finished task finished, read from every task."""
    with closing(sqlite3.connect(dbfile)) as raw:
        return raw.execute("SELECT max(updated) FROM tasks WHERE request_id = ? AND state IN "
                           "('done', 'failed', 'lost', 'cancelled')", (request_id,)).fetchone()[0]


def kept_sizes_are_counted_sizes(storage):
    sizes = storage.request_sizes()
    assert sizes == {rid: counted(storage.dbfile, rid) for rid in storage.request_ids()}
    return sizes


def chatty(x):
    print("x" * x)
    if x % 3 == 0:
        raise ValueError(f"bad input {x}")
    return bytes(ALONE_BYTES) if x == 4 else x


def test_list_size_is_every_row_and_file_of_a_map_with_output_failures_and_files(local_conf):
    sheepdog.map(chatty, [(x,) for x in range(1, 8)], {**local_conf, "cache": True},
                 verbose=False)
    sheepdog.map(chatty, [(x,) for x in range(1, 10)], {**local_conf, "cache": True},
                 verbose=False)  # most results copied from the first
    storage = default_session().storage(local_conf["dbfile"])
    assert storage.progress(2).remembered == 5
    sizes = kept_sizes_are_counted_sizes(storage)
    assert sizes[1] > ALONE_BYTES and sizes[2] > ALONE_BYTES
    listed = subprocess.run(  # another process reads what this one wrote
        [sys.executable, "-m", "sheepdog", "list", "--json", "--dbfile", local_conf["dbfile"]],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)}, check=True)
    assert [request["bytes"] for request in json.loads(listed.stdout)["requests"]] == [
        sizes[1], sizes[2]]


def lease_all(storage, request_id):
    worker = f"{storage.add_workers(request_id, 1)}.1"
    return storage.pull(request_id, worker, 1, 100, least=100)


def test_sizes_follow_replaced_and_ignored_output_and_another_attempt(storage):
    first = storage.create_request(b"f" * 10, [b"a" * 7, b"b" * 9, b"c" * 11], "s", "local")
    other = storage.create_request(b"g", [b"z"], "s", "local")
    assert lease_all(storage, first) == [1, 2, 3]
    storage.record_reports(first, [], [(1, "stdout", b"crashed"), (2, "stderr", b"e" * 40)])
    kept_sizes_are_counted_sizes(storage)
    storage.record_reports(  # 1's report replaces its output; 3's second output is ignored
        first, [(1, False, b"r" * 30), (3, True, b"Traceback: boom")],
        [(1, "stdout", b"o" * 100), (3, "stdout", b"first words")], [(3, b"pickled")])
    storage.record_reports(first, [], [(3, "stdout", b"later words, longer")])
    kept_sizes_are_counted_sizes(storage)
    storage.record_reports(first, [(2, False, b"two")])
    assert storage.record_unloadable(first, 2, "no module named nowhere")  # keeps its result
    assert storage.requeue(first, max_attempts=2, failed_too=True) == [2, 3]
    sizes = kept_sizes_are_counted_sizes(storage)
    with closing(sqlite3.connect(storage.dbfile)) as raw:  # another attempt starts clean
        assert raw.execute("SELECT count(*) FROM results WHERE request_id = ? AND idx = 2",
                           (first,)).fetchone()[0] == 0
    assert lease_all(storage, first) == [2, 3]
    storage.record_reports(first, [(2, False, b"2" * 50), (3, False, b"3")])
    assert kept_sizes_are_counted_sizes(storage)[other] == sizes[other] == 2


def test_rm_takes_a_requests_size_away_and_leaves_the_others(storage):
    first = storage.create_request(b"f", [b"a" * 100], "s", "local")
    second = storage.create_request(b"g", [b"b" * 5], "s", "local")
    for request_id in (first, second):
        lease_all(storage, request_id)
        storage.record_reports(request_id, [(1, False, b"result")], [(1, "stdout", b"out")])
    sizes = kept_sizes_are_counted_sizes(storage)
    assert storage.remove_requests([first]).bytes == sizes[first]
    assert kept_sizes_are_counted_sizes(storage) == {second: sizes[second]}
    with closing(sqlite3.connect(storage.dbfile)) as raw:
        assert raw.execute("SELECT request_id FROM request_bytes").fetchall() == [(second,)]


def test_a_requests_end_is_its_last_finish_through_another_attempt(storage):
    request_id = storage.create_request(b"f", [b"a", b"b", b"c"], "s", "local")
    lease_all(storage, request_id)
    storage.record_reports(request_id, [(1, False, b"1"), (3, True, b"boom")])
    assert storage.request_summaries(request_id)[0].ended is None  # 2 is still running
    assert storage.record_lost(request_id, 2, "its worker died", retryable=True)
    assert storage.request_summaries(request_id)[0].ended == last_finish(storage.dbfile,
                                                                         request_id)
    time.sleep(0.01)  # a later finish has a later time, however coarse the clock
    assert storage.requeue(request_id, max_attempts=2, failed_too=False) == [2]
    lease_all(storage, request_id)
    storage.record_reports(request_id, [(2, False, b"2")])
    ended = storage.request_summaries(request_id)[0].ended
    assert ended == last_finish(storage.dbfile, request_id)
    with closing(sqlite3.connect(storage.dbfile)) as raw:
        assert raw.execute("SELECT updated FROM tasks WHERE request_id = ? AND idx = 2",
                           (request_id,)).fetchone()[0] == ended


def version_7_database(dbfile):
    """A database as sheepdog of schema version 7 left it: two requests, one finished
    (with output and an exception; its last task done after its failed one), one still
    running."""
    with closing(sqlite3.connect(dbfile)) as raw:
        for script in schema._MIGRATIONS[:7]:
            raw.executescript(script + ";")
        raw.executescript("""
        INSERT INTO requests (id, created, secret, function, n_tasks, backend)
            VALUES (1, 100.0, 's', x'00112233', 3, 'local'), (2, 200.0, 's', x'44', 2, 'local');
        INSERT INTO arguments (request_id, idx, data) VALUES
            (1, 1, x'aa'), (1, 2, x'bbbb'), (1, 3, x'ee'), (2, 1, x'cc'), (2, 2, x'dd');
        INSERT INTO tasks (request_id, idx, state, updated, error) VALUES
            (1, 1, 'done', 150.0, NULL), (1, 2, 'failed', 170.0, 'Traceback: boom'),
            (1, 3, 'done', 180.0, NULL),
            (2, 1, 'done', 250.0, NULL), (2, 2, 'running', 240.0, NULL);
        INSERT INTO task_counts VALUES (1, 'done', 2), (1, 'failed', 1),
            (2, 'done', 1), (2, 'running', 1);
        INSERT INTO results (request_id, idx, data) VALUES (1, 1, x'0102030405'),
            (1, 3, x'07'), (2, 1, x'06');
        INSERT INTO outputs VALUES (1, 2, 'stderr', x'6c61737420776f726473');
        INSERT INTO exceptions VALUES (1, 2, x'ffff');
        PRAGMA user_version = 7;
        """)


def test_a_version_7_database_is_given_its_sizes_and_ends_and_keeps_them(dbfile):
    version_7_database(dbfile)
    storage = Storage(dbfile)
    assert kept_sizes_are_counted_sizes(storage) == {1: 4 + 4 + 6 + 10 + 2, 2: 1 + 2 + 1}
    assert [s.ended for s in storage.request_summaries()] == [180.0, None]
    storage.record_reports(2, [(2, True, b"late")], [(2, "stdout", b"words")], [(2, b"exc")])
    kept_sizes_are_counted_sizes(storage)
    assert storage.request_summaries(2)[0].ended == last_finish(dbfile, 2) > 250.0


def test_a_request_all_remembered_ends_when_it_was_made(local_conf):
    sheepdog.map(chatty, [(1,), (2,)], {**local_conf, "cache": True}, verbose=False)
    sheepdog.map(chatty, [(1,), (2,)], {**local_conf, "cache": True}, verbose=False)
    storage = default_session().storage(local_conf["dbfile"])
    summary = storage.request_summaries(2)[0]
    assert summary.remembered == 2
    assert summary.ended == pytest.approx(last_finish(local_conf["dbfile"], 2), abs=1.0)
    kept_sizes_are_counted_sizes(storage)
