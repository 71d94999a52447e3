"""The server's connection limits, over real loopback sockets: idle, slow and
crowding peers are closed, a worker that signs its requests is never crowded
out, and running out of descriptors does not spin."""

import contextlib
import http.client
import os
import queue
import select
import selectors
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sheepdog.server import admission
from sheepdog.server.admission import HANDSHAKE_GRACE_SECONDS
from sheepdog.server.host import Server
from sheepdog.wire.protocol import auth_headers

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_root(port, certificate=None, timeout=5.0):
    """(status, body) of ``GET /``, the one route that needs no signature."""
    if certificate is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        context = ssl.create_default_context(cadata=certificate.decode())
        context.check_hostname = False
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                                 context=context)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def closed_by_peer(sock):
    """Read from a readable socket: True if the server closed it."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def seconds_until_closed(opened, deadline):
    """For each socket of ``opened`` (socket -> time it connected): seconds it stayed open."""
    selector = selectors.DefaultSelector()
    for sock in opened:
        selector.register(sock, selectors.EVENT_READ)
    lifetimes = {}
    while len(lifetimes) < len(opened) and time.monotonic() < deadline:
        for key, _ in selector.select(deadline - time.monotonic()):
            assert closed_by_peer(key.fileobj), "the server sent something unasked"
            lifetimes[key.fileobj] = time.monotonic() - opened[key.fileobj]
            selector.unregister(key.fileobj)
    selector.close()
    return lifetimes


@pytest.mark.parametrize("use_tls", [False, True], ids=["http", "https"])
def test_unproven_connections_beyond_the_per_peer_cap_close_the_oldest_and_the_rest_at_the_deadline(
        storage, use_tls):
    server = Server(storage, port=0, use_tls=use_tls, idle_timeout=30, handshake_timeout=1.5,
                    max_unproven_per_peer=50).start()
    crowd = {}
    try:
        for _ in range(200):  # from 127.0.0.2, so that 127.0.0.1 is another peer
            sock = socket.create_connection(("127.0.0.1", server.port),
                                            source_address=("127.0.0.2", 0))
            crowd[sock] = time.monotonic()
        asked = time.monotonic()
        assert get_root(server.port, server.certificate) == (200, b"sheepdog server\n")
        assert time.monotonic() - asked < 1.0
        lifetimes = sorted(seconds_until_closed(crowd, deadline=time.monotonic() + 10).values())
        assert len(lifetimes) == 200, "some idle connections were never closed"
        assert lifetimes[149] < 1.0  # the 150 oldest, each as a newer one came
        assert 1.4 < lifetimes[150] and lifetimes[-1] < 3.0  # the 50 newest, at the deadline
    finally:
        for sock in crowd:
            sock.close()
        server.stop()


def _client_hello():
    """The first flight of a TLS client: its ClientHello, as bytes."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_half_open_tls_handshakes_and_silent_connections_are_closed_at_the_deadline(storage):
    server = Server(storage, port=0, idle_timeout=30, handshake_timeout=1.0).start()
    hello = _client_hello()
    opened = {}
    try:
        for sent in [b""] * 5 + [hello[:20]] * 5 + [hello] * 5:  # silent, partial, whole hello
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(sent)
            opened[sock] = time.monotonic()
        for _ in range(5):  # handshake finished, but no request
            context = ssl.create_default_context(cadata=server.certificate.decode())
            context.check_hostname = False
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
            opened[sock] = time.monotonic()
        lifetimes = {}
        deadline = time.monotonic() + 25  # before the idle timeout of 30 s
        for sock in opened:  # a whole hello is answered: read until the server closes
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, ssl.SSLError):
                pass
            lifetimes[sock] = time.monotonic() - opened[sock]
        # Closed at the handshake deadline of 1 s, not at the idle timeout of 30 s; the
        # upper bound leaves room for a busy machine.
        assert all(0.9 < lifetime < 10 for lifetime in lifetimes.values()), sorted(
            lifetimes.values())
    finally:
        for sock in opened:
            sock.close()
        server.stop()


def _signed(connection, request_id, key=b"right"):
    """Send one signed request on ``connection``; its status and body."""
    path = f"/requests/{request_id}/function"
    connection.request("GET", path, headers=auth_headers(key, "GET", path))
    response = connection.getresponse()
    return response.status, response.read()


@contextlib.contextmanager
def _crowd(port, count):
    """``count`` idle connections to ``port`` from 127.0.0.1, as one peer with the workers."""
    crowd = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        yield crowd
    finally:
        for sock in crowd:
            sock.close()


def test_a_signed_worker_is_served_while_idle_connections_fill_the_caps(storage):
    from sheepdog.worker.client import Client

    request_id = storage.create_request(b"fn", [b"a"], "right", "local")
    # no deadline to speak of: only making room for newcomers can let the worker in
    server = Server(storage, port=0, handshake_timeout=60, max_unproven_per_peer=20,
                    max_unproven=30).start()
    try:
        with _crowd(server.port, 100):
            client = Client([server.url("127.0.0.1")], request_id, b"right", retry_seconds=5,
                            certificate=server.certificate.decode())
            asked = time.monotonic()
            assert client.request("function") == b"fn"
            # refused while the crowd is in its grace, then let in at the next try
            assert time.monotonic() - asked < 2 * HANDSHAKE_GRACE_SECONDS + 2.0
    finally:
        server.stop()


