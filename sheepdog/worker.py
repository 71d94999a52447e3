"""The code that runs on the cluster: fetch a task, run it, post what happened.

It is embedded verbatim into the job file, so it imports only the standard
library and nothing from the rest of the package; the serialisation module
(embedded beside it) is handed in by the job file as ``codec``.

One scheduler array task covers one or more arguments (a chunk). For each it
fetches the arguments over HTTP(S), says it started, runs ``f(*args)`` while a
thread sends heartbeats, and posts the pickled result, or the full traceback
when ``f`` raised. Network failures are retried with backoff for
``retry_seconds``, so a server restart does not lose results; a 4xx answer is
final. Over HTTPS the worker trusts only the certificate in its settings.
"""

import base64
import http.client
import os
import signal
import ssl
import sys
import threading
import time
import traceback
import urllib.parse

#: Largest error text sent; longer tracebacks keep their head and tail.
MAX_ERROR_CHARS = 60_000


class PermanentHTTPError(Exception):
    """The server answered with a 4xx status: retrying cannot help."""

    def __init__(self, status, reason):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class Client:
    """A keep-alive HTTP(S) connection to the sheepdog server, with retries."""

    def __init__(self, url, request_id, secret, retry_seconds, certificate=None):
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = f"/requests/{request_id}"
        token = base64.b64encode(f"sheepdog:{secret}".encode()).decode()
        self.headers = {"Authorization": "Basic " + token}
        self.retry_seconds = retry_seconds
        self.ssl_context = None
        if self.scheme == "https":
            self.ssl_context = ssl.create_default_context(cadata=certificate)
            self.ssl_context.check_hostname = False  # the pinned certificate is the identity
        self.connection = None

    def _connect(self):
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=60, context=self.ssl_context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method, path, body=None, content_type="application/octet-stream"):
        """Send one request, retrying transient failures; return the body bytes."""
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = content_type
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                if self.connection is None:
                    self.connection = self._connect()
                self.connection.request(method, self.prefix + path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                if response.status < 400:
                    return data
                reason = data.decode("utf-8", "replace")[:500]
                if response.status < 500 and response.status not in (408, 429):
                    raise PermanentHTTPError(response.status, reason)
                failure = f"HTTP {response.status}: {reason}"
            except ssl.SSLCertVerificationError:
                raise
            except (OSError, http.client.HTTPException) as error:
                self.close()
                failure = f"{type(error).__name__}: {error}"
            if time.monotonic() + delay > deadline:
                raise ConnectionError(
                    f"gave up on {method} {self.prefix}{path} after "
                    f"{self.retry_seconds:.0f} s: {failure}"
                )
            log(f"{method} {path} failed ({failure}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


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
        self.index = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sheepdog-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(self.interval):
            index = self.index
            if index is None:
                continue
            try:
                self.client.request("POST", f"/tasks/{index}/heartbeat", b"")
            except Exception as error:  # a missed beat is not fatal; the next may pass
                log(f"heartbeat for task {index} failed: {error}")

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
        reporter = connect(5)
        for index in list(remaining):
            try:
                reporter.request("POST", f"/tasks/{index}/killing", b"")
            except Exception as error:
                log(f"could not report the kill notice for task {index}: {error}")
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


def _post_error(client, index, text):
    client.request("POST", f"/tasks/{index}/error", _clip(text).encode("utf-8"), "text/plain")


def run_one(client, codec, function, index, heartbeat):
    """Fetch, run and report argument ``index``; never raises for ``f``'s faults."""
    arguments = codec.loads(client.request("GET", f"/tasks/{index}"))
    client.request("POST", f"/tasks/{index}/start", b"")
    heartbeat.index = index
    try:
        result = function(*arguments)
    except BaseException as error:  # noqa: B902 - SystemExit from f is the user's error too
        # Start the traceback at the user's function, not at this frame.
        frames = error.__traceback__.tb_next if error.__traceback__ else None
        _post_error(client, index, "".join(traceback.format_exception(type(error), error, frames)))
        return
    finally:
        heartbeat.index = None
    try:
        payload = codec.dumps(result)
    except Exception:
        _post_error(client, index, "the result could not be serialised:\n" + traceback.format_exc())
        return
    try:
        client.request("POST", f"/tasks/{index}/result", payload)
    except PermanentHTTPError as error:
        if error.status != 413:
            raise
        _post_error(client, index, f"the result ({len(payload)} bytes) was refused: {error}")


def run(settings, codec):
    """Run the array task named by the scheduler's environment; return an exit status."""
    array_task_id = int(os.environ[settings["task_variable"]])
    indices = argument_indices(
        array_task_id, settings["chunksize"], settings["n_arguments"], settings.get("indices")
    )

    def connect(retry_seconds):
        return Client(settings["url"], settings["request_id"], settings["secret"],
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
    heartbeat = Heartbeat(connect(settings["heartbeat_seconds"]), settings["heartbeat_seconds"])
    remaining = list(indices)
    report_kill_notices(connect, remaining)
    try:
        for index in indices:
            if problem is None:
                run_one(client, codec, function, index, heartbeat)
            else:
                _post_error(client, index, problem)
            remaining.remove(index)
    finally:
        heartbeat.stop()
        client.close()
    return 0 if problem is None else 1
