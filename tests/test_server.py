import http.client
import struct
import threading

import pytest

from sheepdog.wire.protocol import (
    ARGUMENTS,
    ERROR,
    RESULT,
    auth_headers,
    pack_frames,
    unpack_frames,
)
from sheepdog.server.callbacks import Callbacks
from sheepdog.server.host import Server

from .conftest import SignedClient


@pytest.fixture
def request_id(storage):
    return storage.create_request(b"fn", [b"a1", b"a2"], "right", "local")


@pytest.fixture
def client(storage):
    """The callback protocol's core in-process, each request signed with the key "right"
    as a worker would."""
    return SignedClient(Callbacks(storage, max_body_bytes=1000), b"right")


def test_worker_fetches_the_function_and_pulls_arguments_until_none_is_left(
        client, storage, request_id):
    assert client.get(f"/requests/{request_id}/function").data == b"fn"
    storage.add_workers(request_id, 1)
    pull = f"/requests/{request_id}/workers/1.1/pull"
    assert unpack_frames(client.post(f"{pull}/1/5/1").data) == [(1, ARGUMENTS, b"a1")]
    assert unpack_frames(client.post(f"{pull}/1/5/1").data) == [(1, ARGUMENTS, b"a1")]  # again
    assert unpack_frames(client.post(f"{pull}/2/5/1").data) == [(2, ARGUMENTS, b"a2")]
    assert client.post(f"{pull}/3/5/1").data == b""  # nothing left: the worker may go
    assert client.post(f"/requests/{request_id}/workers/2.1/pull/1/5/1").status_code == 404
    assert client.post(f"/requests/{request_id}/workers/1.1/heartbeat").status_code == 200


def test_a_batch_of_results_and_errors_is_stored_in_one_post(client, storage, request_id):
    body = b"".join(pack_frames([(1, RESULT, b"\x80r1"), (2, ERROR, "boom".encode())]))
    response = client.post(f"/requests/{request_id}/results", data=body)
    assert response.status_code == 200 and response.data == b"stored 2 of 2\n"
    again = client.post(f"/requests/{request_id}/results", data=body)
    assert again.data == b"stored 0 of 2\n"
    assert [row[1:] for row in storage.results(request_id)] == [("done", b"\x80r1"), ("failed", None)]


@pytest.mark.parametrize("body", [b"garbage", b"".join(pack_frames([(1, ERROR, b"\xff")])),
                                  b"".join(pack_frames([(1, RESULT, b"")])), b""])
def test_malformed_batches_are_refused_whole(client, storage, request_id, body):
    response = client.post(f"/requests/{request_id}/results", data=body)
    assert response.status_code == 400
    assert storage.progress(request_id).pending == 2


def test_a_request_signed_with_another_key_or_unsigned_is_401(client, request_id):
    path = f"/requests/{request_id}/function"
    assert client.get(path, headers=auth_headers(b"wrong", "GET", path)).status_code == 401
    assert client.get(path, headers={}).status_code == 401
    garbled = {"Authorization": "Sheepdog !!!", "X-Sheepdog-Digest": "0" * 64}
    assert client.get(path, headers=garbled).status_code == 401
    basic = {"Authorization": "Basic c2hlZXBkb2c6cmlnaHQ="}  # the old scheme, right password
    assert client.get(path, headers=basic).status_code == 401


#: Every route a worker may call, by method and path (of request 1, worker 1.1, task 1).
EVERY_ROUTE = [("GET", "/requests/1/function"), ("POST", "/requests/1/results"),
               ("POST", "/requests/1/workers/1.1/heartbeat"),
               ("POST", "/requests/1/workers/1.1/killing"),
               ("POST", "/requests/1/workers/1.1/release/1"),
               ("POST", "/requests/1/workers/1.1/pull/1/5/1"),
               ("POST", "/requests/1/workers/1.1/lost/1/1"),
               ("POST", "/requests/1/tasks/1/result"),
               ("POST", "/requests/1/tasks/1/error"), ("POST", "/requests/1/tasks/1/output")]


