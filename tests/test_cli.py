"""The ``sheepdog`` command against databases made by real local-backend maps (each
subcommand, its exit code, its --dbfile from the config), and ``serve`` (the scheme
and port its requests need)."""

import fractions
import http.client
import json
import os
import re
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest

import sheepdog
from sheepdog.cli import commands as cli
from sheepdog.cli.serving import CommandError, plan_serving

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_request(storage, **config):
    return storage.create_request(b"fn", [b"a"], "secret", "local", {"tls": True, "port": None,
                                                                      **config})


def answers_on(port, dbfile):
    """Whether ``sheepdog serve --dbfile DBFILE`` (no --port) answers plain HTTP on ``port``."""
    child = subprocess.Popen(
        [sys.executable, "-m", "sheepdog", "serve", "--dbfile", dbfile, "--bind", "127.0.0.1"],
        cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": REPOSITORY},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stderr],
                     daemon=True).start()
    try:
        log = [lines.get(timeout=30)]
        while f":{port}" not in log[-1]:  # listening
            assert child.poll() is None, "".join(log)
            log.append(lines.get(timeout=30))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        answer = (response.status, response.read())
        connection.close()
        return answer == (200, b"sheepdog server\n")
    finally:
        child.kill()
        child.wait()


def test_serve_without_a_port_serves_plain_http_for_a_request_made_without_tls(storage, dbfile):
    port = free_port()
    add_request(storage, tls=False, port=port)
    assert answers_on(port, dbfile)


def record_port(storage, request_id, port, scheme="https"):
    """Record the port the request's workers were given, as ``Request.remember_server`` does."""
    storage.set_meta_once(f"server:{request_id}", f"{scheme} {port}".encode())


def test_serve_without_a_port_uses_the_port_the_database_recorded(storage, dbfile):
    port = free_port()
    record_port(storage, add_request(storage, tls=False, port=None), port, "http")
    assert answers_on(port, dbfile)


def test_serve_without_a_port_for_requests_on_different_ports_asks_for_one(storage, dbfile,
                                                                         capsys):
    first, second, third = (add_request(storage) for _ in range(3))
    record_port(storage, first, 7001)
    record_port(storage, second, 7002)
    record_port(storage, third, 7001)
    code, _, err = run(capsys, "serve", "--dbfile", dbfile)
    assert code == cli.EXIT_USAGE
    assert err == (f"sheepdog: the workers of requests {first}, {third} call back on port 7001, "
                   f"those of request {second} call back on port 7002, and one server listens "
                   f"on one port: choose one with --port, as in 'sheepdog serve {first} {third} "
                   f"--port 7001' and 'sheepdog serve {second} --port 7002'\n")
    assert plan_serving(storage, [first, third]).port == 7001


def test_requests_that_need_both_schemes_are_named_and_served_one_scheme_at_a_time(storage):
    secure = add_request(storage, tls=True, port=7001)
    plain = add_request(storage, tls=False, port=7002)
    with pytest.raises(CommandError, match=rf"request {secure} call back over HTTPS.*"
                                           rf"request {plain} over HTTP.*--scheme"):
        plan_serving(storage, [])
    assert plan_serving(storage, [], scheme="http")[:3] == ("http", 7002, [plain])
    assert plan_serving(storage, [], scheme="https")[:3] == ("https", 7001, [secure])


def test_a_request_with_no_port_recorded_or_fixed_needs_the_port_given(storage):
    request_id = add_request(storage)
    with pytest.raises(CommandError,
                       match=rf"no port is recorded for request {request_id}.*--port"):
        plan_serving(storage, [])
    assert plan_serving(storage, [], port=8123)[:3] == ("https", 8123, [request_id])


def test_only_requests_with_open_tasks_are_served_unless_named(storage):
    finished = add_request(storage, port=7001)
    storage.record_reports(finished, [(1, False, b"result")])
    with pytest.raises(CommandError, match="no request .* has tasks still open"):
        plan_serving(storage, [])
    assert plan_serving(storage, [finished]).request_ids == [finished]
    with pytest.raises(CommandError, match="request 99 is not in"):
        plan_serving(storage, [99])


