"""The code that runs on the cluster: fetch a chunk of tasks, run them, post what happened.

It is embedded verbatim into the job file, so it imports only the standard
library and ``protocol`` (embedded beside it); the serialisation module is
handed in by the job file as ``codec``.

One scheduler array task covers one or more arguments (a chunk). The worker
fetches their arguments over HTTP(S) and says they started; then it forks a
*runner*, which loads ``f`` and runs ``f(*args)`` for each, while the worker
stays behind as the *supervisor*. The runner hands each report (the pickled
result, or the full traceback when ``f`` raised) to the supervisor through a
socket pair before the next task starts, which costs microseconds; the
supervisor posts them together every second or 8 MB, and sends the
heartbeats (none while the runner is stopped, so a frozen task falls
silent). So a task that kills its process (a segfault, ``os._exit``, the OOM
killer) costs no other task its result: the supervisor still holds what
finished before, posts it, reports the crashed task lost with how its process
ended (retried like any lost task), and forks a new runner for the rest of the
chunk. Posting each report before the next task starts would be as safe, but
a round trip per task made 100,000 trivial local tasks 11 times slower. A
result of 1 MB or more is posted by the runner itself before its next task,
so that it is never held twice. The runner ends as an interpreter exit would
(its ``atexit`` handlers run, Python's and C's output buffers are flushed), but
threads it left running are not waited for. When the scheduler warns that it
will kill the task, the supervisor kills the runner, posts what it holds and
says so (see :func:`report_kill_notices`).

The tail of what each task wrote to stdout and stderr travels with its report
(see :class:`TaskOutput`): both still go straight to the scheduler's output
files, unbuffered in the runner, so that what a task wrote before a crash is
there too; the task's part is read back from those files.

Network failures are retried with backoff for ``retry_seconds``, so a server
restart does not lose results; a 4xx answer is final. A server whose disk is
full answers 507: that is retried for ``disk_full_seconds``, and then the task
is reported failed with the server's message, which names the disk. Over HTTPS
the worker trusts only the certificate in its settings, and it signs every
request with the request's key, which it reads from a private file: nothing in
the job file lets anyone else act as the worker.
"""

import atexit
import faulthandler
import gc
import http.client
import io
import os
import select
import signal
import socket
import ssl
import stat
import struct
import sys
import time
import traceback
import urllib.parse

from . import protocol
from .protocol import (ALONE_BYTES, DISK_FULL_STATUS, ERROR, MAX_ERROR_BYTES, OUTPUT,
                       OUTPUT_TAIL_BYTES, RESULT, STDERR, STDOUT, coalesce, frame_bytes,
                       index_spec, nbytes, pack_frames, split_frames, unpack_frames)

#: Reports are posted together once this many bytes or seconds have gathered.
FLUSH_BYTES = 8 << 20
FLUSH_SECONDS = 1.0
#: Seconds to wait for a connection to one route before trying the next.
CONNECT_SECONDS = 5.0
#: Seconds to wait for the server's answer on an open connection.
READ_SECONDS = 60.0
#: Seconds a report refused for a full disk (507) is retried, unless the settings say.
DISK_FULL_SECONDS = 120.0
#: How often the supervisor looks at its runner when nothing else wakes it.
RUNNER_POLL_SECONDS = 0.5
#: After a small read from the runner, the supervisor lets messages gather this long:
#: a wake-up per message of many short tasks would cost more than the tasks.
GATHER_SECONDS = 0.002

# What the runner tells the supervisor besides reports (never sent to the server):
# a task starts (and so the one before it ended), the last task ended (both with
# the output files' positions then), a task's result was posted by the runner itself.
_STARTED, _ENDED, _POSTED = 100, 101, 102
_RUNNER_KINDS = (RESULT, ERROR, _STARTED, _ENDED, _POSTED)
#: The sizes of the stdout and stderr files (-1: not read back), when a task starts or ends.
_POSITIONS = struct.Struct("!qq")
_NO_POSITIONS = _POSITIONS.pack(-1, -1)