@pytest.mark.parametrize("method, path", EVERY_ROUTE)
def test_a_signature_is_compared_whole(client, storage, request_id, method, path):
    """An empty or one-character claim, or one that shares only a prefix with the right
    signature, is refused on every route, and nothing is stored or handed out."""
    assert request_id == 1
    storage.add_workers(request_id, 1)
    body = b"" if method == "GET" else b"[1]"
    right = auth_headers(b"right", method, path, body)
    digest, signed = right["X-Sheepdog-Digest"], right["Authorization"].split(" ", 1)[1]
    claims = ["", "a", signed[:1], signed[:32], signed[:-1],
              signed[:-1] + ("0" if signed[-1] != "0" else "1")]
    for claim in claims:
        forged = {"Authorization": f"Sheepdog {claim}", "X-Sheepdog-Digest": digest}
        answer = client.open(method, path, data=body, headers=forged)
        assert answer.status_code == 401, (claim, answer)
    assert storage.progress(request_id).pending == 2
    assert client.open(method, path, data=body).status_code != 401  # signed whole, it passes


def test_a_report_for_a_task_index_beyond_sqlite_integers_is_refused(client, request_id):
    body = b"".join(pack_frames([(2**63, RESULT, b"\x80r")]))
    response = client.post(f"/requests/{request_id}/results", data=body)
    assert response.status_code == 400 and b"task indices" in response.data


def test_a_signature_is_valid_only_for_its_own_route_tasks_and_body(client, storage, request_id):
    """A request seen in flight cannot be replayed for another task, route or body."""
    signed_for_task_1 = auth_headers(b"right", "POST", f"/requests/{request_id}/tasks/1/result",
                                     b"\x80r")
    other_task = client.post(f"/requests/{request_id}/tasks/2/result", data=b"\x80r",
                             headers=signed_for_task_1)
    other_route = client.post(f"/requests/{request_id}/tasks/1/error", data=b"\x80r",
                              headers=signed_for_task_1)
    other_body = client.post(f"/requests/{request_id}/tasks/1/result", data=b"\x80forged",
                             headers=signed_for_task_1)
    assert (other_task.status_code, other_route.status_code) == (401, 401)
    assert other_body.status_code == 400 and b"digest" in other_body.data
    assert storage.progress(request_id).pending == 2
    assert client.post(f"/requests/{request_id}/tasks/1/result", data=b"\x80r",
                       headers=signed_for_task_1).status_code == 200


def test_another_requests_key_does_not_open_this_request(client, storage, request_id):
    other = storage.create_request(b"fn2", [b"x"], "other-key", "local")
    path = f"/requests/{request_id}/function"
    assert client.get(path, headers=auth_headers(b"other-key", "GET", path)).status_code == 401
    assert client.get(f"/requests/{other}/function",
                      headers=auth_headers(b"other-key", "GET", f"/requests/{other}/function")
                      ).data == b"fn2"


@pytest.mark.parametrize(
    "path",
    ["/requests/999/function", "/requests/1/tasks/99/result", "/requests/1/tasks/-1/result",
     "/requests/99999999999999999999999/function", "/requests/x/function", "/nothing",
     "/requests/1/tasks/9223372036854775808/error", "/requests/1/tasks/1,2/result",
     "/requests/1/tasks/" + "9" * 5000 + "/lost", "/requests/1/workers/9.9/heartbeat"],
)
def test_unknown_request_task_or_worker_is_404(client, request_id, path):
    assert client.post(path, data=b"x").status_code == 404


def test_result_is_stored_as_bytes_and_counted_once(client, storage, request_id):
    path = f"/requests/{request_id}/tasks/1/result"
    assert client.post(path, data=b"\x80result").data == b"stored\n"
    again = client.post(path, data=b"\x80other")
    assert again.status_code == 200 and again.data == b"already recorded\n"
    assert storage.results(request_id)[0] == (b"a1", "done", b"\x80result")
    assert storage.progress(request_id).done == 1


