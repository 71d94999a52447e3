"""Serves the live dashboard (``app.py``) on a socket of its own, in a daemon thread.

The Flask app runs in Tornado's ``WSGIContainer`` with a few threads for the
reads, on an I/O loop of its own (``server/thread.py``), so the workers'
callback loop never waits for it. Its connections are guarded as the
callback server's are (``server/connections.py``): idle ones are closed, and
one peer may hold only so many. Neither Flask nor Tornado is imported until
the dashboard starts.

Its access log never holds the token: Tornado's WSGI container logs each
request's whole URL, query and token included, at INFO (WARNING for a 403,
which reaches stderr where logging is not set up). Here each request is
logged at DEBUG, by its path alone. The token is logged once, in the link
that ``map`` logs.
"""

from __future__ import annotations

import html
import logging
import os
import secrets
import socket
import tempfile
import webbrowser
from pathlib import Path
from typing import Optional, Union

from ..config import is_loopback, parse_address
from ..server.thread import Close, ServerThread
from ..storage import Storage

log = logging.getLogger(__name__)

#: Threads that answer the page's reads.
READ_THREADS = 4
#: Seconds a connection may wait for a request's headers (the page polls every few seconds).
IDLE_TIMEOUT_SECONDS = 60.0
#: Seconds a request's body gets (the page sends none).
BODY_TIMEOUT_SECONDS = 10.0
#: The largest request body read (the page's requests are all GETs).
MAX_BODY_BYTES = 64 << 10
#: Connections one peer address may hold (a browser opens about six).
MAX_CONNECTIONS_PER_PEER = 64


def new_token() -> str:
    """A fresh per-session token: 256 random bits, safe in a URL."""
    return secrets.token_urlsafe(32)


class DashboardServer:
    """Serves the dashboard of one database on its own socket, in a daemon thread.

    ``url`` is the tokenised link, once started.
    """

    def __init__(self, storage: Union[Storage, str, os.PathLike[str]], token: Optional[str] = None,
                 address: str = "127.0.0.1:0") -> None:
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.token = token or new_token()
        self.host, self.port = parse_address(address)
        self._thread = ServerThread("sheepdog-dashboard", self._listen)

    @property
    def running(self) -> bool:
        return self._thread.running

    @property
    def url(self) -> str:
        """The link that opens the page: it carries the token, so it is the key to the page."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # listening everywhere, reached here through loopback
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/dashboard?token={self.token}"

    def host_names(self) -> frozenset[str]:
        """The names a browser may reach this dashboard by: loopback ones, and where it
        listens beyond loopback, the address and this machine's own names."""
        from .app import LOOPBACK_NAMES

        if is_loopback(self.host):
            return LOOPBACK_NAMES
        names = {self.host, socket.gethostname(), socket.getfqdn()}
        return LOOPBACK_NAMES | {name.lower() for name in names if name not in ("0.0.0.0", "::")}

    def start(self) -> "DashboardServer":
        """Listen, then serve in a daemon thread; raises OSError if the address is taken."""
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait until the server stops (Ctrl-C interrupts the wait)."""
        self._thread.join()

    def stop(self) -> None:
        self._thread.stop()

    def _listen(self) -> Close:
        """Bind the socket and serve the app on it (on the server's loop); return what closes it."""
        from concurrent.futures import ThreadPoolExecutor

        import tornado.httputil
        import tornado.netutil
        import tornado.wsgi

        from ..server.connections import GuardedHTTPServer
        from .app import create_app

        class Container(tornado.wsgi.WSGIContainer):
            """Tornado's WSGI container, with an access log that leaves out the query.

            ``_log`` is the container's own access log (a test pins that it is replaced).
            """

            def _log(self, status_code: int, request: tornado.httputil.HTTPServerRequest
                     ) -> None:
                log.debug("%d %s %s (%s) %.2fms", status_code, request.method, request.path,
                          request.remote_ip, 1000.0 * request.request_time())

        app = create_app(self.storage, self.token, self.host_names())
        sockets = tornado.netutil.bind_sockets(self.port, address=self.host)
        self.port = sockets[0].getsockname()[1]
        if not is_loopback(self.host):
            log.warning("the sheepdog dashboard listens on %s:%s, beyond this machine: anyone "
                        "who sees its link (plain HTTP) can read the page", self.host, self.port)
        pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="sheepdog-dashboard")
        http_server = GuardedHTTPServer(
            Container(app, executor=pool),
            max_body_size=MAX_BODY_BYTES,
            idle_connection_timeout=IDLE_TIMEOUT_SECONDS,
            body_timeout=BODY_TIMEOUT_SECONDS,
            max_per_peer=MAX_CONNECTIONS_PER_PEER,
            handshake_grace=0.0,  # a browser opens a few connections, not a burst of workers
        )
        http_server.add_sockets(sockets)

        async def close() -> None:
            http_server.stop()
            await http_server.close_all_connections()
            pool.shutdown()

        return close


def run_dashboard(storage: Union[Storage, str, os.PathLike[str]], open_browser: bool = True,
                  address: str = "127.0.0.1:0") -> None:
    """Serve the dashboard of an existing database in the foreground, until Ctrl-C.

    Prints the link (which holds the token) and, with ``open_browser``, opens it.
    """
    if not isinstance(storage, Storage) and not os.path.exists(storage):
        raise FileNotFoundError(f"no sheepdog database at {os.path.abspath(storage)}: "
                                f"pass the dbfile your requests were made with")
    server = DashboardServer(storage, address=address).start()
    print(f"sheepdog dashboard: {server.url}  (Ctrl-C stops it)", flush=True)
    with tempfile.TemporaryDirectory(prefix="sheepdog-dashboard-") as private:
        if open_browser:
            webbrowser.open(Path(redirect_file(private, server.url)).as_uri())
        try:
            server.join()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


def redirect_file(directory: str, url: str) -> str:
    """A file (0600, in the private ``directory``) that sends a browser on to ``url``.

    The browser is opened on this file, not on the link: a browser's command
    line is visible to every user of the machine (``/proc/PID/cmdline``), and
    the link holds the token, which the file's name does not.
    """
    path = os.path.join(directory, "open-dashboard.html")
    target = html.escape(url, quote=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as page:
        page.write(f'<!doctype html><meta charset="utf-8"><meta name="referrer" '
                   f'content="no-referrer"><meta http-equiv="refresh" content="0; url={target}">'
                   f'<title>sheepdog dashboard</title><a href="{target}">open the dashboard</a>\n')
    return path
