import base64
import http.client
import threading

import pytest

from sheepdog.server import Server, create_app
from sheepdog.worker import ARGUMENTS, ERROR, RESULT, pack_frames, unpack_frames


def auth(password, user="sheepdog"):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def request_id(storage):
    return storage.create_request(b"fn", [b"a1", b"a2"], "right", "local")


@pytest.fixture
def client(storage):
    return create_app(storage, max_body_bytes=1000).test_client()


def test_worker_fetches_function_and_arguments(client, request_id):
    assert client.get(f"/requests/{request_id}/function", headers=auth("right")).data == b"fn"
    frames = unpack_frames(client.get(f"/requests/{request_id}/tasks/2", headers=auth("right")).data)
    assert frames == [(2, ARGUMENTS, b"a2")]
    both = client.get(f"/requests/{request_id}/tasks/1-2", headers=auth("right")).data
    assert unpack_frames(both) == [(1, ARGUMENTS, b"a1"), (2, ARGUMENTS, b"a2")]


def test_a_batch_of_results_and_errors_is_stored_in_one_post(client, storage, request_id):
    body = b"".join(pack_frames([(1, RESULT, b"\x80r1"), (2, ERROR, "boom".encode())]))
    response = client.post(f"/requests/{request_id}/results", data=body, headers=auth("right"))
    assert response.status_code == 200 and response.data == b"stored 2 of 2\n"
    again = client.post(f"/requests/{request_id}/results", data=body, headers=auth("right"))
    assert again.data == b"stored 0 of 2\n"
    assert [row[1:] for row in storage.results(request_id)] == [("done", b"\x80r1"), ("failed", None)]


@pytest.mark.parametrize("body", [b"garbage", b"".join(pack_frames([(1, ERROR, b"\xff")])),
                                  b"".join(pack_frames([(1, RESULT, b"")])), b""])
def test_malformed_batches_are_refused_whole(client, storage, request_id, body):
    response = client.post(f"/requests/{request_id}/results", data=body, headers=auth("right"))
    assert response.status_code == 400
    assert storage.progress(request_id).pending == 2


def test_wrong_or_missing_password_is_401(client, request_id):
    assert client.get(f"/requests/{request_id}/function", headers=auth("wrong")).status_code == 401
    response = client.get(f"/requests/{request_id}/function")
    assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"]
    garbled = {"Authorization": "Basic !!!notbase64"}
    assert client.get(f"/requests/{request_id}/function", headers=garbled).status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/requests/999/function", "/requests/1/tasks/99", "/requests/1/tasks/-1",
     "/requests/99999999999999999999999/function", "/requests/x/function", "/nothing"],
)
def test_unknown_request_or_task_is_404(client, request_id, path):
    assert client.get(path, headers=auth("right")).status_code == 404


def test_result_is_stored_as_bytes_and_counted_once(client, storage, request_id):
    path = f"/requests/{request_id}/tasks/1/result"
    assert client.post(path, data=b"\x80result", headers=auth("right")).data == b"stored\n"
    again = client.post(path, data=b"\x80other", headers=auth("right"))
    assert again.status_code == 200 and again.data == b"already recorded\n"
    assert storage.results(request_id)[0] == (b"a1", "done", b"\x80result")
    assert storage.progress(request_id).done == 1


def test_error_text_is_stored(client, storage, request_id):
    response = client.post(f"/requests/{request_id}/tasks/2/error",
                           data="Traceback ñ".encode(), headers=auth("right"))
    assert response.status_code == 200
    assert storage.errors(request_id) == [(b"a2", "failed", "Traceback ñ")]


@pytest.mark.parametrize(
    "suffix, body, status",
    [("result", b"", 400), ("error", b"\xff\xfe", 400), ("result", b"x" * 1001, 413),
     ("start", b"", 200)],
)
def test_malformed_posts_get_4xx_with_a_reason(client, request_id, suffix, body, status):
    response = client.post(f"/requests/{request_id}/tasks/1/{suffix}", data=body, headers=auth("right"))
    assert response.status_code == status
    assert b"Traceback" not in response.data


def test_wrong_method_is_405(client, request_id):
    assert client.get(f"/requests/{request_id}/tasks/1/result", headers=auth("right")).status_code == 405


@pytest.mark.parametrize("engine", ["tornado", "werkzeug"])
def test_both_hosts_serve_over_a_real_socket_with_keep_alive(storage, request_id, engine):
    server = Server(storage, port=0, engine=engine, use_tls=False).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for index in (1, 2):
            connection.request("GET", f"/requests/{request_id}/tasks/{index}", headers=auth("right"))
            response = connection.getresponse()
            assert response.status == 200
            assert unpack_frames(response.read()) == [(index, ARGUMENTS, b"a%d" % index)]
        connection.request("POST", f"/requests/{request_id}/tasks/1/result", body=b"r",
                           headers=auth("right"))
        assert connection.getresponse().read() == b"stored\n"
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
        connection.request("POST", f"/requests/{request_id}/tasks/{index}/result", body=b"r",
                           headers=auth("right"))
        assert connection.getresponse().status == 200

    threads = [threading.Thread(target=post, args=(i,)) for i in range(1, 51)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.stop()
    assert storage.progress(request_id).done == 50


@pytest.mark.parametrize("engine", ["tornado", "werkzeug"])
def test_tls_server_talks_to_a_worker_pinning_its_certificate(storage, request_id, engine):
    from sheepdog.worker import Client

    server = Server(storage, port=0, engine=engine).start()
    try:
        assert server.url("127.0.0.1").startswith("https://")
        client = Client(server.url("127.0.0.1"), request_id, "right", retry_seconds=5,
                        certificate=server.certificate.decode())
        assert client.request("GET", "/function") == b"fn"
    finally:
        server.stop()


def test_worker_refuses_a_server_with_another_certificate(storage, request_id):
    import ssl

    from sheepdog import tls
    from sheepdog.worker import Client

    server = Server(storage, port=0).start()
    try:
        stranger, _key = tls.generate_identity()
        client = Client(server.url("127.0.0.1"), request_id, "right", retry_seconds=60,
                        certificate=stranger.decode())
        with pytest.raises(ssl.SSLCertVerificationError):
            client.request("GET", "/function")
    finally:
        server.stop()


def test_plain_http_to_a_tls_server_gets_no_answer(storage, request_id):
    server = Server(storage, port=0).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            connection.request("GET", f"/requests/{request_id}/function", headers=auth("right"))
            connection.getresponse().read()
    finally:
        server.stop()


def test_certificate_is_kept_per_database_for_restarts(storage):
    first = Server(storage, port=0).start()
    first.stop()
    second = Server(storage.dbfile, port=0).start()
    second.stop()
    assert first.certificate == second.certificate and b"BEGIN CERTIFICATE" in first.certificate


def test_oversized_body_gets_413_before_it_is_read(storage, request_id):
    import socket

    server = Server(storage, port=0, use_tls=False, max_body_bytes=1000).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            header = (f"POST /requests/{request_id}/tasks/1/result HTTP/1.1\r\n"
                      f"Host: x\r\nContent-Length: 5000000000\r\n\r\n")
            raw.sendall(header.encode())
            answer = raw.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 413")
    finally:
        server.stop()
