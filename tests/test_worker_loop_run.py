"""A whole worker (``worker/loop.py``'s ``run``, with its real runners) against a scripted
caller: what it asks for, in which order and under which key, as the caller tells it to
wait, hands it over to another request, or has gone."""

import hashlib
import http.server
import json
import os
import signal
import sys
import threading
import types

import pytest

from sheepdog.wire import protocol, serialisation
from sheepdog.wire.protocol import (
    ARGUMENTS,
    ERROR,
    HANDOVER,
    IDLE,
    RESULT,
    VERSIONS,
    WAIT,
    pack_frames,
    unpack_frames,
)
from sheepdog.wire.settings import WorkerSettings
from sheepdog.worker import loop


def plus_one(x):
    return x + 1


def times_ten(x):
    return x * 10


class Caller(http.server.ThreadingHTTPServer):
    """A caller's server that answers each request with ``respond(path, body)``: bytes (200),
    or None to drop the connection; it keeps (path, key that signed it, body) of each."""

    daemon_threads = True

    def __init__(self, respond, keys):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond, self.keys, self.seen = respond, keys, []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = protocol.parse_path(self.path)
        signer = next((key for key in self.server.keys
                       if protocol.signed_digest(key, self.command, self.path,
                                                 self.headers.get("Authorization"),
                                                 self.headers.get(protocol.DIGEST_HEADER))
                       is not None), None)
        self.server.seen.append((path, signer, body))
        answer = self.server.respond(path, body)
        if answer is None:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer

    def log_message(self, *_arguments):
        pass


def frames(*triples):
    return b"".join(bytes(part) for part in pack_frames(triples))


def arguments(*pairs):
    return frames(*((index, ARGUMENTS, b"".join(bytes(part) for part in
                                                serialisation.dumps_argument(index, (value,))))
                    for index, value in pairs))


BLOBS = {name: serialisation.dumps_function(function)
         for name, function in (("plus_one", plus_one), ("times_ten", times_ten))}
DIGESTS = {name: hashlib.sha256(blob).hexdigest() for name, blob in BLOBS.items()}


