"""The HTTP(S) server that workers call back, in the caller's process.

What each request means lives in ``callbacks.py``, framework-free; the Tornado
handler that serves it is ``tornado_handler.py``, and the connection limits
are ``connections.py``. :class:`Server` runs them in a daemon thread of the
caller's process (``Server.start``, through ``thread.py``) or in the
foreground (``serve_forever``, used by ``sheepdog serve``). Tornado is
imported only when a server starts.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional, Union

from ..storage import Storage
from . import admission, tls
from .callbacks import DEFAULT_MAX_BODY_BYTES, Callbacks, WarmPools
from .thread import Close, ServerThread
from .versions import VersionReports

if TYPE_CHECKING:  # ssl is loaded with the server's TLS context
    import ssl

log = logging.getLogger(__name__)


class Server:
    """Hosts the callback protocol for one database on one port.

    ``Server(dbfile, port=0)`` chooses a free port; ``port`` holds the real one
    once started. With ``use_tls`` it serves HTTPS with the database's own
    certificate (``certificate`` is what workers pin). Many map calls of one
    session share one server.

    Connections are limited as ``connections.py`` describes: a
    connection is closed when it sends no request headers for
    ``idle_timeout`` seconds (longer, by default, than the 10 s between a
    worker's heartbeats, so that the connection it keeps between them stays
    open), or when a body takes longer than ``body_timeout`` seconds plus its
    size at ``min_body_rate`` bytes per second. Until a request on it is
    signed, a connection is unproven: it gets ``handshake_timeout`` seconds
    for its TLS handshake and first request's headers, and one peer address
    may hold ``max_unproven_per_peer`` such connections, all peers together
    ``max_unproven`` (the oldest is closed to make room for a newcomer).
    """

    def __init__(
        self,
        storage: Union[Storage, str, os.PathLike[str]],
        port: Optional[int] = None,
        bind: str = "127.0.0.1",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        use_tls: bool = True,
        idle_timeout: float = 30.0,
        body_timeout: float = 60.0,
        min_body_rate: float = 64 << 10,
        max_unproven_per_peer: int = admission.MAX_UNPROVEN_PER_PEER,
        max_unproven: int = admission.MAX_UNPROVEN,
        handshake_timeout: float = admission.HANDSHAKE_SECONDS,
        version_reports: Optional[VersionReports] = None,
        pools: Optional[WarmPools] = None,
    ) -> None:
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        #: What workers said of their versions (see ``versions.py``).
        self.version_reports = version_reports or VersionReports()
        #: The caller's warm pools, whose idle workers' pulls are held (``caller/pool.py``).
        self.pools = pools
        self.port = port or 0
        self.bind = bind
        self.max_body_bytes = max_body_bytes
        self.use_tls = use_tls
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate
        self.max_unproven_per_peer = max_unproven_per_peer
        self.max_unproven = max_unproven
        self.handshake_timeout = handshake_timeout
        #: The certificate workers pin; set once the server has started.
        self.certificate: Optional[bytes] = None
        self._ssl_context: Optional[ssl.SSLContext] = None
        self._thread = ServerThread("sheepdog-server", self._listen)

    @property
    def scheme(self) -> str:
        return "https" if self.use_tls else "http"

    @property
    def running(self) -> bool:
        return self._thread.running

    def url(self, host: str) -> str:
        """The address workers use, given the name they know this machine by."""
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, wait: bool = True) -> "Server":
        """Serve in a daemon thread; return once the socket listens.

        With ``wait=False`` it returns at once, so that the caller can do
        other work while the server starts; a later ``start()`` waits for it
        (and raises if it could not listen).
        """
        try:
            self._thread.start(wait)
        except Exception as error:
            raise OSError(f"the sheepdog server could not listen on {self.bind}:{self.port}: "
                          f"{error}") from error
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._thread.run()

    def stop(self) -> None:
        self._thread.stop()

    def _listen(self) -> Close:
        """Bind the socket and serve on it (on the server's loop); return what closes it."""
        import tornado.netutil

        from . import connections
        from .tornado_handler import callback_application

        if self.use_tls and self._ssl_context is None:
            self.certificate, key = tls.identity_for(self.storage)
            self._ssl_context = tls.server_context(self.certificate, key)
        connections.raise_open_file_limit()
        sockets = tornado.netutil.bind_sockets(self.port, address=self.bind,
                                               backlog=connections.LISTEN_BACKLOG)
        callbacks = Callbacks(self.storage, self.max_body_bytes, self.version_reports,
                              self.pools)
        http_server = connections.GuardedHTTPServer(
            callback_application(callbacks),
            max_body_size=callbacks.largest_body_bytes,  # admit() checks each route
            ssl_options=self._ssl_context,
            idle_connection_timeout=self.idle_timeout,
            body_timeout=self.body_timeout,
            min_body_rate=self.min_body_rate,
            max_per_peer=self.max_unproven_per_peer,
            max_unproven=self.max_unproven,
            handshake_timeout=self.handshake_timeout,
        )
        http_server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        log.info("sheepdog server for %s listening on %s://%s:%s",
                 self.storage.dbfile, self.scheme, self.bind, self.port)

        async def close() -> None:
            http_server.stop()
            await http_server.close_all_connections()

        return close
