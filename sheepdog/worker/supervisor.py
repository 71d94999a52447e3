"""The worker's main process while a runner works through a batch: the *supervisor*.

The runner hands each report (the pickled result, or the full traceback when
``f`` raised) to the supervisor through a socket pair before the next task
starts, which costs microseconds; the supervisor posts them together every
second or 8 MB, and sends the heartbeats that keep the worker's lease on its
tasks (none while the runner is stopped, so a frozen task falls silent). A
task that starts is announced (``BEGUN``) with the next post, unless its own
report goes in that post, so the server knows which held tasks run. So
a task that kills its process (a segfault, ``os._exit``, the OOM killer)
costs no other task its result: the supervisor still holds what finished
before, posts it, reports the crashed task lost with how its process ended
(retried like any lost task), and forks a new runner for the rest of the
batch. A task that runs far longer than the others gives the rest of its
batch back, for idle workers to run. Part of the worker side (``loop.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from typing import Callable, Iterable, Iterator, Optional

from ..wire.failures import error_bytes
from ..wire.protocol import (
    BEGUN,
    DISK_FULL_STATUS,
    ERROR,
    EXCEPTION,
    RAN,
    RESULT,
    VERSIONS,
    Buffer,
    Frame,
    index_spec,
    nbytes,
    pack_frames,
    split_frames,
)
from .client import Client, PermanentHTTPError, log
from .output import TaskOutput
from .runner import ENDED, POSTED, RUNNER_KINDS, STARTED, Claims, Runner, refused_result

#: Reports are posted together once this many bytes or seconds have gathered.
FLUSH_BYTES = 8 << 20
FLUSH_SECONDS = 1.0
#: How often the supervisor looks at its runner when nothing else wakes it.
RUNNER_POLL_SECONDS = 0.5
#: After a small read from the runner, the supervisor lets messages gather this long:
#: a wake-up per message of many short tasks would cost more than the tasks (not
#: after the start of the runner's last task, whose report it then waits for alone).
GATHER_SECONDS = 0.002

#: A report or an output tail held for the server: (task index, kind, payload).
Report = tuple[int, int, bytes]


def describe_end(status: int) -> str:
    """Words for how a process ended, from its wait status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit status {os.WEXITSTATUS(status)}"


