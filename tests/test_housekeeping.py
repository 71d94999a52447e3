"""``sheepdog rm`` and ``sheepdog prune``: whole requests removed, what that freed said,
bad input refused with nothing removed, and other processes undisturbed."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sheepdog
from sheepdog.api import default_session
from sheepdog.cli import commands as cli
from sheepdog.wire.protocol import ALONE_BYTES

ROOT = Path(__file__).resolve().parent.parent


def big(x):
    return bytes([x]) * ALONE_BYTES


def square(x):
    return x * x


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def payload_bytes(dbfile):
    root = Path(dbfile + ".payloads")
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def rows(dbfile, table, request_id):
    connection = default_session().storage(dbfile).database.connection()
    return connection.execute(f"SELECT count(*) FROM {table} WHERE request_id = ?",
                              (request_id,)).fetchone()[0]


@pytest.fixture
def two_requests(local_conf):
    """Request 1 with large results (in files), request 2 with small ones."""
    sheepdog.map(big, [(1,), (2,)], {**local_conf, "cache": True}, verbose=False)
    sheepdog.map(square, [(x,) for x in range(3)], local_conf, verbose=False)
    return local_conf["dbfile"]


def test_rm_removes_a_request_with_its_files_and_says_what_it_freed(two_requests, capsys):
    storage = default_session().storage(two_requests)
    size = storage.request_sizes()[1]
    assert size > 2 * ALONE_BYTES
    before = payload_bytes(two_requests)
    code, out, _ = run(capsys, "rm", "1", "--dbfile", two_requests)
    assert code == 0
    assert out == f"removed request 1 (2 tasks): freed {cli.records.size(size)}\n"
    assert payload_bytes(two_requests) <= before - 2 * ALONE_BYTES
    assert storage.request_ids() == [2]
    for table in ("tasks", "task_counts", "arguments", "results", "computation_keys", "workers",
                  "jobs"):
        assert rows(two_requests, table, 1) == 0, table
    assert storage.progress(2).done == 3


def test_a_result_remembered_from_a_removed_request_stays(two_requests, local_conf, capsys):
    cached = {**local_conf, "cache": True}
    assert sheepdog.map(big, [(1,)], cached, verbose=False)[0] == bytes([1]) * ALONE_BYTES
    storage = default_session().storage(two_requests)
    assert storage.progress(3).remembered == 1
    run(capsys, "rm", "1", "--dbfile", two_requests)
    assert sheepdog.get_results(3, two_requests)[0][1] == bytes([1]) * ALONE_BYTES


@pytest.mark.parametrize("argv, message", [
    (["rm", "1", "7"], "no request 7 in"),
    (["rm", "3"], "still has tasks to finish: cancel it first"),
])
def test_rm_of_an_unknown_or_open_request_removes_nothing(two_requests, capsys, argv, message):
    storage = default_session().storage(two_requests)
    storage.create_request(b"f", [b"a"], "secret", "local")  # request 3: pending
    before = (storage.request_ids(), payload_bytes(two_requests))
    code, out, err = run(capsys, *argv, "--dbfile", two_requests)
    assert code == 2 and message in err and "nothing was removed" in err and not out
    assert (storage.request_ids(), payload_bytes(two_requests)) == before


def test_prune_of_a_duration_that_is_not_one_exits_2(two_requests, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prune", "--older-than", "soon", "--dbfile", two_requests])
    assert exit_.value.code == 2
    assert "'soon' is not a duration" in capsys.readouterr().err
    assert default_session().storage(two_requests).request_ids() == [1, 2]


def age(dbfile, request_id, seconds):
    storage = default_session().storage(dbfile)
    with storage.database.write() as db:
        db.execute("UPDATE requests SET created = created - ? WHERE id = ?",
                   (seconds, request_id))


def test_prune_removes_the_finished_requests_older_than_the_duration(two_requests, capsys):
    code, out, _ = run(capsys, "prune", "--older-than", "1h", "--dbfile", two_requests)
    assert (code, out) == (0, "nothing to remove: no finished request is older than 1 h\n")
    age(two_requests, 1, 7200)
    age(two_requests, 2, 7200)
    code, out, _ = run(capsys, "prune", "--older-than", "1h", "--keep-cached",
                       "--dbfile", two_requests)
    assert code == 0 and out.startswith("removed request 2 (3 tasks): freed ")
    code, out, _ = run(capsys, "prune", "--older-than", "1h", "--dbfile", two_requests)
    assert code == 0 and out.startswith("removed request 1 (2 tasks): freed ")
    assert default_session().storage(two_requests).request_ids() == []


def test_prune_keeping_what_may_be_reused_removes_a_request_whose_tasks_were_all_remembered(
        two_requests, local_conf, capsys):
    """Its results are its source's to give: only the source is kept."""
    sheepdog.map(big, [(1,), (2,)], {**local_conf, "cache": True}, verbose=False)
    assert default_session().storage(two_requests).progress(3).remembered == 2
    for request_id in (1, 2, 3):
        age(two_requests, request_id, 7200)
    code, out, _ = run(capsys, "prune", "--older-than", "1h", "--keep-cached",
                       "--dbfile", two_requests)
    assert code == 0 and out.startswith("removed requests 2, 3 (5 tasks): freed ")
    assert default_session().storage(two_requests).request_ids() == [1]