@pytest.fixture
def worker(monkeypatch):
    """Run a worker (array task 3 of launch 1 of request 1, key ``k1``) against a caller
    answering with ``respond``; (its exit status or exception, the caller's record, the
    pauses it made)."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGUSR1, signal.SIGUSR2)}
    monkeypatch.setenv("SHEEPDOG_TEST_TASK", "3")
    monkeypatch.delenv("SHEEPDOG_CALLER_PID", raising=False)
    pauses = []
    real_sleep = loop.time.sleep
    monkeypatch.setattr(loop.time, "sleep", lambda seconds: (pauses.append(seconds),
                                                             real_sleep(min(seconds, 0.01))))
    servers = []
    real_request, real_prepare = loop.Client.request, loop.Runners.prepare

    def request(client, route, *arguments, **keywords):
        if route == "pull":
            spied.pull_retries.append(keywords.get("retry_seconds"))
        return real_request(client, route, *arguments, **keywords)

    def prepare(runners, *arguments):
        spied.prepared += 1
        return real_prepare(runners, *arguments)

    spied = types.SimpleNamespace(pull_retries=[], prepared=0)
    monkeypatch.setattr(loop.Client, "request", request)
    monkeypatch.setattr(loop.Runners, "prepare", prepare)
    monkeypatch.setattr(loop, "seconds_since_start", lambda: 0.0)

    def run(respond, keys=(b"k1",), **settings):
        caller = Caller(respond, keys)
        servers.append(caller)
        values = {"request_id": 1, "urls": (caller.url,), "key": "k1",
                  "task_variable": "SHEEPDOG_TEST_TASK", "python": tuple(sys.version_info[:2]),
                  "retry_seconds": 5.0, "heartbeat_seconds": 60.0, **settings}
        return loop.run(WorkerSettings(**values).to_dict()), caller.seen, pauses

    run.spied = spied
    yield run
    for caller in servers:
        caller.shutdown()
        caller.server_close()
    for number, handler in saved.items():
        signal.signal(number, handler)


def routes(seen):
    return [(path.request_id, path.route, path.worker, path.seq) for path, _key, _body in seen
            if path.route != "heartbeat"]


def pull_sizes(seen):
    return [path.size for path, _key, _body in seen if path.route == "pull"]


def reports(seen):
    """(index, kind, payload) of every report the worker posted."""
    return [(index, kind, bytes(payload)) for path, _key, body in seen
            if path.route == "results" for index, kind, payload in unpack_frames(body)]


def results(seen):
    return {index: serialisation.loads(payload) for index, kind, payload in reports(seen)
            if kind == RESULT}


def test_a_worker_told_to_wait_asks_again_for_the_same_pull_after_half_a_second(worker):
    pulls = iter([frames((0, WAIT, b"")), arguments((0, 1), (1, 2)), arguments((2, 3)), b""])

    def respond(path, body):
        return BLOBS["plus_one"] if path.route == "function" else (
            next(pulls) if path.route == "pull" else b"")

    status, seen, pauses = worker(respond)
    assert status == 0
    assert routes(seen) == [(1, "function", None, None), (1, "pull", "1.3", 1),
                            (1, "pull", "1.3", 1), (1, "results", None, None),
                            (1, "pull", "1.3", 2), (1, "results", None, None),
                            (1, "pull", "1.3", 3)]
    assert pauses.count(0.5) == 1
    assert results(seen) == {0: 2, 1: 3, 2: 4}
    sizes = pull_sizes(seen)
    assert sizes[:2] == [1, 1] and sizes[2] > 1 and sizes[3] > 1  # quick tasks: batches grow
    assert worker.spied.prepared == 2  # a spare, forked for the batch after each
    assert worker.spied.pull_retries == [None] * 4
    # The caller is told the worker's versions with its first batch of a function only.
    assert [index for index, kind, _payload in reports(seen) if kind == VERSIONS] == [0]


def test_a_worker_handed_over_speaks_for_its_new_request_and_fetches_each_function_once(
        worker):
    def ticket(request, key, name, function):
        return (0, HANDOVER, json.dumps({"request": request, "key": key, "worker": name,
                                         "function": DIGESTS[function]}).encode())

    answers = {
        (1, "pull", 1): [arguments((0, 1))],
        (1, "pull", 2): [frames(ticket(2, "k2", "5.1", "times_ten")), b""],
        (2, "pull", 1): [arguments((7, 4))],
        (2, "pull", 2): [frames(ticket(1, "k1", "1.3", "plus_one"),
                                *unpack_frames(arguments((9, 5))))],
    }

    def respond(path, body):
        if path.route == "function":
            return BLOBS["plus_one" if path.request_id == 1 else "times_ten"]
        if path.route == "pull":
            return answers[(path.request_id, "pull", path.seq)].pop(0)
        return b""

    status, seen, _pauses = worker(respond, keys=(b"k1", b"k2"))
    assert status == 0
    assert routes(seen) == [
        (1, "function", None, None), (1, "pull", "1.3", 1), (1, "results", None, None),
        (1, "pull", "1.3", 2), (2, "function", None, None),
        (2, "pull", "5.1", 1), (2, "results", None, None), (2, "pull", "5.1", 2),
        (1, "results", None, None), (1, "pull", "1.3", 2)]
    assert [key for path, key, _body in seen] == [b"k1"] * 4 + [b"k2"] * 4 + [b"k1"] * 2
    assert results(seen) == {0: 2, 7: 40, 9: 6}
    assert worker.spied.pull_retries == [None] * 5  # a worker handed over is not idle


def test_a_worker_on_another_python_fails_each_task_saying_why_without_loading_f(worker):
    pulls = iter([arguments((0, 1), (1, 2)), b""])

    def respond(path, body):
        assert path.route != "function", "nothing of f is fetched"
        return next(pulls) if path.route == "pull" else b""

    status, seen, _pauses = worker(respond, python=(2, 7))
    assert status == 1
    assert pull_sizes(seen)[1] > 1  # the batch took no time
    assert routes(seen) == [(1, "pull", "1.3", 1), (1, "results", None, None),
                            (1, "pull", "1.3", 2)]
    errors = {index: payload.decode() for index, kind, payload in reports(seen)
              if kind == ERROR}
    assert list(errors) == [0, 1]
    assert all("the function was shipped from Python 2.7;" in text for text in errors.values())


def test_an_idle_worker_whose_caller_has_gone_leaves_quietly(worker, monkeypatch):
    monkeypatch.setattr(loop, "IDLE_RETRY_SECONDS", 0.2)
    pulls = iter([frames((0, IDLE, b""))])

    def respond(path, body):
        if path.route == "function":
            return BLOBS["plus_one"]
        return next(pulls, None)  # then the connection drops, again and again

    status, _seen, pauses = worker(respond, retry_seconds=60.0)
    assert status == 0
    assert 0.5 not in pauses  # the server did the waiting


def test_a_busy_worker_whose_caller_has_gone_raises(worker):
    def respond(path, body):
        return BLOBS["plus_one"] if path.route == "function" else None

    with pytest.raises(ConnectionError):
        worker(respond, retry_seconds=0.2)


def test_a_worker_too_close_to_its_walltime_says_it_leaves_and_takes_nothing(worker):
    def respond(path, body):
        return BLOBS["plus_one"] if path.route == "function" else b""

    status, seen, _pauses = worker(respond, walltime_seconds=1.0)
    assert status == 0
    assert routes(seen) == [(1, "function", None, None), (1, "leaving", "1.3", None)]


def test_an_idle_worker_asks_with_ten_seconds_of_patience_and_once_busy_again_raises(worker):
    pulls = iter([frames((0, IDLE, b"")), arguments((0, 1))])

    def respond(path, body):
        if path.route == "function":
            return BLOBS["plus_one"]
        return next(pulls, None) if path.route == "pull" else b""

    with pytest.raises(ConnectionError):
        worker(respond, retry_seconds=0.2)
    assert worker.spied.pull_retries[:3] == [None, 10.0, None]


def exits_with(x):
    os._exit(x)


def test_a_worker_whose_task_ended_its_runner_ends_with_that_status(worker):
    pulls = iter([arguments((1, 3)), arguments((2, 0)), b""])

    def respond(path, body):
        if path.route == "function":
            return serialisation.dumps_function(exits_with)
        return next(pulls) if path.route == "pull" else b""

    status, seen, _pauses = worker(respond)
    assert status == 3
    assert [path.task for path, _key, _body in seen if path.route == "lost"] == [1, 2]


def plus_one_slowly_from_two(x):
    import time

    if x == 2:
        time.sleep(0.5)  # long enough for its supervisor to act before the next task
    return x + 1


def test_a_worker_far_from_its_walltime_runs_its_batches_whole(worker):
    pulls = iter([arguments((0, 1)), arguments((1, 2), (2, 3), (3, 4)), b""])

    def respond(path, body):
        if path.route == "function":
            return serialisation.dumps_function(plus_one_slowly_from_two)
        return next(pulls) if path.route == "pull" else b""

    status, seen, _pauses = worker(respond, walltime_seconds=20.0)
    assert status == 0
    assert "release" not in [path.route for path, _key, _body in seen]
    assert results(seen) == {0: 2, 1: 3, 2: 4, 3: 5}