def test_error_text_is_stored(client, storage, request_id):
    response = client.post(f"/requests/{request_id}/tasks/2/error",
                           data="Traceback ñ".encode())
    assert response.status_code == 200
    assert storage.errors(request_id) == [(b"a2", "failed", "Traceback ñ")]


@pytest.mark.parametrize(
    "suffix, body, status",
    [("result", b"", 400), ("error", b"\xff\xfe", 400), ("result", b"x" * 1001, 413),
     ("output", b"", 400)],
)
def test_malformed_posts_get_4xx_with_a_reason(client, request_id, suffix, body, status):
    response = client.post(f"/requests/{request_id}/tasks/1/{suffix}", data=body)
    assert response.status_code == status
    assert b"Traceback" not in response.data


def test_wrong_method_is_405(client, request_id):
    assert client.get(f"/requests/{request_id}/tasks/1/result").status_code == 405


def test_the_host_serves_over_a_real_socket_with_keep_alive(storage, request_id):
    server = Server(storage, port=0, use_tls=False).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        storage.add_workers(request_id, 1)
        for index in (1, 2):
            path = f"/requests/{request_id}/workers/1.1/pull/{index}/1/1"
            connection.request("POST", path, body=b"",
                               headers=auth_headers(b"right", "POST", path, b""))
            response = connection.getresponse()
            assert response.status == 200
            assert unpack_frames(response.read()) == [(index, ARGUMENTS, b"a%d" % index)]
        path = f"/requests/{request_id}/tasks/1/result"
        connection.request("POST", path, body=b"r",
                           headers=auth_headers(b"right", "POST", path, b"r"))
        assert connection.getresponse().read() == b"stored\n"
        connection.close()
    finally:
        server.stop()
    assert not server.running


def test_importing_sheepdog_imports_no_web_framework():
    """Tornado (and Flask, for the dashboard) are imported only when a server starts."""
    import os
    import subprocess
    import sys

    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    probe = ("import sys, sheepdog, sheepdog.server, sheepdog.dashboard; print(sorted({name for "
             "name in sys.modules if name.split('.')[0] in ('flask', 'werkzeug', 'tornado')}))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONPATH": repository})
    assert found.stdout.strip() == "[]"


def test_a_stopped_server_starts_again(storage, request_id):
    server = Server(storage, port=0, use_tls=False).start(wait=False)
    server.stop()  # before it listened: it still stops
    assert not server.running
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"sheepdog server\n"
        connection.close()
    finally:
        server.stop()
    assert not server.running


def test_port_in_use_is_a_clear_error(storage):
    first = Server(storage, port=0).start()
    try:
        with pytest.raises(OSError, match="could not listen"):
            Server(storage, port=first.port).start()
    finally:
        first.stop()


