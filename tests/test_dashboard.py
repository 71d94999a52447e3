"""The dashboard's routes in-process (Flask's test client), its socket, and its start by map.

The page itself is tested in a browser by ``test_dashboard_browser.py``.
"""

import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import sheepdog
from sheepdog import api
from sheepdog.config import parse_address, resolve
from sheepdog.dashboard.app import create_app, histogram
from sheepdog.dashboard.server import DashboardServer, new_token
from sheepdog.wire.protocol import auth_headers
from sheepdog.caller.session import Session

from .support.quickstart import run_doctest

#: The docs' page: its example is run as a doctest.
DASHBOARD_DOC = (Path(__file__).resolve().parents[1] / "docs" / "dashboard.rst").read_text()
TOKEN = new_token()
ROUTES = ("/dashboard", "/dashboard/api/requests", "/dashboard/api/requests/1",
          "/dashboard/api/requests/1/tasks", "/dashboard/api/nothing-here", "/")


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(storage):
    return create_app(storage, TOKEN).test_client()


@pytest.fixture
def request_id(storage):
    """A request of five tasks: 1 and 2 done, 3 failed with output, 4 running, 5 pending."""
    request_id = storage.create_request(b"f", [b"a"] * 5, "worker-secret", "local")
    launch = storage.add_workers(request_id, 4)
    for worker in range(1, 5):  # one task each: 1 to 4
        assert storage.pull(request_id, f"{launch}.{worker}", 1, 1) == [worker]
    storage.record_reports(request_id, [(1, False, b"r1"), (2, False, b"r2"),
                                        (3, True, b"Traceback ...\nValueError: <b>x</b>")],
                           outputs=[(3, "stderr", b"last words")])
    return request_id


def record_start(dbfile, request_id, index, started, updated):
    """Set when a task was handed out and when it last changed state."""
    with sqlite3.connect(dbfile) as db:
        db.execute("UPDATE tasks SET started = ?, updated = ? WHERE request_id = ? AND idx = ?",
                   (started, updated, request_id, index))


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_missing_or_wrong_token(client, request_id, path):
    for headers, query in [({}, ""), (bearer("x" * 43), ""), ({}, "?token=" + "x" * 43),
                           (bearer(TOKEN[:-1]), ""), ({"Authorization": TOKEN}, "")]:
        response = client.get(path + query, headers=headers)
        assert response.status_code == 403, (path, headers, query)
        assert response.headers["Cache-Control"] == "no-store"


def test_a_workers_key_and_signature_open_nothing(client, request_id, storage):
    secret = storage.request_secret(request_id)
    for path in ROUTES:
        assert client.get(path, headers=bearer(secret)).status_code == 403
        assert client.get(path, headers=auth_headers(secret.encode(), "GET", path, b"")).status_code == 403
        assert client.get(f"{path}?token={secret}").status_code == 403


def test_the_token_opens_every_route_by_query_or_bearer_header(client, request_id):
    assert client.get(f"/dashboard?token={TOKEN}").status_code == 200
    assert client.get("/dashboard/api/requests", headers=bearer()).status_code == 200
    assert client.get(f"/dashboard/api/requests/1/tasks?token={TOKEN}").status_code == 200
    assert client.get("/dashboard/api/nothing-here", headers=bearer()).status_code == 404
    assert client.get("/dashboard/api/requests/99", headers=bearer()).status_code == 404


def test_the_page_is_never_cached_and_runs_only_its_own_script(client):
    response = client.get(f"/dashboard?token={TOKEN}")
    page = response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    assert response.headers["Cache-Control"] == "no-store"
    assert "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert re.findall(r"<script[^>]*>", page) == [f'<script nonce="{nonce}">']
    assert nonce not in client.get(f"/dashboard?token={TOKEN}").headers["Content-Security-Policy"]
    offline = page.replace('"http://www.w3.org/2000/svg"', "")  # a name, never fetched
    assert "http://" not in offline and "https://" not in offline


def test_the_page_never_parses_data_as_markup(client):
    page = client.get(f"/dashboard?token={TOKEN}").get_data(as_text=True)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in page


