"""The worker's HTTP client against a scripted server: which answers it retries, how long
it waits, and what it reads back."""

import hashlib
import http.server
import socket
import threading

import pytest

from sheepdog.wire import protocol
from sheepdog.worker import client as client_module
from sheepdog.worker.client import Client, PermanentHTTPError


class Scripted(http.server.ThreadingHTTPServer):
    """A local HTTP server that gives the scripted answers in turn, (status, body, headers),
    and keeps what each request was: (method, path, headers, body)."""

    daemon_threads = True

    def __init__(self, answers):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = list(answers)
        self.requests = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self):
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        status, payload, headers = self.server.answers.pop(0)
        if status is None:  # the connection drops before any answer
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = headers is THEN_CLOSE  # without saying so

    do_GET = do_POST = _answer

    def log_message(self, *_arguments):
        pass


#: Answer headers that close the connection after the answer, unannounced, as a server
#: closing an idle keep-alive connection does.
THEN_CLOSE = {}
#: An answer that closes the connection instead.
DROP = (None, b"", {})


@pytest.fixture
def scripted():
    servers = []

    def start(*answers):
        server = Scripted(answers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def refusing_url():
    """The URL of a port that nothing listens on: connections to it are refused."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}"


def test_routes_that_refuse_connections_are_left_for_the_next_in_turn_at_once(scripted,
                                                                             monkeypatch):
    said = []
    monkeypatch.setattr(client_module, "log", said.append)
    server = scripted((200, b"fn", {}))
    nobody, nobody_either = refusing_url(), refusing_url()
    client = Client([nobody, nobody_either, server.url], 1, b"key", retry_seconds=5)
    assert client.request("function") == bytearray(b"fn")
    assert [line.split(" (")[0] for line in said] == [
        f"cannot connect to {nobody}", f"cannot connect to {nobody_either}"]


def test_when_every_route_refuses_the_client_waits_between_rounds_and_gives_up(monkeypatch):
    said, outcome = [], []
    monkeypatch.setattr(client_module, "log", said.append)
    client = Client([refusing_url(), refusing_url()], 1, b"key", retry_seconds=2)

    def ask():
        try:
            client.request("function")
        except ConnectionError as error:
            outcome.append(error)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(60)
    assert outcome, "the client never gave up"
    kinds = ["move" if line.startswith("cannot connect to") else "wait" for line in said]
    assert kinds[:6] == ["move", "move", "wait"] * 2
    waits = [line.rsplit("retrying in ", 1)[1] for line in said if "retrying in" in line]
    assert waits[:2] == ["0.2 s", "0.5 s"]  # each wait twice the last


def test_a_connection_that_drops_after_it_was_made_is_tried_again_on_the_same_route(
        scripted, monkeypatch):
    monkeypatch.setattr(client_module, "log", lambda message: None)
    first = scripted(DROP, (200, b"first", THEN_CLOSE), (200, b"first again", {}))
    second = scripted((200, b"second", {}))
    client = Client([first.url, second.url], 1, b"key", retry_seconds=5)
    assert client.request("function") == bytearray(b"first")  # dropped once, then answered
    assert client.request("function") == bytearray(b"first again")  # its kept one closed
    assert client.url == first.url and not second.requests


def test_a_full_disk_is_asked_again_with_the_default_patience(scripted, monkeypatch):
    monkeypatch.setattr(client_module, "log", lambda message: None)
    server = scripted((507, b"the disk is full", {}), (200, b"stored", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)  # no disk_full_seconds given
    assert client.request("results", b"reports") == bytearray(b"stored")
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_answers_that_may_pass_later_are_asked_again(scripted, monkeypatch, status):
    monkeypatch.setattr(client_module, "log", lambda message: None)
    server = scripted((status, b"later", {}), (200, b"now", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)
    assert client.request("function") == bytearray(b"now")


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_a_refusal_is_final_and_says_why_in_at_most_2000_characters(scripted, status):
    server = scripted((status, b"  " + b"why " * 1000 + b"  ", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)
    with pytest.raises(PermanentHTTPError) as raised:
        client.request("function")
    reason = ("why " * 1000).strip()[:2000]
    assert raised.value.status == status and str(raised.value) == f"HTTP {status}: {reason}"
    assert len(server.requests) == 1


def test_a_refusal_that_is_not_utf_8_is_reported_with_replacement_characters(scripted):
    server = scripted((400, b"bad \xff byte", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)
    with pytest.raises(PermanentHTTPError, match="^HTTP 400: bad \ufffd byte$"):
        client.request("function")


def test_giving_up_says_what_failed_last(scripted, monkeypatch):
    monkeypatch.setattr(client_module, "log", lambda message: None)
    server = scripted(*[(503, b"busy", {})] * 20)
    client = Client([server.url], 1, b"key", retry_seconds=1)
    with pytest.raises(ConnectionError) as raised:
        client.request("function")
    assert str(raised.value) == (
        f"gave up on GET /requests/1/function via {server.url} after 1 s: HTTP 503: busy")
    said = []
    monkeypatch.setattr(client_module, "log", said.append)
    nobody = refusing_url()
    with pytest.raises(ConnectionError) as raised:
        Client([nobody], 1, b"key", retry_seconds=1).request("function")
    assert str(raised.value).startswith(
        f"gave up on GET /requests/1/function via {nobody} after 1 s: ConnectionRefusedError: ")
    # its only route: each failure is retried there, none is a move to another
    assert said and all(line.startswith(f"GET /requests/1/function via {nobody} failed (")
                        for line in said)


def test_connects_and_answers_are_waited_for_a_bounded_time(scripted):
    server = scripted((200, b"fn", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)
    assert client.request("function") == bytearray(b"fn")
    # a number of seconds each (None would wait for ever on a caller that went silent)
    assert 0 < client.connection.timeout == client_module.CONNECT_SECONDS < 60
    assert 0 < client.connection.sock.gettimeout() == client_module.READ_SECONDS < 600


def test_a_url_without_a_host_is_refused_naming_it():
    client = Client(["http://:8000/"], 1, b"key", retry_seconds=1)
    with pytest.raises(ValueError) as raised:
        client.request("function")
    assert str(raised.value) == "the caller's URL 'http://:8000/' names no host"


def test_each_request_is_signed_for_the_body_it_carries_and_says_its_type_and_length(
        scripted):
    server = scripted(*[(200, b"", {})] * 3)
    client = Client([server.url], 7, b"key", retry_seconds=5)
    client.request("function")
    client.request("heartbeat", worker="1.1")  # a POST without a body
    client.request("results", [b"ab", b"cd"])
    (get, get_path, get_headers, get_body), *posts = server.requests
    assert (get, get_body) == ("GET", b"")
    assert "Content-Type" not in get_headers and "Content-Length" not in get_headers
    assert [(method, body, headers["Content-Type"], headers["Content-Length"])
            for method, _path, headers, body in posts] == [
        ("POST", b"", "application/octet-stream", "0"),
        ("POST", b"abcd", "application/octet-stream", "4")]
    for method, path, headers, body in server.requests:
        digest = protocol.signed_digest(b"key", method, path, headers["Authorization"],
                                        headers[protocol.DIGEST_HEADER])
        assert digest == hashlib.sha256(body).hexdigest()


def test_an_empty_answer_leaves_the_connection_ready_for_the_next_request(scripted):
    server = scripted((200, b"", {}), (200, b"", {}), (200, b"fn", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)
    assert client.request("heartbeat", worker="1.1") == bytearray()
    assert client.request("heartbeat", worker="1.1") == bytearray()
    assert client.request("function") == bytearray(b"fn")
    assert len(server.requests) == 3  # none was sent again


def test_a_job_file_naming_no_key_makes_the_worker_leave_saying_so(capsys):
    from sheepdog.wire.settings import WorkerSettings

    with pytest.raises(SystemExit) as raised:
        client_module.read_key(WorkerSettings(request_id=1))
    assert raised.value.code == protocol.EXIT_NO_KEY
    assert capsys.readouterr().err == ("sheepdog worker: the job file names neither the "
                                       "request's key nor its key file\n")


def test_the_key_is_read_from_the_settings_or_from_its_file_without_the_line_end(tmp_path):
    from sheepdog.wire.settings import WorkerSettings

    assert client_module.read_key(WorkerSettings(request_id=1, key="inline")) == b"inline"
    path = tmp_path / "key"
    path.write_bytes(b"from-file\n")
    assert client_module.read_key(WorkerSettings(request_id=1, key_file=str(path))) == (
        b"from-file")


def test_a_key_file_the_worker_cannot_read_is_named_with_where_it_must_be(tmp_path, capsys):
    from sheepdog.wire.settings import WorkerSettings

    path = tmp_path / "missing"
    with pytest.raises(SystemExit) as raised:
        client_module.read_key(WorkerSettings(request_id=1, key_file=str(path)))
    assert raised.value.code == protocol.EXIT_NO_KEY
    error = capsys.readouterr().err
    assert error.startswith(f"sheepdog worker: cannot read the request's key file {path} on "
                            f"{socket.gethostname()}: [Errno 2] ")
    assert error.endswith(". The key is written on the head node; compute nodes must see the "
                          "same home directory (see 'How workers reach you' in sheepdog's "
                          "docs)\n")


def test_an_answer_that_ends_early_is_an_incomplete_read_saying_how_much_is_missing():
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_short():
        connection, _address = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n12345")

    server = threading.Thread(target=answer_short, daemon=True)
    server.start()
    client = Client([f"http://127.0.0.1:{listener.getsockname()[1]}"], 1, b"key",
                    retry_seconds=0)
    try:
        with pytest.raises(ConnectionError) as raised:
            client.request("function")
    finally:
        server.join(timeout=30)
        listener.close()
    assert str(raised.value).endswith("IncompleteRead(5 bytes read, 4 more expected)")


def test_work_to_do_while_waiting_is_done_once_however_often_the_request_is_sent(scripted):
    server = scripted(DROP, (200, b"fn", {}))
    client = Client([server.url], 1, b"key", retry_seconds=5)
    calls = []
    assert client.request("function", while_waiting=lambda: calls.append("done")) == b"fn"
    assert len(server.requests) == 2
    assert calls == ["done"]
