"""The HTTP(S) server that workers call back, and the code that hosts it.

What each request means lives in ``callbacks.py``; here it is served. Tornado
hosts it when installed, with a handler that reads a request body only after
its headers passed ``Callbacks.admit`` (its size, and the signature that
proves the sender holds the request's key), so an oversized or unauthorised
body is refused before any of it is read, whatever its framing; the
Flask app serves the same protocol under Werkzeug's server otherwise, and in
tests through Flask's test client. Either runs in a daemon thread of the
caller's process (``Server.start``) or in the foreground (``serve_forever``,
used by ``sheepdog serve``).

A large result is received straight into its file; when the disk fills up
meanwhile, the rest of the body is still read (and dropped), so that the
worker hears the 507 that names the disk rather than a closed connection,
which it would retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import logging
import os
import socket
import ssl
import threading
from typing import Any, Callable, Iterator, Optional, Union

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..storage import diskspace
from . import tls
from .callbacks import DEFAULT_MAX_BODY_BYTES, Callbacks, Reply, text_reply
from ..storage.payloads import CHUNK_BYTES, PayloadFile, write_all
from ..storage.store import Storage
from ..wire.protocol import ALONE_BYTES, DISK_FULL_STATUS, coalesce

log = logging.getLogger(__name__)

ENGINES = ("tornado", "werkzeug")
#: A large upload that stalls this long is dropped (the worker retries it).
_BODY_TIMEOUT_SECONDS = 120
#: The most of a refused request's body that is read (and dropped) to keep its connection.
UNAUTHORISED_READ_BYTES = 4096
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def create_app(storage: Storage, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Flask:
    """The Flask app answering the callback protocol for ``storage``."""
    callbacks = Callbacks(storage, max_body_bytes)
    app = Flask("sheepdog.server.host")
    app.config["MAX_CONTENT_LENGTH"] = callbacks.largest_body_bytes  # admit() checks each route
    app.url_map.merge_slashes = False  # odd paths get a 404, not a redirect

    def as_response(reply: Reply) -> Response:
        headers = {"Content-Type": reply.content_type, "Content-Length": str(reply.length),
                   **reply.headers}
        if isinstance(reply.body, bytes):
            return Response(reply.body, reply.status, headers)
        return Response(_stream(reply), reply.status, headers)

    @app.route("/", defaults={"path": ""}, methods=_METHODS)
    @app.route("/<path:path>", methods=_METHODS)
    def dispatch(path: str) -> Response:
        admitted = callbacks.admit(request.method, request.path, request.headers)
        if isinstance(admitted, Reply):
            _leave_body_unread(request.environ)
            return as_response(admitted)
        body = request.get_data(cache=False) if request.method == "POST" else b""
        return as_response(callbacks.respond(request.method, request.path, request.headers, body,
                                             route=admitted))

    @app.errorhandler(HTTPException)
    def plain_http_error(exception: HTTPException) -> Response:
        return as_response(text_reply(exception.code or 400, f"{exception.name}"))

    return app


def _leave_body_unread(environ: dict[str, Any]) -> None:
    """Stop Werkzeug's server from reading a refused body after the answer.

    It drains what the app left unread (up to 10 GB) to keep the connection;
    shutting the socket's read side ends that, and the connection with it.
    """
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass


def _raw_response(reply: Reply) -> bytes:
    """A whole HTTP/1.1 response for a small reply, ending the connection."""
    assert isinstance(reply.body, bytes)
    headers = {"Content-Type": reply.content_type, "Content-Length": str(len(reply.body)),
               "Connection": "close", **reply.headers}
    lines = [f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


def _stream(reply: Reply) -> Iterator[bytes]:
    """A reply's body in pieces of about ``CHUNK_BYTES``, reading files as it goes."""
    for piece in coalesce(reply.parts, CHUNK_BYTES):
        if isinstance(piece, PayloadFile):
            yield from piece.chunks(CHUNK_BYTES)
        else:
            yield bytes(piece)


