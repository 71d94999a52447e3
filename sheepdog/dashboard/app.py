"""The live dashboard: one page and a JSON API over one database, for the caller alone.

``map`` and ``map_async`` start it beside the callback server (see
``Session.dashboard``) and log its link; ``sheepdog dashboard`` serves it for
an existing database (:func:`run_dashboard`). The page (``page.html``)
polls the JSON API and redraws itself, so it stays live without a reload.

Who may read it: the database holds every task's arguments, errors and
output, so the page is the caller's alone. It listens on a socket of its own
(loopback unless the ``dashboard`` config key says otherwise), never on the
workers' port, and every route, the JSON API included, wants the session's
token: a random string made here, not any request's worker key, so a
worker's signature opens nothing. The token travels in the link's query
(``?token=``) or an ``Authorization: Bearer`` header, and is compared in
constant time. No cookie is set, so there is no ambient credential for
another page to ride on, and nothing is sent to other ports of the same
host. Every answer says ``Cache-Control: no-store``; the page runs only its
own script (a nonce in its ``Content-Security-Policy``) and puts text from
the database into the page as text, never as markup, since a task's error is
whatever the task raised.

It is a Flask app hosted by Tornado's ``WSGIContainer`` on its own I/O loop
thread, with a few threads for the reads, so the workers' callback loop never
waits for it.
"""

from __future__ import annotations

import hmac
import importlib.resources
import ipaddress
import logging
import math
import os
import secrets
import threading
import time
import webbrowser
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, Union

from flask import Flask, Response, abort, jsonify, request

from ..storage.states import CANCELLED, DONE, FAILED, LOST, PENDING, RUNNING
from ..storage.store import Storage
from ..storage.summaries import RequestSummary, TaskSummary

log = logging.getLogger(__name__)

#: The states in the order the page shows them.
STATES = (PENDING, RUNNING, DONE, FAILED, LOST, CANCELLED)
#: Bars of the duration histogram, and buckets of the throughput chart.
HISTOGRAM_BINS = 20
THROUGHPUT_BUCKETS = 40
#: The shortest span of the throughput chart's buckets.
MIN_BUCKET_SECONDS = 0.1
#: The most failures one answer carries (with their errors and output tails).
MAX_FAILURES = 50
#: The most tasks one page of ``/tasks`` holds.
MAX_TASKS_PAGE = 5000
#: Threads that answer the page's reads.
READ_THREADS = 4


def new_token() -> str:
    """A fresh per-session token: 256 random bits, safe in a URL."""
    return secrets.token_urlsafe(32)


def parse_address(address: str, name: str = "config key 'dashboard'") -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:0"`` for IPv6) as (host, port); port 0 picks a free one.

    ``name`` says where the address came from, for the error.
    """
    host, separator, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{name} is {address!r}; write HOST:PORT, such as "
                         f"'127.0.0.1:0' (port 0 picks a free port)")
    return host, int(port)


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of ``values`` in ``bins`` equal bars from 0 to the largest value."""
    top = max(values, default=0.0)
    width = top / bins if top > 0 else 1.0
    counts = [0] * bins
    for value in values:
        counts[min(int(max(value, 0.0) / width), bins - 1)] += 1
    return {"width": width, "counts": counts, "total": len(values)}


def throughput(storage: Storage, request_id: int, created: float, now: float,
               buckets: int = THROUGHPUT_BUCKETS) -> dict[str, Any]:
    """How many tasks finished in each of (at most) ``buckets`` equal spans from the
    request's creation to its last finish (or to ``now``, while tasks are still open)."""
    progress = storage.progress(request_id)
    end = now if not progress.complete else (storage.dashboard_last_finish(request_id) or now)
    width = max((end - created) / buckets, MIN_BUCKET_SECONDS)
    shown = max(min(buckets, math.ceil((end - created) / width)), 1)
    finished = storage.dashboard_finishes(request_id, created, width)
    counts = [finished.get(bucket, 0) for bucket in range(shown)]
    counts[-1] += sum(n for bucket, n in finished.items() if bucket >= shown)
    return {"start": created, "width": width, "counts": counts}


