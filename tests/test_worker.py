import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sheepdog.wire import failures, protocol
from sheepdog.worker import loop as worker
from sheepdog.worker import runner
from sheepdog.worker.batching import BatchSize
from sheepdog.worker.client import Client, PermanentHTTPError
from sheepdog.server.host import Server


def test_batches_start_at_one_task_and_aim_at_a_second_of_work():
    batch = BatchSize()
    assert batch.size == 1
    batch.took(1, 0.001)  # trivial tasks: grow, but at most 8 times at once
    assert batch.size == 8
    batch.took(8, 0.008)
    assert batch.size == 64
    batch.took(64, 0.064 * 100)  # tasks of 0.1 s each: 10 make a second
    assert batch.size == 10
    batch.took(10, 80.0)  # a long task: back to one at a time
    assert batch.size == 1 and batch.least == 1


def test_a_worker_of_trivial_tasks_never_asks_for_fewer_than_a_pull_is_worth():
    batch = BatchSize()
    assert batch.least == 1
    batch.took(1, 0.0001)
    batch.took(8, 0.0008)
    assert batch.least == 64  # all it asks for: 64 tasks take less than 50 ms
    batch.took(64, 0.0064)
    assert batch.size == 512 and batch.least == 500


def test_a_fixed_batch_size_is_kept_whatever_the_tasks_take():
    batch = BatchSize(chunksize=5)
    batch.took(5, 0.0001)
    batch.took(5, 100.0)
    assert batch.size == 5


def test_same_python_minor_version_passes_and_another_is_named():
    import sys

    assert worker.python_mismatch(sys.version_info[:2]) is None
    message = worker.python_mismatch((2, 7))
    assert "Python 2.7" in message and sys.version.split()[0] in message and "'shell'" in message


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_client_retries_until_the_server_comes_up(storage):
    request_id = storage.create_request(b"fn", [b"a"], "pw", "local")
    port = free_port()
    server = Server(storage, port=port, use_tls=False)
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        client = Client([f"http://127.0.0.1:{port}"], request_id, b"pw", retry_seconds=30)
        assert client.request("function") == b"fn"
    finally:
        starter.join()
        server.stop()


def test_client_gives_up_after_its_retry_budget():
    client = Client([f"http://127.0.0.1:{free_port()}"], 1, b"pw", retry_seconds=1)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="gave up"):
        client.request("function")
    assert time.monotonic() - started < 5


def test_client_does_not_retry_a_refusal(storage):
    request_id = storage.create_request(b"fn", [b"a"], "pw", "local")
    server = Server(storage, port=0, use_tls=False).start()
    try:
        client = Client([server.url("127.0.0.1")], request_id, b"wrong", retry_seconds=60)
        started = time.monotonic()
        with pytest.raises(PermanentHTTPError) as raised:
            client.request("function")
        assert raised.value.status == 401 and time.monotonic() - started < 5
    finally:
        server.stop()


def test_work_given_to_do_while_waiting_runs_once_the_request_is_sent_and_before_its_answer():
    """A worker forks its next batch's runner while its pull is on its way: the fork must
    overlap the server's answer, not delay the request or wait for the answer."""
    received, released = threading.Event(), threading.Event()

    class HoldsItsAnswer(BaseHTTPRequestHandler):
        def do_GET(self):
            received.set()
            body = b"in time" if released.wait(30) else b"answered without the worker"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), HoldsItsAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    calls = []

    def while_waiting():
        calls.append(received.wait(30))  # the request reached the server first
        released.set()

    try:
        client = Client([f"http://127.0.0.1:{server.server_port}"], 1, b"pw", retry_seconds=5)
        assert client.request("function", while_waiting=while_waiting) == b"in time"
    finally:
        server.shutdown()
        server.server_close()
    assert calls == [True]


def test_long_error_text_keeps_head_and_tail_within_the_limit_in_bytes():
    text = "head" + "\u00e9" * protocol.MAX_ERROR_BYTES + "tail"
    clipped = failures.error_bytes(text)
    assert len(clipped) <= protocol.MAX_ERROR_BYTES
    assert clipped.startswith(b"head") and clipped.endswith(b"tail")
    clipped.decode("utf-8")  # not cut inside a character


def test_an_error_text_that_utf_8_cannot_encode_is_escaped():
    assert failures.error_bytes("bad \udcff byte") == b"bad \\udcff byte"
