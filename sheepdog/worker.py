"""The code that runs on the cluster: fetch a task, run it, post what happened.

It is embedded verbatim into the job file, so it imports only the standard
library and ``protocol`` (embedded beside it); the serialisation module is
handed in by the job file as ``codec``.

One scheduler array task covers one or more arguments (a chunk). For each it
fetches the arguments over HTTP(S), says it started, runs ``f(*args)`` while a
thread sends heartbeats, and posts the pickled result, or the full traceback
when ``f`` raised. Network failures are retried with backoff for
``retry_seconds``, so a server restart does not lose results; a 4xx answer is
final. Over HTTPS the worker trusts only the certificate in its settings, and
it signs every request with the request's key, which it reads from a private
file: nothing in the job file lets anyone else act as the worker.
"""

import http.client
import os
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
import urllib.parse

from . import protocol
from .protocol import ALONE_BYTES, ERROR, RESULT, index_spec, nbytes, pack_frames, unpack_frames

#: Largest error text sent; longer tracebacks keep their head and tail.
MAX_ERROR_CHARS = 60_000
#: Reports are posted together once this many bytes or seconds have gathered.
FLUSH_BYTES = 8 << 20
FLUSH_SECONDS = 1.0
#: Seconds to wait for a connection to one route before trying the next.
CONNECT_SECONDS = 5.0
#: Seconds to wait for the server's answer on an open connection.
READ_SECONDS = 60.0