def create_app(storage: Union[Storage, str, os.PathLike[str]], token: str) -> Flask:
    """The dashboard's Flask app over ``storage``, open to holders of ``token`` only."""
    if len(token) < 16:
        raise ValueError("the dashboard token must be at least 16 characters: use new_token()")
    store = storage if isinstance(storage, Storage) else Storage(storage)
    expected = token.encode()
    page = importlib.resources.files(__package__).joinpath("page.html").read_text("utf-8")
    app = Flask("sheepdog.dashboard.app")

    @app.before_request
    def require_token() -> Optional[Response]:
        """Every route, unknown ones too, is refused without the token."""
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            offered = request.args.get("token", "")
        if not hmac.compare_digest(offered.encode(), expected):
            return Response("403 Forbidden: this sheepdog dashboard needs the token of the link "
                            "that map logged (or 'sheepdog dashboard' printed)\n", 403,
                            {"Content-Type": "text/plain; charset=utf-8"})
        return None

    @app.after_request
    def private(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'none'; frame-ancestors 'none'")
        return response

    @app.get("/dashboard")
    def dashboard_page() -> Response:
        nonce = secrets.token_urlsafe(16)
        policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                  "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                  "frame-ancestors 'none'")
        return Response(page.replace("{{nonce}}", nonce), 200,
                        {"Content-Type": "text/html; charset=utf-8",
                         "Content-Security-Policy": policy})

    @app.get("/dashboard/api/requests")
    def requests_list() -> Response:
        return jsonify(database=store.dbfile, now=time.time(), states=STATES, requests=[
            {"id": summary.request_id, "created": summary.created, "backend": summary.backend,
             "tasks": summary.n_tasks, "counts": summary.counts}
            for summary in store.request_summaries()])

    @app.get("/dashboard/api/requests/<int:request_id>")
    def request_detail(request_id: int) -> Response:
        summary = _summary(store, request_id)
        now = time.time()
        failures = store.dashboard_failures(request_id, MAX_FAILURES)
        return jsonify(
            id=request_id, created=summary.created, backend=summary.backend,
            tasks=summary.n_tasks, counts=summary.counts, now=now,
            durations=histogram(store.dashboard_durations(request_id)),
            throughput=throughput(store, request_id, summary.created, now),
            failures=[{"index": failure.task, "state": failure.state,
                       "error": failure.error or "", "output": failure.output}
                      for failure in failures])

    @app.get("/dashboard/api/requests/<int:request_id>/tasks")
    def request_tasks(request_id: int) -> Response:
        summary = _summary(store, request_id)
        offset = max(request.args.get("offset", 0, type=int) or 0, 0)
        limit = min(max(request.args.get("limit", 1000, type=int) or 1000, 1), MAX_TASKS_PAGE)
        return jsonify(id=request_id, total=summary.n_tasks, offset=offset, limit=limit, tasks=[
            {"index": task.task, "state": task.state, "attempts": task.attempts,
             "started": task.started, "updated": task.updated, "seconds": _seconds(task)}
            for task in store.dashboard_tasks(request_id, offset, limit)])

    @app.errorhandler(404)
    def not_found(error: Exception) -> Response:
        return Response("404 Not Found\n", 404, {"Content-Type": "text/plain; charset=utf-8"})

    return app


def _seconds(task: TaskSummary) -> Optional[float]:
    """How long a task that reported ran, if its start is known."""
    if task.state not in (DONE, FAILED) or task.started is None or task.updated is None:
        return None
    return task.updated - task.started


def _summary(storage: Storage, request_id: int) -> RequestSummary:
    """The request's summary, or a 404."""
    for summary in storage.request_summaries():
        if summary.request_id == request_id:
            return summary
    abort(404)


class DashboardServer:
    """Serves the dashboard of one database on its own socket, in a daemon thread.

    ``url`` is the tokenised link, once started.
    """

    def __init__(self, storage: Union[Storage, str, os.PathLike[str]], token: Optional[str] = None,
                 address: str = "127.0.0.1:0") -> None:
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.token = token or new_token()
        self.host, self.port = parse_address(address)
        self._thread: Optional[threading.Thread] = None
        self._stop: Optional[Callable[[], None]] = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        """The link that opens the page: it carries the token, so it is the key to the page."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # listening everywhere, reached here through loopback
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/dashboard?token={self.token}"

    def start(self) -> "DashboardServer":
        """Listen, then serve in a daemon thread; raises OSError if the address is taken."""
        if self.running:
            return self
        import tornado.httpserver
        import tornado.ioloop
        import tornado.netutil
        import tornado.wsgi

        sockets = tornado.netutil.bind_sockets(self.port, address=self.host)
        self.port = sockets[0].getsockname()[1]
        if not _is_loopback(self.host):
            log.warning("the sheepdog dashboard listens on %s:%s, beyond this machine: anyone "
                        "who sees its link (plain HTTP) can read the page", self.host, self.port)
        app = create_app(self.storage, self.token)
        ready = threading.Event()

        def serve() -> None:
            import asyncio

            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            io_loop = tornado.ioloop.IOLoop.current()
            with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="sheepdog-dashboard") as pool:
                container = tornado.wsgi.WSGIContainer(app, executor=pool)
                http_server = tornado.httpserver.HTTPServer(container)
                http_server.add_sockets(sockets)
                self._stop = lambda: io_loop.add_callback(io_loop.stop)
                ready.set()
                try:
                    io_loop.start()
                finally:
                    http_server.stop()
                    io_loop.close(all_fds=True)

        self._thread = threading.Thread(target=serve, name="sheepdog-dashboard", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def join(self) -> None:
        """Wait until the server stops (Ctrl-C interrupts the wait)."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = self._stop = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
