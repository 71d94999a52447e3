"""The runner: a forked process that runs a batch of tasks and hands over each report at once.

Embedded verbatim in the job file beside ``protocol``, ``client`` and
``output`` (see ``loop.py``), so it imports only the standard library and
those. The worker forks it and stays behind as its supervisor; the runner of
the next batch is forked ahead, and waits for its batch (``spare.py``).

The runner loads ``f`` and runs ``f(*args, **kwargs)`` for each task. It hands each
report (the pickled result, or when ``f`` raised the full traceback and the
pickled exception, see ``wire/failures.py``), with the seconds ``f`` ran, to the
supervisor through a socket pair before the next task starts, which costs
microseconds, so that a task that kills its process costs no other task its
result. A result of 1 MB or more is posted by the runner itself before its
next task, so that it is never held twice. The runner ends as an interpreter
exit would (its ``atexit`` handlers run, Python's and C's output buffers are
flushed), but threads it left running are not waited for.
"""

from __future__ import annotations

import atexit
import faulthandler
import gc
import mmap
import multiprocessing
import os
import signal
import socket
import struct
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterable, NoReturn, Optional, Union

from ..wire import serialisation
from ..wire.failures import describe_failure, dumps_exception, error_bytes
from ..wire.modules import VersionReport, package_versions
from ..wire.protocol import (
    ALONE_BYTES,
    DISK_FULL_STATUS,
    ERROR,
    EXCEPTION,
    RAN,
    RESULT,
    SECONDS,
    VERSIONS,
    Buffer,
    coalesce,
    frame_bytes,
    nbytes,
    pack_frames,
)
from .client import Client, PermanentHTTPError
from .lifeline import die_with_parent, libc
from .output import TaskOutput, restore_output, unbuffer_output

if TYPE_CHECKING:
    from ..wire.settings import WorkerSettings

# What the runner tells the supervisor besides reports (never sent to the server):
# a task starts (and so the one before it ended), the last task ended (both with
# the output files' positions then), a task's result was posted by the runner itself.
STARTED, ENDED, POSTED = 100, 101, 102
RUNNER_KINDS = (RESULT, ERROR, EXCEPTION, RAN, VERSIONS, STARTED, ENDED, POSTED)


def memory_words(size: int) -> str:
    """A memory limit in the units the config takes (powers of 1024): ``8G``, ``1536M``."""
    for unit, power in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size % (1 << power) == 0:
            return f"{size >> power}{unit}"
    return f"{size} bytes"


def limit_memory(limit_bytes: int) -> None:
    """Apply ``-l mem_grab=...`` as an address-space limit, as the original did."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def refused_result(size: int, error: PermanentHTTPError) -> str:
    """The error text of a task whose result the server would not take."""
    if error.status == DISK_FULL_STATUS:
        return f"the caller could not store the result ({size} bytes): {error}"
    return f"the result ({size} bytes) was refused: {error}"


def run_one(function: Callable[..., Any], index: int, arguments: Buffer,
            reports: RunnerReports, memory_limit: Optional[int] = None) -> None:
    """Run ``f`` on one task's arguments and hand over its report; never raises for ``f``'s faults.

    A ``MemoryError`` under the request's ``memory_limit`` (the address space
    each worker has) says so first: the limit ended the task, not a fault of ``f``'s.
    """
    try:
        args, kwargs = serialisation.call_arguments(serialisation.loads(arguments))
    except BaseException as error:  # noqa: B902 - a class or module missing here, say
        reports.report(index, ERROR, error_bytes(
            "the arguments could not be loaded on this worker:\n" + describe_failure(error)))
        return
    began = time.perf_counter()
    try:
        result = function(*args, **kwargs)
    except BaseException as error:  # noqa: B902 - SystemExit from f is the user's error too
        reports.report(index, RAN, SECONDS.pack(time.perf_counter() - began))
        # Start the traceback at the user's function, not at this frame.
        text = describe_failure(error, skip_frames=1)
        if isinstance(error, MemoryError) and memory_limit:
            text = f"killed: over its memory limit of {memory_words(memory_limit)}\n{text}"
        reports.report(index, ERROR, error_bytes(text))
        reports.report(index, EXCEPTION, dumps_exception(error))
        return
    reports.report(index, RAN, SECONDS.pack(time.perf_counter() - began))
    try:
        payload = serialisation.dumps_parts(result)
    except BaseException as error:  # noqa: B902
        reports.report(index, ERROR, error_bytes(
            "the result could not be serialised:\n" + describe_failure(error)))
        return
    reports.report(index, RESULT, payload)


class RunnerReports:
    """The runner's side of the socket pair: reports and task boundaries, to the supervisor.

    What a task left is sent together with the next task's start, in one
    write, before that task runs: the supervisor holds it from then on,
    whatever becomes of this process. A result of ``ALONE_BYTES`` or more is
    posted to the server here and now instead.
    """

    def __init__(self, channel: socket.socket, connect: Callable[[], Client]) -> None:
        self.channel = channel
        self.connect = connect
        self.client: Optional[Client] = None
        self.pending: list[Buffer] = []  # the bytes of the frames to send
        self.large = False  # whether a large payload is pending, to be sent as it is

    def report(self, index: int, kind: int, payload: Union[Buffer, list[Buffer]]) -> None:
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]  # a small result: one part
        size = nbytes(payload)
        if kind == RESULT and size >= ALONE_BYTES:
            self.client = self.client or self.connect()
            try:
                self.client.request("result", payload, task=index)
                kind, payload = POSTED, b""
            except PermanentHTTPError as error:
                if error.status not in (413, DISK_FULL_STATUS):
                    raise
                kind, payload = ERROR, error_bytes(refused_result(size, error))
        if isinstance(payload, list) or size >= 1 << 16:
            self.pending.extend(pack_frames([(index, kind, payload)]))
            self.large = True
        else:
            self.pending.append(frame_bytes(index, kind, payload))

    def started(self, index: int, positions: bytes) -> None:
        """Task ``index`` starts, and the one before it ended, at ``positions``: sent now."""
        self.pending.append(frame_bytes(index, STARTED, positions))
        self.send()

    def ended(self, index: int, positions: bytes) -> None:
        """The runner's last task ended at ``positions``."""
        self.pending.append(frame_bytes(index, ENDED, positions))
        self.send()

    def send(self) -> None:
        if self.large:
            for part in coalesce(self.pending):
                self.channel.sendall(part)
        else:  # the common case: one small write
            self.channel.sendall(b"".join(self.pending))
        self.pending, self.large = [], False


