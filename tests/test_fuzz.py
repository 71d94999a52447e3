"""Malformed and unauthenticated requests: only 4xx answers, the server stays up, the data stays sound."""

import base64
import http.client
import random
import socket
import sqlite3
from contextlib import closing

import pytest

from sheepdog.wire.protocol import auth_headers
from sheepdog.server.host import Server
from sheepdog.storage.states import PENDING

N_REQUESTS = 10_000
LIMIT = 4096


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


#: Headers that stand for a correct signature of the request they go with.
SIGNED = None


def malformed_request(rng, request_id):
    """One request that must be refused: (method, path, headers, body)."""
    good = SIGNED
    task = f"/requests/{request_id}/tasks/{rng.randint(1, 3)}"
    kind = rng.randrange(12)
    if kind == 0:
        return "GET", f"/requests/{request_id}/function", {"Authorization": basic("x", "wrong")}, b""
    if kind == 1:
        return "POST", f"{task}/result", {}, b"\x80data"
    if kind == 11 and rng.random() < 0.5:  # signed for another task
        other = f"/requests/{request_id}/tasks/{rng.randint(4, 9)}/result"
        return "POST", f"{task}/result", auth_headers(b"right", "POST", other, b"\x80data"), b"\x80data"
    if kind == 2:
        junk = "Basic " + "".join(rng.choice("!@#$%^&*()abc=") for _ in range(rng.randint(0, 40)))
        return "POST", f"{task}/error", {"Authorization": junk}, b"text"
    if kind == 3:
        return "GET", f"/requests/{rng.randint(request_id + 1, 10**30)}/function", good, b""
    if kind == 4:
        return "GET", f"/requests/{request_id}/tasks/{rng.randint(4, 10**25)}", good, b""
    if kind == 5:
        action = "".join(rng.choice("abcxyz/._") for _ in range(rng.randint(1, 12)))
        return "POST", f"{task}/{action}", good, b"x"
    if kind == 6:
        return rng.choice(["PUT", "DELETE", "PATCH", "GET"]), f"{task}/result", good, b"x"
    if kind == 7:
        return "POST", f"{task}/result", good, b""
    if kind == 8:
        return "POST", f"{task}/error", good, b"\xff" + bytes(rng.randrange(128, 256) for _ in range(8))
    if kind == 9:
        return "POST", f"{task}/result", good, b"x" * rng.randint(LIMIT + 1, 3 * LIMIT)
    if kind == 10:
        path = "/x" + "".join(rng.choice("ab/%20.~-_0123456789") for _ in range(rng.randint(0, 60)))
        return rng.choice(["GET", "POST"]), path, good, b""
    return "POST", f"/requests/{request_id}/function", good, b"x"


def oversized_status(port, path, headers, length):
    """Announce a body over the limit, send none of it, and read the status line."""
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(raw.recv(64).split()[1])


def test_ten_thousand_bad_requests_get_only_4xx(storage):
    request_id = storage.create_request(b"fn", [b"a1", b"a2", b"a3"], "right", "local")
    server = Server(storage, port=0, use_tls=False, max_body_bytes=LIMIT).start()
    rng = random.Random(20261124)
    statuses = {}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(N_REQUESTS):
            method, path, headers, body = malformed_request(rng, request_id)
            if headers is SIGNED:
                headers = auth_headers(b"right", method, path, body)
            if len(body) > LIMIT:
                status = oversized_status(server.port, path, headers, len(body))
                statuses[status] = statuses.get(status, 0) + 1
                continue
            try:
                connection.request(method, path, body=body or None, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (ConnectionError, http.client.HTTPException):
                connection.close()  # the server may close after refusing a body it did not read
                status = "closed"
            statuses[status] = statuses.get(status, 0) + 1
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                raw.sendall(bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))) + b"\r\n\r\n")
                answer = raw.recv(4096)
            if answer.startswith(b"HTTP/"):
                status = int(answer.split()[1])
            elif answer:  # a reply to a request line that is not HTTP/1.x: an error page
                status = 400 if b"400" in answer else f"unparsed: {answer[:80]!r}"
            else:
                status = "closed"
            statuses[status] = statuses.get(status, 0) + 1
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200  # still up
    finally:
        server.stop()
    answered = {status: count for status, count in statuses.items() if status != "closed"}
    assert all(400 <= status < 500 for status in answered), sorted(statuses.items(), key=str)
    assert sum(answered.values()) >= 0.99 * sum(statuses.values()), statuses
    assert [state for _args, state, _result in storage.results(request_id)] == [PENDING] * 3
    storage.close()
    with closing(sqlite3.connect(storage.dbfile)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
