"""A session: the databases, callback servers and schedulers one process uses.

:class:`Session` owns what outlives a single ``map`` call (open databases,
the servers that workers call back, the request handles) and releases it in
:meth:`Session.close`. SSH connections and their tunnels are not its own:
one per head node serves the whole process (``ssh.py``, ``shells.py``), since
workers of any session may still call back through a tunnel. A
:class:`~sheepdog.caller.request.Request` (``request.py``) is the handle of one
request: submit, wait, read results and errors, cancel. The original
functions of ``api.py`` are thin wrappers over a default session.

A request can be handled from any process, not only the one that submitted
it: its config, key file, server port and scheme are kept in the database, so
a later process rebuilds the backend, watches the scheduler, serves the
workers (on the port they were given) and resubmits what may be retried.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from .. import backends
from ..wire import serialisation
from ..config import Config, resolve
from ..dashboard.server import DashboardServer, new_token
from .request import Request
from ..server.host import Server
from ..storage.store import Storage

log = logging.getLogger(__name__)


class Session:
    """Databases, servers and backends of this process, shared by its requests."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._storages: dict[str, Storage] = {}
        #: (dbfile, scheme) -> the server that new requests on that database use.
        self.servers: dict[tuple[str, str], Server] = {}
        self._requests: dict[tuple[str, int], Request] = {}
        #: dbfile -> its live dashboard; every one opens with this session's token.
        self.dashboards: dict[str, DashboardServer] = {}
        self._dashboard_token = new_token()

    # -- resources --------------------------------------------------------

    def storage(self, dbfile: str, create: bool = True) -> Storage:
        """The open database ``dbfile``; without ``create``, a missing file is an error.

        Reading never creates a database: a typo in a path, or a relative
        default read from another directory, would otherwise look like an
        empty database.
        """
        path = os.path.abspath(dbfile)
        with self._lock:
            if path not in self._storages:
                if not create and not os.path.exists(path):
                    raise FileNotFoundError(_missing_database(path))
                self._storages[path] = Storage(path)
            return self._storages[path]

    def server(self, config: Config, storage: Storage, port: Optional[int] = None,
               wait: bool = True) -> Server:
        """This session's server for ``storage``, started on first use and then reused.

        A running server is never stopped here: workers of earlier requests
        may still call it back. A call that needs another port or scheme gets
        a server of its own beside it. Without ``wait`` it may still be
        starting.
        """
        port = port if port is not None else config.port
        key = (storage.dbfile, "https" if config.tls else "http")
        with self._lock:
            server = self.servers.get(key)
            if server is None or not server.running or port not in (None, server.port):
                server = Server(storage, port=port, bind=config.bind or "127.0.0.1",
                                max_body_bytes=config.max_body_bytes, use_tls=config.tls)
                self.servers[key] = server
        return server.start(wait)

    def dashboard(self, config: Config, storage: Storage) -> Optional[DashboardServer]:
        """This session's dashboard of ``storage``, started on first use; None when the
        ``dashboard`` config key is False, or when its address cannot be had (a warning
        says so: the page is a convenience, never a reason to fail a request)."""
        if config.dashboard is False:
            return None
        with self._lock:
            dashboard = self.dashboards.get(storage.dbfile)
            if dashboard is None or not dashboard.running:
                dashboard = DashboardServer(storage, self._dashboard_token, str(config.dashboard))
                try:
                    dashboard.start()
                except OSError as error:
                    log.warning("no dashboard: it cannot listen on %s (config key 'dashboard'): "
                                "%s", config.dashboard, error)
                    return None
                self.dashboards[storage.dbfile] = dashboard
        return dashboard

    def dashboard_link(self, request: Request) -> Optional[str]:
        """The link that opens this session's dashboard on ``request``, if it has one.

        The link holds the session's token: whoever has it can read the page.
        """
        dashboard = self.dashboards.get(request.storage.dbfile)
        return None if dashboard is None else f"{dashboard.url}#request-{request.id}"

    def request(self, request_id: int, dbfile: str, create: bool = False) -> Request:
        """The handle of request ``request_id`` in ``dbfile``, the same one each time."""
        storage = self.storage(dbfile, create=create)
        key = (storage.dbfile, request_id)
        with self._lock:
            if key not in self._requests:
                try:
                    storage.n_tasks(request_id)
                except KeyError:
                    known = storage.request_ids()
                    raise KeyError(
                        f"request {request_id} is not in {storage.dbfile}; it holds "
                        + (f"requests {known[0]} to {known[-1]}" if known else "no requests")
                    ) from None
                self._requests[key] = Request(self, storage, request_id)
            return self._requests[key]

    def close(self) -> None:
        """Stop the servers and close the databases; the requests' handles go."""
        with self._lock:
            self._requests = {}
            servers, self.servers = list(self.servers.values()), {}
            dashboards, self.dashboards = list(self.dashboards.values()), {}
            storages, self._storages = list(self._storages.values()), {}
        for server in servers:
            server.stop()
        for dashboard in dashboards:
            dashboard.stop()
        for storage in storages:
            storage.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- submission -------------------------------------------------------

    def submit(
        self,
        f: Callable[..., Any],
        args: Iterable[Any],
        config: Optional[Mapping[str, Any]] = None,
        ns: Optional[Mapping[str, Any]] = None,
    ) -> Request:
        """Store ``f(*a)`` for every ``a`` in ``args`` and submit one job over them.

        Nothing is stored or submitted unless the config, the function, the
        namespace and every argument can be checked and serialised first. If
        the scheduler refuses the job, the error is raised with the
        scheduler's words and the request's tasks are recorded as lost, with
        that reason.
        """
        if not callable(f):
            raise TypeError(f"f must be callable, not {type(f).__name__}")
        conf = resolve(config)
        arguments = _check_arguments(args)
        function_blob = serialisation.dumps_function(f, ns)
        argument_blobs = [serialisation.dumps_argument(i, a) for i, a in enumerate(arguments)]
        return self.submit_serialised(function_blob, argument_blobs, conf)

    def submit_serialised(self, function_blob: bytes, argument_blobs: Sequence[Any],
                          conf: Config) -> Request:
        """:meth:`submit` once the function and arguments are serialised.

        The :class:`~sheepdog.executor.Executor` serialises each argument in
        its own ``submit`` call, so that one that cannot travel fails there,
        and hands a batch of them over here as one request.
        """
        backend = backends.create(conf)
        backend.check()
        storage = self.storage(conf.dbfile)
        server = self.server(conf, storage, wait=False)  # starts while the arguments are stored
        request_id = storage.create_request(
            function_blob, argument_blobs, secrets.token_urlsafe(32), backend.name,
            _stored_config(conf),
        )
        request = Request(self, storage, request_id, conf, backend)
        self.dashboard(conf, storage)
        link = self.dashboard_link(request)
        if link is not None:  # the one log line that holds the token
            log.info("request %s: live dashboard at %s", request_id, link)
        with self._lock:
            self._requests[(storage.dbfile, request_id)] = request
        if not argument_blobs:
            return request
        try:
            server.start()
            request.remember_server(server)
            request.deliver_key()
            request.submit_job()
        except Exception as error:
            for index in range(1, len(argument_blobs) + 1):
                storage.record_lost(request_id, index, f"the job was never submitted: {error}")
            request.withdraw_key()
            raise
        return request


def _check_arguments(args: Iterable[Any]) -> list[tuple[Any, ...]]:
    checked = []
    for position, arguments in enumerate(args):
        if not isinstance(arguments, (tuple, list)):
            raise TypeError(
                f"argument {position} is {arguments!r}, not a tuple of arguments: "
                f"each item of args is unpacked as f(*item), so write ({arguments!r},)"
            )
        checked.append(tuple(arguments))
    return checked


def _stored_config(config: Config) -> dict[str, Any]:
    """The config as JSON-able values, for a later process to reach the jobs."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()}


def _missing_database(path: str) -> str:
    """Why ``path`` cannot be read, naming the sheepdog databases that do exist nearby."""
    directory = os.path.dirname(path)
    try:
        nearby = sorted(name for name in os.listdir(directory) if name.endswith(".sqlite"))
    except OSError:
        nearby = []
    hint = (f"; databases in {directory}: {', '.join(nearby)}" if nearby
            else f"; there is no .sqlite file in {directory}")
    return (f"no sheepdog database at {path}{hint}. Pass the dbfile the request was made "
            f"with (a relative dbfile, like the default ./sheepdog.sqlite, is relative to "
            f"the directory the request was made from)")

