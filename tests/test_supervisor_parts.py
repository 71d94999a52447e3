"""The worker's supervisor (``worker/supervisor.py``) against a recording client: what it
posts and when, what it gives back, how it reports a crashed runner, and its words for how a
process ended."""

import os
import signal
import socket
import types

import pytest

from sheepdog.wire.protocol import (
    BEGUN,
    DISK_FULL_STATUS,
    ERROR,
    EXCEPTION,
    RAN,
    RESULT,
    STDOUT,
    VERSIONS,
    frame_bytes,
    pack_frames,
    unpack_frames,
)
from sheepdog.worker import supervisor as supervisor_module
from sheepdog.worker.client import PermanentHTTPError
from sheepdog.worker.runner import ENDED, POSTED, STARTED, Claims, Runner
from sheepdog.worker.supervisor import Supervisor, describe_end, exit_code


class Recording:
    """A client that keeps each request, (route, body bytes, keywords), and answers in turn
    from ``failures`` by route: an exception to raise, or None to succeed."""

    def __init__(self, **failures):
        self.requests = []
        self.failures = {route: list(answers) for route, answers in failures.items()}

    def request(self, route, body=None, **keywords):
        if isinstance(body, list):
            body = b"".join(bytes(part) for part in body)
        self.requests.append((route, None if body is None else bytes(body), keywords))
        answers = self.failures.get(route)
        failure = answers.pop(0) if answers else None
        if failure is not None:
            raise failure
        return bytearray()

    def routes(self):
        return [route for route, _body, _keywords in self.requests]


class NoOutput:
    def tails(self, start, end):
        return []

    def positions(self):
        return b""


def frames_of(body):
    return [(index, kind, bytes(payload)) for index, kind, payload in unpack_frames(body)]


def new_supervisor(client=None, beater=None, heartbeat_seconds=10.0):
    return Supervisor(client or Recording(), beater or Recording(), "1.2", heartbeat_seconds,
                      NoOutput())


def test_a_killed_process_is_named_by_its_signal_and_an_exited_one_by_its_status():
    assert describe_end(signal.SIGKILL) == "killed by SIGKILL"
    assert describe_end(126) == "killed by signal 126"  # no such signal has a name
    assert describe_end(3 << 8) == "exit status 3"
    assert exit_code(signal.SIGKILL) == 128 + signal.SIGKILL
    assert exit_code(3 << 8) == 3


def test_held_reports_go_in_one_post_without_the_start_of_a_task_whose_report_goes_too():
    client = Recording()
    supervisor = new_supervisor(client)
    supervisor.remaining = {1, 2, 3}
    supervisor.queue(1, BEGUN, b"")
    supervisor.queue(1, RESULT, b"one")
    supervisor.queue(2, BEGUN, b"")
    supervisor.queue(3, BEGUN, b"")
    supervisor.queue(3, ERROR, b"three")
    assert supervisor.size == 8
    assert supervisor.since is not None
    supervisor.flush()
    [(route, body, _keywords)] = client.requests
    assert route == "results"
    assert frames_of(body) == [(1, RESULT, b"one"), (2, BEGUN, b""), (3, ERROR, b"three")]
    assert supervisor.remaining == {2}
    assert (supervisor.frames, supervisor.size, supervisor.since) == ([], 0, None)


def test_nothing_held_posts_nothing():
    client = Recording()
    new_supervisor(client).flush()
    assert client.requests == []


def test_a_post_can_go_by_another_client():
    client, other = Recording(), Recording()
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"one")
    supervisor.flush(other)
    assert (client.routes(), other.routes()) == ([], ["results"])


def test_reports_refused_together_as_too_large_are_posted_one_by_one_without_the_extras():
    client = Recording(results=[PermanentHTTPError(413, "too large")])
    supervisor = new_supervisor(client)
    supervisor.remaining = {1, 2, 3}
    for frame in [(1, RAN, b"t"), (1, RESULT, b"one"), (2, ERROR, b"two"),
                  (2, EXCEPTION, b"x"), (3, STDOUT, b"out"), (3, BEGUN, b""),
                  (1, VERSIONS, b"v")]:
        supervisor.queue(*frame)
    supervisor.flush()
    assert client.requests[1:] == [
        ("result", b"one", {"task": 1}),
        ("error", b"two", {"task": 2}),
        ("output", b"".join(pack_frames([(3, STDOUT, b"out")])), {"task": 3}),
    ]
    assert supervisor.remaining == {3}


@pytest.mark.parametrize("status, words", [
    (413, "the result (3 bytes) was refused: HTTP 413: too large"),
    (DISK_FULL_STATUS, "the caller could not store the result (3 bytes): HTTP 507: too large"),
])
def test_a_result_refused_alone_becomes_an_error_that_says_why(status, words):
    client = Recording(results=[PermanentHTTPError(413, "too large")],
                       result=[PermanentHTTPError(status, "too large")])
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"one")
    supervisor.flush()
    route, body, keywords = client.requests[-1]
    assert (route, keywords) == ("error", {"task": 1})
    assert words in body.decode()