def test_status_prints_how_far_a_request_has_come(storage, dbfile):
    request_id = storage.create_request(b"fn", [b"a"] * 3, "secret", "local")
    worker = f"{storage.add_workers(request_id, 1)}.1"
    assert storage.pull(request_id, worker, 1, 3, 3) == [1, 2, 3]
    storage.tasks.record_reports(request_id, [(1, False, b"r")], begun=[1, 2])
    status = subprocess.run([sys.executable, "-m", "sheepdog", "status", str(request_id),
                             "--dbfile", dbfile], cwd=REPOSITORY, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPOSITORY}, timeout=60)
    assert status.returncode == cli.EXIT_RUNNING
    assert status.stdout.startswith("sheepdog: [########----------------] 1/3 finished, "
                                    "1 running, 1 queued at workers | ")


def test_results_piped_into_a_reader_that_stops_early_end_quietly(storage, dbfile):
    """``sheepdog results RID | head``: the reader leaving is no error to explain."""
    request_id = storage.create_request(b"fn", [b"a"] * 20_000, "secret", "local")
    storage.record_reports(request_id, [(index, False, sheepdog.serialisation.dumps(index))
                                        for index in range(1, 20_001)])
    command = [sys.executable, "-m", "sheepdog", "results", str(request_id), "--dbfile", dbfile]
    reader = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": REPOSITORY})
    assert reader.stdout.read(10) == b"1\n2\n3\n4\n5\n"
    reader.stdout.close()  # as head does once it has its lines
    assert reader.stderr.read() == b""
    assert reader.wait(60) == 128 + signal.SIGPIPE


def test_status_of_an_unknown_request_names_it(storage, dbfile, capsys):
    storage.create_request(b"fn", [b"a"], "secret", "local")
    assert cli.main(["status", "7", "--dbfile", dbfile]) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith(f"sheepdog: request 7 is not in {os.path.abspath(dbfile)}")


def test_status_of_a_missing_database_says_so_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "typo.sqlite"
    assert cli.main(["status", "1", "--dbfile", str(missing)]) != 0
    assert not missing.exists()
    assert f"no sheepdog database at {missing}" in capsys.readouterr().err


def test_serve_with_no_open_request_says_how_to_serve_one_anyway(storage, dbfile, capsys):
    finished = add_request(storage, port=7001)
    storage.record_reports(finished, [(1, False, b"result")])
    assert cli.main(["serve", "--dbfile", dbfile]) == 2
    assert "has tasks still open; name the requests to serve them anyway" in (
        capsys.readouterr().err)


def invert(x):
    if x == 0:
        raise ZeroDivisionError("no inverse of zero")
    return fractions.Fraction(1, x) if x == 3 else 1 / x


@pytest.fixture
def finished(local_conf):
    """Two finished requests: 1 with a failed task and a Fraction result, 2 all done."""
    assert sheepdog.map(invert, [(1,), (0,), (3,)], local_conf, verbose=False) == [
        1.0, None, fractions.Fraction(1, 3)]
    assert sheepdog.map(invert, [(2,), (4,)], local_conf, verbose=False) == [0.5, 0.25]
    return local_conf["dbfile"]