class PermanentHTTPError(Exception):
    """The server answered with a 4xx status (or 507 for too long): retrying cannot help."""

    def __init__(self, status, reason):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class Client:
    """A keep-alive HTTP(S) connection to the sheepdog server, with retries.

    ``urls`` are the routes to the server in order of preference (the
    caller's own address, then a tunnel through the head node). A route that
    cannot be connected to within ``CONNECT_SECONDS``, or that presents another
    certificate than the pinned one, is left for the next; nothing is sent
    before the server proved its identity. Every request is signed with
    ``key`` (see ``protocol``). A server whose disk is full (507) is asked
    again for ``disk_full_seconds``, then the answer is final.
    """

    def __init__(self, urls, request_id, key, retry_seconds, certificate=None,
                 disk_full_seconds=None):
        self.routes = [urllib.parse.urlsplit(url) for url in urls]
        self.route = 0
        self.prefix = f"/requests/{request_id}"
        self.key = key
        self.retry_seconds = retry_seconds
        self.disk_full_seconds = DISK_FULL_SECONDS if disk_full_seconds is None else disk_full_seconds
        self.ssl_context = None
        if any(route.scheme == "https" for route in self.routes):
            self.ssl_context = ssl.create_default_context(cadata=certificate)
            self.ssl_context.check_hostname = False  # the pinned certificate is the identity
        self.connection = None

    @property
    def url(self):
        return self.routes[self.route].geturl()

    def _connect(self):
        route = self.routes[self.route]
        if route.scheme == "https":
            connection = http.client.HTTPSConnection(
                route.hostname, route.port, timeout=CONNECT_SECONDS, context=self.ssl_context)
        else:
            connection = http.client.HTTPConnection(
                route.hostname, route.port, timeout=CONNECT_SECONDS)
        try:
            connection.connect()
        except BaseException:
            connection.close()
            raise
        connection.sock.settimeout(READ_SECONDS)
        return connection

    def request(self, method, path, body=None):
        """Send one request, retrying transient failures; return the body as a bytearray.

        ``body`` is bytes-like or a list of parts; large parts are sent as they
        are, never joined into one copy.
        """
        full_path = self.prefix + path
        headers = protocol.auth_headers(self.key, method, full_path, body)
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(protocol.nbytes(body))
            body = protocol.coalesce(body) if isinstance(body, list) else body
        deadline = time.monotonic() + self.retry_seconds
        disk_deadline = None  # set by the first 507
        delay, tried = 0.25, 0
        while True:
            connected = self.connection is not None
            try:
                if self.connection is None:
                    self.connection = self._connect()
                    connected = True
                self.connection.request(method, full_path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = _read_body(response)
                if response.will_close:
                    self.close()
                if response.status < 400:
                    return data
                reason = data.decode("utf-8", "replace").strip()[:2000]
                if response.status == DISK_FULL_STATUS:
                    if disk_deadline is None:
                        disk_deadline = time.monotonic() + self.disk_full_seconds
                    if time.monotonic() + delay > disk_deadline:
                        raise PermanentHTTPError(response.status, reason)
                elif response.status < 500 and response.status not in (408, 429):
                    raise PermanentHTTPError(response.status, reason)
                failure = f"HTTP {response.status}: {reason}"
            except (OSError, http.client.HTTPException) as error:
                self.close()
                failure = f"{type(error).__name__}: {error}"
                if isinstance(error, ssl.SSLCertVerificationError):
                    failure += " (not the caller's certificate: nothing was sent)"
            if not connected and len(self.routes) > 1:
                log(f"cannot connect to {self.url} ({failure})")
                self.route = (self.route + 1) % len(self.routes)
                tried += 1
                if tried % len(self.routes):
                    continue  # try the next route at once
            if time.monotonic() + delay > (disk_deadline or deadline):
                raise ConnectionError(
                    f"gave up on {method} {full_path} via {self.url} after "
                    f"{self.retry_seconds:.0f} s: {failure}"
                )
            log(f"{method} {path} via {self.url} failed ({failure}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def read_key(settings):
    """The request's key: from its private file, or from the settings if put there.

    A worker that cannot read the file leaves at once with ``EXIT_NO_KEY``
    and says why on stderr, which the caller reads back.
    """
    if settings.get("key"):
        return settings["key"].encode()
    path = settings["key_file"]
    try:
        with open(path, "rb") as handle:
            return handle.read().strip()
    except OSError as error:
        log(f"cannot read the request's key file {path} on {socket.gethostname()}: {error}. "
            f"The key is written on the head node; compute nodes must see the same home "
            f"directory (see 'How workers reach you' in sheepdog's docs)")
        sys.exit(protocol.EXIT_NO_KEY)


def _read_body(response):
    """The whole response body, read straight into one writable buffer when its length is known."""
    if response.length is None:
        return bytearray(response.read())
    data = bytearray(response.length)
    view, received = memoryview(data), 0
    while received < len(data):
        count = response.readinto(view[received:])
        if not count:
            raise http.client.IncompleteRead(bytes(view[:received]), len(data) - received)
        received += count
    return data


def log(message):
    print(f"sheepdog worker: {message}", file=sys.stderr, flush=True)


def argument_indices(array_task_id, chunksize, n_arguments, indices=None):
    """The 1-based argument indices that one array task (1-based) covers.

    ``indices`` lists the arguments of a job that runs only some of them (a
    retry); otherwise the job covers 1..``n_arguments`` in order.
    """
    start = (array_task_id - 1) * chunksize
    if indices is not None:
        return list(indices[start:start + chunksize])
    return range(start + 1, min(start + 1 + chunksize, n_arguments + 1))


def python_mismatch(expected):
    """A message when this Python cannot load code made by ``expected`` (major, minor)."""
    here = tuple(sys.version_info[:2])
    if here == tuple(expected):
        return None
    return (
        f"this worker runs Python {sys.version.split()[0]} ({sys.executable}), but the "
        f"function was shipped from Python {expected[0]}.{expected[1]}; code objects "
        f"only load into the same minor version: set 'shell' in the config to a "
        f"Python {expected[0]}.{expected[1]} interpreter on the workers"
    )


def limit_memory(limit_bytes):
    """Apply ``-l mem_grab=...`` as an address-space limit, as the original did."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def error_bytes(text):
    """``text`` as UTF-8 of at most ``MAX_ERROR_BYTES``, whatever characters it holds.

    Characters that UTF-8 cannot encode (lone surrogates, as in a file name
    that was not UTF-8) are escaped; a long text keeps its head and its tail.
    """
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= MAX_ERROR_BYTES:
        return data
    note = b"\n... (traceback shortened) ...\n"
    half = (MAX_ERROR_BYTES - len(note)) // 2
    return (data[:half].decode("utf-8", "ignore").encode() + note
            + data[-half:].decode("utf-8", "ignore").encode())


def describe_failure(error, skip_frames=0):
    """The traceback of ``error`` as text, from its ``skip_frames``-th frame on."""
    frames = error.__traceback__
    for _ in range(skip_frames):
        frames = frames.tb_next if frames is not None else None
    try:
        return "".join(traceback.format_exception(type(error), error, frames))
    except BaseException as failure:  # noqa: B902 - a text must come out of this
        return (f"{type(error).__module__}.{type(error).__qualname__} was raised, and its "
                f"traceback could not be formatted ({type(failure).__name__})")


def refused_result(size, error):
    """The error text of a task whose result the server would not take."""
    if error.status == DISK_FULL_STATUS:
        return f"the caller could not store the result ({size} bytes): {error}"
    return f"the result ({size} bytes) was refused: {error}"


class TaskOutput:
    """What each task wrote to stdout and stderr, read back from the files they go to.

    The scheduler's ``-o`` and ``-e`` files (and the local backend's log) are
    regular files, so their size when a task starts and ends brackets what the
    task wrote, and the last ``OUTPUT_TAIL_BYTES`` of that are read back
    through a descriptor of their own (``/proc/self/fd``). When stdout and
    stderr are one file (``-j y``), their tail is one stream, ``OUTPUT``. A
    stream that is not a regular file (a terminal, a pipe) has no tail. Other
    array tasks that append to the same file would show in it too.
    """

    def __init__(self):
        self.files = []  # [kind, descriptor written to, descriptor to read from]
        seen = {}
        for descriptor, kind in ((1, STDOUT), (2, STDERR)):
            try:
                status = os.fstat(descriptor)
            except OSError:
                continue
            if not stat.S_ISREG(status.st_mode):
                continue
            identity = (status.st_dev, status.st_ino)
            if identity in seen:
                seen[identity][0] = OUTPUT
                continue
            reader = _open_for_reading(descriptor)
            if reader is not None:
                seen[identity] = [kind, descriptor, reader]
                self.files.append(seen[identity])

    def positions(self):
        """The files' sizes now, packed; what Python buffered for them is written first."""
        if not self.files:
            return _NO_POSITIONS
        for stream in (sys.stdout, sys.stderr):
            if not isinstance(stream, _Unbuffered):  # a task replaced it
                try:
                    stream.flush()
                except Exception:  # noqa: S110 - a closed stream has nothing to add
                    pass
        try:
            sizes = [os.fstat(descriptor).st_size for _kind, descriptor, _reader in self.files]
        except OSError:  # the task closed its stdout
            return _NO_POSITIONS
        return _POSITIONS.pack(*(sizes + [-1, -1])[:2])

    def tails(self, start, end):
        """(kind, bytes) of each stream written between two :meth:`positions`."""
        tails = []
        if start == end:
            return tails
        starts, ends = _POSITIONS.unpack(start), _POSITIONS.unpack(end)
        for (kind, _descriptor, reader), first, last in zip(self.files, starts, ends):
            if first < 0 or last <= first:
                continue
            begin = max(first, last - OUTPUT_TAIL_BYTES)
            try:
                data = os.pread(reader, last - begin, begin)
            except OSError as error:
                data = f"(the output could not be read back: {error})".encode()
            if begin > first:
                data = f"[... {begin - first} earlier bytes not kept]\n".encode() + data
            tails.append((kind, data))
        return tails


def _open_for_reading(descriptor):
    """A new read-only descriptor of the file that ``descriptor`` writes, or None."""
    try:
        return os.open(f"/proc/self/fd/{descriptor}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        pass
    try:  # macOS has no /proc, but can name the file
        import fcntl

        path = fcntl.fcntl(descriptor, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, AttributeError, OSError):
        return None


def run_one(codec, function, index, arguments, reports):
    """Run ``f`` on one task's arguments and hand over its report; never raises for ``f``'s faults."""
    try:
        result = function(*codec.loads(arguments))
    except BaseException as error:  # noqa: B902 - SystemExit from f is the user's error too
        # Start the traceback at the user's function, not at this frame.
        reports.report(index, ERROR, error_bytes(describe_failure(error, skip_frames=1)))
        return
    try:
        payload = codec.dumps_parts(result)
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

    def __init__(self, channel, connect):
        self.channel = channel
        self.connect = connect
        self.client = None
        self.pending = []  # the bytes of the frames to send
        self.large = False  # whether a large payload is pending, to be sent as it is

    def report(self, index, kind, payload):
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]  # a small result: one part
        size = nbytes(payload)
        if kind == RESULT and size >= ALONE_BYTES:
            self.client = self.client or self.connect()
            try:
                self.client.request("POST", f"/tasks/{index}/result", payload)
                kind, payload = _POSTED, b""
            except PermanentHTTPError as error:
                if error.status not in (413, DISK_FULL_STATUS):
                    raise
                kind, payload = ERROR, error_bytes(refused_result(size, error))
        if isinstance(payload, list) or size >= 1 << 16:
            self.pending.extend(pack_frames([(index, kind, payload)]))
            self.large = True
        else:
            self.pending.append(frame_bytes(index, kind, payload))

    def started(self, index, positions):
        """Task ``index`` starts, and the one before it ended, at ``positions``: sent now."""
        self.pending.append(frame_bytes(index, _STARTED, positions))
        self.send()

    def ended(self, index, positions):
        """The runner's last task ended at ``positions``."""
        self.pending.append(frame_bytes(index, _ENDED, positions))
        self.send()

    def send(self):
        if self.large:
            for part in coalesce(self.pending):
                self.channel.sendall(part)
        else:  # the common case: one small write
            self.channel.sendall(b"".join(self.pending))
        self.pending, self.large = [], False


def run_tasks(codec, function_blob, arguments, indices, channel, connect, settings, output):
    """In the runner: load ``f``, then run each task; the runner's exit status."""
    reports = RunnerReports(channel, connect)
    problem = None
    try:
        if settings.get("memory_limit"):
            limit_memory(settings["memory_limit"])
        function = codec.loads_function(function_blob)
    except BaseException as error:  # noqa: B902 - report any failure to load
        problem = "the function could not be loaded on this worker:\n" + describe_failure(error)
    for index in indices:
        reports.started(index, output.positions())
        if problem is None:
            run_one(codec, function, index, arguments.pop(index), reports)
        else:
            reports.report(index, ERROR, error_bytes(problem))
    if indices:
        reports.ended(indices[-1], output.positions())
    return 0 if problem is None else 1


class Runner:
    """A forked process that runs tasks and reports over a socket pair.

    It leaves the scheduler's ``kill_signals`` (numbers) to the supervisor.
    """

    def __init__(self, target, kill_signals=()):
        self.channel, child_end = socket.socketpair()
        self.status = None  # the wait status, once it ended
        self.stopped = False
        # What exists now is never collected in the runner, so that its garbage
        # collections do not write to (and so copy) every page it shares with us.
        gc.freeze()
        self.pid = os.fork()
        if self.pid == 0:  # the runner
            self.channel.close()
            _runner_main(target, child_end, kill_signals)
        child_end.close()

    def poll(self):
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

    def wait(self):
        while self.status is None:
            pid, status = os.waitpid(self.pid, 0)
            if pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                self.status = status
        self.channel.close()
        return self.status

    def kill(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runner_main(target, channel, kill_signals):
    """The whole life of a runner process: it never returns into the supervisor's code."""
    status = 1
    try:
        run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
        getattr(atexit, "_clear", lambda: None)()  # the supervisor's handlers are its own
        for number in kill_signals:  # the supervisor answers the scheduler's kill notice
            signal.signal(number, lambda signum, frame: None)
        _unbuffer_output()
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


def _unbuffer_output():
    """Send what tasks print straight to the output files, as ``python -u`` would."""
    for name, descriptor in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            stream.flush()
            raw = io.FileIO(descriptor, "w", closefd=False)
        except (OSError, ValueError, AttributeError):
            continue
        setattr(sys, name, _Unbuffered(
            raw, encoding=getattr(stream, "encoding", None) or "utf-8",
            errors=getattr(stream, "errors", None) or "backslashreplace", write_through=True))


class _Unbuffered(io.TextIOWrapper):
    """A text stream that writes straight to its file descriptor (nothing to flush)."""


def _flush_c_stdio():
    """Flush what C code buffered in stdio, which ``os._exit`` would drop."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: S110 - no ctypes: nothing more can be done
        pass


def describe_end(status):
    """Words for how a process ended, from its wait status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit status {os.WEXITSTATUS(status)}"


def exit_code(status):
    """The exit status a shell would give for a process's wait status."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Supervisor:
    """The worker's side of a chunk: holds reports until posted, beats, replaces crashed runners.

    ``remaining`` are the chunk's tasks not yet reported, which the heartbeats
    name; ``started`` those a runner has begun.
    """

    def __init__(self, client, beater, indices, heartbeat_seconds, output):
        self.client = client
        self.beater = beater  # a connection of its own, whose retries end before the next beat
        self.remaining = set(indices)
        self.started = set()
        self.heartbeat_seconds = heartbeat_seconds
        self.output = output
        self.frames, self.size, self.since = [], 0, None
        self.next_beat = time.monotonic() + heartbeat_seconds
        self.runner = None
        self.buffer = bytearray()  # what the runner sent, up to the end of a whole message
        self.current = None  # (index, positions) of the task the runner is in
        self.crash_status = None  # the wait status of the first runner that crashed

    # -- the runners ------------------------------------------------------

    def run(self, start_runner, indices):
        """Run ``indices`` in runners until each has started once; the exit status."""
        todo, status = list(indices), 0
        try:
            while todo:
                begun = len(self.started)
                self.runner = start_runner(todo)
                status = self._follow(self.runner)
                todo = [index for index in todo if index not in self.started]
                if len(self.started) == begun:
                    break  # the runner died before any task: a new one would too
            self.flush()
        finally:
            if self.runner is not None:
                self.runner.kill()
        if self.crash_status is not None:
            return exit_code(self.crash_status)
        return exit_code(status)

    def _follow(self, runner):
        """Take the runner's messages until it ends; its wait status."""
        self.buffer = bytearray()
        while True:
            readable, _, _ = select.select([runner.channel], [], [], self._timeout())
            if readable:
                data = runner.channel.recv(1 << 20)
                if not data:
                    break
                if self._take(data):
                    self.flush()  # the runner's last task: post while it exits
                elif len(data) < 1 << 16:
                    time.sleep(GATHER_SECONDS)
            elif runner.poll() is not None:  # ended, though something holds its socket
                self._take(_drain(runner.channel))
                break
            self._tick(runner)
        status = runner.wait()
        if self.current is not None:
            self._crashed(status)
        return status

    def _take(self, data):
        """Handle the whole messages that ``data`` completes, keeping the rest for later;
        True if the runner's last task ended."""
        self.buffer += data
        frames, used = split_frames(self.buffer, _RUNNER_KINDS)
        last = bool(frames) and frames[-1][1] == _ENDED
        for index, kind, payload in frames:
            if kind in (_STARTED, _ENDED) and self.current is not None:
                for stream, tail in self.output.tails(self.current[1], payload):
                    self.queue(self.current[0], stream, tail)
                self.current = None
            if kind == _STARTED:
                self.started.add(index)
                self.current = (index, bytes(payload))
            elif kind == _POSTED:
                self.remaining.discard(index)
            elif kind in (RESULT, ERROR):
                self.queue(index, kind, bytes(payload))
        frames = payload = None  # views of the buffer, which is cut next
        del self.buffer[:used]
        return last

    def _crashed(self, status):
        """The runner died in a task: post what it left, and report that task lost."""
        index, start = self.current
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
        try:
            self.client.request("POST", f"/tasks/{index}/lost", error_bytes(reason))
        except PermanentHTTPError as error:
            log(f"could not report task {index} lost: {error}")
        self.remaining.discard(index)

    # -- reports and heartbeats ----------------------------------------------

    def queue(self, index, kind, payload):
        """Hold a report or an output tail (bytes) until the next :meth:`flush`."""
        self.frames.append((index, kind, payload))
        self.size += len(payload)
        if self.since is None:
            self.since = time.monotonic()

    def _timeout(self):
        now = time.monotonic()
        wake = min(self.next_beat, now + RUNNER_POLL_SECONDS)
        if self.since is not None:
            wake = min(wake, self.since + FLUSH_SECONDS)
        return max(0.0, wake - now)

    def _tick(self, runner):
        """Post what is held, and beat, when it is time."""
        now = time.monotonic()
        if self.size >= FLUSH_BYTES or (self.since is not None
                                         and now - self.since >= FLUSH_SECONDS):
            self.flush()
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_seconds
            if runner.poll() is None and not runner.stopped and self.remaining:
                spec = index_spec(sorted(self.remaining))
                try:
                    self.beater.request("POST", f"/tasks/{spec}/heartbeat", b"")
                except Exception as error:  # a missed beat is not fatal; the next may pass
                    log(f"heartbeat for tasks {spec} failed: {error}")

    def flush(self, client=None):
        """Post the reports held; one by one if the server refuses them together."""
        frames, self.frames, self.size, self.since = self.frames, [], 0, None
        if not frames:
            return
        client = client or self.client
        try:
            client.request("POST", "/results", pack_frames(frames))
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

    def _post_alone(self, client, index, kind, payload):
        """Post one report by itself; a result the server refuses becomes an error."""
        route = {RESULT: "result", ERROR: "error"}.get(kind, "output")
        try:
            client.request("POST", f"/tasks/{index}/{route}",
                           payload if route != "output" else pack_frames([(index, kind, payload)]))
        except PermanentHTTPError as error:
            if kind == RESULT and error.status in (413, DISK_FULL_STATUS):
                self._post_alone(client, index, ERROR,
                                 error_bytes(refused_result(nbytes(payload), error)))
            else:
                log(f"the server refused the {route} of task {index}: {error}")

    def _post_failed(self, client, frames, error):
        """The server's disk is full: report the held results as errors that say so."""
        failures = [(index, ERROR, payload if kind == ERROR else
                     error_bytes(refused_result(nbytes(payload), error)))
                    for index, kind, payload in frames if kind in (RESULT, ERROR)]
        if failures:
            try:
                client.request("POST", "/results", pack_frames(failures))
            except PermanentHTTPError as again:
                log(f"could not report tasks {index_spec(sorted({f[0] for f in failures}))} "
                    f"failed either: {again}")

    def on_kill_notice(self, connect):
        """The scheduler will kill this task: stop the runner, post what is held, say so."""
        if self.runner is not None:
            self.runner.kill()
            try:
                self._take(_drain(self.runner.channel))
            except Exception:  # noqa: S110 - interrupted amid a message: post what is held
                pass
            self.runner.wait()  # gone before the scheduler hears that this task is
        client = connect(5)
        try:
            self.flush(client)
        except Exception as error:
            log(f"could not post the reports held: {error}")
        if self.remaining:
            try:
                client.request("POST", f"/tasks/{index_spec(sorted(self.remaining))}/killing", b"")
            except Exception as error:
                log(f"could not report the kill notice: {error}")


def _drain(channel):
    """Whatever can be read from ``channel`` without waiting."""
    channel.setblocking(False)
    data = bytearray()
    try:
        while piece := channel.recv(1 << 20):
            data += piece
    except (BlockingIOError, OSError):
        pass
    return data


def kill_signal_numbers(settings):
    """The signals by which the scheduler warns that it will kill the task (see below)."""
    names = settings.get("kill_signals", ("SIGUSR2",))
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def report_kill_notices(connect, supervisor, numbers):
    """Tell the server when the scheduler warns that it is about to kill this task.

    The backend names the warning signals (``kill_signals`` in the settings):
    GridEngine jobs submitted with ``-notify`` get SIGUSR2 before ``qdel`` or an
    enforced limit kills them (and SIGUSR1 before a suspension, which needs no
    action, so it is ignored); Slurm sends SIGTERM. A warned task was stopped
    on purpose, so it is not retried; the scheduler's accounting then says
    why. The worker posts what it holds and leaves at once, with its runner,
    rather than make the scheduler wait out its notice period.
    """

    def on_kill_notice(signum, frame):
        supervisor.on_kill_notice(connect)
        os._exit(128 + signum)

    for number in numbers:
        signal.signal(number, on_kill_notice)
    if hasattr(signal, "SIGUSR1") and signal.SIGUSR1 not in numbers:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run(settings, codec):
    """Run the array task named by the scheduler's environment; return an exit status."""
    array_task_id = int(os.environ[settings["task_variable"]])
    indices = list(argument_indices(
        array_task_id, settings["chunksize"], settings["n_arguments"], settings.get("indices")
    ))
    if not indices:
        return 0
    key = read_key(settings)

    def connect(retry_seconds=settings["retry_seconds"]):
        return Client(settings["urls"], settings["request_id"], key, retry_seconds,
                      settings.get("certificate"), settings.get("disk_full_seconds"))

    client = connect()
    output = TaskOutput()
    supervisor = Supervisor(client, connect(settings["heartbeat_seconds"]), indices,
                            settings["heartbeat_seconds"], output)
    kill_signals = kill_signal_numbers(settings)
    report_kill_notices(connect, supervisor, kill_signals)
    try:
        problem = python_mismatch(settings["python"])
        if problem is not None:
            for index in indices:
                supervisor.queue(index, ERROR, error_bytes(problem))
            supervisor.flush()
            return 1
        function = client.request("GET", "/function")
        spec = index_spec(indices)
        arguments = {index: payload for index, _kind, payload
                     in unpack_frames(client.request("GET", f"/tasks/{spec}"))}
        client.request("POST", f"/tasks/{spec}/start", b"")

        def start_runner(todo):
            return Runner(lambda channel: run_tasks(
                codec, function, arguments, todo, channel, connect, settings, output),
                kill_signals)

        return supervisor.run(start_runner, indices)
    finally:
        client.close()
        supervisor.beater.close()
