"""The HTTP server that workers call back: a Flask app and the code that hosts it.

The app hands each task its function and arguments, and stores what the task
reports. It never unpickles what workers send: results are stored as bytes and
only the caller loads them. Every route but ``/`` needs HTTP Basic auth with
the request's own random secret, compared in constant time.

The app is hosted by Tornado when it is installed, by Werkzeug's server
otherwise, in a background thread of the caller's process (``Server.start``)
or in the foreground (``Server.serve_forever``, used by ``sheepdog serve``).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from typing import Callable, Optional, Union

from flask import Flask, Response, abort, request
from werkzeug.exceptions import HTTPException

from .storage import Storage

log = logging.getLogger(__name__)

#: Largest request body accepted (a pickled result), unless the caller says otherwise.
DEFAULT_MAX_BODY_BYTES = 1 << 30
_MAX_SQLITE_INTEGER = 2**63 - 1
ENGINES = ("tornado", "werkzeug")


def create_app(storage: Storage, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Flask:
    """The Flask app serving ``storage`` to workers."""
    app = Flask("sheepdog.server")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    secret_cache: dict[int, str] = {}

    def authorise(request_id: int) -> None:
        if request_id > _MAX_SQLITE_INTEGER:
            abort(404, "no such request")
        secret = secret_cache.get(request_id)
        if secret is None:
            secret = storage.request_secret(request_id)
            if secret is None:
                abort(404, "no such request")
            secret_cache[request_id] = secret
        credentials = request.authorization
        given = (credentials.password or "") if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode()):
            abort(Response(
                "wrong or missing credentials\n", 401,
                {"WWW-Authenticate": 'Basic realm="sheepdog"', "Content-Type": "text/plain"},
            ))

    def authorised_task(request_id: int, index: int) -> None:
        authorise(request_id)
        if index > _MAX_SQLITE_INTEGER or not storage.task_exists(request_id, index):
            abort(404, "no such task")

    def octets(data: bytes) -> Response:
        return Response(data, 200, {"Content-Type": "application/octet-stream"})

    def body() -> bytes:
        data = request.get_data(cache=False)
        if not data:
            abort(400, "empty body")
        return data

    def stored(was_new: bool) -> Response:
        return Response("stored\n" if was_new else "already recorded\n", 200,
                        {"Content-Type": "text/plain"})

    @app.get("/")
    def index() -> Response:
        return Response("sheepdog server\n", 200, {"Content-Type": "text/plain"})

    @app.get("/requests/<int:request_id>/function")
    def function(request_id: int) -> Response:
        authorise(request_id)
        return octets(storage.function(request_id) or b"")

    @app.get("/requests/<int:request_id>/tasks/<int:index>")
    def arguments(request_id: int, index: int) -> Response:
        authorised_task(request_id, index)
        return octets(storage.task_arguments(request_id, index) or b"")

    @app.post("/requests/<int:request_id>/tasks/<int:index>/start")
    def start(request_id: int, index: int) -> Response:
        authorised_task(request_id, index)
        return stored(storage.mark_running(request_id, index))

    @app.post("/requests/<int:request_id>/tasks/<int:index>/result")
    def result(request_id: int, index: int) -> Response:
        authorised_task(request_id, index)
        return stored(storage.record_result(request_id, index, body()))

    @app.post("/requests/<int:request_id>/tasks/<int:index>/error")
    def error(request_id: int, index: int) -> Response:
        authorised_task(request_id, index)
        try:
            text = body().decode("utf-8")
        except UnicodeDecodeError:
            abort(400, "the error text must be UTF-8")
        return stored(storage.record_error(request_id, index, text))

    @app.errorhandler(HTTPException)
    def plain_http_error(exception: HTTPException) -> Response:
        if exception.response is not None:
            return exception.response
        return Response(f"{exception.code} {exception.name}: {exception.description}\n",
                        exception.code, {"Content-Type": "text/plain"})

    return app


def default_engine() -> str:
    """``tornado`` when it can be imported, else ``werkzeug``."""
    try:
        import tornado  # noqa: F401
    except ImportError:
        return "werkzeug"
    return "tornado"


class Server:
    """Hosts the app for one database on one port.

    ``Server(dbfile, port=0)`` chooses a free port; ``port`` holds the real one
    once started. Many map calls of one session share one server.
    """

    def __init__(
        self,
        storage: Union[Storage, str, os.PathLike[str]],
        port: Optional[int] = None,
        bind: str = "127.0.0.1",
        engine: Optional[str] = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.port = port or 0
        self.bind = bind
        self.engine = engine or default_engine()
        if self.engine not in ENGINES:
            raise ValueError(f"unknown server engine {self.engine!r}; choose one of {ENGINES}")
        self.app = create_app(self.storage, max_body_bytes)
        self._thread: Optional[threading.Thread] = None
        self._stop: Optional[Callable[[], None]] = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def url(self, host: str, scheme: str = "http") -> str:
        """The address workers use, given the name they know this machine by."""
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> "Server":
        """Serve in a daemon thread; return once the socket listens."""
        if self.running:
            return self
        listening = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                self._serve(listening.set)
            except BaseException as error:  # noqa: B902 - handed to the starting thread
                failure.append(error)
                listening.set()

        self._thread = threading.Thread(target=serve, name="sheepdog-server", daemon=True)
        self._thread.start()
        listening.wait()
        if failure:
            self._thread = None
            raise OSError(f"the sheepdog server could not listen on {self.bind}:{self.port}: "
                          f"{failure[0]}") from failure[0]
        log.info("sheepdog server (%s) listening on %s:%s", self.engine, self.bind, self.port)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._serve(lambda: log.info("serving %s on %s:%s", self.storage.dbfile, self.bind, self.port))

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._stop = None

    def _serve(self, on_listening: Callable[[], None]) -> None:
        if self.engine == "tornado":
            self._serve_tornado(on_listening)
        else:
            self._serve_werkzeug(on_listening)

    def _serve_tornado(self, on_listening: Callable[[], None]) -> None:
        import asyncio

        import tornado.httpserver
        import tornado.ioloop
        import tornado.netutil
        import tornado.wsgi

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        io_loop = tornado.ioloop.IOLoop.current()
        sockets = tornado.netutil.bind_sockets(self.port, address=self.bind)
        http_server = tornado.httpserver.HTTPServer(
            tornado.wsgi.WSGIContainer(self.app),
            max_body_size=self.app.config["MAX_CONTENT_LENGTH"] + 1,
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
            self.bind, self.port, self.app, threaded=True, request_handler=QuietHandler
        )
        self.port = http_server.server_port
        self._stop = http_server.shutdown
        on_listening()
        try:
            http_server.serve_forever()
        finally:
            http_server.server_close()
