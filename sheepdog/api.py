"""The public functions: map, map_async, get_results, get_errors, wait, cancel.

This is the one module that knows all the others. It checks the config,
serialises the function and arguments, stores them, makes sure this session's
server is listening, renders the job file and hands it to the backend. While
waiting it watches the database, the tasks' heartbeats and the scheduler, marks
tasks that ended without reporting as lost, and submits retries.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from . import backends, jobscript, serialisation
from .chunking import choose_chunksize
from .config import Config, resolve
from .payloads import PayloadFile, payload_bytes
from .progress import ProgressDisplay
from .protocol import EXIT_NO_KEY
from .server import Server
from .storage import DONE, Storage

log = logging.getLogger(__name__)

#: Seconds between looks at the scheduler and the heartbeats while waiting.
WATCH_SECONDS = 2.0

_lock = threading.Lock()
_storages: dict[str, Storage] = {}
#: (dbfile, scheme) -> the server that new requests on that database use.
_servers: dict[tuple[str, str], Server] = {}
#: Requests submitted by this process: (dbfile, request id) -> (config, backend).
_submitted: dict[tuple[str, int], tuple[Config, backends.Backend]] = {}
#: The URLs the workers of a request were given.
_urls: dict[tuple[str, int], list[str]] = {}
#: When tasks of a request were first seen running with none having called back.
_unreached: dict[tuple[str, int], float] = {}


def _storage(dbfile: str) -> Storage:
    path = os.path.abspath(dbfile)
    with _lock:
        if path not in _storages:
            _storages[path] = Storage(path)
        return _storages[path]


def _server(config: Config, storage: Storage, wait: bool = True) -> Server:
    """This session's server for ``storage``, started on first use and then reused.

    A running server is never stopped here: workers of earlier requests may
    still call it back. A call that needs another port or scheme gets a server
    of its own beside it. Without ``wait`` it may still be starting.
    """
    key = (storage.dbfile, "https" if config.tls else "http")
    with _lock:
        server = _servers.get(key)
        if server is None or not server.running or config.port not in (None, server.port):
            server = Server(storage, port=config.port, bind=config.bind or "127.0.0.1",
                            max_body_bytes=config.max_body_bytes, use_tls=config.tls)
            _servers[key] = server
    return server.start(wait)


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


def _routes(config: Config, server: Server, backend: backends.Backend) -> list[str]:
    """The URLs workers try, in order: this machine directly, then a tunnel if asked."""
    direct = server.url(config.localhost or "127.0.0.1")
    if config.callback == "direct" or config.scheduler == "local":
        return [direct]
    try:
        host, port = backend.reverse_route(server.port) or (None, None)
    except Exception as error:
        if config.callback == "tunnel":
            raise
        log.warning("no tunnel through %s (%s); workers will only try %s directly",
                    config.host, error, direct)
        return [direct]
    tunnel = f"{server.scheme}://{host}:{port}"
    return [tunnel] if config.callback == "tunnel" else [direct, tunnel]


def _key_settings(storage: Storage, config: Config, request_id: int) -> dict[str, str]:
    """How the workers get the request's key: the path of its private file, or the key."""
    if config.key_in_job_file:
        return {"key": storage.request_secret(request_id) or ""}
    return {"key_file": _key_file(storage, request_id) or ""}


def _key_meta(request_id: int) -> str:
    return f"key_file:{request_id}"


def _key_file(storage: Storage, request_id: int) -> Optional[str]:
    stored = storage.meta(_key_meta(request_id))
    return stored.decode() if stored else None


def _deliver_key(storage: Storage, config: Config, backend: backends.Backend,
                 request_id: int) -> None:
    """Put the request's key where only its workers can read it, before any job is submitted."""
    if config.key_in_job_file:
        log.warning(
            "request %s: 'key_in_job_file' puts the request's key in the job file, which the "
            "scheduler shows to every user of the cluster: any of them can then post results "
            "as your workers, and make this process load them. Use it only on a cluster "
            "whose users you trust", request_id)
        return
    path = backend.deliver_key(request_id, storage.request_secret(request_id) or "")
    storage.set_meta_once(_key_meta(request_id), path.encode())


def _withdraw_key(storage: Storage, request_id: int, backend: backends.Backend) -> None:
    """Remove the request's key file: the request has ended or was cancelled."""
    path = _key_file(storage, request_id)
    if path is None:
        return
    try:
        backend.withdraw_key(path)
    except Exception as error:  # the request's results are safe; say what is left behind
        log.warning("request %s: could not remove its key file %s: %s", request_id, path, error)