def test_an_error_refused_alone_is_logged_and_not_posted_again(capsys):
    client = Recording(results=[PermanentHTTPError(413, "too large")],
                       error=[PermanentHTTPError(413, "too large")])
    supervisor = new_supervisor(client)
    supervisor.queue(2, ERROR, b"two")
    supervisor.flush()
    assert client.routes() == ["results", "error"]
    assert capsys.readouterr().err == (
        "sheepdog worker: the server refused the error of task 2: HTTP 413: too large\n")


def test_a_result_refused_alone_otherwise_is_logged_and_not_posted_again():
    client = Recording(results=[PermanentHTTPError(413, "too large")],
                       result=[PermanentHTTPError(403, "no")])
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"one")
    supervisor.flush()
    assert client.routes() == ["results", "result"]


def test_reports_refused_for_a_full_disk_come_back_as_errors_saying_so():
    client = Recording(results=[PermanentHTTPError(DISK_FULL_STATUS, "disk full")])
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"one")
    supervisor.queue(2, ERROR, b"two")
    supervisor.queue(3, STDOUT, b"out")
    supervisor.flush()
    route, body, _keywords = client.requests[-1]
    assert route == "results"
    [(first, kind, text), second] = frames_of(body)
    assert (first, kind) == (1, ERROR)
    assert "the caller could not store the result (3 bytes): HTTP 507: disk full" in text.decode()
    assert second == (2, ERROR, b"two")


def test_a_full_disk_with_no_report_to_fail_posts_nothing_more_and_a_second_refusal_is_logged(
        capsys):
    client = Recording(results=[PermanentHTTPError(DISK_FULL_STATUS, "disk full")])
    supervisor = new_supervisor(client)
    supervisor.queue(3, STDOUT, b"out")
    supervisor.flush()
    assert client.routes() == ["results"]
    client = Recording(results=[PermanentHTTPError(DISK_FULL_STATUS, "disk full")] * 2)
    supervisor = new_supervisor(client)
    supervisor.queue(4, RESULT, b"r")
    supervisor.queue(5, ERROR, b"e")
    supervisor.flush()
    assert client.routes() == ["results", "results"]
    assert capsys.readouterr().err == (
        "sheepdog worker: could not report tasks 4-5 failed either: HTTP 507: disk full\n")


def test_a_post_refused_for_another_reason_raises():
    client = Recording(results=[PermanentHTTPError(403, "forbidden")])
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"one")
    with pytest.raises(PermanentHTTPError):
        supervisor.flush()


def stuck_in(supervisor, todo, claimed):
    """The supervisor's runner has claimed the first ``claimed`` of ``todo``."""
    supervisor.todo, supervisor.batch = todo, 4
    supervisor.remaining = set(todo)
    supervisor.claims = Claims(len(todo))
    for position in range(claimed):
        assert supervisor.claims.claim(position)


def test_giving_back_releases_what_the_runner_has_not_claimed_once():
    client = Recording()
    supervisor = new_supervisor(client)
    stuck_in(supervisor, [5, 6, 7, 8], 2)
    supervisor._give_back()
    assert client.requests == [("release", b"[7, 8]", {"worker": "1.2", "seq": 4})]
    assert supervisor.given_back == {7, 8}
    assert supervisor.remaining == {5, 6}
    assert not supervisor.claims.claim(2)
    supervisor._give_back()
    assert len(client.requests) == 1


def test_tasks_that_cannot_be_given_back_are_run_after_all_and_not_offered_again(capsys):
    client = Recording(release=[ConnectionError("no caller")])
    supervisor = new_supervisor(client)
    stuck_in(supervisor, [5, 6, 7], 1)
    supervisor._give_back()
    assert supervisor.given_back == set()
    assert supervisor.remaining == {5, 6, 7}
    assert supervisor.current_since == float("inf")
    assert supervisor.claims.claim(1) and supervisor.claims.claim(2)
    assert capsys.readouterr().err == "sheepdog worker: could not give back tasks 6-7: no caller\n"


def test_before_any_batch_there_is_nothing_to_give_back():
    client = Recording()
    new_supervisor(client)._give_back()
    assert client.requests == []


class Alive:
    stopped = False

    def poll(self):
        return None


def test_a_task_running_longer_than_the_limit_gives_the_rest_back_and_a_shorter_one_not():
    client = Recording()
    supervisor = new_supervisor(client)
    stuck_in(supervisor, [5, 6, 7], 1)
    supervisor.give_back_after = 30.0
    supervisor.current = (5, b"")
    supervisor.current_since = supervisor_module.time.monotonic() - 20
    supervisor._tick(Alive())
    assert client.requests == []
    supervisor.current_since = supervisor_module.time.monotonic() - 30
    supervisor._tick(Alive())
    assert client.routes() == ["release"]


