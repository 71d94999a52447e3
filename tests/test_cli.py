"""The ``sheepdog`` command (``serve`` speaks the scheme and port its requests need;
``status`` prints a request's progress)."""

import http.client
import os
import queue
import socket
import subprocess
import sys
import threading

import pytest

from sheepdog import cli
from sheepdog.cli import CommandError, plan_serving

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_request(storage, **config):
    return storage.create_request(b"fn", [b"a"], "secret", "local", {"tls": True, "port": None,
                                                                      **config})


def test_serve_without_a_port_serves_plain_http_for_a_request_made_without_tls(storage, dbfile):
    port = free_port()
    add_request(storage, tls=False, port=port)
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
        assert (response.status, response.read()) == (200, b"sheepdog server\n")
        connection.close()
    finally:
        child.kill()
        child.wait()


def test_requests_that_need_both_schemes_are_named_and_served_one_scheme_at_a_time(storage):
    secure = add_request(storage, tls=True, port=7001)
    plain = add_request(storage, tls=False, port=7002)
    with pytest.raises(CommandError, match=rf"request {secure} call back over HTTPS.*"
                                           rf"request {plain} over HTTP.*--scheme"):
        plan_serving(storage, [])
    assert plan_serving(storage, [], scheme="http")[:3] == ("http", 7002, [plain])
    assert plan_serving(storage, [], scheme="https")[:3] == ("https", 7001, [secure])


def test_a_request_on_a_port_chosen_at_the_time_needs_the_port_given(storage):
    request_id = add_request(storage)
    with pytest.raises(CommandError, match=rf"no port was fixed .*request {request_id}.*--port"):
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
    assert storage.pull(request_id, worker, 1, 2) == [1, 2]
    storage.record_reports(request_id, [(1, False, b"r")])
    status = subprocess.run([sys.executable, "-m", "sheepdog", "status", str(request_id),
                             "--dbfile", dbfile], cwd=REPOSITORY, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPOSITORY}, timeout=60)
    assert (status.returncode, status.stdout) == (
        0, "sheepdog: [########----------------] 1/3 finished, 1 running\n")


def test_status_of_an_unknown_request_names_it(storage, dbfile, capsys):
    storage.create_request(b"fn", [b"a"], "secret", "local")
    assert cli.main(["status", "7", "--dbfile", dbfile]) == 1
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