def test_a_connection_that_signed_a_request_no_longer_counts_and_stays_open(storage):
    request_id = storage.create_request(b"fn", [b"a"], "right", "local")
    server = Server(storage, port=0, use_tls=False, max_unproven_per_peer=10,
                    max_unproven=10).start()
    worker = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        assert _signed(worker, request_id) == (200, b"fn")
        with _crowd(server.port, 100):
            time.sleep(HANDSHAKE_GRACE_SECONDS)  # until then, a newcomer gives way to the crowd
            assert get_root(server.port) == (200, b"sheepdog server\n")
            kept = worker.sock
            assert _signed(worker, request_id) == (200, b"fn")
            assert worker.sock is kept, "the proven connection was closed"
    finally:
        worker.close()
        server.stop()


def test_a_burst_beyond_the_cap_closes_the_newcomers_not_the_handshakes_in_their_grace(
        storage, monkeypatch):
    """A job's workers starting together through one tunnel come from one address: the
    first ``max_per_peer`` go on with their handshakes, the rest are closed (and retry)."""
    monkeypatch.setattr(admission, "HANDSHAKE_GRACE_SECONDS", 60.0)  # however slow this machine
    server = Server(storage, port=0, use_tls=False, handshake_timeout=60,
                    max_unproven_per_peer=10, max_unproven=10).start()
    try:
        with _crowd(server.port, 10) as first, _crowd(server.port, 5) as newcomers:
            opened = time.monotonic()
            closed = seconds_until_closed(dict.fromkeys(newcomers, opened), deadline=opened + 30)
            assert len(closed) == 5, "a newcomer was let in by closing a handshake in its grace"
            assert seconds_until_closed(dict.fromkeys(first, opened),
                                        deadline=time.monotonic() + 0.5) == {}
    finally:
        server.stop()


def test_a_connection_whose_request_did_not_authenticate_is_closed_before_silent_ones(storage):
    request_id = storage.create_request(b"fn", [b"a"], "right", "local")
    server = Server(storage, port=0, use_tls=False, handshake_timeout=60,
                    max_unproven_per_peer=10, max_unproven=10).start()
    wrong = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        assert _signed(wrong, request_id, key=b"wrong")[0] == 401
        with _crowd(server.port, 9) as crowd:  # the cap is full
            with socket.create_connection(("127.0.0.1", server.port)):  # one more
                assert closed_by_peer(wrong.sock)
                opened = dict.fromkeys(crowd, time.monotonic())
                assert seconds_until_closed(opened, deadline=time.monotonic() + 0.5) == {}
    finally:
        wrong.close()
        server.stop()


def test_a_client_sending_its_headers_slowly_is_disconnected_within_the_idle_timeout(storage):
    server = Server(storage, port=0, use_tls=False, idle_timeout=1.0).start()
    headers = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            started = time.monotonic()
            for byte in headers:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                if select.select([sock], [], [], 0.5)[0]:  # the server moved, or 0.5 s passed
                    break
                assert time.monotonic() - started < 5, "still connected after 5 s"
            assert closed_by_peer(sock)
            assert time.monotonic() - started < 2.0
    finally:
        server.stop()


def test_a_body_that_trickles_in_is_cut_off_after_the_time_its_size_allows(storage):
    # 0.5 s for any body, plus 1 s per 1000 bytes: 1.5 s for this one
    server = Server(storage, port=0, use_tls=False, body_timeout=0.5, min_body_rate=1000).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
            started = time.monotonic()
            while not select.select([sock], [], [], 0.25)[0]:
                assert time.monotonic() - started < 5, "still connected after 5 s"
                sock.sendall(b"x")
            assert closed_by_peer(sock)
            assert 1.3 < time.monotonic() - started < 3.0
    finally:
        server.stop()


_SERVE_WITH_FEW_DESCRIPTORS = textwrap.dedent("""
    import logging, resource, sys
    from sheepdog.server.host import Server
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    server = Server(sys.argv[1], port=0, use_tls=False).start()
    print(server.port, flush=True)
    sys.stdin.read()  # serve until the test closes stdin
""")


def cpu_seconds(pid):
    """User plus system CPU time of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads CPU time from /proc")
def test_running_out_of_file_descriptors_pauses_accepts_instead_of_spinning(dbfile):
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVE_WITH_FEW_DESCRIPTORS, dbfile], cwd=REPOSITORY,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )
    lines: "queue.Queue[str]" = queue.Queue()
    log = []

    def read_log():
        for line in child.stderr:
            lines.put(line.decode(errors="replace"))

    threading.Thread(target=read_log, daemon=True).start()
    clients = []
    try:
        port = int(child.stdout.readline())
        for _ in range(100):  # more than the 64 descriptors the server may hold
            clients.append(socket.create_connection(("127.0.0.1", port)))
        deadline = time.monotonic() + 10
        while not any("Too many open files" in line or "out of file descriptors" in line
                      for line in log):
            log.append(lines.get(timeout=deadline - time.monotonic()))
        before = cpu_seconds(child.pid)
        time.sleep(2)  # the span whose CPU time is measured
        assert cpu_seconds(child.pid) - before < 0.5
        for client in clients:
            client.close()
        assert get_root(port) == (200, b"sheepdog server\n")
        while not lines.empty():
            log.append(lines.get())
        shortages = [line for line in log
                     if "Too many open files" in line or "out of file descriptors" in line]
        assert 1 <= len(shortages) <= 3, "".join(log[:20])
        assert "pausing accepts" in shortages[0]
    finally:
        for client in clients:
            client.close()
        child.kill()
        child.wait()
