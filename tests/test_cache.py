"""The ``cache`` config key, end to end on the local backend: remembered tasks get their
results without running, only the others are submitted, and only successes are
remembered."""

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

import sheepdog
from sheepdog.api import default_session
from sheepdog.storage import Storage, schema
from sheepdog.storage.memo import Computation
from sheepdog.storage.payloads import payload_bytes
from sheepdog.storage.states import DONE
from sheepdog.wire.protocol import ALONE_BYTES

ROOT = Path(__file__).resolve().parent.parent


def square(x):
    return x * x


def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def reads_file(path):
    with open(path) as stream:
        return stream.read()


def big(x):
    return bytes([x]) * ALONE_BYTES


def storage_of(dbfile):
    return default_session().storage(dbfile)


def computed(dbfile, request_id):
    """How many of the request's tasks a worker took (the rest were remembered)."""
    return sum(task.started is not None
               for task in storage_of(dbfile).dashboard_tasks(request_id))


@pytest.fixture
def cached(local_conf):
    return {**local_conf, "cache": True}


def test_a_map_of_remembered_tasks_submits_no_job(cached):
    assert sheepdog.map(square, [(x,) for x in range(5)], cached, verbose=False) == [
        0, 1, 4, 9, 16]
    rid = sheepdog.map_async(square, [(x,) for x in range(5)], cached)
    storage = storage_of(cached["dbfile"])
    assert storage.jobs(rid) == []
    assert storage.progress(rid).remembered == 5 and storage.progress(rid).complete
    assert [result for _args, result in sheepdog.get_results(rid, cached["dbfile"])] == [
        0, 1, 4, 9, 16]


def test_only_the_tasks_not_remembered_are_submitted(cached):
    sheepdog.map(square, [(x,) for x in range(4)], cached, verbose=False)
    assert sheepdog.map(square, [(x,) for x in range(8)], cached, verbose=False) == [
        x * x for x in range(8)]
    storage = storage_of(cached["dbfile"])
    assert storage.progress(2).remembered == 4
    assert computed(cached["dbfile"], 2) == 4  # the workers received the other four


def test_without_the_cache_key_nothing_is_remembered(local_conf, cached):
    sheepdog.map(square, [(1,), (2,)], cached, verbose=False)
    sheepdog.map(square, [(1,), (2,)], local_conf, verbose=False)
    assert storage_of(local_conf["dbfile"]).progress(2).remembered == 0
    assert computed(local_conf["dbfile"], 2) == 2


def test_failed_tasks_are_computed_again(cached):
    sheepdog.map(fails_on_three, [(x,) for x in range(5)], cached, verbose=False)
    assert sheepdog.map(fails_on_three, [(x,) for x in range(5)], cached, verbose=False) == [
        0, 1, 2, None, 4]
    assert storage_of(cached["dbfile"]).progress(2).remembered == 4
    assert computed(cached["dbfile"], 2) == 1


def test_lost_and_cancelled_tasks_are_computed_again(cached):
    """Tasks of a request whose job never ran: lost or cancelled, never done."""
    storage = storage_of(cached["dbfile"])
    session = default_session()
    config, _origins = sheepdog.config.resolve_with_origins(cached)
    key = sheepdog.caller.remembering.function_key(config, square, None)
    blobs = [sheepdog.serialisation.dumps_argument(i, (x,)) for i, x in enumerate(range(3))]
    recalled = sheepdog.caller.remembering.recall(storage, config, key, blobs)
    first = storage.create_request(sheepdog.serialisation.dumps_function(square), blobs,
                                   "secret", "local", computation=recalled.computation)
    storage.record_lost(first, 1, "its worker died")
    storage.cancel_tasks(first, [2], "cancelled by the user")
    storage.record_reports(first, [(3, False, sheepdog.serialisation.dumps(4))])
    request = session.submit(square, [(x,) for x in range(3)], cached)
    request.wait(timeout=120)
    assert request.values() == [0, 1, 4]
    assert storage.progress(request.id).remembered == 1
    assert computed(cached["dbfile"], request.id) == 2


def test_a_result_found_unloadable_before_is_not_remembered(cached):
    """Its task became failed, though its stored bytes are still there."""
    sheepdog.map(square, [(x,) for x in range(3)], cached, verbose=False)
    storage = storage_of(cached["dbfile"])
    storage.record_unloadable(1, 2, "the result could not be loaded")
    assert sheepdog.map(square, [(x,) for x in range(3)], cached, verbose=False) == [0, 1, 4]
    assert storage.progress(2).remembered == 2
    assert computed(cached["dbfile"], 2) == 1


