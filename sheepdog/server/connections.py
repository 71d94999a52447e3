"""What one peer, or a shortage of file descriptors, may cost the Tornado server.

Every worker holds a connection, and the server runs in the caller's own
process, so connections are a resource to guard:

- A connection counts as *unproven* until a request on it carries a valid
  signature (``admission.py`` keeps the ledger; the handler marks its
  connection proven). An unproven connection that has not finished its TLS
  handshake and sent a request's headers within ``handshake_timeout`` is
  closed.
- At most ``max_per_peer`` unproven connections are open per peer address,
  and ``max_unproven`` in all. A newcomer beyond a cap is not refused: the
  oldest unproven connection in its way is closed instead (one that sent an
  unauthenticated request first), so that idle connections cannot keep a new
  worker out; but not one in its first ``HANDSHAKE_GRACE_SECONDS``: then the
  newcomer is closed, and retries (see ``admission.py``). Workers reached through the SSH tunnel, and local ones, all
  arrive from 127.0.0.1; a proven connection counts against no cap, so a
  worker that signs its requests is never refused.
- A connection that has not sent a request's headers within ``idle_timeout``
  is closed (Tornado's ``idle_connection_timeout`` covers both the wait for a
  first request and the pause between kept-alive ones). That is safe for
  workers: a worker's ``http.client`` reconnects and retries when it finds its
  kept-alive connection closed.
- A body gets ``body_timeout`` seconds plus one second per ``min_body_rate``
  bytes it announces, so a large upload is not cut off while a trickle is.
- When ``accept()`` fails for want of descriptors or memory, Tornado's own
  accept handler leaves the listening socket registered and readable: the
  loop spins at full CPU, logging a traceback per turn. Here the listening
  socket leaves the loop for ``PAUSE_SECONDS`` instead, with one warning per
  ``WARN_EVERY_SECONDS``; connections that end meanwhile free descriptors.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from typing import Any, Awaitable, Callable, Iterable, Optional, Union

import tornado.http1connection
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.iostream

from .admission import HANDSHAKE_SECONDS, MAX_UNPROVEN, MAX_UNPROVEN_PER_PEER, Ledger

log = logging.getLogger(__name__)

#: Seconds the listening socket is left alone after accept() ran out of resources.
PAUSE_SECONDS = 0.5
#: A warning about refused or unaccepted connections is logged at most this often.
WARN_EVERY_SECONDS = 10.0
#: accept() errors that mean "nothing left to accept with, for now".
_EXHAUSTED = {
    errno.EMFILE: "out of file descriptors",
    errno.ENFILE: "out of file descriptors",
    errno.ENOBUFS: "out of memory",
    errno.ENOMEM: "out of memory",
}
#: Connections the kernel queues until they are accepted. When a burst of
#: workers starts together and the queue is full, a connection waits a second
#: for the handshake to be retried (Tornado's default queue holds 128).
LISTEN_BACKLOG = 1024
#: Connections accepted per turn of the loop, as Tornado's own accept handler does.
_ACCEPTS_PER_TURN = 128


def raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit.

    Each worker's connection is a descriptor of the caller's process, and the
    usual soft limit (1024) is far below the usual hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:  # macOS refuses an unlimited soft limit
        log.debug("the open file limit stays at %s: %s", soft, error)
        return
    log.debug("open file limit raised from %s to %s", soft, hard)


class _Every:
    """Lets something happen at most once per ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = -float("inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


class _Acceptor:
    """Accepts connections on one listening socket, pausing when resources run out."""

    def __init__(self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None],
                 open_connections: Callable[[], int]) -> None:
        self.sock = sock
        self.on_connection = on_connection
        self.open_connections = open_connections
        self.io_loop = tornado.ioloop.IOLoop.current()
        self._warning = _Every(WARN_EVERY_SECONDS)
        self._listening = True
        self._removed = False
        self.io_loop.add_handler(sock, self._accept, tornado.ioloop.IOLoop.READ)

    def _accept(self, sock: Any, events: int) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            if self._removed:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in _EXHAUSTED:
                    raise
                self._pause(_EXHAUSTED[error.errno])
                return
            self.on_connection(connection, address)

    def _pause(self, shortage: str) -> None:
        self.io_loop.remove_handler(self.sock)
        self._listening = False
        if self._warning.due():
            log.warning("%s: %d connections open; pausing accepts", shortage,
                        self.open_connections())
        self.io_loop.call_later(PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        if not self._removed:
            self._listening = True
            self.io_loop.add_handler(self.sock, self._accept, tornado.ioloop.IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting (the caller closes the socket)."""
        if self._listening and not self._removed:
            self.io_loop.remove_handler(self.sock)
        self._removed = True


class _BodyDeadline(tornado.httputil.HTTPMessageDelegate):
    """Passes a request on, giving its body time in proportion to its announced size;
    calls ``on_headers`` when the request's headers have arrived."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate,
                 connection: tornado.httputil.HTTPConnection, seconds: float,
                 bytes_per_second: float, on_headers: Callable[[], None]) -> None:
        self.delegate = delegate
        self.connection = connection
        self.seconds = seconds
        self.bytes_per_second = bytes_per_second
        self.on_headers = on_headers

    def headers_received(
        self, start_line: Union[tornado.httputil.RequestStartLine,
                                tornado.httputil.ResponseStartLine],
        headers: tornado.httputil.HTTPHeaders,
    ) -> Optional[Awaitable[None]]:
        self.on_headers()
        if isinstance(self.connection, tornado.http1connection.HTTP1Connection):
            length = headers.get("Content-Length", "")
            size = int(length) if length.isdigit() else 0  # a bad one is Tornado's to refuse
            self.connection.set_body_timeout(self.seconds + size / self.bytes_per_second)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Optional[Awaitable[None]]:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with the limits of this module.

    Takes HTTPServer's arguments (``idle_connection_timeout`` is the idle
    timeout; ``body_timeout`` the seconds every body gets), plus
    ``max_per_peer`` and ``max_unproven`` (unproven connections per peer
    address, and in all), ``handshake_timeout``, ``handshake_grace`` (see
    ``admission.py``; 0 for none) and ``min_body_rate`` (bytes per second). A handler proves its connection with
    ``admission.mark_authenticated``; one that never does (the dashboard's)
    leaves every connection unproven, within the caps.
    """

    def initialize(self, *args: Any, max_per_peer: int = MAX_UNPROVEN_PER_PEER,
                   max_unproven: int = MAX_UNPROVEN,
                   handshake_timeout: float = HANDSHAKE_SECONDS,
                   handshake_grace: Optional[float] = None,
                   min_body_rate: float = 65536, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.handshake_timeout = handshake_timeout
        self.min_body_rate = min_body_rate
        self.unproven = Ledger(max_per_peer, max_unproven, handshake_grace)
        self._crowding_warning = _Every(WARN_EVERY_SECONDS)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        # TCPServer.add_sockets, with an accept handler that pauses rather than
        # spins. Its private _handle_connection wraps TLS and calls handle_stream;
        # stop() removes the handlers registered here.
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = _Acceptor(
                sock, self._handle_connection, lambda: len(self._connections)).remove

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        peer = str(address[0])
        if not self._make_room(peer, newcomers=1):
            stream.close()  # only handshakes in their grace are in the way: this one waits
            return
        self.unproven.add(stream, peer)
        tornado.ioloop.IOLoop.current().call_later(self.handshake_timeout, self._deadline, stream)
        super().handle_stream(stream, address)

    def _make_room(self, peer: str, newcomers: int) -> bool:
        """Close the unproven connection, if any, that keeps ``newcomers`` from ``peer``
        within the caps; False when that one is in its grace (see ``admission.py``), and
        is left open."""
        in_the_way = self.unproven.in_the_way(peer, newcomers)
        if in_the_way is None:
            return True
        if self.unproven.in_its_grace(in_the_way):
            return False
        if self._crowding_warning.due():
            log.warning("%d connections that have not authenticated are open (%d from %s); "
                        "closing the oldest to let more in", len(self.unproven),
                        self.unproven.count(peer), peer)
        self.unproven.discard(in_the_way)
        in_the_way.close()
        return True

    def _deadline(self, stream: tornado.iostream.IOStream) -> None:
        """Close ``stream`` if it is unproven and sent no request's headers in time."""
        if self.unproven.is_silent(stream):
            self.unproven.discard(stream)
            stream.close()

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        assert isinstance(server_conn, tornado.http1connection.HTTP1ServerConnection)
        self.unproven.discard(server_conn.stream)

    def start_request(self, server_conn: object,
                      request_conn: tornado.httputil.HTTPConnection
                      ) -> tornado.httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        body_seconds = self.conn_params.body_timeout or 0.0
        assert isinstance(server_conn, tornado.http1connection.HTTP1ServerConnection)
        stream = server_conn.stream
        self.unproven.idle(stream)  # the request before this one, if any, was answered
        peer = self.unproven.peer_of(stream)
        if peer is not None:
            self._make_room(peer, newcomers=0)
        return _BodyDeadline(delegate, request_conn, body_seconds, self.min_body_rate,
                             lambda: self.unproven.answering(stream))