def test_server_handles_concurrent_posts(storage):
    request_id = storage.create_request(b"fn", [b"a"] * 50, "right", "local")
    server = Server(storage, port=0, use_tls=False).start()

    def post(index):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        path = f"/requests/{request_id}/tasks/{index}/result"
        connection.request("POST", path, body=b"r",
                           headers=auth_headers(b"right", "POST", path, b"r"))
        assert connection.getresponse().status == 200

    threads = [threading.Thread(target=post, args=(i,)) for i in range(1, 51)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.stop()
    assert storage.progress(request_id).done == 50


def test_tls_server_talks_to_a_worker_pinning_its_certificate(storage, request_id):
    from sheepdog.worker.client import Client

    server = Server(storage, port=0).start()
    try:
        assert server.url("127.0.0.1").startswith("https://")
        client = Client([server.url("127.0.0.1")], request_id, b"right", retry_seconds=5,
                        certificate=server.certificate.decode())
        assert client.request("function") == b"fn"
    finally:
        server.stop()


def _impostor(certificate_and_key):
    """A TLS listener with another certificate that counts the bytes anyone sends it."""
    import socket
    import ssl

    from sheepdog.server import tls

    context = tls.server_context(*certificate_and_key)
    listener = socket.create_server(("127.0.0.1", 0))
    received = []

    def serve():
        while True:
            try:
                raw, _address = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as wrapped:
                    received.append(len(wrapped.recv(65536)))
            except (OSError, ssl.SSLError):
                received.append(0)

    threading.Thread(target=serve, daemon=True).start()
    return listener, received


def test_worker_sends_nothing_to_a_server_with_another_certificate(storage, request_id):
    from sheepdog.server import tls
    from sheepdog.worker.client import Client

    listener, received = _impostor(tls.generate_identity())
    pinned, _key = tls.generate_identity()
    try:
        client = Client([f"https://127.0.0.1:{listener.getsockname()[1]}"], request_id,
                        b"right", retry_seconds=1.5, certificate=pinned.decode())
        with pytest.raises(ConnectionError) as raised:
            client.request("result", b"\x80secret result", task=1)
    finally:
        listener.close()
    assert len(received) >= 2 and not any(received)  # retried, and never sent a byte
    assert ": SSLCertVerificationError: " in str(raised.value)
    assert str(raised.value).endswith(" (not the caller's certificate: nothing was sent)")


def test_worker_moves_on_from_an_impostor_to_the_next_route(storage, request_id):
    from sheepdog.server import tls
    from sheepdog.worker.client import Client

    listener, received = _impostor(tls.generate_identity())
    server = Server(storage, port=0).start()
    try:
        urls = [f"https://127.0.0.1:{listener.getsockname()[1]}", server.url("127.0.0.1")]
        client = Client(urls, request_id, b"right", retry_seconds=5,
                        certificate=server.certificate.decode())
        assert client.request("function") == b"fn"
        assert client.url == server.url("127.0.0.1")
    finally:
        listener.close()
        server.stop()
    assert not any(received)


def test_worker_tries_the_next_route_when_the_first_does_not_answer(storage, request_id,
                                                                    monkeypatch):
    """A route whose connects vanish, as to a caller behind NAT, is left after CONNECT_SECONDS."""
    import socket

    from sheepdog.worker.client import Client

    monkeypatch.setattr("sheepdog.worker.client.CONNECT_SECONDS", 0.5)
    # A listener that never accepts, with its backlog filled: Linux drops further
    # SYNs, so a connect to it times out instead of being refused.
    black_hole = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(black_hole.getsockname())
        fillers.append(filler)
    server = Server(storage, port=0, use_tls=False).start()
    try:
        urls = [f"http://127.0.0.1:{black_hole.getsockname()[1]}", server.url("127.0.0.1")]
        client = Client(urls, request_id, b"right", retry_seconds=5)
        assert client.request("function") == b"fn"
        assert client.url == server.url("127.0.0.1")
    finally:
        server.stop()
        for sock in [black_hole, *fillers]:
            sock.close()


def test_unsigned_chunked_body_is_refused_before_it_is_read(storage, request_id):
    """A chunked body skips the Content-Length checks; it must still not be read."""
    import socket

    server = Server(storage, port=0, use_tls=False).start()
    sent, limit = 0, 200 << 20
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall((f"POST /requests/{request_id}/results HTTP/1.1\r\nHost: x\r\n"
                         f"Transfer-Encoding: chunked\r\n\r\n").encode())
            chunk = b"%x\r\n" % (1 << 20) + bytes(1 << 20) + b"\r\n"
            with pytest.raises(OSError):  # the server closed the connection unread
                while sent < limit:
                    raw.sendall(chunk)
                    sent += len(chunk)
            answer = raw.recv(4096)
    except ConnectionResetError:
        answer = b"HTTP/1.1 401 (reset before it could be read)"
    finally:
        server.stop()
    assert sent < limit // 4, f"the server took in {sent} bytes of an unsigned body"
    assert answer.startswith(b"HTTP/1.1 401")


def test_unsigned_body_of_announced_length_is_refused_before_it_is_read(storage, request_id):
    """Within the size limit, but unsigned: refused from its headers, its bytes left unread."""
    import socket

    server = Server(storage, port=0, use_tls=False).start()
    sent, length = 0, 200 << 20
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall((f"POST /requests/{request_id}/tasks/1/result HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {length}\r\n\r\n").encode())
            piece = bytes(1 << 20)
            with pytest.raises(OSError):  # the server closed the connection unread
                while sent < length:
                    raw.sendall(piece)
                    sent += len(piece)
            answer = raw.recv(4096)
    except ConnectionResetError:
        answer = b"HTTP/1.1 401 (reset before it could be read)"
    finally:
        server.stop()
    assert sent < length // 4, f"the server took in {sent} bytes of an unsigned body"
    assert answer.startswith(b"HTTP/1.1 401")
    assert storage.progress(request_id).pending == 2



def test_the_default_body_limit_is_one_gib_and_a_body_of_exactly_the_limit_is_read(storage):
    callbacks = Callbacks(storage)
    assert callbacks.too_large(str(1 << 30)) is None
    refused = callbacks.too_large(str((1 << 30) + 1))
    assert refused.status == 413 and refused.body == (
        b"body of 1073741825 bytes is over the limit of 1073741824 bytes\n")
    assert Callbacks(storage, max_body_bytes=10).too_large("10") is None
    assert Callbacks(storage, max_body_bytes=10).too_large(None) is None


def test_a_content_length_that_is_no_number_is_a_400_saying_so(storage):
    refused = Callbacks(storage).too_large("ten")
    assert (refused.status, refused.body) == (400, b"Content-Length is not a number\n")


def test_error_and_output_bodies_over_a_small_limit_are_still_read(storage, request_id):
    callbacks = Callbacks(storage, max_body_bytes=1000)
    for route in ("error", "output"):
        assert callbacks.too_large("5000", f"/requests/{request_id}/tasks/1/{route}") is None
    assert callbacks.too_large("5000", f"/requests/{request_id}/tasks/1/result").status == 413
    client = SignedClient(callbacks, b"right")
    assert client.post(f"/requests/{request_id}/tasks/1/error", data=b"e" * 5000).status_code == 200
    assert storage.errors(request_id)[0][1:] == ("failed", "e" * 5000)


def test_refusals_are_plain_text_that_says_why(client, request_id):
    unsigned = client.get(f"/requests/{request_id}/function", headers={})
    assert (unsigned.status_code, unsigned.data) == (401, b"wrong or missing signature\n")
    assert unsigned.headers["Content-Type"] == "text/plain; charset=utf-8"
    stranger = client.post(f"/requests/{request_id}/workers/9.1/heartbeat")
    assert (stranger.status_code, stranger.data) == (404, b"no such worker\n")


def test_a_version_report_is_kept_for_the_caller_when_the_server_was_given_no_list(
        storage, request_id):
    from sheepdog.wire.modules import VersionReport
    from sheepdog.wire.protocol import VERSIONS

    callbacks = Callbacks(storage)
    report = VersionReport(host="node1", python="/usr/bin/python3", caller={}, worker={})
    body = b"".join(pack_frames([(1, RESULT, b"r"), (1, VERSIONS, report.to_bytes())]))
    answer = SignedClient(callbacks, b"right").post(f"/requests/{request_id}/results", data=body)
    assert (answer.status_code, answer.data) == (200, b"stored 1 of 1\n")
    assert callbacks.version_reports.take(request_id) == [report]


def test_output_is_stored_under_the_stream_its_frame_names(client, storage, request_id):
    from sheepdog.wire.protocol import OUTPUT, STDERR, STDOUT

    body = b"".join(pack_frames([(1, STDOUT, b"out"), (1, STDERR, b"err"), (2, OUTPUT, b"both")]))
    assert client.post(f"/requests/{request_id}/results", data=body).status_code == 200
    assert [log.output for log in storage.task_logs(request_id, 1)] == [
        {"stdout": "out", "stderr": "err"}]
    assert [log.output for log in storage.task_logs(request_id, 2)] == [
        {"stdout and stderr": "both"}]


def test_a_busy_database_is_a_503_to_retry_and_a_full_disk_a_507_naming_it(
        client, storage, request_id, monkeypatch, caplog):
    import sqlite3

    from sheepdog.storage import DiskFullError

    path = f"/requests/{request_id}/tasks/1/result"

    def busy(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(storage, "record_reports", busy)
    answer = client.post(path, data=b"r")
    assert (answer.status_code, answer.data) == (503, b"database busy, retry\n")
    assert answer.headers["Retry-After"] == "1"
    logged = [record.getMessage() for record in caplog.records]
    assert f"database busy answering POST {path}: database is locked" in logged

    def full(*args, **kwargs):
        raise DiskFullError("the disk of /data is full")

    monkeypatch.setattr(storage, "record_reports", full)
    answer = client.post(path, data=b"r")
    assert (answer.status_code, answer.data) == (507, b"the disk of /data is full\n")
    logged = [record.getMessage() for record in caplog.records]
    assert f"cannot store POST {path}: the disk of /data is full" in logged


def _headers(**values):
    from email.message import Message

    headers = Message()  # looked up regardless of case, as in Tornado
    for name, value in values.items():
        headers[name.replace("_", "-")] = value
    return headers


def test_the_health_page_alone_is_admitted_unsigned_and_answers_get_and_head(storage):
    callbacks = Callbacks(storage, max_body_bytes=1000)
    for method in ("GET", "HEAD"):
        assert callbacks.admit(method, "/", _headers()) is None
        reply = callbacks.respond(method, "/", _headers(), b"")
        assert (reply.status, reply.body) == (200, b"sheepdog server\n")
    refused = callbacks.admit("POST", "/", _headers(Content_Length="0"))
    assert (refused.status, refused.body) == (404, b"no such route\n")


def test_an_unsigned_or_oversized_request_is_refused_from_its_headers_alone(storage, request_id):
    callbacks = Callbacks(storage, max_body_bytes=1000)
    function = f"/requests/{request_id}/function"
    assert callbacks.admit("GET", function, _headers()).status == 401
    too_large = callbacks.admit("POST", f"/requests/{request_id}/results",
                                _headers(Content_Length="1001", **auth_headers(
                                    b"right", "POST", f"/requests/{request_id}/results")))
    assert too_large.status == 413
    unknown = callbacks.admit("GET", "/requests/999/function", _headers())
    assert (unknown.status, unknown.body) == (404, b"no such request\n")
    signed = callbacks.admit("GET", function, _headers(**auth_headers(b"right", "GET", function)))
    assert signed.path.route == "function"


def test_only_a_large_signed_result_of_a_known_task_is_received_into_a_file(storage, request_id):
    from sheepdog.wire.protocol import ALONE_BYTES

    callbacks = Callbacks(storage)

    def upload(method, path, length):
        headers = _headers(**auth_headers(b"right", method, path))
        if length is not None:
            headers["Content-Length"] = length
        return callbacks.result_upload(method, callbacks.admit(method, path, headers), headers)

    result = f"/requests/{request_id}/tasks/2/result"
    assert upload("POST", result, str(ALONE_BYTES)) == (request_id, 2)
    assert upload("POST", result, str(ALONE_BYTES - 1)) is None
    assert upload("POST", result, None) is None
    assert upload("POST", result, "1e9") is None
    assert upload("GET", result, str(ALONE_BYTES)) is None
    assert upload("POST", f"/requests/{request_id}/tasks/2/error", str(ALONE_BYTES)) is None
    assert upload("POST", f"/requests/{request_id}/tasks/3/result", str(ALONE_BYTES)) is None


def test_a_request_answered_without_its_admitted_route_is_checked_again(storage, request_id):
    callbacks = Callbacks(storage, max_body_bytes=1000)
    function = f"/requests/{request_id}/function"
    assert callbacks.respond("GET", function, _headers(), b"").status == 401
    signed = _headers(**auth_headers(b"right", "GET", function))
    reply = callbacks.respond("GET", function, signed, b"")
    assert (reply.status, reply.body, reply.content_type) == (
        200, b"fn", "application/octet-stream")
    nameless = storage.create_request(b"", [b"a"], "right", "local")
    path = f"/requests/{nameless}/function"
    assert callbacks.respond("GET", path, _headers(**auth_headers(b"right", "GET", path)),
                             b"").body == b""


def test_a_body_sent_in_chunks_is_held_to_the_limit_once_read(storage, request_id):
    """No Content-Length to refuse it by: the body read is measured before it is stored."""
    callbacks = Callbacks(storage, max_body_bytes=1000)
    path = f"/requests/{request_id}/tasks/1/result"
    for size, status in [(1000, 200), (1001, 413)]:
        body = b"r" * size
        headers = _headers(**auth_headers(b"right", "POST", path, body))
        reply = callbacks.respond("POST", path, headers, body, route=callbacks.admit(
            "POST", path, headers))
        assert reply.status == status
    assert reply.body == b"body over the limit of 1000 bytes\n"


def test_the_routes_of_a_task_store_what_they_name(client, storage, request_id):
    from sheepdog.wire.protocol import STDOUT

    tasks = f"/requests/{request_id}/tasks"
    output = b"".join(pack_frames([(1, STDOUT, b"printed")]))
    assert client.post(f"{tasks}/1/output", data=output).status_code == 200
    assert storage.progress(request_id).pending == 2  # output is no result
    worker = f"{storage.add_workers(request_id, 1)}.1"
    assert storage.pull(request_id, worker, 1, 1) == [1]
    lost = client.post(f"/requests/{request_id}/workers/{worker}/lost/1/1", data=b"segfault")
    assert (lost.status_code, lost.data) == (200, b"stored\n")
    assert storage.task_logs(request_id, 1)[0][1:3] == ("lost", "segfault")
    unknown = client.post(f"{tasks}/3/result", data=b"r")
    assert (unknown.status_code, unknown.data) == (404, b"no such task\n")


def test_a_kill_notice_makes_the_tasks_its_worker_loses_final_and_a_heartbeat_does_not(
        client, storage, request_id):
    launch = storage.add_workers(request_id, 2)
    for worker, task, notice in [(f"{launch}.1", 1, "heartbeat"), (f"{launch}.2", 2, "killing")]:
        assert storage.pull(request_id, worker, 1, 1) == [task]
        answer = client.post(f"/requests/{request_id}/workers/{worker}/{notice}")
        assert (answer.status_code, answer.data) == (200, b"stored\n")
        client.post(f"/requests/{request_id}/workers/{worker}/lost/{task}/1", data=b"gone")
    assert storage.requeue(request_id, max_attempts=3, failed_too=False) == [1]


@pytest.mark.parametrize("body", [b"[1.0]", b"[true]", b'["1"]', b"[0]", b"[4611686018427387905]",
                                  b'{"1": 1}', b"not json"])
def test_a_release_that_is_not_a_list_of_task_indices_is_a_400_saying_so(
        client, storage, request_id, body):
    worker = f"{storage.add_workers(request_id, 1)}.1"
    storage.pull(request_id, worker, 1, 2)
    answer = client.post(f"/requests/{request_id}/workers/{worker}/release/1", data=body)
    assert (answer.status_code, answer.data) == (
        400, b"a release names the tasks given back as a JSON list of task indices\n")
    largest = client.post(f"/requests/{request_id}/workers/{worker}/release/1",
                          data=b"[4611686018427387904]")
    assert (largest.status_code, largest.data) == (200, b"released 0 of 1\n")


def test_a_pull_told_to_wait_is_a_200_of_frames(client, storage, request_id):
    from sheepdog.wire.protocol import WAIT

    launch = storage.add_workers(request_id, 2)
    storage.pull(request_id, f"{launch}.1", 1, 2, least=2)
    answer = client.post(f"/requests/{request_id}/workers/{launch}.2/pull/1/2/1")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/octet-stream")
    assert unpack_frames(answer.data) == [(0, WAIT, b"")]
    handed = client.post(f"/requests/{request_id}/workers/{launch}.1/pull/1/2/1")
    assert handed.headers["Content-Type"] == "application/octet-stream"


def test_malformed_results_are_a_400_that_says_what_was_wrong(client, request_id):
    answer = client.post(f"/requests/{request_id}/results", data=b"garbage")
    assert (answer.status_code, answer.data) == (400, b"malformed results: truncated frame\n")


def test_a_body_other_than_the_signed_one_or_the_wrong_method_is_refused_saying_why(
        client, request_id):
    path = f"/requests/{request_id}/tasks/1/result"
    swapped = client.post(path, data=b"forged", headers={
        **auth_headers(b"right", "POST", path, b"signed"), "Content-Length": "6"})
    assert (swapped.status_code, swapped.data) == (
        400, b"the body does not match its signed digest\n")
    wrong = client.get(path)
    assert (wrong.status_code, wrong.data, wrong.headers["Allow"]) == (405, b"use POST\n", "POST")


def _frames(*frames):
    return b"".join(pack_frames(frames))


@pytest.mark.parametrize("suffix, body, reason", [
    ("results", _frames((1, 9, b"\0" * 4)),
     "malformed results: a task's seconds must be one double, 0 or more"),
    ("results", _frames((1, 9, struct.pack("!d", -1.0))),
     "malformed results: a task's seconds must be one double, 0 or more"),
    ("results", _frames((1, 9, struct.pack("!d", float("inf")))),
     "malformed results: a task's seconds must be one double, 0 or more"),
    ("results", _frames((1, ERROR, b"\xff")), "the error text of task 1 must be UTF-8"),
    ("results", _frames((1, ARGUMENTS, b"a")),
     ("malformed results: frames other than results, errors, exceptions, outputs, times and "
      "versions, or none")),
    ("results", _frames((0, RESULT, b"r")),
     f"malformed results: task indices go from 1 to {2**62}"),
    ("results", _frames((1, RESULT, b"")), "empty report for task 1"),
    ("tasks/1/output", b"garbage", "malformed output: truncated frame"),
    ("tasks/1/output", _frames((2, 3, b"out")), "malformed output: only output frames of task 1"),
    ("tasks/1/output", _frames((1, RESULT, b"r")),
     "malformed output: only output frames of task 1"),
    ("workers/{worker}/lost/1/1", b"\xff", "the reason why task 1 was lost must be UTF-8"),
    ("workers/{worker}/lost/1/1", b"", "empty reason for task 1"),
])
def test_a_malformed_report_is_a_400_that_names_what_is_wrong(client, storage, request_id,
                                                              suffix, body, reason):
    worker = f"{storage.add_workers(request_id, 1)}.1"
    storage.pull(request_id, worker, 1, 1)
    answer = client.post(f"/requests/{request_id}/{suffix.format(worker=worker)}", data=body)
    assert (answer.status_code, answer.data) == (400, reason.encode() + b"\n")
    assert storage.progress(request_id).finished == 0


def test_the_largest_task_index_may_report_and_output_and_all_its_frames_count(
        client, storage, request_id):
    from sheepdog.wire.protocol import BEGUN, EXCEPTION, RAN, STDOUT

    body = _frames((1, RESULT, b"r"), (1, STDOUT, b"o"), (1, RAN, struct.pack("!d", 0.5)),
                   (2, ERROR, b"e"), (2, EXCEPTION, b"x"), (2, BEGUN, b""),
                   (2, RAN, struct.pack("!d", 0.0)), (2**62, STDOUT, b"o"))
    answer = client.post(f"/requests/{request_id}/results", data=body)
    assert (answer.status_code, answer.data) == (200, b"stored 2 of 2\n")