def test_refresh_computes_again_and_its_results_are_remembered_after(cached, tmp_path):
    """What the key cannot see (a file the function reads) is picked up by "refresh"."""
    source = tmp_path / "input.txt"
    source.write_text("old")
    arguments = [(str(source),)]
    assert sheepdog.map(reads_file, arguments, cached, verbose=False) == ["old"]
    source.write_text("new")
    assert sheepdog.map(reads_file, arguments, cached, verbose=False) == ["old"]
    assert sheepdog.map(reads_file, arguments, {**cached, "cache": "refresh"},
                        verbose=False) == ["new"]
    assert computed(cached["dbfile"], 3) == 1
    assert sheepdog.map(reads_file, arguments, cached, verbose=False) == ["new"]
    assert storage_of(cached["dbfile"]).progress(4).remembered == 1


def test_a_remembered_result_that_cannot_be_loaded_is_computed_again(cached):
    sheepdog.map(square, [(x,) for x in range(3)], cached, verbose=False)
    storage = storage_of(cached["dbfile"])
    with storage.database.write() as db:
        db.execute("UPDATE results SET data = x'80' WHERE request_id = 1 AND idx = 2")
    assert sheepdog.map(square, [(x,) for x in range(3)], cached, verbose=False) == [0, 1, 4]
    assert storage.progress(2).remembered == 2
    assert computed(cached["dbfile"], 2) == 1


def test_a_large_remembered_result_in_a_file_is_reused(cached):
    first = sheepdog.map(big, [(1,), (2,)], cached, verbose=False)
    again = sheepdog.map(big, [(1,), (2,)], cached, verbose=False)
    assert first == again and len(again[0]) == ALONE_BYTES
    assert storage_of(cached["dbfile"]).progress(2).remembered == 2


def test_an_executor_future_of_a_remembered_task_resolves_without_a_job(cached):
    sheepdog.map(square, [(7,)], cached, verbose=False)
    with sheepdog.Executor(cached) as executor:
        future = executor.submit(square, 7)
        assert future.result(timeout=60) == 49
    storage = storage_of(cached["dbfile"])
    assert storage.request_ids() == [1, 2] and storage.jobs(2) == []


def test_a_function_whose_key_cannot_be_made_is_computed_with_a_warning(cached, caplog,
                                                                         monkeypatch):
    def cannot(function, namespace):
        raise sheepdog.caller.fingerprint.FingerprintError("a value that cannot be read")

    sheepdog.map(square, [(1,)], cached, verbose=False)
    monkeypatch.setattr(sheepdog.caller.fingerprint, "function_key", cannot)
    with caplog.at_level(logging.WARNING, logger="sheepdog.caller.remembering"):
        assert sheepdog.map(square, [(1,)], cached, verbose=False) == [1]
    assert "are not remembered" in caplog.text and "cannot be read" in caplog.text
    assert computed(cached["dbfile"], 2) == 1


def test_a_cache_value_that_is_not_true_false_or_refresh_is_refused(cached):
    with pytest.raises(ValueError, match="config key 'cache' is 'yes please'"):
        sheepdog.map(square, [(1,)], {**cached, "cache": "yes please"}, verbose=False)
    assert not os.path.exists(cached["dbfile"])


SCRIPT = """
import sys
import sheepdog
import helpers

def f(x):
    return helpers.twice(x) + 1

conf = {"scheduler": "local", "dbfile": sys.argv[1], "cache": True}
print(sheepdog.map(f, [(x,) for x in range(6)], conf, verbose=False))
"""


def run_script(tmp_path, helpers):
    (tmp_path / "helpers.py").write_text(textwrap.dedent(helpers).lstrip())
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT).lstrip())
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("SHEEPDOG_")}
    environment.update(PYTHONPATH=str(ROOT), PYTHONHASHSEED="random")
    completed = subprocess.run([sys.executable, "script.py", str(tmp_path / "db.sqlite")],
                               cwd=tmp_path, env=environment, capture_output=True, text=True,
                               timeout=180)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_an_unchanged_script_run_again_in_a_new_process_submits_no_job(tmp_path):
    helpers = "def twice(x):\n    return 2 * x\n"
    first = run_script(tmp_path, helpers)
    assert run_script(tmp_path, helpers) == first == str([2 * x + 1 for x in range(6)])
    storage = default_session().storage(str(tmp_path / "db.sqlite"))
    assert [len(storage.jobs(rid)) for rid in storage.request_ids()] == [1, 0]
    assert storage.progress(2).remembered == 6
    assert [state for _a, state, _r in storage.results(2)] == [DONE] * 6