def _tornado_application(callbacks: Callbacks) -> Any:
    import tornado.web

    @tornado.web.stream_request_body
    class CallbackHandler(tornado.web.RequestHandler):
        """Gathers small bodies in pieces; reads a large one into one buffer (or, for a
        result, into its file) after checking it; streams large replies."""

        SUPPORTED_METHODS = tuple(_METHODS)

        async def prepare(self) -> None:
            self._chunks: list[bytes] = []
            self._body: Optional[bytearray] = None
            self._received = 0
            method, path, headers = self.request.method or "", self.request.path, self.request.headers
            admitted = callbacks.admit(method, path, headers)
            refusal = admitted if isinstance(admitted, Reply) else None
            self._route = None if isinstance(admitted, Reply) else admitted
            length = headers.get("Content-Length", "0")
            small = "Transfer-Encoding" not in headers and length.isdigit() and (
                int(length) <= UNAUTHORISED_READ_BYTES)
            if refusal is not None and small and refusal.status != 413:
                return  # read (at most a few KB) and refused in _handle: the connection stays
            if refusal is not None:  # refused unread; Tornado then closes the connection
                self.set_header("Connection", "close")
                await self._reply(refusal)
                return
            length = headers.get("Content-Length") or "0"
            if int(length) < ALONE_BYTES or self._route is None:
                return  # gathered as it comes
            upload = callbacks.result_upload(method, self._route, headers)
            if upload is not None:
                await self._receive_result_file(*upload, int(length))
            else:
                self._body = bytearray(int(length))

        async def _receive_result_file(self, request_id: int, index: int, length: int) -> None:
            """Read a large result straight into its file, then answer and close.

            The connection is taken over from Tornado's HTTP code, so that the
            body is read in large pieces into one reused buffer (Tornado's own
            body reader hands over at most one TLS record at a time).
            """
            import tornado.iostream

            descriptor, path = callbacks.storage.new_staging_file(request_id, index)
            digest = hashlib.sha256()
            full: list[OSError] = []  # the write that found the disk full

            def absorb(piece: memoryview) -> None:  # in a thread: both release the GIL
                digest.update(piece)
                if full:
                    return  # read to the end, so that the worker hears why
                try:
                    write_all(descriptor, piece)
                except OSError as error:
                    if not diskspace.is_disk_full(error):
                        raise
                    full.append(error)
                    os.ftruncate(descriptor, 0)  # give the room back at once

            connection = self.request.connection
            assert isinstance(connection, tornado.http1connection.HTTP1Connection)
            stream = connection.detach()
            self._finished = True  # answered below, not through this handler
            # Two buffers: one is written to the file by a thread (os.write
            # releases the GIL) while the next piece is read into the other.
            buffers = [memoryview(bytearray(min(length, CHUNK_BYTES))) for _ in range(2)]
            writing: Optional[asyncio.Future[None]] = None
            try:
                try:
                    remaining, turn = length, 0
                    while remaining:
                        piece = buffers[turn][:min(remaining, CHUNK_BYTES)]
                        # Tornado reads into any writable buffer, though its hint says bytearray.
                        await asyncio.wait_for(stream.read_into(piece),  # type: ignore[arg-type]
                                               _BODY_TIMEOUT_SECONDS)
                        if writing is not None:
                            await writing
                        writing = asyncio.get_running_loop().run_in_executor(
                            None, absorb, piece)
                        remaining -= len(piece)
                        turn = 1 - turn
                    if writing is not None:
                        await writing
                finally:
                    if writing is not None and not writing.done():
                        await asyncio.wait([writing])
                    os.close(descriptor)
                if full:
                    message = diskspace.describe(callbacks.storage.payloads.root, str(full[0]))
                    log.error("result %s of request %s could not be stored: %s",
                              index, request_id, message)
                    reply = text_reply(DISK_FULL_STATUS, message)
                else:
                    reply = callbacks.respond("POST", self.request.path, self.request.headers,
                                              PayloadFile(path, length), digest.hexdigest(),
                                              self._route)
                await stream.write(_raw_response(reply))
            except (tornado.iostream.StreamClosedError, asyncio.TimeoutError) as error:
                log.warning("result %s of request %s: upload not finished: %r",
                            index, request_id, error)
            except Exception:  # the worker sees the connection close, and retries
                log.exception("result %s of request %s could not be stored", index, request_id)
            finally:
                if os.path.exists(path):
                    os.remove(path)  # refused or unfinished; an accepted one was moved
                stream.close()

        def data_received(self, chunk: bytes) -> None:
            if self._finished:
                return
            if self._body is None:  # a small body, or no length announced
                self._chunks.append(chunk)
                return
            end = self._received + len(chunk)
            self._body[self._received:end] = chunk
            self._received = end

        async def _handle(self, *args: str) -> None:
            body = b"".join(self._chunks) if self._body is None else self._body
            self._chunks, self._body = [], None
            await self._reply(callbacks.respond(
                self.request.method or "GET", self.request.path, self.request.headers, body,
                route=self._route))

        async def _reply(self, reply: Reply) -> None:
            self.set_status(reply.status)
            self.set_header("Content-Type", reply.content_type)
            for name, value in reply.headers.items():
                self.set_header(name, value)
            if isinstance(reply.body, bytes):
                self.finish(reply.body)
                return
            self.set_header("Content-Length", reply.length)
            for piece in _stream(reply):
                self.write(piece)
                await self.flush()
            self.finish()

        get = head = post = put = delete = patch = options = _handle

    return tornado.web.Application([(r"/.*", CallbackHandler)], log_function=lambda handler: None)


def default_engine() -> str:
    """``tornado`` when it can be imported, else ``werkzeug``."""
    try:
        import tornado  # noqa: F401
    except ImportError:
        return "werkzeug"
    return "tornado"