class Claims:
    """Which of its tasks a runner may still start, shared between it and its supervisor.

    The runner claims each task before it starts it. The supervisor may stop
    it before its next unclaimed task, to give the rest of the batch back
    while the runner is stuck in a long task (see ``loop.py``). A lock
    shared across the fork makes claiming and stopping exclusive, so every
    task is either started here or given back, never both.
    """

    _FIELDS = struct.Struct("qq")  # the next position to claim, and the first not allowed

    def __init__(self, count: int) -> None:
        self._lock = multiprocessing.Lock()
        self._memory = mmap.mmap(-1, self._FIELDS.size)  # shared with the forked runner
        self._FIELDS.pack_into(self._memory, 0, 0, count)

    def claim(self, position: int) -> bool:
        """In the runner: whether it may start the task at ``position`` (then it is claimed)."""
        with self._lock:
            _next, limit = self._fields()
            if position >= limit:
                return False
            self._FIELDS.pack_into(self._memory, 0, position + 1, limit)
            return True

    def stop(self) -> int:
        """In the supervisor: let the runner start nothing more; the first position it never
        claimed."""
        with self._lock:
            claimed, _limit = self._fields()
            self._FIELDS.pack_into(self._memory, 0, claimed, claimed)
            return claimed

    def resume(self, limit: int) -> None:
        """In the supervisor: let the runner go on up to ``limit`` after all (the tasks could
        not be given back)."""
        with self._lock:
            claimed, _limit = self._fields()
            self._FIELDS.pack_into(self._memory, 0, claimed, limit)

    def _fields(self) -> tuple[int, int]:
        """The next position to claim, and the first not allowed; the caller holds the lock."""
        fields: tuple[int, int] = self._FIELDS.unpack_from(self._memory)
        return fields


def compare_versions(caller: dict[str, str], settings: WorkerSettings, reports: RunnerReports,
                     first: list[int]) -> Optional[str]:
    """Tell the caller this worker's versions of what the function uses by name (with the
    first task's reports); with ``version_mismatch`` "error", why its tasks fail if they
    differ."""
    if settings.version_mismatch == "ignore" or not first:
        return None
    report = VersionReport(socket.gethostname(), sys.executable, caller,
                           package_versions(caller))
    reports.report(first[0], VERSIONS, report.to_bytes())
    differences = report.differences()
    if settings.version_mismatch != "error" or not differences:
        return None
    return (f"this worker ({report.host}, {report.python}) has other versions than the "
            f"caller: {'; '.join(differences)}. The request's 'version_mismatch' is "
            f"'error', so its tasks do not run here: install the caller's versions on the "
            f"workers, or set 'version_mismatch' to 'warn'")