def test_an_edited_helper_in_another_module_is_computed_again(tmp_path):
    run_script(tmp_path, "def twice(x):\n    return 2 * x\n")
    assert run_script(tmp_path, "def twice(x):\n    return x + x + 1\n") == str(
        [2 * x + 2 for x in range(6)])
    storage = default_session().storage(str(tmp_path / "db.sqlite"))
    assert storage.progress(2).remembered == 0 and len(storage.jobs(2)) == 1


def test_remembered_tasks_count_apart_in_status_list_and_the_dashboard(cached, capsys):
    from sheepdog.cli import commands as cli
    from sheepdog.dashboard.app import create_app

    sheepdog.map(square, [(x,) for x in range(3)], cached, verbose=False)
    sheepdog.map(square, [(x,) for x in range(4)], cached, verbose=False)
    assert cli.main(["status", "2", "--dbfile", cached["dbfile"]]) == 0
    assert "4/4 finished, 3 remembered" in capsys.readouterr().out
    cli.main(["list", "--json", "--dbfile", cached["dbfile"]])
    listed = json.loads(capsys.readouterr().out)["requests"]
    assert [request["remembered"] for request in listed] == [0, 3]
    token = "a-token-of-32-characters-or-so!!"
    client = create_app(storage_of(cached["dbfile"]), token).test_client()
    detail = client.get("/dashboard/api/requests/2",
                        headers={"Authorization": f"Bearer {token}"}).get_json()
    assert detail["remembered"] == 3


def test_a_cache_value_set_in_the_environment_is_checked_by_the_command_too(capsys,
                                                                             monkeypatch):
    from sheepdog.cli import commands as cli

    monkeypatch.setenv("SHEEPDOG_CACHE", "yes please")
    assert cli.main(["config"]) == 2
    assert "SHEEPDOG_CACHE: config key 'cache' is 'yes please'" in capsys.readouterr().err


def keyed_request(storage, keys, results, digest=b"f" * 32, chosen=()):
    """A request with a computation key per task; ``results`` maps task index -> result
    of those that succeeded (the others fail)."""
    request_id = storage.create_request(b"f", [b"a"] * len(keys), "secret", "local",
                                        computation=Computation(digest, keys, list(chosen)))
    storage.record_reports(request_id, [
        (index, False, sheepdog.serialisation.dumps(results[index])) if index in results
        else (index, True, b"ValueError: no") for index in range(1, len(keys) + 1)])
    return request_id


def test_a_key_alike_in_its_first_bytes_only_is_not_remembered(storage):
    """Keys are kept in buckets by their first bits; the whole digest must match."""
    key, alike = b"k" * 32, b"k" * 8 + b"x" * 24
    keyed_request(storage, [key], {1: 1})
    assert [found.task for found in storage.earlier_results(b"f" * 32, [alike, key])] == [2]


def test_the_newest_success_of_a_key_is_found_and_failures_never(storage):
    keys = [bytes([n]) * 32 for n in range(4)]
    older = keyed_request(storage, keys[:3], {1: "old one", 2: "old two"})
    newer = keyed_request(storage, keys[1:], {1: "new one"})  # keys[1] again; the rest fail
    found = {result.task: (result.source_request, result.source_index,
                           sheepdog.serialisation.loads(result.result))
             for result in storage.earlier_results(b"f" * 32, [*keys, keys[1]])}
    assert found == {1: (older, 1, "old one"), 2: (newer, 1, "new one"),
                     5: (newer, 1, "new one")}
    # one key: its bucket alone is asked of each source, rather than a source read whole
    assert [(result.task, result.source_request) for result in storage.earlier_results(
        b"f" * 32, [keys[1]])] == [(1, newer)]
    storage.record_unloadable(older, 1, "its result could not be loaded")  # keeps its bytes
    assert [result.task for result in storage.earlier_results(b"f" * 32, keys)] == [2]
    assert storage.earlier_results(b"g" * 32, keys) == []  # another function has none


def test_results_remembered_from_several_requests_land_on_their_own_tasks(storage):
    """Results are copied in runs of consecutive sources; a run must end where its
    sources stop following each other, and each task get its own source's result."""
    digest, keys = b"f" * 32, [bytes([n]) * 32 for n in range(10)]
    keyed_request(storage, keys[:6], {i: f"first {i}" for i in range(1, 7)})
    keyed_request(storage, keys[6:], {i: f"second {i}" for i in range(1, 5)})
    wanted = [keys[6], keys[0], keys[1], keys[3], b"n" * 32, keys[4], keys[5], keys[7]]
    chosen = storage.earlier_results(digest, wanted)
    third = storage.create_request(b"f", [b"a"] * len(wanted), "secret", "local",
                                   computation=Computation(digest, wanted, chosen))
    assert [(state, None if result is None else sheepdog.serialisation.loads(result))
            for _arguments, state, result in storage.results(third)] == [
        (DONE, "second 1"), (DONE, "first 1"), (DONE, "first 2"), (DONE, "first 4"),
        ("pending", None), (DONE, "first 5"), (DONE, "first 6"), (DONE, "second 2")]