def test_requests_api_counts_each_requests_tasks_by_state(client, request_id, storage):
    other = storage.create_request(b"f", [b"a"] * 2, "s", "gridengine")
    listing = client.get("/dashboard/api/requests", headers=bearer()).get_json()
    assert listing["database"] == storage.dbfile
    assert [(r["id"], r["backend"], r["tasks"], r["counts"]) for r in listing["requests"]] == [
        (request_id, "local", 5, {"done": 2, "failed": 1, "running": 1, "pending": 1}),
        (other, "gridengine", 2, {"pending": 2})]


def detail_with_charts(client, request_id):
    """The request's detail, asked again while its charts are still being made."""
    deadline = time.monotonic() + 60
    while True:
        detail = client.get(f"/dashboard/api/requests/{request_id}", headers=bearer()).get_json()
        if not detail.get("charts_pending") or time.monotonic() > deadline:
            return detail


def test_request_api_shows_failures_with_their_traceback_and_output(client, request_id):
    detail = detail_with_charts(client, request_id)
    assert detail["counts"] == {"done": 2, "failed": 1, "running": 1, "pending": 1}
    assert detail["failures"] == [{"index": 3, "state": "failed",
                                   "arguments": detail["failures"][0]["arguments"],
                                   "error": "Traceback ...\nValueError: <b>x</b>",
                                   "output": {"stderr": "last words"}}]
    assert sum(detail["throughput"]["counts"]) == 3


def test_request_api_histograms_durations_from_start_to_report(client, request_id, storage):
    record_start(storage.dbfile, request_id, 1, 100.0, 101.0)
    record_start(storage.dbfile, request_id, 2, 100.0, 104.0)
    record_start(storage.dbfile, request_id, 3, 100.0, 102.0)
    record_start(storage.dbfile, request_id, 4, 100.0, 100.5)  # running: no duration yet
    durations = detail_with_charts(client, request_id)["durations"]
    assert durations["total"] == 3 and durations["width"] == pytest.approx(4 / 20)
    assert [i for i, n in enumerate(durations["counts"]) if n] == [5, 10, 19]
    tasks = client.get(f"/dashboard/api/requests/{request_id}/tasks",
                       headers=bearer()).get_json()["tasks"]
    assert [task["seconds"] for task in tasks] == [1.0, 4.0, 2.0, None, None]


def test_tasks_api_pages_the_tasks_in_argument_order(client, request_id):
    page = client.get(f"/dashboard/api/requests/{request_id}/tasks?offset=1&limit=3",
                      headers=bearer()).get_json()
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 3)
    assert [(task["index"], task["state"]) for task in page["tasks"]] == [
        (2, "done"), (3, "failed"), (4, "running")]


def test_a_tasks_offset_beyond_sqlite_integers_is_a_400_that_says_so(client, request_id):
    response = client.get(f"/dashboard/api/requests/{request_id}/tasks"
                          f"?offset=99999999999999999999", headers=bearer())
    assert response.status_code == 400
    assert response.get_data(as_text=True) == (
        "400 Bad Request: offset 99999999999999999999 is beyond any task: offsets go up to "
        "9223372036854775807\n")
    last = client.get(f"/dashboard/api/requests/{request_id}/tasks?offset=9223372036854775807",
                      headers=bearer())
    assert (last.status_code, last.get_json()["tasks"]) == (200, [])


def test_histogram_puts_each_value_in_its_bar():
    assert histogram([0.0, 1.0, 2.5, 10.0], bins=4) == {
        "width": 2.5, "counts": [2, 1, 0, 1], "total": 4}
    assert histogram([], bins=3) == {"width": 1.0, "counts": [0, 0, 0], "total": 0}


def test_throughput_counts_finishes_per_time_bucket(storage, request_id):
    for index, finished in [(1, 10.0), (2, 10.9), (3, 13.2)]:
        record_start(storage.dbfile, request_id, index, 9.0, finished)
    assert storage.dashboard_finishes(request_id, since=10.0, width=1.0) == {0: 2, 3: 1}


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost:http", ":80", "127.0.0.1:70000"])
def test_a_bad_dashboard_address_names_the_config_key(address):
    with pytest.raises(ValueError, match="config key 'dashboard'.*HOST:PORT"):
        resolve({"scheduler": "local", "dashboard": address})


