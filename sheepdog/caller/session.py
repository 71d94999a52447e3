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

from ..backends.base import create as create_backend
from ..config import Config, resolve_with_origins, security_warnings, unused_key_warnings
from ..server import Server
from ..storage import Storage
from ..wire import serialisation
from . import remembering
from .owner import DatabaseOwner, acquire, opened, release
from .pool import Pool
from .request import Request

log = logging.getLogger(__name__)


class RequestInterrupted(KeyboardInterrupt):
    """Ctrl-C once a request was stored, before :meth:`Session.submit` returned it (while
    its job was submitted, or the dashboard started): ``request`` is that request, whose
    tasks wait, or run, until its caller cancels them (``map`` asks)."""

    def __init__(self, request: Request) -> None:
        super().__init__(f"interrupted as request {request.id} was submitted")
        self.request = request


class Session:
    """The databases, servers and request handles this code uses, released by :meth:`close`.

    Sessions of one process share one :class:`~sheepdog.caller.owner.DatabaseOwner`
    per database file (its storage, servers and dashboard): each session holds
    the owners it used until it closes, and the last holder closes them.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owners: dict[str, DatabaseOwner] = {}
        self._requests: dict[tuple[str, int], Request] = {}
        self._pools: list[Pool] = []  # the warm pools its requests joined

    # -- resources --------------------------------------------------------

    def owner(self, dbfile: str, create: bool = True, read_only: bool = False
              ) -> DatabaseOwner:
        """This process's owner of ``dbfile``, held by this session until it closes.

        With ``read_only``, a file not yet open in this process is opened
        read-only (see :func:`~sheepdog.caller.owner.acquire`).
        """
        path = os.path.realpath(dbfile)
        with self._lock:
            owner = acquire(path, create=create, read_only=read_only)  # refuses what it must
            if path in self._owners:
                release(owner)  # this session holds it already
            else:
                self._owners[path] = owner
            return self._owners[path]

    def storage(self, dbfile: str, create: bool = True, read_only: bool = False) -> Storage:
        """The open database ``dbfile``; without ``create``, a missing file is an error.

        Reading never creates a database: a typo in a path, or a relative
        default read from another directory, would otherwise look like an
        empty database. With ``read_only`` it is not changed at all: see
        ``storage/read_only.py``.
        """
        return self.owner(dbfile, create, read_only).storage

    def server_of(self, dbfile: str, scheme: str = "https") -> Optional[Server]:
        """The callback server that new requests on ``dbfile`` use, if one was started."""
        return self.owner(dbfile).running_server(scheme)

    def dashboard_link(self, request: Request) -> Optional[str]:
        """The link that opens this process's dashboard on ``request``, if it has one.

        The link holds the process's token: whoever has it can read the page.
        """
        dashboard = self.owner(request.storage.dbfile).running_dashboard()
        return None if dashboard is None else f"{dashboard.url}#request-{request.id}"

    def pool_is_warm(self, conf: Config) -> bool:
        """Whether a request of ``conf`` would find workers of its warm pool alive: then
        it is best sent at once, not gathered with others (the Executor asks)."""
        return self.owner(conf.dbfile).pools.warm(_stored_config(conf))

    def request(self, request_id: int, dbfile: str, create: bool = False,
                read_only: bool = False) -> Request:
        """The handle of request ``request_id`` in ``dbfile``, the same one each time."""
        database = self.owner(dbfile, create=create, read_only=read_only)
        storage = database.storage
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
                self._requests[key] = Request(database, request_id)
            return self._requests[key]

    def close(self) -> None:
        """Let go of the databases, servers and dashboards; the requests' handles go.

        What another session of this process still uses stays open for it.
        """
        with self._lock:
            self._requests = {}
            owners, self._owners = list(self._owners.values()), {}
            pools, self._pools = self._pools, []
        for pool in pools:  # those no other session uses: their jobs go now
            pool.let_go(self)
        for held in owners:
            release(held)

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
        conf, origins = resolve_with_origins(config)
        arguments = _check_arguments(args)
        function_blob = serialisation.dumps_function(f, ns)
        argument_blobs = [serialisation.dumps_argument(i, a) for i, a in enumerate(arguments)]
        return self.submit_serialised(function_blob, argument_blobs, conf, origins,
                                      function_name(f), remembering.function_key(conf, f, ns))

    def submit_serialised(self, function_blob: bytes, argument_blobs: Sequence[Any],
                          conf: Config, origins: Optional[Mapping[str, str]] = None,
                          name: Optional[tuple[str, str]] = None,
                          computation: Optional[bytes] = None) -> Request:
        """:meth:`submit` once the function and arguments are serialised.

        The :class:`~sheepdog.executor.Executor` serialises each argument in
        its own ``submit`` call, so that one that cannot travel fails there,
        and hands a batch of them over here as one request. Each setting of
        ``conf`` that lowers security is warned about, naming where it was set
        (``origins``, from :func:`~sheepdog.config.resolve_with_origins`).
        ``name`` is the function's (module, qualified name), from
        :func:`function_name`, stored to say what the request is. ``computation``
        is the function's key (:func:`remembering.function_key`): with it, the
        tasks computed before get their results here, and only the others are
        submitted (see ``remembering.py``).
        """
        stored = _stored_config(conf)
        already = opened(conf.dbfile)  # nothing is stored before the backend's checks
        warm = None if already is None else already.pools.find(stored)
        backend = create_backend(conf) if warm is None else warm.backend
        backend.check()
        database = self.owner(conf.dbfile)
        pool = database.pools.pool_for(conf, stored, backend)
        storage = database.storage
        # Started while the arguments are stored; the inline scheduler's tasks call no server.
        server = None if backend.runs_in_caller else database.server(conf, wait=False)
        recalled = remembering.recall(storage, conf, computation, argument_blobs)
        request_id = storage.create_request(
            function_blob, argument_blobs, secrets.token_urlsafe(32), backend.name,
            stored, name, None if recalled is None else recalled.computation,
        )
        request = Request(database, request_id, conf, backend, pool)
        remembered = 0 if recalled is None else storage.remembered(request_id)
        if remembered:
            log.info("request %s: %d of %d tasks remembered (config key 'cache')", request_id,
                     remembered, len(argument_blobs))
        if recalled is not None and remembered == len(recalled.results):  # none removed meanwhile
            request.recalled = recalled.results
        for warning in [*security_warnings(conf, origins), *unused_key_warnings(conf, origins)]:
            log.warning("request %s: %s", request_id, warning)
        with self._lock:
            self._requests[(storage.dbfile, request_id)] = request
        if remembered == len(argument_blobs):  # nothing left to compute: no job
            self._log_dashboard_link(request)  # nothing live to watch: none is started
            return request
        try:
            self._start_work(database, request, server)
            self._show_dashboard(database, conf, request)  # while the workers start
        except KeyboardInterrupt:  # the request exists: its caller says what becomes of it
            raise RequestInterrupted(request) from None
        return request

    def _start_work(self, database: DatabaseOwner, request: Request,
                    server: Optional[Server]) -> None:
        """Get workers to the stored ``request``: its pool's, or a job submitted for it. A
        job the scheduler refuses leaves its tasks lost, with the scheduler's words."""
        pool = request.pool
        try:
            if server is not None:
                server.start()
                request.remember_server(server)
            if pool is None:
                request.submit_job()
                return
            pool.hold(self)
            with self._lock:
                if pool not in self._pools:
                    self._pools.append(pool)
            database.pools.join(pool, request)  # idle workers of the pool come at once
            with pool.starting:
                if not pool.live_workers():
                    request.submit_job()
        except Exception as error:
            request.storage.lose_open(request.id, f"the job was never submitted: {error}")
            request.withdraw_key()
            raise

    def _show_dashboard(self, database: DatabaseOwner, conf: Config, request: Request) -> None:
        """Start the dashboard (once per database) and log its link to ``request``.

        After the job is submitted: starting it (Flask's import, 0.15 to 0.4 s)
        then overlaps the workers' start instead of delaying it.
        """
        database.dashboard(conf)
        self._log_dashboard_link(request)

    def _log_dashboard_link(self, request: Request) -> None:
        """Log the link to ``request`` on the dashboard, if one is running: the one log
        line that holds the token."""
        link = self.dashboard_link(request)
        if link is not None:
            log.info("request %s: live dashboard at %s", request.id, link)


def function_name(f: Any) -> tuple[str, str]:
    """(module, qualified name) of a callable, as ``sheepdog list`` names its request:
    ``("__main__", "simulate")``, ``("numpy", "sqrt")``, or its type's for an object
    that is only callable (a ``functools.partial`` names the function it wraps)."""
    inner = getattr(f, "func", None)  # functools.partial
    target = inner if callable(inner) and not hasattr(f, "__qualname__") else f
    if not hasattr(target, "__qualname__"):
        target = type(target)
    return (str(getattr(target, "__module__", None) or ""),
            str(getattr(target, "__qualname__", None) or getattr(target, "__name__", "?")))


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
    """The config as JSON-able values, for a later process to reach the jobs. Read field
    by field: its values are plain (options are tuples of strings), and
    ``dataclasses.asdict``, which copies deeply, cost a tenth of a millisecond a submit."""
    stored = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        stored[field.name] = list(value) if isinstance(value, tuple) else value
    return stored
