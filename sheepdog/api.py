"""The public functions: map, map_async, get_results, get_errors.

This is the one module that knows all the others. It checks the config,
serialises the function and arguments, stores them, makes sure this session's
server is listening, renders the job file and hands it to the backend; then,
when asked to wait, it watches the database (and the scheduler, for tasks
that ended without reporting) until every task is finished.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from . import backends, jobscript, serialisation
from .config import Config, resolve
from .progress import ProgressDisplay
from .server import Server
from .storage import DONE, Storage
from .worker import argument_indices

log = logging.getLogger(__name__)

#: Seconds between asking the scheduler which tasks ended.
SCHEDULER_POLL_SECONDS = 2.0

_lock = threading.Lock()
_storages: dict[str, Storage] = {}
_servers: dict[str, Server] = {}


@dataclass
class _Submission:
    """What this session knows about a request it submitted."""

    backend: backends.Backend
    job_ids: list[str]
    chunksize: int
    n_tasks: int


_submissions: dict[tuple[str, int], _Submission] = {}


def _storage(dbfile: str) -> Storage:
    path = os.path.abspath(dbfile)
    with _lock:
        if path not in _storages:
            _storages[path] = Storage(path)
        return _storages[path]


def _server(config: Config, storage: Storage) -> Server:
    """This session's server for ``storage``, started on first use and then reused."""
    with _lock:
        server = _servers.get(storage.dbfile)
        wanted_port = config.port
        if server is not None and server.running and wanted_port in (None, server.port):
            return server
        if server is not None:
            server.stop()
        server = Server(storage, port=wanted_port, bind=config.bind or "127.0.0.1").start()
        _servers[storage.dbfile] = server
        return server


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


def map_async(
    f: Callable[..., Any],
    args: Iterable[Any],
    config: Optional[Mapping[str, Any]] = None,
    ns: Optional[Mapping[str, Any]] = None,
) -> int:
    """Submit ``f(*a)`` for every ``a`` in ``args``; return the request id at once.

    Nothing is stored or submitted unless the config, the function, the
    namespace and every argument can be checked and serialised first.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, not {type(f).__name__}")
    conf = resolve(config)
    arguments = _check_arguments(args)
    function_blob = serialisation.dumps_function(f, ns)
    argument_blobs = [serialisation.dumps_argument(i, a) for i, a in enumerate(arguments)]
    backend = backends.create(conf)
    storage = _storage(conf.dbfile)
    server = _server(conf, storage)
    secret = secrets.token_urlsafe(32)
    request_id = storage.create_request(function_blob, argument_blobs, secret, backend.name)
    if not arguments:
        return request_id
    n_array_tasks = -(-len(arguments) // conf.chunksize)
    settings = {
        "url": server.url(conf.localhost or "127.0.0.1"),
        "request_id": request_id,
        "secret": secret,
        "n_arguments": len(arguments),
        "chunksize": conf.chunksize,
        "task_variable": backend.task_variable,
        "python": list(sys.version_info[:2]),
        "memory_limit": conf.memory_limit,
        "retry_seconds": conf.retry_seconds,
    }
    script = jobscript.render(conf.shell or "python3", backend.directives(n_array_tasks), settings)
    try:
        job_id = backend.submit(script, request_id, n_array_tasks)
    except Exception as error:
        for index in range(1, len(arguments) + 1):
            storage.record_lost(request_id, index, f"the job was never submitted: {error}")
        raise
    storage.add_job(request_id, job_id)
    _submissions[(storage.dbfile, request_id)] = _Submission(
        backend, [job_id], conf.chunksize, len(arguments)
    )
    log.info("request %s submitted as job %s (%d tasks)", request_id, job_id, len(arguments))
    return request_id


def _mark_lost_tasks(storage: Storage, request_id: int, submission: _Submission) -> None:
    """Tasks whose array task ended but which never reported are lost."""
    open_indices = storage.open_indices(request_id)
    candidates = {(index - 1) // submission.chunksize + 1 for index in open_indices}
    if not candidates:
        return
    for job_id in submission.job_ids:
        for task_id, how in submission.backend.ended_tasks(job_id, candidates).items():
            for index in argument_indices(task_id, submission.chunksize, submission.n_tasks):
                if storage.record_lost(
                    request_id, index, f"the task ended without reporting ({how}; job {job_id})"
                ):
                    log.warning("request %s task %s lost: %s", request_id, index, how)


def wait(
    request_id: int, dbfile: str, verbose: bool = False, timeout: Optional[float] = None
) -> None:
    """Block until every task of the request has finished (done, failed or lost)."""
    storage = _storage(dbfile)
    submission = _submissions.get((storage.dbfile, request_id))
    display = ProgressDisplay() if verbose else None
    started = time.monotonic()
    next_poll = started + SCHEDULER_POLL_SECONDS
    delay = 0.02
    try:
        while True:
            progress = storage.progress(request_id)
            if display is not None:
                display.update(progress)
            if progress.complete:
                return
            now = time.monotonic()
            if submission is not None and now >= next_poll:
                _mark_lost_tasks(storage, request_id, submission)
                next_poll = now + SCHEDULER_POLL_SECONDS
            if timeout is not None and now - started > timeout:
                raise TimeoutError(
                    f"request {request_id}: {progress.finished} of {progress.total} tasks "
                    f"finished after {timeout} s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
    finally:
        if display is not None:
            display.close()


def get_results(
    request_id: int,
    dbfile: str = "./sheepdog.sqlite",
    block: bool = True,
    verbose: bool = False,
    timeout: Optional[float] = None,
) -> list[tuple[tuple[Any, ...], Any]]:
    """``[(args, result), ...]`` in argument order; ``None`` where there is no result.

    With ``block`` it first waits until every task has finished.
    """
    storage = _storage(dbfile)
    if block:
        wait(request_id, dbfile, verbose=verbose, timeout=timeout)
    return [
        (serialisation.loads(args), serialisation.loads(result) if state == DONE else None)
        for args, state, result in storage.results(request_id)
    ]


def get_errors(request_id: int, dbfile: str = "./sheepdog.sqlite") -> list[tuple[tuple[Any, ...], str]]:
    """``[(args, error text), ...]`` for tasks that raised or were lost."""
    return [
        (serialisation.loads(args), error)
        for args, _state, error in _storage(dbfile).errors(request_id)
    ]


def map(  # noqa: A001 - the original API's name
    f: Callable[..., Any],
    args: Iterable[Any],
    config: Optional[Mapping[str, Any]] = None,
    ns: Optional[Mapping[str, Any]] = None,
    verbose: bool = True,
) -> list[Any]:
    """``[f(*a) for a in args]``, run on the cluster; ``None`` where a task failed."""
    dbfile = resolve(config).dbfile
    request_id = map_async(f, args, config, ns)
    results = get_results(request_id, dbfile, block=True, verbose=verbose)
    if verbose:
        failures = len(get_errors(request_id, dbfile))
        if failures:
            print(
                f"sheepdog: {failures} of {len(results)} tasks failed; see "
                f"sheepdog.get_errors({request_id}, {dbfile!r})",
                file=sys.stderr,
            )
    return [result for _args, result in results]


map_sync = map