def test_dashboard_addresses_parse_with_ipv6_brackets():
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert resolve({"scheduler": "local", "dashboard": True}).dashboard == "127.0.0.1:0"


def test_dashboard_server_listens_on_loopback_and_wants_the_token(storage, request_id):
    server = DashboardServer(storage).start()
    try:
        assert server.url.startswith(f"http://127.0.0.1:{server.port}/dashboard?token=")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/dashboard/api/requests")
        assert refused.value.code == 403
        api_url = server.url.replace("/dashboard?", "/dashboard/api/requests?")
        with urllib.request.urlopen(api_url) as response:
            assert json.load(response)["requests"][0]["id"] == request_id
    finally:
        server.stop()
    assert not server.running


def test_dashboard_on_a_taken_port_raises_oserror_and_the_first_keeps_serving(storage):
    first = DashboardServer(storage).start()
    try:
        with pytest.raises(OSError):
            DashboardServer(storage, address=f"127.0.0.1:{first.port}").start()
        with urllib.request.urlopen(first.url) as response:
            assert response.status == 200
    finally:
        first.stop()


def test_dashboard_closes_the_oldest_idle_connection_past_its_cap_per_peer(storage, monkeypatch):
    import socket

    monkeypatch.setattr("sheepdog.dashboard.server.MAX_CONNECTIONS_PER_PEER", 2)
    server = DashboardServer(storage).start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
    try:
        held[0].settimeout(10)
        assert held[0].recv(1) == b""  # closed to make room for the newest
        held[2].sendall(f"GET /dashboard?token={server.token} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1\r\n\r\n".encode())
        assert held[2].recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_map_async_logs_the_dashboard_link_once_and_the_link_opens_it(local_conf, caplog):
    with Session() as session, caplog.at_level(logging.INFO, logger="sheepdog"):
        request = session.submit(len, [("abc",)], local_conf)
        links = [record.getMessage() for record in caplog.records if "token=" in record.getMessage()]
        assert len(links) == 1 and all(record.levelno <= logging.INFO for record in caplog.records
                                       if "token=" in record.getMessage())
        link = re.search(r"(http://\S+)", links[0]).group(1)
        assert link == session.dashboard_link(request)
        assert link.endswith(f"#request-{request.id}")
        with urllib.request.urlopen(link.split("#")[0]) as response:
            assert b"<title>Sheepdog dashboard</title>" in response.read()
        request.wait(timeout=60)
    with pytest.raises(OSError):  # the last holder of the database stopped its dashboard
        urllib.request.urlopen(link.split("#")[0], timeout=10)


def test_map_prints_the_dashboard_link_when_verbose(local_conf, capsys):
    assert sheepdog.map(len, [("ab",)], local_conf, verbose=True) == [2]
    printed = capsys.readouterr().err
    link = api.default_session().dashboard_link(api.default_session().request(1, local_conf["dbfile"]))
    assert f"sheepdog: live dashboard: {link}\n" in printed


def test_dashboard_false_starts_no_dashboard(local_conf):
    with Session() as session:
        request = session.submit(len, [("abc",)], {**local_conf, "dashboard": False})
        assert session.dashboard_link(request) is None
        request.wait(timeout=60)


def test_two_sessions_on_one_database_share_its_one_dashboard(local_conf):
    """One owner per database and process: one page shows every request of the file."""
    with Session() as one, Session() as two:
        first = one.submit(len, [("a",)], local_conf)
        second = two.submit(len, [("b",)], local_conf)
        assert one.dashboard_link(first).split("#")[0] == two.dashboard_link(second).split("#")[0]
        first.wait(timeout=60)
        second.wait(timeout=60)
        one.close()
        with urllib.request.urlopen(two.dashboard_link(second).split("#")[0]) as response:
            assert response.status == 200  # the other session still holds it