def _submit(
    storage: Storage,
    config: Config,
    backend: backends.Backend,
    request_id: int,
    n_arguments: int,
    indices: Optional[Sequence[int]] = None,
) -> str:
    """Render and submit one job over all arguments, or over ``indices`` only."""
    server = _server(config, storage)
    count = n_arguments if indices is None else len(indices)
    chunksize = config.chunksize or choose_chunksize(count, *backend.capacity())
    n_array_tasks = -(-count // chunksize)
    settings = {
        "urls": _routes(config, server, backend),
        "certificate": server.certificate.decode() if server.certificate else None,
        "request_id": request_id,
        **_key_settings(storage, config, request_id),
        "n_arguments": n_arguments,
        "chunksize": chunksize,
        "indices": None if indices is None else list(indices),
        "task_variable": backend.task_variable,
        "python": list(sys.version_info[:2]),
        "memory_limit": config.memory_limit,
        "retry_seconds": config.retry_seconds,
        "heartbeat_seconds": config.heartbeat_seconds,
    }
    _urls[(storage.dbfile, request_id)] = settings["urls"]
    script = jobscript.render(config.shell or "python3", backend.directives(n_array_tasks), settings)
    job_id = backend.submit(script, request_id, n_array_tasks)
    storage.add_job(request_id, job_id, chunksize, indices)
    log.info("request %s: job %s submitted (%d arguments in %d array tasks)",
             request_id, job_id, count, n_array_tasks)
    return job_id


def map_async(
    f: Callable[..., Any],
    args: Iterable[Any],
    config: Optional[Mapping[str, Any]] = None,
    ns: Optional[Mapping[str, Any]] = None,
) -> int:
    """Submit ``f(*a)`` for every ``a`` in ``args``; return the request id at once.

    Nothing is stored or submitted unless the config, the function, the
    namespace and every argument can be checked and serialised first. If the
    scheduler refuses the job, the error is raised with the scheduler's words
    and the request's tasks are recorded as lost, with that reason.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, not {type(f).__name__}")
    conf = resolve(config)
    arguments = _check_arguments(args)
    function_blob = serialisation.dumps_function(f, ns)
    argument_blobs = [serialisation.dumps_argument(i, a) for i, a in enumerate(arguments)]
    backend = backends.create(conf)
    storage = _storage(conf.dbfile)
    _server(conf, storage, wait=False)  # starts while the arguments are stored
    request_id = storage.create_request(
        function_blob, argument_blobs, secrets.token_urlsafe(32), backend.name,
        _stored_config(conf),
    )
    if not arguments:
        return request_id
    try:
        _deliver_key(storage, conf, backend, request_id)
        _submit(storage, conf, backend, request_id, len(arguments))
    except Exception as error:
        for index in range(1, len(arguments) + 1):
            storage.record_lost(request_id, index, f"the job was never submitted: {error}")
        _withdraw_key(storage, request_id, backend)
        raise
    _submitted[(storage.dbfile, request_id)] = (conf, backend)
    return request_id


def _task_owners(
    storage: Storage, request_id: int, open_indices: Sequence[int]
) -> dict[int, tuple[str, int]]:
    """For each open argument index, the newest job covering it and its array task id.

    The inverse of ``worker.argument_indices``.
    """
    wanted = set(open_indices)
    owners: dict[int, tuple[str, int]] = {}
    for job in storage.jobs(request_id):
        if job.indices is None:
            owners.update((i, (job.job_id, (i - 1) // job.chunksize + 1)) for i in wanted)
        else:
            owners.update((i, (job.job_id, position // job.chunksize + 1))
                          for position, i in enumerate(job.indices) if i in wanted)
    return owners


def _watch(storage: Storage, request_id: int) -> None:
    """Mark lost what ended silently or fell silent, and retry what may be retried."""
    submitted = _submitted.get((storage.dbfile, request_id))
    config = submitted[0] if submitted else resolve(storage.request_config(request_id))
    silent_since = time.time() - config.lost_after
    for index in storage.stale_running(request_id, silent_since):
        storage.record_lost(request_id, index,
                            f"no heartbeat for {config.lost_after:.0f} s", retryable=True)
    if submitted is None:
        return  # the scheduler is watched by the process that submitted
    backend = submitted[1]
    open_indices = storage.open_indices(request_id)
    if open_indices:
        owners = _task_owners(storage, request_id, open_indices)
        by_job: dict[str, set[int]] = {}
        for job_id, task_id in owners.values():
            by_job.setdefault(job_id, set()).add(task_id)
        ended = {job_id: backend.ended_tasks(job_id, tasks) for job_id, tasks in by_job.items()}
        warned = storage.kill_noticed(request_id)
        for index, (job_id, task_id) in owners.items():
            end = ended[job_id].get(task_id)
            if end is None:
                continue
            if end.exit_status == EXIT_NO_KEY:
                raise _abandon(storage, request_id, backend, _no_key_message(
                    storage, request_id, backend, job_id, task_id))
            reason = end.reason
            if index in warned and end.retryable:
                reason += "; the scheduler warned before killing it: it was deleted (qdel)"
            if storage.record_lost(
                request_id, index, f"the task ended without reporting ({reason}; job {job_id})",
                retryable=end.retryable and index not in warned,
            ):
                log.warning("request %s: task %s lost (%s)", request_id, index, reason)
        _check_reached(storage, request_id, config, backend)
    _retry(storage, request_id)


class CallbackError(RuntimeError):
    """The workers cannot reach this process, or cannot read the request's key.

    Raised by ``map``/``wait`` within seconds of the first task ending that
    way, or ``connect_timeout`` after tasks started running without any of
    them calling back. The request's jobs are cancelled first, so that no
    slot is held in vain; the message says what the workers tried and what
    to change.
    """


def _abandon(storage: Storage, request_id: int, backend: backends.Backend,
             message: str) -> CallbackError:
    """Cancel the request's jobs and mark its open tasks lost with ``message``."""
    for job in storage.jobs(request_id):
        try:
            backend.cancel(job.job_id)
        except Exception as error:  # the error below matters more
            log.warning("request %s: could not cancel job %s: %s", request_id, job.job_id, error)
    for index in storage.open_indices(request_id):
        storage.record_lost(request_id, index, message)
    _withdraw_key(storage, request_id, backend)
    _unreached.pop((storage.dbfile, request_id), None)
    return CallbackError(message)


def _output_tail(backend: backends.Backend, job_id: str, task_id: int) -> str:
    try:
        output = backend.task_output(job_id, task_id).strip()
    except Exception as error:  # a diagnosis without the log is still a diagnosis
        output = f"(could not read it: {error})"
    lines = output.splitlines()[-15:] or ["(empty)"]
    return "\n".join("    " + line for line in lines)


def _no_key_message(storage: Storage, request_id: int, backend: backends.Backend,
                    job_id: str, task_id: int) -> str:
    return (
        f"request {request_id}: the workers cannot read the request's key file "
        f"{_key_file(storage, request_id)}, which sheepdog wrote on the head node: the "
        f"compute nodes do not see the head node's home directory. Task {task_id} of job "
        f"{job_id} said:\n{_output_tail(backend, job_id, task_id)}\nShare the home "
        f"directory with the compute nodes, or, on a cluster whose users you trust, set "
        f"{{'key_in_job_file': True}} (see 'How workers reach you' in the docs)"
    )


def _check_reached(storage: Storage, request_id: int, config: Config,
                   backend: backends.Backend) -> None:
    """Raise CallbackError when tasks run but none has called back for ``connect_timeout``."""
    key = (storage.dbfile, request_id)
    progress = storage.progress(request_id)
    jobs = storage.jobs(request_id)
    if progress.running or progress.done or progress.failed or not jobs:
        _unreached.pop(key, None)
        return
    running = backend.running_tasks(jobs[-1].job_id)
    if not running:
        return
    waited = time.monotonic() - _unreached.setdefault(key, time.monotonic())
    if waited < config.connect_timeout:
        return
    job_id, task_id = jobs[-1].job_id, min(running)
    urls = " and ".join(_urls.get(key, ["(unknown)"]))
    raise _abandon(storage, request_id, backend, (
        f"request {request_id}: {len(running)} tasks of job {job_id} have run for "
        f"{waited:.0f} s and none has called back on {urls}. Task {task_id}'s stderr "
        f"ends with:\n{_output_tail(backend, job_id, task_id)}\nIf this machine is behind "
        f"NAT or a firewall, use {{'callback': 'tunnel'}}; if the workers know it by "
        f"another name or address, set 'localhost'; or let the workers through the "
        f"firewall to the port in those URLs. See 'How workers reach you' in the docs"
    ))


def _retry(storage: Storage, request_id: int) -> bool:
    """Resubmit lost (and, if asked, failed) tasks that have attempts left; True if any."""
    submitted = _submitted.get((storage.dbfile, request_id))
    if submitted is None or not submitted[0].retries:
        return False
    config, backend = submitted
    again = storage.retry_candidates(request_id, config.retries + 1, config.retry_failed)
    if not again:
        return False
    storage.requeue(request_id, again)
    _submit(storage, config, backend, request_id, storage.n_tasks(request_id), again)
    return True


def wait(
    request_id: int,
    dbfile: str = "./sheepdog.sqlite",
    verbose: bool = False,
    timeout: Optional[float] = None,
) -> None:
    """Block until every task of the request has finished (done, failed, lost or cancelled)."""
    storage = _storage(dbfile)
    display = ProgressDisplay() if verbose else None
    started = time.monotonic()
    next_watch = started + WATCH_SECONDS
    delay = 0.02
    try:
        while True:
            seen = storage.change_count
            progress = storage.progress(request_id)
            if display is not None:
                display.update(progress)
            if progress.complete and not _retry(storage, request_id):
                _finished(storage, request_id)
                return
            now = time.monotonic()
            if now >= next_watch:
                _watch(storage, request_id)
                next_watch = time.monotonic() + WATCH_SECONDS
            if timeout is not None and now - started > timeout:
                raise TimeoutError(
                    f"request {request_id}: {progress.finished} of {progress.total} tasks "
                    f"finished after {timeout} s"
                )
            storage.wait_for_change(seen, delay)
            delay = min(delay * 1.5, 0.5)
    finally:
        if display is not None:
            display.close()


def _finished(storage: Storage, request_id: int) -> None:
    """The request has ended: remove its key file, if this process delivered it."""
    submitted = _submitted.pop((storage.dbfile, request_id), None)
    if submitted is not None:
        _withdraw_key(storage, request_id, submitted[1])


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
    return [(_load(args), _load(result) if state == DONE else None)
            for args, state, result in storage.results(request_id)]


def _load(payload: Union[bytes, PayloadFile]) -> Any:
    return serialisation.loads(payload_bytes(payload))


def get_errors(request_id: int, dbfile: str = "./sheepdog.sqlite") -> list[tuple[tuple[Any, ...], str]]:
    """``[(args, error text), ...]`` for tasks that raised, were lost or were cancelled."""
    return [(_load(args), error) for args, _state, error in _storage(dbfile).errors(request_id)]


def cancel(request_id: int, dbfile: str = "./sheepdog.sqlite") -> int:
    """Remove the request's jobs from the scheduler; return how many tasks were cancelled.

    Works from any process: the request's config is kept in ``dbfile``.
    """
    storage = _storage(dbfile)
    submitted = _submitted.get((storage.dbfile, request_id))
    backend = submitted[1] if submitted else backends.create(
        resolve(storage.request_config(request_id)))
    for job in storage.jobs(request_id):
        try:
            backend.cancel(job.job_id)
        except Exception as error:  # the other jobs still deserve their qdel
            log.warning("request %s: could not cancel job %s: %s", request_id, job.job_id, error)
    _withdraw_key(storage, request_id, backend)
    return storage.cancel_open(request_id, "cancelled by the user")


def _after_interrupt(request_id: int, dbfile: str) -> None:
    """Ctrl-C in map: cancel the unfinished tasks, asking first when someone can answer."""
    progress = _storage(dbfile).progress(request_id)
    unfinished = progress.total - progress.finished
    if not unfinished:
        return
    answer = "y"
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            answer = input(f"\nsheepdog: cancel the {unfinished} unfinished tasks of request "
                           f"{request_id}? [Y/n] ").strip().lower() or "y"
        except (EOFError, KeyboardInterrupt):
            answer = "y"
    if answer.startswith("n"):
        print(f"sheepdog: request {request_id} keeps running; collect it with "
              f"sheepdog.get_results({request_id}, {dbfile!r})", file=sys.stderr)
        return
    cancelled = cancel(request_id, dbfile)
    jobs = ", ".join(job.job_id for job in _storage(dbfile).jobs(request_id))
    print(f"sheepdog: cancelled request {request_id}: job {jobs} removed from the scheduler, "
          f"{cancelled} unfinished tasks marked cancelled", file=sys.stderr)


def map(  # noqa: A001 - the original API's name
    f: Callable[..., Any],
    args: Iterable[Any],
    config: Optional[Mapping[str, Any]] = None,
    ns: Optional[Mapping[str, Any]] = None,
    verbose: bool = True,
) -> list[Any]:
    """``[f(*a) for a in args]``, run on the cluster; ``None`` where a task failed.

    Returns once every task has finished. Ctrl-C cancels the request's
    remaining tasks (asking first in an interactive session) and says so.
    """
    dbfile = resolve(config).dbfile
    request_id = map_async(f, args, config, ns)
    storage = _storage(dbfile)
    try:
        wait(request_id, dbfile, verbose=verbose)
    except KeyboardInterrupt:
        _after_interrupt(request_id, dbfile)
        raise
    results = [_load(result) if state == DONE else None
               for _args, state, result in storage.results(request_id, with_arguments=False)]
    progress = storage.progress(request_id)
    failures = progress.total - progress.done
    if verbose and failures:
        print(f"sheepdog: {failures} of {progress.total} tasks failed; see "
              f"sheepdog.get_errors({request_id}, {dbfile!r})", file=sys.stderr)
    return results


map_sync = map
