"""The worker's line to the caller: signed HTTP(S) requests, with their routes and retries.

Embedded in the job file with the rest of ``wire`` and ``worker`` (see ``loop.py``), so
it imports only the standard library and ``protocol``. Both the supervisor
and the runner post through it, each on a connection of its own.

Network failures are retried with backoff for ``retry_seconds``, so a server
restart does not lose results; a 4xx answer is final. A server whose disk is
full answers 507: that is retried for ``disk_full_seconds``, and then the task
is reported failed with the server's message, which names the disk. Over HTTPS
the worker trusts only the certificate in its settings, and it signs every
request with the request's key, which it reads from a private file: nothing in
the job file lets anyone else act as the worker.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import sys
import time
import urllib.parse
from typing import TYPE_CHECKING, Callable, NoReturn, Optional, Sequence

from ..wire import protocol
from ..wire.protocol import DISK_FULL_STATUS, Body

if TYPE_CHECKING:
    from ..wire.settings import WorkerSettings

#: Seconds to wait for a connection to one route before trying the next.
CONNECT_SECONDS = 5.0
#: Seconds to wait for the server's answer on an open connection.
READ_SECONDS = 60.0
#: Seconds a report refused for a full disk (507) is retried, unless the settings say.
DISK_FULL_SECONDS = 120.0


class PermanentHTTPError(Exception):
    """The server answered with a 4xx status (or 507 for too long): retrying cannot help."""

    def __init__(self, status: int, reason: str) -> None:
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

    def __init__(self, urls: Sequence[str], request_id: int, key: bytes, retry_seconds: float,
                 certificate: Optional[str] = None,
                 disk_full_seconds: Optional[float] = None) -> None:
        self.routes = [urllib.parse.urlsplit(url) for url in urls]
        self.route = 0
        self.request_id = request_id
        self.key = key
        self.retry_seconds = retry_seconds
        self.disk_full_seconds = DISK_FULL_SECONDS if disk_full_seconds is None else disk_full_seconds
        self.ssl_context: Optional[ssl.SSLContext] = None
        if any(route.scheme == "https" for route in self.routes):
            self.ssl_context = ssl.create_default_context(cadata=certificate)
            self.ssl_context.check_hostname = False  # the pinned certificate is the identity
        self.connection: Optional[http.client.HTTPConnection] = None

    @property
    def url(self) -> str:
        return self.routes[self.route].geturl()

    def _connect(self) -> http.client.HTTPConnection:
        route = self.routes[self.route]
        if route.hostname is None:
            raise ValueError(f"the caller's URL {route.geturl()!r} names no host")
        connection: http.client.HTTPConnection
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

    def switch(self, request_id: int, key: bytes) -> None:
        """Speak for another request of the caller from now on (a warm pool's handover)."""
        self.request_id, self.key = request_id, key

    def request(self, route: str, body: Optional[Body] = None, *, worker: Optional[str] = None,
                task: Optional[int] = None, seq: Optional[int] = None,
                size: Optional[int] = None, least: Optional[int] = None,
                retry_seconds: Optional[float] = None,
                while_waiting: Optional[Callable[[], None]] = None) -> bytearray:
        """Send one request on ``route`` (a name in ``protocol.ROUTES``), retrying transient
        failures; return the answer's body as a bytearray.

        ``worker``, ``task``, ``seq``, ``size`` and ``least`` are what the
        route names (see ``protocol.path``). ``body`` is bytes-like or a list of
        parts; large parts are sent as they are, never joined into one copy.
        ``retry_seconds`` replaces the client's own for this request.
        ``while_waiting`` is called once, when the request has first been sent,
        before its answer is read: work done there overlaps the server's.
        One retry loop with its outcomes side by side: hence its length.
        """
        method = protocol.ROUTES[route]
        full_path = protocol.path(self.request_id, route, worker=worker, task=task, seq=seq,
                                  size=size, least=least)
        if body is None and method == "POST":
            body = b""
        headers = protocol.auth_headers(self.key, method, full_path, body)
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(protocol.nbytes(body))
            body = protocol.coalesce(body) if isinstance(body, list) else body
        retry_seconds = self.retry_seconds if retry_seconds is None else retry_seconds
        deadline = time.monotonic() + retry_seconds
        disk_deadline: Optional[float] = None  # set by the first 507
        delay, tried = 0.25, 0
        while True:
            connected = self.connection is not None
            try:
                if self.connection is None:
                    self.connection = self._connect()
                    connected = True
                self.connection.request(method, full_path, body=body, headers=headers)
                if while_waiting is not None:
                    waiting, while_waiting = while_waiting, None
                    waiting()
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
                    f"{retry_seconds:.0f} s: {failure}"
                )
            log(f"{method} {full_path} via {self.url} failed ({failure}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class Identity:
    """Which request this worker serves now, under which key and name: a worker of a
    warm pool is handed over from request to request (``HANDOVER``)."""

    def __init__(self, request_id: int, key: bytes, worker: str) -> None:
        self.request_id, self.key, self.worker = request_id, key, worker


def read_key(settings: WorkerSettings) -> bytes:
    """The request's key: from its private file, or from the settings if put there.

    A worker that cannot read the file leaves at once with ``EXIT_NO_KEY``
    and says why on stderr, which the caller reads back.
    """
    if settings.key:
        return settings.key.encode()
    path = settings.key_file
    if path is None:
        _leave_without_key("the job file names neither the request's key nor its key file")
    try:
        with open(path, "rb") as handle:
            return handle.read().strip()
    except OSError as error:
        _leave_without_key(
            f"cannot read the request's key file {path} on {socket.gethostname()}: {error}. "
            f"The key is written on the head node; compute nodes must see the same home "
            f"directory (see 'How workers reach you' in sheepdog's docs)")


def _leave_without_key(reason: str) -> NoReturn:
    """Say why on stderr, which the caller reads back, and leave with ``EXIT_NO_KEY``."""
    log(reason)
    sys.exit(protocol.EXIT_NO_KEY)


def _read_body(response: http.client.HTTPResponse) -> bytearray:
    """The whole response body, read straight into one writable buffer when its length is known.

    An empty or unsized body is read by ``read()``, which also marks the answer
    finished: the connection is then ready for the next request.
    """
    if not response.length:
        return bytearray(response.read())
    data = bytearray(response.length)
    view, received = memoryview(data), 0
    while received < len(data):
        count = response.readinto(view[received:])
        if not count:
            raise http.client.IncompleteRead(bytes(view[:received]), len(data) - received)
        received += count
    return data


def log(message: str) -> None:
    print(f"sheepdog worker: {message}", file=sys.stderr, flush=True)