class Server:
    """Hosts the callback protocol for one database on one port.

    ``Server(dbfile, port=0)`` chooses a free port; ``port`` holds the real one
    once started. With ``use_tls`` it serves HTTPS with the database's own
    certificate (``certificate`` is what workers pin). Many map calls of one
    session share one server.

    Under Tornado, connections are limited as ``connections.py`` describes: a
    connection is closed when it sends no request headers for
    ``idle_timeout`` seconds (longer, by default, than the 10 s between a
    worker's heartbeats, so that the connection it keeps between them stays
    open), or when a body takes longer than ``body_timeout`` seconds plus its
    size at ``min_body_rate`` bytes per second; one peer address may hold
    ``max_connections_per_peer``.
    """

    def __init__(
        self,
        storage: Union[Storage, str, os.PathLike[str]],
        port: Optional[int] = None,
        bind: str = "127.0.0.1",
        engine: Optional[str] = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        use_tls: bool = True,
        idle_timeout: float = 30.0,
        body_timeout: float = 60.0,
        min_body_rate: float = 64 << 10,
        max_connections_per_peer: int = 256,
    ) -> None:
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.port = port or 0
        self.bind = bind
        self.engine = engine or default_engine()
        if self.engine not in ENGINES:
            raise ValueError(f"unknown server engine {self.engine!r}; choose one of {ENGINES}")
        self.max_body_bytes = max_body_bytes
        self.use_tls = use_tls
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate
        self.max_connections_per_peer = max_connections_per_peer
        #: The certificate workers pin; set once the server has started.
        self.certificate: Optional[bytes] = None
        self._ssl_context: Optional[ssl.SSLContext] = None
        self._thread: Optional[threading.Thread] = None
        self._listening = threading.Event()
        self._failure: list[BaseException] = []
        self._stop: Optional[Callable[[], None]] = None

    @property
    def scheme(self) -> str:
        return "https" if self.use_tls else "http"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def url(self, host: str) -> str:
        """The address workers use, given the name they know this machine by."""
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, wait: bool = True) -> "Server":
        """Serve in a daemon thread; return once the socket listens.

        With ``wait=False`` it returns at once, so that the caller can do
        other work while the server starts; a later ``start()`` waits for it
        (and raises if it could not listen).
        """
        if self._thread is None:
            self._listening.clear()
            self._failure.clear()

            def listening() -> None:
                log.info("sheepdog server (%s, %s) listening on %s:%s",
                         self.engine, self.scheme, self.bind, self.port)
                self._listening.set()

            def serve() -> None:
                try:
                    self._serve(listening)
                except BaseException as error:  # noqa: B902 - handed to the starting thread
                    self._failure.append(error)
                    self._listening.set()

            self._thread = threading.Thread(target=serve, name="sheepdog-server", daemon=True)
            self._thread.start()
        if wait:
            self._listening.wait()
            if self._failure:
                self._thread = None
                raise OSError(f"the sheepdog server could not listen on {self.bind}:{self.port}: "
                              f"{self._failure[0]}") from self._failure[0]
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._serve(lambda: log.info("serving %s over %s on %s:%s",
                                     self.storage.dbfile, self.scheme, self.bind, self.port))

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._stop = None

    def _serve(self, on_listening: Callable[[], None]) -> None:
        if self.use_tls and self._ssl_context is None:
            self.certificate, key = tls.identity_for(self.storage)
            self._ssl_context = tls.server_context(self.certificate, key)
        if self.engine == "tornado":
            self._serve_tornado(on_listening)
        else:
            self._serve_werkzeug(on_listening)

    def _serve_tornado(self, on_listening: Callable[[], None]) -> None:
        import asyncio

        import tornado.ioloop
        import tornado.netutil

        from . import connections

        connections.raise_open_file_limit()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        io_loop = tornado.ioloop.IOLoop.current()
        sockets = tornado.netutil.bind_sockets(self.port, address=self.bind,
                                               backlog=connections.LISTEN_BACKLOG)
        callbacks = Callbacks(self.storage, self.max_body_bytes)
        http_server = connections.GuardedHTTPServer(
            _tornado_application(callbacks),
            max_body_size=callbacks.largest_body_bytes,  # admit() checks each route
            ssl_options=self._ssl_context,
            idle_connection_timeout=self.idle_timeout,
            body_timeout=self.body_timeout,
            min_body_rate=self.min_body_rate,
            max_per_peer=self.max_connections_per_peer,
        )
        http_server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._stop = lambda: io_loop.add_callback(io_loop.stop)
        on_listening()
        try:
            io_loop.start()
        finally:
            http_server.stop()
            loop.run_until_complete(http_server.close_all_connections())
            io_loop.close(all_fds=True)

    def _serve_werkzeug(self, on_listening: Callable[[], None]) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive for workers

            def log_request(self, *args: object, **kwargs: object) -> None:
                pass

        http_server = make_server(
            self.bind, self.port, create_app(self.storage, self.max_body_bytes), threaded=True,
            request_handler=QuietHandler, ssl_context=self._ssl_context,
        )
        self.port = http_server.server_port
        self._stop = http_server.shutdown
        on_listening()
        try:
            http_server.serve_forever()
        finally:
            http_server.server_close()