def test_as_the_walltime_nears_the_unstarted_tasks_are_given_back_once():
    client = Recording()
    supervisor = new_supervisor(client)
    stuck_in(supervisor, [5, 6, 7], 1)
    supervisor.give_back_at = supervisor_module.time.monotonic() + 60
    supervisor._tick(Alive())
    assert client.requests == []
    supervisor.give_back_at = supervisor_module.time.monotonic()
    supervisor._tick(Alive())
    assert client.routes() == ["release"]
    assert supervisor.give_back_at == float("inf")


def test_held_reports_are_posted_after_a_second():
    client = Recording()
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"one")
    supervisor._tick(Alive())
    assert client.requests == []
    supervisor.since -= supervisor_module.FLUSH_SECONDS
    supervisor._tick(Alive())
    assert client.routes() == ["results"]


def test_held_reports_are_posted_at_once_past_eight_megabytes(monkeypatch):
    monkeypatch.setattr(supervisor_module, "FLUSH_BYTES", 10)
    client = Recording()
    supervisor = new_supervisor(client)
    supervisor.queue(1, RESULT, b"123456789")
    supervisor._tick(Alive())
    assert client.requests == []
    supervisor.queue(2, RESULT, b"0")
    supervisor._tick(Alive())
    assert client.routes() == ["results"]


def test_a_heartbeat_goes_when_it_is_due_on_its_own_line_and_only_for_a_running_runner(capsys):
    client = Recording()
    beater = Recording(heartbeat=[None, ConnectionError("down")])
    supervisor = new_supervisor(client, beater, heartbeat_seconds=30.0)
    supervisor._tick(Alive())
    assert beater.requests == []
    supervisor.next_beat = supervisor_module.time.monotonic()
    supervisor._tick(Alive())
    assert beater.requests == [("heartbeat", None, {"worker": "1.2"})]
    assert supervisor.next_beat >= supervisor_module.time.monotonic() + 29
    stopped = Alive()
    stopped.stopped = True
    ended = types.SimpleNamespace(stopped=False, poll=lambda: 0)
    for runner in (stopped, ended):
        supervisor.next_beat = supervisor_module.time.monotonic()
        supervisor._tick(runner)
    assert len(beater.requests) == 1
    supervisor.next_beat = supervisor_module.time.monotonic()
    supervisor._tick(Alive())  # the second beat fails, and the supervisor goes on
    assert capsys.readouterr().err == "sheepdog worker: heartbeat failed: down\n"
    assert client.requests == []


def test_the_supervisor_wakes_for_the_next_beat_post_or_look_at_its_runner():
    supervisor = new_supervisor(heartbeat_seconds=100.0)
    assert supervisor._timeout() == pytest.approx(supervisor_module.RUNNER_POLL_SECONDS,
                                                  abs=0.05)
    supervisor.since = supervisor_module.time.monotonic() - 0.9
    assert supervisor._timeout() == pytest.approx(0.1, abs=0.05)
    supervisor.since = supervisor_module.time.monotonic() - 5
    assert supervisor._timeout() == 0.0
    supervisor.since = None
    supervisor.next_beat = supervisor_module.time.monotonic() + 0.2
    assert supervisor._timeout() == pytest.approx(0.2, abs=0.05)


def test_the_runners_messages_mark_starts_reports_and_posted_results():
    supervisor = new_supervisor()
    supervisor.remaining = {1, 2}
    supervisor.todo = [1, 2]
    messages = b"".join([frame_bytes(1, STARTED, b"p1"), frame_bytes(1, VERSIONS, b"v"),
                         frame_bytes(1, RESULT, b"r1"), frame_bytes(2, STARTED, b"p2"),
                         frame_bytes(2, POSTED, b""), frame_bytes(2, VERSIONS, b"w")])
    assert supervisor._take(messages[:20]) is False  # half a message waits for the rest
    assert supervisor._take(messages[20:]) is False
    assert supervisor.started == {1, 2}
    assert supervisor.current == (2, b"p2")
    assert supervisor._on_last_task()
    assert supervisor.remaining == {1}
    assert supervisor.frames == [(1, BEGUN, b""), (1, VERSIONS, b"v"), (1, RESULT, b"r1"),
                                 (2, BEGUN, b"")]
    assert supervisor._take(frame_bytes(2, ENDED, b"p3")) is True
    assert supervisor.current is None
    assert not supervisor._on_last_task()
    assert supervisor.buffer == bytearray()


