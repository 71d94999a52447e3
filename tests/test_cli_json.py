"""The ``sheepdog`` command for scripts and squeue habits: ``--json`` outputs that keep
the keys and types docs/cli.rst documents, ``list``'s filters, ``status --watch``, and
``--dbfile`` before or after the command."""

import json
import threading
import time

import pytest

import sheepdog
from sheepdog.cli import commands as cli
from sheepdog.cli import records

from .test_cli import finished, invert, run  # noqa: F401 - the fixture and its function

NUMBER = (int, float)
OPTIONAL_TEXT = (str, type(None))
COUNTS = {state: int for state in ("done", "failed", "lost", "cancelled", "running", "queued",
                                   "pending")}
#: The schemas of docs/cli.rst: each key and the type(s) of its value.
REQUEST = {"id": int, "function": OPTIONAL_TEXT, "module": OPTIONAL_TEXT, "created": NUMBER,
           "elapsed": NUMBER, "state": str, "backend": str, "total": int, "finished": int,
           "remembered": int, "bytes": int, "counts": COUNTS}
LIST = {"dbfile": str, "now": NUMBER, "requests": [REQUEST]}
TASK = {"index": int, "state": str, "error": OPTIONAL_TEXT, "output": dict}
LOGS = {"request": int, "tasks": [TASK]}
ERRORS = {"request": int, "errors": [{**TASK, "arguments": str}]}


def conforms(value, schema):
    """Whether ``value`` has exactly the keys of ``schema``, each of its type."""
    if isinstance(schema, dict):
        return (isinstance(value, dict) and set(value) == set(schema)
                and all(conforms(value[key], kind) for key, kind in schema.items()))
    if isinstance(schema, list):
        return isinstance(value, list) and all(conforms(item, schema[0]) for item in value)
    return isinstance(value, schema) and not (schema is int and isinstance(value, bool))


def json_of(capsys, *argv):
    code, out, _ = run(capsys, *argv)
    return code, json.loads(out)


def test_list_json_follows_its_documented_schema_and_names_each_function(finished, capsys):
    code, listing = json_of(capsys, "list", "--json", "--dbfile", finished)
    assert code == cli.EXIT_DONE and conforms(listing, LIST)
    first, second = listing["requests"]
    assert (first["module"], first["function"], first["state"]) == (
        "tests.test_cli", "invert", "failed")
    assert first["counts"] == {"done": 2, "failed": 1, "lost": 0, "cancelled": 0, "running": 0,
                               "queued": 0, "pending": 0}
    assert (second["state"], second["finished"], second["total"]) == ("done", 2, 2)


def test_status_json_is_one_request_of_the_list_schema(finished, capsys):
    code, status = json_of(capsys, "status", "1", "--json", "--dbfile", finished)
    assert code == cli.EXIT_UNSUCCESSFUL and conforms(status, REQUEST)
    assert status["id"] == 1


def test_errors_and_logs_json_follow_their_schemas_with_arguments_and_positions(finished,
                                                                                capsys):
    code, errors = json_of(capsys, "errors", "1", "--json", "--dbfile", finished)
    assert code == cli.EXIT_UNSUCCESSFUL and conforms(errors, ERRORS)
    failure, = errors["errors"]
    assert (failure["index"], failure["state"], failure["arguments"]) == (2, "failed", "0")
    assert "ZeroDivisionError: no inverse of zero" in failure["error"]
    code, logs = json_of(capsys, "logs", "1", "--json", "--dbfile", finished)
    assert conforms(logs, LOGS) and [task["index"] for task in logs["tasks"]] == [2]
    code, logs = json_of(capsys, "logs", "2", "1", "--json", "--dbfile", finished)
    assert logs["tasks"][0]["state"] == "done" and logs["tasks"][0]["error"] is None


def test_list_shows_the_function_in_its_table(finished, capsys):
    _, out, _ = run(capsys, "list", "--dbfile", finished)
    assert out.splitlines()[1].split()[1] == "tests.test_cli.invert"