def exit_code(status: int) -> int:
    """The exit status a shell would give for a process's wait status."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)



class Supervisor:
    """The worker's side of its batches: holds reports until posted, beats, replaces crashed
    runners.

    ``remaining`` are the batch's tasks not yet reported; ``started`` those a
    runner has begun; ``given_back`` those returned to the server for other
    workers, unstarted, while the runner was stuck in a long task.
    """

    def __init__(self, client: Client, beater: Client, worker: str, heartbeat_seconds: float,
                 output: TaskOutput) -> None:
        self.client = client
        self.beater = beater  # a connection of its own, whose retries end before the next beat
        self.worker = worker  # its name in paths: "<launch>.<array task>"
        self.remaining: set[int] = set()
        self.started: set[int] = set()
        self.heartbeat_seconds = heartbeat_seconds
        self.output = output
        self.frames: list[Report] = []
        self.size = 0
        self.since: Optional[float] = None
        self.next_beat = time.monotonic() + heartbeat_seconds
        self.runner: Optional[Runner] = None
        #: The signals of the scheduler's kill notice, which ``on_kill_notice`` answers.
        self.kill_signals: list[int] = []
        self.buffer = bytearray()  # what the runner sent, up to the end of a whole message
        self.current: Optional[tuple[int, bytes]] = None  # (index, positions) of its task
        self.current_since = 0.0  # when it started (time.monotonic())
        self.crash_status: Optional[int] = None  # the first crashed runner's wait status
        self.given_back: set[int] = set()
        self.give_back_after = float("inf")
        self.give_back_at = float("inf")  # on time.monotonic: the walltime nears
        self.todo: list[int] = []  # the runner's tasks
        self.batch = 0  # the pull (its seq) that the batch came from
        self.claims: Optional[Claims] = None  # what it may still start
        self.versions_sent = False  # the first runner's versions went with its reports

    # -- the runners ------------------------------------------------------

    def run(self, start_runner: Callable[[list[int]], Runner], indices: Iterable[int],
            batch: int, give_back_after: float = float("inf"),
            leave_at: Optional[float] = None, per_task: Optional[float] = None) -> int:
        """Run the batch ``indices`` of pull ``batch`` in runners until each has started
        once, giving back what a task running for ``give_back_after`` seconds holds up,
        and what is unstarted once a task of ``per_task`` seconds would not end before
        ``leave_at`` (the worker's walltime, on ``time.monotonic``); the exit status."""
        todo, status, self.batch = list(indices), 0, batch
        self.remaining, self.started, self.crash_status = set(indices), set(), None
        self.given_back, self.give_back_after = set(), give_back_after
        self.give_back_at = (float("inf") if leave_at is None
                             else leave_at - (per_task or 0.0))
        try:
            while todo:
                begun = len(self.started)
                with self._kill_notices_held():  # until the runner is known here
                    self.todo, self.runner = todo, start_runner(todo)
                self.claims = self.runner.claims
                status = self._follow(self.runner)
                todo = [index for index in todo
                        if index not in self.started and index not in self.given_back]
                if len(self.started) == begun:
                    break  # the runner died before any task: a new one would too
            self.flush()
            if todo:
                self._never_started(todo, status)
        finally:
            if self.runner is not None:
                self.runner.kill()
        if self.crash_status is not None:
            return exit_code(self.crash_status)
        return exit_code(status)

    @contextlib.contextmanager
    def _kill_notices_held(self) -> Iterator[None]:
        """Hold the scheduler's kill notices while the block runs: one that came after a
        runner began its tasks but before it was known here would find no runner to stop,
        post or reap (see ``on_kill_notice``). It is answered once the block ends."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, self.kill_signals)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _follow(self, runner: Runner) -> int:
        """Take the runner's messages until it ends; its wait status."""
        self.buffer = bytearray()
        while True:
            readable, _, _ = select.select([runner.channel], [], [], self._timeout())
            if readable:
                try:
                    data = runner.channel.recv(1 << 20)
                except ConnectionResetError:  # it ended with its batch unread (a spare)
                    data = b""
                if not data:
                    break
                if self._take(data):
                    self.flush()  # the runner's last task: post while it exits
                elif len(data) < 1 << 16 and not self._on_last_task():
                    time.sleep(GATHER_SECONDS)
            elif runner.poll() is not None:  # ended, though something holds its socket
                self._take(_drain(runner.channel))
                break
            self._tick(runner)
        status = runner.wait()
        if self.current is not None:
            self._crashed(status, *self.current)
        return status

    def _on_last_task(self) -> bool:
        """Whether the runner runs the last of its tasks: what comes next is its report
        and its end, with nothing to gather after them."""
        return self.current is not None and bool(self.todo) and self.current[0] == self.todo[-1]

    def _take(self, data: Buffer) -> bool:
        """Handle the whole messages that ``data`` completes, keeping the rest for later;
        True if the runner's last task ended."""
        self.buffer += data
        frames, used = split_frames(self.buffer, RUNNER_KINDS)
        last = bool(frames) and frames[-1][1] == ENDED
        self._handle(frames)
        del frames  # views of the buffer, which is cut next
        del self.buffer[:used]
        return last

    def _handle(self, frames: list[Frame]) -> None:
        """Act on the runner's messages: task boundaries, reports, results it posted."""
        for index, kind, payload in frames:
            if kind in (STARTED, ENDED) and self.current is not None:
                for stream, tail in self.output.tails(self.current[1], payload):
                    self.queue(self.current[0], stream, tail)
                self.current = None
            if kind == STARTED:
                self.started.add(index)
                self.current = (index, bytes(payload))
                self.current_since = time.monotonic()
                self.queue(index, BEGUN, b"")  # dropped if its report goes in the same post
            elif kind == POSTED:
                self.remaining.discard(index)
            elif kind in (RESULT, ERROR, EXCEPTION, RAN):
                self.queue(index, kind, bytes(payload))
            elif kind == VERSIONS and not self.versions_sent:  # once per worker
                self.versions_sent = True
                self.queue(index, kind, bytes(payload))

    def _crashed(self, status: int, index: int, start: bytes) -> None:
        """The runner died in task ``index``, begun at output positions ``start``: post
        what it left, and report that task lost."""
        self.current = None
        if self.crash_status is None:
            self.crash_status = status
        for stream, tail in self.output.tails(start, self.output.positions()):
            self.queue(index, stream, tail)
        self.flush()
        job = os.environ.get("JOB_ID")
        left = len(self.remaining - self.started)
        reason = (f"the task ended without reporting ({describe_end(status)} while it ran, "
                  f"on {socket.gethostname()}{f', job {job}' if job else ''}"
                  f"{f'; its worker went on with the {left} after it' if left else ''})")
        log(f"task {index} ended without reporting ({describe_end(status)})")
        self._report_lost(index, reason)

    def _never_started(self, todo: list[int], status: int) -> None:
        """The runner died before it started any of ``todo``: they are lost, and say how."""
        reason = (f"the worker's runner ended before it started the task ({describe_end(status)}"
                  f" on {socket.gethostname()}); its stderr may say why")
        for index in todo:
            self._report_lost(index, reason)

    def _report_lost(self, index: int, reason: str) -> None:
        """Tell the server that task ``index`` of this worker's batch will not report."""
        try:
            self.client.request("lost", error_bytes(reason), worker=self.worker, task=index,
                                seq=self.batch)
        except PermanentHTTPError as error:
            log(f"could not report task {index} lost: {error}")
        self.remaining.discard(index)

    # -- reports and heartbeats ----------------------------------------------

    def queue(self, index: int, kind: int, payload: bytes) -> None:
        """Hold a report or an output tail (bytes) until the next :meth:`flush`."""
        self.frames.append((index, kind, payload))
        self.size += len(payload)
        if self.since is None:
            self.since = time.monotonic()

    def _timeout(self) -> float:
        now = time.monotonic()
        wake = min(self.next_beat, now + RUNNER_POLL_SECONDS)
        if self.since is not None:
            wake = min(wake, self.since + FLUSH_SECONDS)
        return max(0.0, wake - now)

    def _tick(self, runner: Runner) -> None:
        """Post what is held, beat, and give back what a long task holds up, when it is time."""
        now = time.monotonic()
        if self.current is not None and now - self.current_since >= self.give_back_after:
            self._give_back()
        elif now >= self.give_back_at:  # its walltime nears: only the task it runs may end
            self.give_back_at = float("inf")
            self._give_back()
        if self.size >= FLUSH_BYTES or (self.since is not None
                                         and now - self.since >= FLUSH_SECONDS):
            self.flush()
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_seconds
            if runner.poll() is None and not runner.stopped:
                try:
                    self.beater.request("heartbeat", worker=self.worker)
                except Exception as error:  # a missed beat is not fatal; the next may pass
                    log(f"heartbeat failed: {error}")

    def _give_back(self) -> None:
        """The runner is stuck in a long task: return the batch's unstarted tasks to the
        server, so that idle workers run them rather than wait for this one."""
        if self.claims is None:
            return  # no batch has started: there is nothing to give back
        first = self.claims.stop()
        rest = [index for index in self.todo[first:] if index not in self.given_back]
        if not rest:
            return
        try:
            self.client.request("release", json.dumps(rest).encode(), worker=self.worker,
                                seq=self.batch)
        except Exception as error:  # then this runner runs them after all
            log(f"could not give back tasks {index_spec(rest)}: {error}")
            self.claims.resume(len(self.todo))
            self.current_since = float("inf")  # and does not try again for this task
            return
        self.given_back.update(rest)
        self.remaining.difference_update(rest)

    def flush(self, client: Optional[Client] = None) -> None:
        """Post the reports held; one by one if the server refuses them together."""
        frames, self.frames, self.size, self.since = self.frames, [], 0, None
        reported = {index for index, kind, _payload in frames if kind in (RESULT, ERROR)}
        frames = [frame for frame in frames if frame[1] != BEGUN or frame[0] not in reported]
        if not frames:
            return
        client = client or self.client
        try:
            client.request("results", pack_frames(frames))
        except PermanentHTTPError as error:
            if error.status == DISK_FULL_STATUS:
                self._post_failed(client, frames, error)
            elif error.status == 413:
                for index, kind, payload in frames:
                    self._post_alone(client, index, kind, payload)
            else:
                raise
        self.remaining.difference_update(
            index for index, kind, _payload in frames if kind in (RESULT, ERROR))

    def _post_alone(self, client: Client, index: int, kind: int, payload: bytes) -> None:
        """Post one report by itself; a result the server refuses becomes an error.

        A pickled exception, a task's times and the worker's versions are left
        out: only a ``results`` body carries them, and its error text says what
        the task raised (the caller then raises ``TaskError``).
        """
        if kind in (EXCEPTION, BEGUN, RAN, VERSIONS):
            return
        route = {RESULT: "result", ERROR: "error"}.get(kind, "output")
        try:
            client.request(route, payload if route != "output"
                           else pack_frames([(index, kind, payload)]), task=index)
        except PermanentHTTPError as error:
            if kind == RESULT and error.status in (413, DISK_FULL_STATUS):
                self._post_alone(client, index, ERROR,
                                 error_bytes(refused_result(nbytes(payload), error)))
            else:
                log(f"the server refused the {route} of task {index}: {error}")

    def _post_failed(self, client: Client, frames: list[Report],
                     error: PermanentHTTPError) -> None:
        """The server's disk is full: report the held results as errors that say so."""
        failures = [(index, ERROR, payload if kind == ERROR else
                     error_bytes(refused_result(nbytes(payload), error)))
                    for index, kind, payload in frames if kind in (RESULT, ERROR)]
        if failures:
            try:
                client.request("results", pack_frames(failures))
            except PermanentHTTPError as again:
                log(f"could not report tasks {index_spec(sorted({f[0] for f in failures}))} "
                    f"failed either: {again}")

    def on_kill_notice(self, connect: Callable[[float], Client]) -> None:
        """The scheduler will kill this task: stop the runner, post what is held, say so."""
        if self.runner is not None:
            self.runner.kill()
            try:
                self._take(_drain(self.runner.channel))
            except Exception:  # noqa: S110 - interrupted amid a message: post what is held
                pass
            try:
                self.runner.wait()  # gone before the scheduler hears that this task is
            except ChildProcessError:  # reaped by the wait that this notice interrupted
                pass
        client = connect(5)
        try:
            self.flush(client)
        except Exception as error:
            log(f"could not post the reports held: {error}")
        try:
            client.request("killing", worker=self.worker)
        except Exception as error:
            log(f"could not report the kill notice: {error}")


def _drain(channel: socket.socket) -> bytearray:
    """Whatever can be read from ``channel`` without waiting."""
    channel.setblocking(False)
    data = bytearray()
    try:
        while piece := channel.recv(1 << 20):
            data += piece
    except (BlockingIOError, OSError):
        pass
    return data