def test_a_result_whose_request_was_removed_meanwhile_is_computed(storage):
    """``sheepdog rm`` in another process between finding a result and creating the
    request that reuses it: the task is computed, never done without a result."""
    digest, keys = b"f" * 32, [b"k" * 32, b"l" * 32]
    removed = keyed_request(storage, keys[:1], {1: "gone"})
    keyed_request(storage, keys[1:], {1: "kept"})
    chosen = storage.earlier_results(digest, keys)
    storage.remove_requests([removed])
    request_id = storage.create_request(b"f", [b"a", b"b"], "secret", "local",
                                        computation=Computation(digest, keys, chosen))
    assert [state for _arguments, state, _result in storage.results(request_id)] == [
        "pending", DONE]
    assert storage.remembered(request_id) == 1


def test_remembered_tasks_are_created_done_and_counted_once(storage):
    """No worker may ever see a remembered task pending, and the counts people read
    (kept by a trigger on changes of state) must match the tasks' own states."""
    digest = b"f" * 32
    keys = [bytes([n]) * 32 for n in range(3)]
    first = storage.create_request(b"f", [b"a", b"b", b"c"], "secret", "local",
                                   computation=Computation(digest, keys, []))
    storage.record_reports(first, [(2, False, sheepdog.serialisation.dumps("two"))])
    chosen = storage.earlier_results(digest, keys)
    second = storage.create_request(b"f", [b"a", b"b", b"c"], "secret", "local",
                                    computation=Computation(digest, keys, chosen))
    progress = storage.progress(second)
    assert (progress.remembered, progress.done, progress.pending) == (1, 1, 2)
    assert [state for _args, state, _result in storage.results(second)] == [
        "pending", DONE, "pending"]
    assert storage.request_ids() == [first, second]
    connection = storage.database.connection()
    assert connection.execute(
        "SELECT state, n FROM task_counts WHERE request_id = ? AND n > 0 ORDER BY state",
        (second,)).fetchall() == connection.execute(
        "SELECT state, count(*) FROM tasks WHERE request_id = ? GROUP BY state ORDER BY state",
        (second,)).fetchall()


def test_keys_a_version_8_database_kept_a_row_each_are_still_found_after_its_upgrade(dbfile):
    """Schema 9 keeps a request's keys in buckets; an older file's rows move into them."""
    keys = [bytes([n]) * 32 for n in range(3)]
    with closing(sqlite3.connect(dbfile)) as raw:
        for script in schema._MIGRATIONS[:8]:
            raw.executescript(script + ";")
        raw.executescript("""
        INSERT INTO requests (id, created, secret, function, n_tasks, backend, computation)
            VALUES (1, 100.0, 's', x'00', 3, 'local', zeroblob(32));
        INSERT INTO arguments (request_id, idx, data) VALUES (1, 1, x'a1'), (1, 2, x'a2'),
            (1, 3, x'a3');
        INSERT INTO tasks (request_id, idx, state) VALUES (1, 1, 'done'), (1, 2, 'failed'),
            (1, 3, 'done');
        INSERT INTO results (request_id, idx, data) VALUES (1, 1, x'b1'), (1, 3, x'b3');
        PRAGMA user_version = 8;
        """)
        raw.executemany("INSERT INTO computations VALUES (1, ?, ?, ?)",
                        [(index, index, key) for index, key in enumerate(keys, 1)])
        raw.commit()
    storage = Storage(dbfile)
    found = storage.earlier_results(bytes(32), [keys[2], keys[1], keys[0]])
    assert [(result.task, result.source_index, result.result) for result in found] == [
        (1, 3, b"\xb3"), (3, 1, b"\xb1")]