def listed_ids(capsys, dbfile, *filters):
    _, listing = json_of(capsys, "list", "--json", "--dbfile", dbfile, *filters)
    return [request["id"] for request in listing["requests"]]


def test_list_filters_keep_running_failed_recent_and_last_requests(finished, capsys):
    from sheepdog.storage import Storage

    storage = Storage(finished)
    storage.create_request(b"fn", [b"a"], "secret", "local")  # 3: pending
    with storage.database.write() as db:
        db.execute("UPDATE requests SET created = created - 7200 WHERE id = 1")
    assert listed_ids(capsys, finished) == [1, 2, 3]
    assert listed_ids(capsys, finished, "--running") == [3]
    assert listed_ids(capsys, finished, "--failed") == [1]
    assert listed_ids(capsys, finished, "--since", "1h") == [2, 3]
    assert listed_ids(capsys, finished, "--since", "3h", "--last", "2") == [2, 3]
    assert listed_ids(capsys, finished, "--last", "1") == [3]
    assert listed_ids(capsys, finished, "--running", "--failed") == []
    _, out, _ = run(capsys, "list", "--running", "--failed", "--dbfile", finished)
    assert out == f"no requests in {finished} that the filters keep\n"


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("1d", 86400),
                                           ("45s", 45), ("1.5h", 5400)])
def test_since_durations_read_a_number_and_a_unit(text, seconds):
    assert records.duration(text) == seconds


@pytest.mark.parametrize("argv", [["list", "--since", "2 weeks"], ["list", "--last", "0"]])
def test_a_bad_filter_is_a_usage_error(argv, dbfile):
    with pytest.raises(SystemExit) as exit:
        cli.main([*argv, "--dbfile", dbfile])
    assert exit.value.code == cli.EXIT_USAGE


@pytest.mark.parametrize("order", ["before", "after"])
def test_the_dbfile_may_come_before_or_after_the_command(finished, capsys, order):
    argv = (["--dbfile", finished, "status", "2"] if order == "before"
            else ["status", "2", "--dbfile", finished])
    code, out, _ = run(capsys, *argv)
    assert code == cli.EXIT_DONE and "2/2 finished" in out


def test_status_watch_redraws_until_the_request_ends_and_exits_as_status(storage, dbfile,
                                                                         capsys):
    request_id = storage.create_request(b"fn", [b"a"] * 2, "secret", "local")
    worker = f"{storage.add_workers(request_id, 1)}.1"
    storage.pull(request_id, worker, 1, 2, 2)
    codes = []
    watcher = threading.Thread(target=lambda: codes.append(cli.main(
        ["status", str(request_id), "--watch", "--interval", "0.1", "--dbfile", dbfile])))
    watcher.start()
    time.sleep(0.3)
    assert watcher.is_alive()
    storage.record_reports(request_id, [(1, False, b"r"), (2, True, b"it raised")])
    watcher.join(timeout=10)
    assert not watcher.is_alive() and codes == [cli.EXIT_UNSUCCESSFUL]
    lines = capsys.readouterr().out.splitlines()
    assert "0/2 finished" in lines[0] and "2/2 finished" in lines[-1]


def test_a_request_made_before_names_were_kept_lists_its_function_as_unknown(storage, dbfile,
                                                                             capsys):
    storage.create_request(b"fn", [b"a"], "secret", "local")
    _, listing = json_of(capsys, "list", "--json", "--dbfile", dbfile)
    assert listing["requests"][0]["function"] is None
    _, out, _ = run(capsys, "list", "--dbfile", dbfile)
    assert out.splitlines()[1].split()[1] == "?"


def test_the_executors_requests_are_named_too(local_conf, capsys):
    with sheepdog.Executor(local_conf) as executor:
        assert list(executor.map(invert, [1, 2])) == [1.0, 0.5]
    _, listing = json_of(capsys, "list", "--json", "--dbfile", local_conf["dbfile"])
    assert {request["function"] for request in listing["requests"]} == {"invert"}