def run(capsys, *argv):
    """``sheepdog ARGV``, in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_each_request_with_its_age_and_its_tasks_by_state(finished, capsys):
    code, out, _ = run(capsys, "list", "--dbfile", finished)
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "FUNCTION", "CREATED", "ELAPSED", "STATE", "DONE", "FAILED",
                              "LOST", "CANCELLED", "RUNNING", "QUEUED", "PENDING", "TOTAL",
                              "SIZE"]
    function = "tests.test_cli.invert"
    size = r"[\d.]+ k?B"
    assert re.fullmatch(rf" *1  {function} +\d+ s ago +\d+ s +failed +2 +1 +0 +0 +0 +0 +0 +3"
                        rf" +{size}", first)
    assert re.fullmatch(rf" *2  {function} +\d+ s ago +\d+ s +done +2 +0 +0 +0 +0 +0 +0 +2"
                        rf" +{size}", second)
    assert code == cli.EXIT_DONE


@pytest.mark.parametrize("seconds, text", [
    (5, "5 s ago"), (180, "3 min ago"), (7300, "2 h ago"), (86400, "1 day ago"),
    (3 * 86400, "3 days ago"),
])
def test_ages_are_given_in_the_largest_whole_unit(seconds, text):
    assert cli.age(seconds) == text


def test_results_prints_each_values_repr_in_order_and_exits_1_when_a_task_failed(finished,
                                                                                 capsys):
    code, out, err = run(capsys, "results", "1", "--dbfile", finished)
    assert out == "1.0\nNone\nFraction(1, 3)\n"
    assert "1 of 3 tasks have no result here; see 'sheepdog errors 1'" in err
    assert code == cli.EXIT_UNSUCCESSFUL
    assert run(capsys, "results", "2", "--dbfile", finished)[:2] == (cli.EXIT_DONE,
                                                                     "0.5\n0.25\n")


def test_results_as_json_give_what_json_cannot_hold_as_its_repr(finished, capsys):
    code, out, _ = run(capsys, "results", "1", "--json", "--dbfile", finished)
    assert json.loads(out) == [1.0, None, {"__repr__": "Fraction(1, 3)"}]
    assert code == cli.EXIT_UNSUCCESSFUL


@pytest.mark.parametrize("value, written", [
    ({"a": [1, 2.5, None, True]}, {"a": [1, 2.5, None, True]}),
    ((1, 2), {"__repr__": "(1, 2)"}),
    ({1: "one"}, {"__repr__": "{1: 'one'}"}),
    (float("nan"), {"__repr__": "nan"}),
    ({1, 2}, {"__repr__": "{1, 2}"}),
])
def test_a_value_is_written_as_json_only_when_json_holds_it_exactly(value, written):
    assert cli.json_value(value) == written


class LoadsBadly:
    """Pickles fine, but loading it raises (as a result needing a module this process lacks)."""

    def __reduce__(self):
        return int, ("not a number",)


def test_a_result_that_cannot_be_loaded_is_none_and_said_and_the_database_is_untouched(
        local_conf, capsys):
    request_id = sheepdog.map_async(lambda x: LoadsBadly() if x == 1 else x, [(1,), (2,)],
                                    local_conf)
    sheepdog.wait(request_id, local_conf["dbfile"])
    code, out, err = run(capsys, "results", str(request_id), "--dbfile", local_conf["dbfile"])
    assert (code, out) == (cli.EXIT_UNSUCCESSFUL, "None\n2\n")
    assert "task 1: its result cannot be loaded in this process: ValueError" in err
    assert sheepdog.Storage(local_conf["dbfile"]).progress(request_id).done == 2


def test_errors_prints_each_failed_tasks_arguments_and_traceback(finished, capsys):
    code, out, _ = run(capsys, "errors", "1", "--dbfile", finished)
    assert out.startswith("=== arguments (0,) ===\nTraceback (most recent call last):\n")
    assert "ZeroDivisionError: no inverse of zero\n" in out
    assert code == cli.EXIT_UNSUCCESSFUL
    assert run(capsys, "errors", "2", "--dbfile", finished) == (cli.EXIT_DONE, "", "")


def test_cancel_marks_the_unfinished_tasks_cancelled_and_exits_1(storage, dbfile, capsys):
    request_id = add_request(storage, scheduler="local")
    assert storage.pull(request_id, f"{storage.add_workers(request_id, 1)}.1", 1, 1) == [1]
    code, out, _ = run(capsys, "cancel", str(request_id), "--dbfile", dbfile)
    assert out == f"request {request_id}: 1 unfinished tasks cancelled\n"
    assert code == cli.EXIT_UNSUCCESSFUL
    assert storage.progress(request_id).cancelled == 1


@pytest.mark.parametrize("command", [["list"], ["status", "1"], ["results", "1"],
                                     ["errors", "1"], ["logs", "1"], ["cancel", "1"],
                                     ["serve"]])
def test_no_command_creates_a_missing_database(tmp_path, capsys, command):
    missing = tmp_path / "typo.sqlite"
    code, _, err = run(capsys, *command, "--dbfile", str(missing))
    assert code == cli.EXIT_USAGE and f"no sheepdog database at {missing}" in err
    assert not missing.exists()


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("SHEEPDOG_CONFIG_FILE", str(path))
    return path


def test_the_dbfile_comes_from_the_chosen_profile_when_not_given(finished, user_file, capsys,
                                                                 tmp_path):
    user_file.write_text(f'[default]\ndbfile = "{tmp_path}/other.sqlite"\n\n'
                         f'[profiles.here]\ndbfile = "{finished}"\n')
    assert run(capsys, "results", "2", "--profile", "here")[:2] == (cli.EXIT_DONE,
                                                                    "0.5\n0.25\n")
    code, _, err = run(capsys, "results", "2")
    assert code == cli.EXIT_USAGE and f"no sheepdog database at {tmp_path}/other.sqlite" in err


def test_the_dbfile_comes_from_the_environment_when_not_given(finished, monkeypatch, capsys):
    monkeypatch.setenv("SHEEPDOG_DBFILE", finished)
    assert run(capsys, "status", "2")[0] == cli.EXIT_DONE


def test_a_broken_config_file_stops_the_command_and_is_pointed_at(user_file, capsys):
    user_file.write_text('[default]\nhots = "fear"\n')
    code, _, err = run(capsys, "list")
    assert code == cli.EXIT_USAGE
    assert err.startswith(f"sheepdog: {user_file}, line 2: unknown config key 'hots' "
                          f"(did you mean 'host'?)")


def test_config_prints_each_value_and_where_it_came_from(user_file, monkeypatch, capsys):
    user_file.write_text('[default]\nretries = 1\n\n[profiles.fear]\nhost = "fear"\n'
                         'ge_opts = ["-l lr=0"]\n')
    monkeypatch.setenv("SHEEPDOG_PROFILE", "fear")
    monkeypatch.setenv("SHEEPDOG_PORT", "8123")
    code, out, _ = run(capsys, "config", "--dbfile", "mine.sqlite")
    lines = out.splitlines()
    assert lines[:2] == [f"config file: {user_file}", "profile: fear (from SHEEPDOG_PROFILE)"]
    shown = {line.split()[0]: line.split(None, 1)[1] for line in lines[2:]}
    assert re.fullmatch(r"file \[default\] +1", shown["retries"])
    assert re.fullmatch(r"file \[profiles\.fear\] +\"fear\"", shown["host"])
    assert re.fullmatch(r"file \[profiles\.fear\] +\[\"-l lr=0\"\]", shown["ge_opts"])
    assert re.fullmatch(r"env SHEEPDOG_PORT +8123", shown["port"])
    assert re.fullmatch(r"argument +\"mine.sqlite\"", shown["dbfile"])
    assert re.fullmatch(r"default +\(unset\)", shown["ssh_user"])
    assert code == cli.EXIT_DONE


def test_config_as_json_names_the_file_the_profile_and_each_source(user_file, capsys):
    user_file.write_text('[profiles.fear]\nhost = "fear"\n')
    code, out, _ = run(capsys, "config", "--json", "--profile", "fear")
    shown = json.loads(out)
    assert (shown["file"], shown["file_exists"], shown["profile"]) == (str(user_file), True,
                                                                       "fear")
    assert shown["settings"]["host"] == {"value": "fear", "source": "file [profiles.fear]"}
    assert shown["settings"]["ge_opts"]["source"] == "default"
    assert code == cli.EXIT_DONE


def sheepdog_command(*argv):
    """Run the installed ``sheepdog`` entry point (from this Python's environment)."""
    script = os.path.join(os.path.dirname(sys.executable), "sheepdog")
    if not os.path.exists(script):
        pytest.skip("the sheepdog entry point is not installed beside this Python")
    return subprocess.run([script, *argv], capture_output=True, text=True, timeout=60)


def test_the_entry_point_gives_its_version_and_plain_help_with_the_exit_codes():
    assert sheepdog_command("--version").stdout == f"sheepdog {sheepdog.__version__}\n"
    for argv in ([], ["results"]):
        help_text = sheepdog_command(*argv, "--help").stdout
        assert "``" not in help_text and ":doc:" not in help_text
        assert re.search(r"^  3  the request is still running", help_text, re.MULTILINE)
        assert "--dbfile DBFILE" in help_text or not argv
    listed = re.findall(r"^    (\w+) ", sheepdog_command("--help").stdout, re.MULTILINE)
    assert listed == ["list", "status", "results", "errors", "logs", "cancel", "rm", "prune",
                      "serve", "config", "dashboard", "script"]


def test_the_entry_point_reads_results_as_json(finished):
    listed = sheepdog_command("results", "2", "--json", "--dbfile", finished)
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [0.5, 0.25])


def test_a_usage_error_exits_2():
    assert sheepdog_command("results", "not-a-number").returncode == cli.EXIT_USAGE