def test_a_result_whose_newest_source_was_removed_meanwhile_is_never_another_tasks(storage):
    """``sheepdog rm`` of the newest source between finding its result and creating the
    request: the new request takes the removed one's id, and must not read its own rows
    as the source's (task 2 would be given task 1's result, whose key is another)."""
    digest, keys = b"f" * 32, [b"k" * 32, b"l" * 32]
    keyed_request(storage, keys[:1], {1: "kept"})
    removed = keyed_request(storage, keys[1:], {1: "gone"})
    chosen = storage.earlier_results(digest, keys)
    storage.remove_requests([removed])
    request_id = storage.create_request(b"f", [b"a", b"b"], "secret", "local",
                                        computation=Computation(digest, keys, chosen))
    assert [(state, None if result is None else sheepdog.serialisation.loads(result))
            for _arguments, state, result in storage.results(request_id)] == [
        (DONE, "kept"), ("pending", None)]
    progress = storage.progress(request_id)
    assert (progress.remembered, progress.done, progress.pending) == (1, 1, 1)


def lookup_steps(storage, digest, keys):
    """How many thousand SQLite virtual machine steps ``earlier_results`` takes."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    connection = storage.database.connection()
    connection.set_progress_handler(count, 1000)
    try:
        storage.earlier_results(digest, keys)
    finally:
        connection.set_progress_handler(None, 1000)
    return steps[0]


def test_a_lookup_in_a_history_of_many_small_requests_costs_about_what_one_request_does(
        storage):
    """Keys are in buckets per request: a lookup must not probe every request for every
    bucket of its keys (500 one-task requests and 2,000 new keys were 800,000 probes for
    500 rows), but cost about what the same keys kept by one request cost."""
    many, one = b"m" * 32, b"o" * 32
    keys = [hashlib.sha256(str(n).encode()).digest() for n in range(2500)]
    for key in keys[:500]:
        storage.create_request(b"f", [b"a"], "secret", "local",
                               computation=Computation(many, [key], []))
    storage.create_request(b"f", [b"a"] * 500, "secret", "local",
                           computation=Computation(one, keys[:500], []))
    new_keys = keys[500:]
    assert lookup_steps(storage, many, new_keys) < 5 * lookup_steps(storage, one, new_keys) + 50


def test_pruning_what_may_be_reused_asks_the_keyed_tasks_once_a_given_task_left_done(storage):
    """A request whose given task became unloadable holds no success of its own when the
    task it computed failed: prune ``--keep-cached`` may remove it, not its source."""
    digest, keys = b"f" * 32, [bytes([n]) * 32 for n in range(3)]
    source = keyed_request(storage, keys[:2], {1: "a", 2: "b"})
    given = keyed_request(storage, keys, {}, chosen=storage.earlier_results(digest, keys))
    assert storage.record_unloadable(given, 1, "its result could not be loaded")
    progress = storage.progress(given)
    assert (progress.done, progress.remembered, progress.failed) == (1, 2, 2)
    assert storage.removable_before(time.time() + 1, keep_cached=True) == [given]
    assert source in storage.removable_before(time.time() + 1, keep_cached=False)


def test_a_key_that_is_not_a_digest_is_refused_not_cut_to_one(storage):
    """A record holds 32 bytes of key: a longer key would be kept cut short, and then
    give its result to another key that is its first 32 bytes."""
    with pytest.raises(ValueError, match="33 bytes"):
        keyed_request(storage, [b"c" * 33], {1: "of a longer key"})
    assert storage.earlier_results(b"f" * 32, [b"c" * 32]) == []


def test_a_remembered_task_keeps_its_own_argument_copied_from_its_source(storage):
    """Arguments are copied from the source along with its result (equal keys mean equal
    argument bytes); a large one, kept in a file by the source, gets a file of its own."""
    digest = b"f" * 32
    large = b"L" * ALONE_BYTES
    arguments = [b"one", large, b"three"]
    keys = [hashlib.sha256(argument).digest() for argument in arguments]
    source = storage.create_request(b"f", arguments, "secret", "local",
                                    computation=Computation(digest, keys, []))
    storage.record_reports(source, [(index, False, sheepdog.serialisation.dumps(index))
                                    for index in (1, 2, 3)])
    again = [arguments[2], b"new", arguments[1], arguments[0]]
    again_keys = [hashlib.sha256(argument).digest() for argument in again]
    chosen = storage.earlier_results(digest, again_keys)
    assert [found.task for found in chosen] == [1, 3, 4]
    request_id = storage.create_request(b"f", again, "secret", "local",
                                        computation=Computation(digest, again_keys, chosen))
    stored = [(payload_bytes(argument), state)
              for argument, state, _result in storage.results(request_id)]
    assert stored == [(b"three", DONE), (b"new", "pending"), (large, DONE), (b"one", DONE)]
    storage.remove_requests([source])
    assert payload_bytes(storage.results(request_id)[2][0]) == large