def test_prune_keeping_what_may_be_reused_keeps_a_success_beside_a_remembered_task_undone(
        two_requests, local_conf, capsys):
    """A remembered task may leave ``done`` (its result unloadable in some process): the
    request's own success, the only one with its key, is still there to reuse."""
    sheepdog.map(big, [(1,), (3,)], {**local_conf, "cache": True}, verbose=False)
    storage = default_session().storage(two_requests)
    assert storage.progress(3).remembered == 1
    assert storage.record_unloadable(3, 1, "its result could not be loaded")
    for request_id in (1, 2, 3):
        age(two_requests, request_id, 7200)
    code, out, _ = run(capsys, "prune", "--older-than", "1h", "--keep-cached",
                       "--dbfile", two_requests)
    assert code == 0 and out.startswith("removed request 2 (3 tasks): freed ")
    assert storage.request_ids() == [1, 3]


def test_prune_keeps_requests_with_tasks_still_open(two_requests, capsys):
    storage = default_session().storage(two_requests)
    open_request = storage.create_request(b"f", [b"a"], "secret", "local")
    age(two_requests, open_request, 7200)
    run(capsys, "prune", "--older-than", "1h", "--dbfile", two_requests)
    assert storage.request_ids() == [1, 2, open_request]


def test_list_shows_each_requests_size(two_requests, capsys):
    code, out, _ = run(capsys, "list", "--dbfile", two_requests)
    first = out.splitlines()[1]
    assert code == 0 and first.endswith(" MB") and first.split()[-2] == "2.1"


READER = """
import sys, time
from sheepdog.storage import Storage
storage = Storage(sys.argv[1], read_only=True)
print("reading", flush=True)
reads = 0
while not __import__("os").path.exists(sys.argv[2]) or reads < 5:
    storage.request_summaries()
    assert [state for _a, state, _r in storage.results(2)] == ["done"] * 3
    storage.progress(2)
    reads += 1
print(reads)
"""


def test_rm_frees_room_while_another_process_reads_the_database(two_requests, tmp_path,
                                                                capsys):
    stop = tmp_path / "stop"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(READER), two_requests, str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        assert reader.stdout.readline() == "reading\n"
        before = payload_bytes(two_requests)
        assert run(capsys, "rm", "1", "--dbfile", two_requests)[0] == 0
        assert payload_bytes(two_requests) <= before - 2 * ALONE_BYTES
        stop.touch()
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err
    assert int(out) >= 5