def test_the_docs_json_api_example_runs(local_conf):
    failed, attempted = run_doctest(DASHBOARD_DOC, local_conf)
    assert attempted >= 10 and failed == 0


def test_sheepdog_dashboard_serves_an_existing_database_until_interrupted(storage, request_id):
    command = subprocess.Popen(
        [sys.executable, "-m", "sheepdog", "dashboard", "--dbfile", storage.dbfile,
         "--no-browser"], stdout=subprocess.PIPE, text=True)
    try:
        line = command.stdout.readline()
        link = re.search(r"(http://127\.0\.0\.1:\d+/dashboard\?token=\S+)", line).group(1)
        with urllib.request.urlopen(link.replace("/dashboard?", "/dashboard/api/requests?")) as reply:
            assert [r["id"] for r in json.load(reply)["requests"]] == [request_id]
    finally:
        command.send_signal(signal.SIGINT)
        assert command.wait(timeout=30) == 0


@pytest.mark.parametrize("arguments, message", [
    (["--dbfile", "missing.sqlite"], "no sheepdog database at"),
    (["--address", "nowhere"], "--address is 'nowhere'; write HOST:PORT"),
])
def test_sheepdog_dashboard_names_what_is_wrong(tmp_path, arguments, message):
    finished = subprocess.run([sys.executable, "-m", "sheepdog", "dashboard", "--no-browser",
                               *arguments], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode == 2 and message in finished.stderr  # 2: it could not run


class AccessLines(logging.Handler):
    """Collects access log lines (``403 GET /favicon.ico ...``) from any logger; ``enough``
    is set once ``wanted`` have come (they are logged after the answer is sent)."""

    def __init__(self, wanted):
        super().__init__(logging.DEBUG)
        self.wanted = wanted
        self.lines = []
        self.enough = threading.Event()

    def emit(self, record):
        if re.match(r"\d{3} GET /", record.getMessage()):
            self.lines.append(record.getMessage())
            if len(self.lines) >= self.wanted:
                self.enough.set()


def test_the_token_is_logged_once_and_no_page_load_reaches_stderr(local_conf, caplog):
    """Only the link at submission holds the token; a favicon or a wrong token logs no warning."""
    access = AccessLines(wanted=4)
    logging.getLogger().addHandler(access)
    try:
        with Session() as session, caplog.at_level(logging.DEBUG):
            request = session.submit(len, [("abc",)], local_conf)
            page = session.dashboard_link(request).split("#")[0]
            token = page.split("token=")[1]
            origin = page.split("/dashboard")[0]
            for url in (page, page.replace("/dashboard?", "/dashboard/api/requests?"),
                        f"{origin}/favicon.ico", f"{origin}/dashboard?token={'x' * len(token)}"):
                try:
                    urllib.request.urlopen(url).close()
                except urllib.error.HTTPError as refused:
                    assert refused.code == 403
            assert access.enough.wait(timeout=30), access.lines
            request.wait(timeout=60)
    finally:
        logging.getLogger().removeHandler(access)
    holding = [record for record in caplog.records if token in record.getMessage()]
    assert [record.name for record in holding] == ["sheepdog.caller.session"]
    assert [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING] == []
    assert not any("?" in line for line in access.lines)  # paths without their query
    assert any(line.startswith("403 GET /favicon.ico ") for line in access.lines)


@pytest.mark.parametrize("host, status", [
    ("localhost", 200), ("127.0.0.1:8765", 200), ("[::1]:8765", 200),
    ("evil.example", 403), ("evil.example:8765", 403), ("127.0.0.1.evil.example", 403),
])
def test_the_dashboard_answers_only_to_its_own_names_against_dns_rebinding(
        client, host, status):
    response = client.get(f"/dashboard?token={TOKEN}", headers={"Host": host})
    assert response.status_code == status


def test_sheepdog_dashboard_opens_the_browser_on_a_private_file_not_on_the_tokenised_link(
        storage, monkeypatch):
    """A browser's command line is every local user's to read: the token stays out of it."""
    from sheepdog.dashboard import server as dashboard_server

    opened = []

    def browser(uri):
        path = urllib.parse.urlparse(uri).path
        opened.append((uri, os.stat(path).st_mode & 0o777, open(path).read()))
        return True

    monkeypatch.setattr(dashboard_server.webbrowser, "open", browser)
    monkeypatch.setattr(dashboard_server.DashboardServer, "join",
                        lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    dashboard_server.run_dashboard(storage, open_browser=True)
    ((uri, mode, page),) = opened
    token = re.search(r"token=([\w-]+)", page).group(1)
    assert uri.startswith("file://") and token not in uri and mode == 0o600
    assert not os.path.exists(urllib.parse.urlparse(uri).path)  # gone with the dashboard


def test_the_dashboard_names_each_requests_function_and_splits_running_from_queued(
        client, storage):
    request_id = storage.create_request(b"f", [b"a"] * 3, "s", "local", {},
                                        ("__main__", "simulate"))
    storage.pull(request_id, f"{storage.add_workers(request_id, 1)}.1", 1, 3, 3)
    storage.tasks.record_reports(request_id, [], begun=[1])
    listed, = client.get("/dashboard/api/requests", headers=bearer()).get_json()["requests"]
    detail = client.get(f"/dashboard/api/requests/{request_id}", headers=bearer()).get_json()
    for answer in (listed, detail):
        assert (answer["module"], answer["function"]) == ("__main__", "simulate")
        assert (answer["executing"], answer["queued"], answer["counts"]) == (
            1, 2, {"running": 3})
        assert answer["eta"] is None and answer["elapsed"] >= 0
    tasks = client.get(f"/dashboard/api/requests/{request_id}/tasks",
                       headers=bearer()).get_json()["tasks"]
    assert [task["began"] is not None for task in tasks] == [True, False, False]


def fails(x):
    if x % 3 == 0:
        raise ValueError(f"bad input {x}")
    if x % 3 == 1:
        raise KeyError(f"missing {x}")
    return x


def test_failure_cards_show_arguments_and_failures_group_by_type_and_message(local_conf):
    sheepdog.map(fails, [(x,) for x in range(9)], local_conf, verbose=False)
    client = create_app(local_conf["dbfile"], TOKEN).test_client()
    detail = client.get("/dashboard/api/requests/1", headers=bearer()).get_json()
    assert [(f["index"], f["arguments"]) for f in detail["failures"]] == [
        (1, "0"), (2, "1"), (4, "3"), (5, "4"), (7, "6"), (8, "7")]
    assert detail["function"] == "fails" and detail["eta"] == 0
    assert [(g["count"], g["exception"], g["pattern"], g["first"])
            for g in detail["failure_groups"]] == [
        (3, "ValueError", "bad input …", 1), (3, "KeyError", "…", 2)]
    assert detail["grouped"] == 6


def test_the_eta_is_what_is_left_at_the_rate_so_far():
    from sheepdog.dashboard.app import eta
    from sheepdog.storage.summaries import RequestSummary

    summary = RequestSummary(1, 100.0, "local", 10, {"done": 2, "running": 8})
    assert eta(summary, 110.0) == pytest.approx(40.0)
    assert eta(summary._replace(counts={"pending": 10}), 110.0) is None


def test_charts_of_a_request_whose_counts_stay_are_made_once_and_remade_when_they_move(
        monkeypatch):
    from sheepdog.dashboard import charts as charts_module
    from sheepdog.storage.summaries import RequestSummary

    monkeypatch.setattr(charts_module, "WAIT_SECONDS", 60.0)  # each answer waits for its charts
    made = []
    charts = charts_module.Charts(lambda summary, now: made.append(summary.counts)
                                  or {"n": len(made)})
    finished = RequestSummary(1, 0.0, "local", 2, {"done": 2})
    assert [charts.of(finished, 1.0) for _ in range(3)] == [{"n": 1}] * 3
    monkeypatch.setattr(charts_module, "MIN_AGE_SECONDS", 0.0)
    monkeypatch.setattr(charts_module, "COST_FACTOR", 0.0)  # kept charts are old at once
    assert charts.of(finished, 2.0) == {"n": 1}  # but its counts stay: kept
    assert charts.of(finished._replace(counts={"done": 1, "failed": 1}), 2.0) == {"n": 2}
    assert made == [{"done": 2}, {"done": 1, "failed": 1}]


def charts_made_when(release):
    """A maker of charts that waits for ``release`` each time, and the list of the times
    (``now``) it made charts at."""
    made = []

    def slowly(summary, now):
        assert release.wait(60)
        made.append(now)
        return {"n": len(made)}

    return slowly, made


def test_an_answer_does_not_wait_for_slow_charts_and_a_later_one_gives_them():
    from sheepdog.dashboard import charts as charts_module
    from sheepdog.storage.summaries import RequestSummary

    release = threading.Event()
    slowly, made = charts_made_when(release)
    charts = charts_module.Charts(slowly)
    summary = RequestSummary(1, 0.0, "local", 2, {"done": 2})
    started = time.monotonic()
    assert charts.of(summary, 1.0) == charts_module.PENDING
    assert charts.of(summary, 2.0) == charts_module.PENDING  # the same charts are being made
    assert time.monotonic() - started < 30
    release.set()
    deadline = time.monotonic() + 60
    while charts.of(summary, 3.0) == charts_module.PENDING and time.monotonic() < deadline:
        pass
    assert charts.of(summary, 4.0) == {"n": 1} and made == [1.0]


def test_charts_that_fail_to_be_made_are_logged_and_asked_for_again(caplog):
    from sheepdog.dashboard import charts as charts_module
    from sheepdog.storage.summaries import RequestSummary

    attempts = []

    def failing_once(summary, now):
        attempts.append(now)
        if len(attempts) == 1:
            raise sqlite3.OperationalError("database is locked")
        return {"n": len(attempts)}

    charts = charts_module.Charts(failing_once)
    summary = RequestSummary(1, 0.0, "local", 2, {"done": 2})
    deadline = time.monotonic() + 60
    while not attempts and time.monotonic() < deadline:
        assert charts.of(summary, 1.0) == charts_module.PENDING
    while (answer := charts.of(summary, 2.0)) == charts_module.PENDING \
            and time.monotonic() < deadline:
        pass
    assert answer == {"n": 2}
    assert "could not make the charts of request 1" in caplog.text


def test_only_the_answer_that_starts_quick_charts_waits_for_them(monkeypatch):
    """A poll that finds charts being made, or whose kept charts were slow to make, answers
    at once with what is kept: while a million tasks' charts are made, polls stay quick."""
    from sheepdog.dashboard import charts as charts_module
    from sheepdog.storage.summaries import RequestSummary

    monkeypatch.setattr(charts_module, "WAIT_SECONDS", 60.0)
    monkeypatch.setattr(charts_module, "MIN_AGE_SECONDS", 0.0)
    monkeypatch.setattr(charts_module, "COST_FACTOR", 0.0)  # kept charts are old at once
    release = threading.Event()
    charts = charts_module.Charts(charts_made_when(release)[0])
    summary = RequestSummary(1, 0.0, "local", 2, {"running": 2})
    first = []
    starter = threading.Thread(target=lambda: first.append(charts.of(summary, 1.0)))
    starter.start()  # starts the first charts, and waits for them
    deadline = time.monotonic() + 60
    while not charts._making and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert charts.of(summary, 2.0) == charts_module.PENDING  # being made: no wait
    assert time.monotonic() - started < 30
    release.set()
    starter.join(60)
    assert first == [{"n": 1}]
    release.clear()
    kept = charts._kept[1]
    charts._kept[1] = kept._replace(cost=100.0)  # as if they had taken long to make
    started = time.monotonic()
    moved = summary._replace(counts={"running": 1, "done": 1})
    assert charts.of(moved, 3.0) == {"n": 1}  # new ones are being made: the kept, at once
    assert time.monotonic() - started < 30
    release.set()
    while charts.of(moved, 4.0) == {"n": 1} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert charts.of(moved, 5.0) == {"n": 2}