class PermanentHTTPError(Exception):
    """The server answered with a 4xx status: retrying cannot help."""

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
    ``key`` (see ``protocol``).
    """

    def __init__(self, urls, request_id, key, retry_seconds, certificate=None):
        self.routes = [urllib.parse.urlsplit(url) for url in urls]
        self.route = 0
        self.prefix = f"/requests/{request_id}"
        self.key = key
        self.retry_seconds = retry_seconds
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
                reason = data.decode("utf-8", "replace")[:500]
                if response.status < 500 and response.status not in (408, 429):
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
            if time.monotonic() + delay > deadline:
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


class Heartbeat:
    """Tells the server, every ``interval`` seconds, which task is still running."""

    def __init__(self, client, interval):
        self.client = client
        self.interval = interval
        self.spec = None  # the tasks of the chunk not yet reported
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sheepdog-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(self.interval):
            spec = self.spec
            if not spec:
                continue
            try:
                self.client.request("POST", f"/tasks/{spec}/heartbeat", b"")
            except Exception as error:  # a missed beat is not fatal; the next may pass
                log(f"heartbeat for tasks {spec} failed: {error}")

    def stop(self):
        self._stop.set()


def report_kill_notices(connect, remaining):
    """Tell the server when GridEngine warns that it is about to kill this task.

    Jobs submitted with ``-notify`` get SIGUSR2 before ``qdel`` or an enforced
    limit kills them (and SIGUSR1 before a suspension, which needs no action).
    A warned task was stopped on purpose, so it is not retried; the scheduler's
    accounting then says why. The worker leaves at once rather than make the
    scheduler wait out its notify period.
    """

    def on_kill_notice(signum, frame):
        if remaining:
            try:
                connect(5).request("POST", f"/tasks/{index_spec(remaining)}/killing", b"")
            except Exception as error:
                log(f"could not report the kill notice: {error}")
        os._exit(128 + signum)

    if hasattr(signal, "SIGUSR2"):
        signal.signal(signal.SIGUSR2, on_kill_notice)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


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


def _clip(text):
    if len(text) <= MAX_ERROR_CHARS:
        return text
    half = MAX_ERROR_CHARS // 2
    return text[:half] + "\n... (traceback shortened) ...\n" + text[-half:]


class Reports:
    """Results and errors of a chunk, posted together every second or 8 MB."""

    def __init__(self, client, remaining, heartbeat):
        self.client = client
        self.remaining = remaining
        self.heartbeat = heartbeat
        self.frames = []
        self.size = 0
        self.last_flush = time.monotonic()

    def add(self, index, kind, payload):
        size = nbytes(payload)
        if kind == RESULT and size >= ALONE_BYTES:
            self.flush()
            self._post_alone(index, kind, payload)
            self._reported([index])
            return
        self.frames.append((index, kind, payload))
        self.size += size
        if self.size >= FLUSH_BYTES or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def error(self, index, text):
        self.add(index, ERROR, _clip(text).encode("utf-8"))

    def flush(self):
        if self.frames:
            try:
                self.client.request("POST", "/results", pack_frames(self.frames))
            except PermanentHTTPError as error:
                if error.status != 413:
                    raise
                for index, kind, payload in self.frames:  # too large together: one by one
                    self._post_alone(index, kind, payload)
            self._reported([index for index, _kind, _payload in self.frames])
        self.frames, self.size, self.last_flush = [], 0, time.monotonic()

    def _reported(self, indices):
        for index in indices:
            self.remaining.remove(index)
        self.heartbeat.spec = index_spec(self.remaining)

    def _post_alone(self, index, kind, payload):
        """Post one report by itself; a result the server refuses as too large becomes an error."""
        route = "result" if kind == RESULT else "error"
        try:
            self.client.request("POST", f"/tasks/{index}/{route}", payload)
        except PermanentHTTPError as error:
            if error.status != 413:
                raise
            message = f"the result ({nbytes(payload)} bytes) was refused: {error}"
            self.client.request("POST", f"/tasks/{index}/error", message.encode())


def run_one(codec, function, index, arguments, reports):
    """Run ``f`` on one task's arguments and queue its report; never raises for ``f``'s faults."""
    try:
        result = function(*codec.loads(arguments))
    except BaseException as error:  # noqa: B902 - SystemExit from f is the user's error too
        # Start the traceback at the user's function, not at this frame.
        frames = error.__traceback__.tb_next if error.__traceback__ else None
        reports.error(index, "".join(traceback.format_exception(type(error), error, frames)))
        return
    try:
        payload = codec.dumps_parts(result)
    except Exception:
        reports.error(index, "the result could not be serialised:\n" + traceback.format_exc())
        return
    reports.add(index, RESULT, payload)


def run(settings, codec):
    """Run the array task named by the scheduler's environment; return an exit status."""
    array_task_id = int(os.environ[settings["task_variable"]])
    indices = list(argument_indices(
        array_task_id, settings["chunksize"], settings["n_arguments"], settings.get("indices")
    ))

    if not indices:
        return 0
    key = read_key(settings)

    def connect(retry_seconds):
        return Client(settings["urls"], settings["request_id"], key,
                      retry_seconds, settings.get("certificate"))

    client = connect(settings["retry_seconds"])
    problem = python_mismatch(settings["python"])
    if problem is None:
        try:
            if settings.get("memory_limit"):
                limit_memory(settings["memory_limit"])
            function = codec.loads_function(client.request("GET", "/function"))
        except (ConnectionError, PermanentHTTPError, ssl.SSLError):
            raise
        except BaseException:  # noqa: B902 - report any failure to load
            problem = "the function could not be loaded on this worker:\n" + traceback.format_exc()
    remaining = list(indices)
    heartbeat = Heartbeat(connect(settings["heartbeat_seconds"]), settings["heartbeat_seconds"])
    reports = Reports(client, remaining, heartbeat)
    report_kill_notices(connect, remaining)
    try:
        if problem is None:
            spec = index_spec(indices)
            arguments = {index: payload for index, _kind, payload
                         in unpack_frames(client.request("GET", f"/tasks/{spec}"))}
            client.request("POST", f"/tasks/{spec}/start", b"")
            heartbeat.spec = spec
            for index in indices:
                run_one(codec, function, index, arguments.pop(index), reports)
        else:
            for index in indices:
                reports.error(index, problem)
        reports.flush()
    finally:
        heartbeat.stop()
        client.close()
    return 0 if problem is None else 1