class Loaded:
    """``f`` loaded in a runner, with the caller's versions of what it uses by name; or
    why it could not be (then each task fails with that)."""

    def __init__(self, function_blob: Buffer, settings: WorkerSettings) -> None:
        self.function: Optional[Callable[..., Any]] = None
        self.versions: dict[str, str] = {}
        self.problem: Optional[str] = None
        try:
            if settings.memory_limit:
                limit_memory(settings.memory_limit)
            self.function, self.versions = serialisation.loads_function_and_versions(
                function_blob)
        except BaseException as error:  # noqa: B902 - report any failure to load
            self.problem = ("the function could not be loaded on this worker:\n"
                            + describe_failure(error))


def run_tasks(loaded: Loaded, arguments: dict[int, memoryview], indices: list[int],
              channel: socket.socket, connect: Callable[[], Client], settings: WorkerSettings,
              output: TaskOutput, claims: Claims, versions_told: bool = False) -> int:
    """In the runner: run each task of its batch that it may claim, with ``f`` loaded; the
    runner's exit status.

    ``versions_told``: an earlier batch of this function told the caller this
    worker's versions already; unless differences fail the tasks
    (``version_mismatch`` "error"), they are not looked up again, which costs
    milliseconds that a warm pool's one-task batches would pay each time.
    """
    reports = RunnerReports(channel, connect)
    problem = loaded.problem
    if problem is None and (not versions_told or settings.version_mismatch == "error"):
        problem = compare_versions(loaded.versions, settings, reports, indices[:1])
    last: Optional[int] = None
    for position, index in enumerate(indices):
        if not claims.claim(position):
            break  # the supervisor gave the rest back
        restore_output()
        reports.started(index, output.positions())
        if problem is None:
            assert loaded.function is not None  # loaded, or there is a problem
            run_one(loaded.function, index, arguments.pop(index), reports, settings.memory_limit)
        else:
            reports.report(index, ERROR, error_bytes(problem))
        last = index
    if last is not None:
        reports.ended(last, output.positions())
    return 0 if problem is None else 1


class Runner:
    """A forked process that runs tasks and reports over a socket pair.

    It may start the tasks ``claims`` lets it, and leaves the scheduler's
    ``kill_signals`` (numbers) to the supervisor.
    """

    def __init__(self, target: Callable[[socket.socket], int], claims: Claims,
                 kill_signals: Iterable[int] = ()) -> None:
        self.claims = claims
        self.channel, child_end = socket.socketpair()
        self.status: Optional[int] = None  # the wait status, once it ended
        self.stopped = False
        # What exists now is never collected in the runner, so that its garbage
        # collections do not write to (and so copy) every page it shares with us.
        gc.freeze()
        libc()  # looked up here once, not in each runner
        supervisor = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the runner
            self.channel.close()
            _runner_main(target, child_end, kill_signals, supervisor)
        child_end.close()

    def poll(self) -> Optional[int]:
        """The wait status if the runner ended, else None; notes whether it is stopped."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
            if pid and os.WIFSTOPPED(status):
                self.stopped = True
            elif pid and os.WIFCONTINUED(status):
                self.stopped = False
            elif pid:
                self.status = status
        return self.status

    def wait(self) -> int:
        while self.status is None:
            pid, status = os.waitpid(self.pid, 0)
            if pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                self.status = status
        self.channel.close()
        return self.status

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runner_main(target: Callable[[socket.socket], int], channel: socket.socket,
                 kill_signals: Iterable[int], supervisor: int) -> NoReturn:
    """The whole life of a runner process: it never returns into the supervisor's code."""
    status = 1
    try:
        die_with_parent(supervisor)  # a runner whose worker is gone has nobody to report to
        run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
        getattr(atexit, "_clear", lambda: None)()  # the supervisor's handlers are its own
        kill_signals = list(kill_signals)
        for number in kill_signals:  # the supervisor answers the scheduler's kill notice
            signal.signal(number, lambda signum, frame: None)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, kill_signals)  # held while it was forked
        unbuffer_output()
        faulthandler.enable()  # a segfault's traceback goes to stderr, and so into its tail
        status = target(channel)
        if run_exit_handlers is not None:
            run_exit_handlers()
    except BaseException:  # noqa: B902 - said on stderr; the supervisor sees the status
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: S110
                pass
        _flush_c_stdio()
        os._exit(status)


def _flush_c_stdio() -> None:
    """Flush what C code buffered in stdio, which ``os._exit`` would drop."""
    try:
        getattr(libc(), "fflush")(None)
    except Exception:  # noqa: S110 - no ctypes: nothing more can be done
        pass