def test_a_runner_on_an_earlier_task_is_not_on_its_last():
    supervisor = new_supervisor()
    supervisor.todo = [1, 2]
    supervisor._take(frame_bytes(1, STARTED, b""))
    assert not supervisor._on_last_task()
    supervisor.todo = []
    assert not supervisor._on_last_task()


def test_a_crashed_task_is_posted_lost_saying_how_it_ended_and_what_its_worker_went_on_with(
        monkeypatch, capsys):
    monkeypatch.setenv("JOB_ID", "77")
    client = Recording()
    supervisor = new_supervisor(client)
    supervisor.batch, supervisor.remaining, supervisor.started = 3, {1, 2, 3}, {1}
    supervisor.queue(0, RESULT, b"zero")
    supervisor._crashed(signal.SIGSEGV, 1, b"")
    assert client.routes() == ["results", "lost"]
    _route, body, keywords = client.requests[1]
    assert keywords == {"worker": "1.2", "task": 1, "seq": 3}
    assert (f"the task ended without reporting (killed by SIGSEGV while it ran, on "
            f"{socket.gethostname()}, job 77; its worker went on with the 2 after it)"
            in body.decode())
    assert supervisor.remaining == {2, 3}
    assert capsys.readouterr().err == (
        "sheepdog worker: task 1 ended without reporting (killed by SIGSEGV)\n")
    supervisor.remaining = {1}
    monkeypatch.delenv("JOB_ID")
    supervisor._crashed(3 << 8, 1, b"")
    assert supervisor.crash_status == signal.SIGSEGV  # the first crash's
    assert body_of(client, -1).endswith(
        f"(exit status 3 while it ran, on {socket.gethostname()})")


def body_of(client, which):
    return client.requests[which][1].decode()


def test_tasks_a_runner_never_started_are_lost_saying_so():
    client = Recording()
    supervisor = new_supervisor(client)
    supervisor.batch, supervisor.remaining = 2, {4, 5, 6}
    supervisor._never_started([4, 5], 1 << 8)
    assert [keywords["task"] for _route, _body, keywords in client.requests] == [4, 5]
    assert (f"the worker's runner ended before it started the task (exit status 1 on "
            f"{socket.gethostname()}); its stderr may say why") in body_of(client, 0)
    assert supervisor.remaining == {6}


def test_a_loss_the_server_refuses_is_logged_and_the_task_is_no_longer_held(capsys):
    client = Recording(lost=[PermanentHTTPError(409, "not yours")])
    supervisor = new_supervisor(client)
    supervisor.remaining = {4}
    supervisor._report_lost(4, "gone")
    assert supervisor.remaining == set()
    assert capsys.readouterr().err == (
        "sheepdog worker: could not report task 4 lost: HTTP 409: not yours\n")


def test_a_kill_notice_without_a_runner_posts_what_is_held_and_says_so_within_five_seconds():
    connected, client = [], Recording()

    def connect(seconds):
        connected.append(seconds)
        return client

    supervisor = new_supervisor()
    supervisor.queue(1, RESULT, b"one")
    supervisor.on_kill_notice(connect)
    assert connected == [5]
    assert client.routes() == ["results", "killing"]
    assert client.requests[1][2] == {"worker": "1.2"}


def test_a_kill_notice_whose_runner_was_reaped_already_still_says_so():
    """A notice may come just after the supervisor's own wait reaped its runner, before that
    wait kept its status: waiting again finds no child, and the notice goes out anyway."""
    runner = Runner(lambda channel: 0, Claims(0))
    os.waitpid(runner.pid, 0)  # reaped, as by the wait the notice interrupted
    client = Recording()
    supervisor = new_supervisor()
    supervisor.runner = runner
    supervisor.on_kill_notice(lambda seconds: client)
    assert client.routes() == ["killing"]


def test_a_kill_notice_goes_out_even_when_the_post_before_it_fails(capsys):
    client = Recording(results=[ConnectionError("down")], killing=[ConnectionError("down")])
    supervisor = new_supervisor()
    supervisor.queue(1, RESULT, b"one")
    supervisor.on_kill_notice(lambda seconds: client)
    assert client.routes() == ["results", "killing"]
    assert capsys.readouterr().err == ("sheepdog worker: could not post the reports held: down\n"
                                       "sheepdog worker: could not report the kill notice: "
                                       "down\n")


def test_draining_reads_all_that_waits_without_blocking():
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"x" * 50_000)
        theirs.shutdown(socket.SHUT_WR)
        assert supervisor_module._drain(ours) == b"x" * 50_000
        assert supervisor_module._drain(ours) == b""
        ours.setblocking(True)
    finally:
        ours.close()
        theirs.close()


def test_draining_a_channel_still_open_reads_what_waits_and_returns():
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"abc")
        assert supervisor_module._drain(ours) == b"abc"
    finally:
        ours.close()
        theirs.close()
