"""The handle of one request: submit its jobs, wait for it, read it, cancel it.

A :class:`Request` is handed the :class:`~sheepdog.caller.owner.DatabaseOwner`
of its database, which holds its storage and serves its workers. What a
later process needs to carry on (the config, the key file's path, the
server's scheme and port) is kept in the database, so a handle made in any
process can wait for the request, watch its jobs (its
:class:`~sheepdog.caller.watcher.Watcher`), serve its workers and resubmit
what may be retried.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import sys
import time
from typing import Any, Optional

from ..backends.base import Backend, create
from ..config import Config, restore
from ..server import Server, tls
from ..storage import Progress, Storage
from ..storage.payloads import PayloadFile, payload_bytes
from ..storage.states import DONE
from ..wire import serialisation
from ..wire.settings import WorkerSettings
from . import inline, jobscript
from .chunking import choose_workers
from .owner import DatabaseOwner
from .pool import Pool
from .progress import progress_display
from .watcher import Watcher

log = logging.getLogger(__name__)


class Request:
    """One request in one database; made by :meth:`Session.submit` or :meth:`Session.request`."""

    def __init__(self, database: DatabaseOwner, request_id: int,
                 config: Optional[Config] = None, backend: Optional[Backend] = None,
                 pool: Optional[Pool] = None) -> None:
        self._database = database
        #: The warm pool whose workers run the request's tasks (``pool.py``), if any.
        self.pool = pool
        self.storage = database.storage
        self.id = request_id
        self._config = config
        self._backend = backend
        #: The URLs the workers of the newest job were given.
        self.urls: list[str] = []
        self._ended = False
        #: Follows the request's workers and scheduler while somebody waits for it.
        self.watcher = Watcher(self)
        #: The live exceptions of tasks that the inline scheduler ran in this process.
        self.caught: dict[int, BaseException] = {}
        #: Results the cache gave its tasks, loaded already: the first reading hands them out.
        self.recalled: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"<sheepdog.Request {self.id} in {self.storage.dbfile}>"

    @property
    def config(self) -> Config:
        """The config the request was made with (read back from the database)."""
        if self._config is None:
            self._config = restore(self.storage.request_config(self.id))
        return self._config

    @functools.cached_property
    def certificate(self) -> bytes:
        """The certificate of the database's server, which the workers pin."""
        return tls.identity_for(self.storage)[0]

    @property
    def backend(self) -> Backend:
        """The scheduler's backend, rebuilt from the stored config in a later process."""
        if self._backend is None:
            self._backend = create(self.config)
        return self._backend

    # -- what the database keeps for later processes -----------------------

    def _meta(self, name: str) -> Optional[str]:
        stored = self.storage.meta(f"{name}:{self.id}")
        return stored.decode() if stored else None

    def remember_server(self, server: Server) -> None:
        """Keep the scheme and port the workers are given, for a later process to serve."""
        self.storage.set_meta_once(f"server:{self.id}", f"{server.scheme} {server.port}".encode())

    @property
    def port(self) -> Optional[int]:
        """The port the request's workers call back on."""
        return recorded_port(self.storage, self.id)

    @property
    def key_file(self) -> Optional[str]:
        return self._meta("key_file")

    def deliver_key(self) -> None:
        """Put the request's key where only its workers can read it, before a job is submitted.

        A backend whose workers end with the caller (local) removes the key with
        them; a later process that runs the request's tasks again delivers a new
        one (see :meth:`submit_job`).
        """
        if self.config.key_in_job_file:  # warned at submission (config.security_warnings)
            return
        path = self.backend.deliver_key(self.id, self.storage.request_secret(self.id) or "")
        self.storage.set_meta(f"key_file:{self.id}", path.encode())

    def withdraw_key(self) -> None:
        """Remove the request's key file: the request has ended or was cancelled."""
        path = self.key_file
        if path is None:
            return
        try:
            self.backend.withdraw_key(path)
        except Exception as error:  # the results are safe; say what is left behind
            log.warning("request %s: could not remove its key file %s: %s", self.id, path, error)

    # -- jobs ----------------------------------------------------------------

    def ensure_served(self) -> Optional[Server]:
        """A server of this process on the request's port, started if none is running.

        If another process already listens there (the one that submitted the
        request, or ``sheepdog serve``), the workers are served; this process
        then only watches, and None is returned.
        """
        try:
            return self._database.server(self.config, port=self.port)
        except OSError as error:
            log.info("request %s: not serving port %s here (%s); another process does",
                     self.id, self.port, error)
            return None

    def routes(self, server_port: int) -> list[str]:
        """The URLs workers try, in order: this machine directly, then a tunnel if asked."""
        config = self.config
        scheme = "https" if config.tls else "http"
        direct = f"{scheme}://{config.localhost or '127.0.0.1'}:{server_port}"
        if config.callback == "direct" or config.scheduler == "local":
            return [direct]
        try:
            host, port = self.backend.reverse_route(server_port) or (None, None)
        except Exception as error:
            if config.callback == "tunnel":
                raise
            log.warning("no tunnel through %s (%s); workers will only try %s directly",
                        config.host, error, direct)
            return [direct]
        tunnel = f"{scheme}://{host}:{port}"
        return [tunnel] if config.callback == "tunnel" else [direct, tunnel]

    def submit_job(self, n_workers: Optional[int] = None) -> str:
        """Start a job of workers that pull the request's pending tasks until none is left
        (of ``n_workers`` workers, or as many as the pending tasks need).

        The workers are recorded before the job is submitted, so that each is
        known from its first pull; if the scheduler refuses the job, they are
        recorded as never started. A backend that runs in the caller (``inline``)
        has the pending tasks run here and now instead, and no job is recorded.
        A request of a warm pool starts few workers at first (see ``pool.py``).
        """
        config, backend, storage = self.config, self.backend, self.storage
        if backend.runs_in_caller:  # the inline scheduler: the "job" is this thread
            self.caught.update(inline.run_pending(storage, self.id))
            return "inline"
        port = self.port
        if port is None:
            raise RuntimeError(f"request {self.id} has no server port recorded")
        # A tunnel through the head node, the key's delivery and the questions about the
        # cluster's slots each take a tenth of a second or two over SSH: side by side.
        with concurrent.futures.ThreadPoolExecutor(2, "sheepdog-submit") as preparing:
            routes = preparing.submit(self.routes, port)
            capacity = preparing.submit(backend.capacity)  # asked once, then kept
            if not config.key_in_job_file and (self.key_file is None or (
                    not backend.outlives_caller and not os.path.exists(self.key_file))):
                self.deliver_key()  # not yet, or the caller that delivered it has ended
            pending = self.progress().pending
            jobscript.compiled_modules()  # compiled once per process, while the cluster answers
            capacity.result()
            if n_workers is None:
                n_workers = (self.pool.first_workers(pending) if self.pool is not None
                             else choose_workers(pending, *backend.capacity(),
                                                 config.max_running))
            self.urls = routes.result()
        certificate = self.certificate if config.tls else None
        launch = storage.add_workers(self.id, n_workers)
        settings = WorkerSettings(
            request_id=self.id,
            urls=tuple(self.urls),
            certificate=certificate.decode() if certificate else None,
            key=(storage.request_secret(self.id) or "") if config.key_in_job_file else None,
            key_file=None if config.key_in_job_file else (self.key_file or ""),
            launch=launch,
            chunksize=config.chunksize,
            task_variable=backend.task_variable,
            python=(sys.version_info[0], sys.version_info[1]),
            memory_limit=backend.memory_limit(),
            walltime_seconds=backend.walltime_seconds(),
            kill_signals=tuple(backend.kill_signals),
            version_mismatch=config.version_mismatch,
            retry_seconds=config.retry_seconds,
            heartbeat_seconds=config.heartbeat_seconds,
        )
        script = jobscript.render(config.shell or "python3", backend.header(n_workers), settings)
        try:
            job_id = backend.submit(script, self.id, n_workers)
        except BaseException as error:
            storage.end_launch(self.id, launch, f"its job was never submitted: {error}")
            raise
        storage.add_job(self.id, job_id, launch, n_workers)
        if self.pool is not None:
            self.pool.record_job(job_id)
        log.info("request %s: job %s submitted (%d workers for %d tasks)",
                 self.id, job_id, n_workers, pending)
        return job_id

    # -- waiting and reading ---------------------------------------------------

    def progress(self) -> Progress:
        return self.storage.progress(self.id)

    def wait(self, timeout: Optional[float] = None, verbose: bool = False,
             link: Optional[str] = None) -> None:
        """Block until every task has finished (done, failed, lost or cancelled).

        While waiting it watches the scheduler and the heartbeats (see
        :meth:`follow`), from whichever process waits. ``verbose`` shows the
        progress in the display that suits where it runs (``progress.py``),
        with ``link`` (the live dashboard's) if given.
        """
        storage = self.storage
        display = progress_display(link=link) if verbose else None
        started = time.monotonic()
        delay = 0.02
        if not self.progress().complete:
            self.ensure_served()
        try:
            while True:
                seen = storage.change_count
                progress = self.follow()
                if display is not None:
                    display.update(progress)
                if progress.complete:
                    return
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(
                        f"request {self.id}: {progress.finished} of {progress.total} tasks "
                        f"finished after {timeout} s"
                    )
                storage.wait_for_change(seen, delay)
                delay = min(delay * 1.5, 0.5)
        finally:
            if display is not None:
                display.close()

    def follow(self) -> Progress:
        """One look at the request by whoever waits for it; the progress seen.

        ``wait``, the Executor and ``as_completed`` all follow a request
        through this one method; what it does is the :class:`Watcher`'s.
        """
        progress = self.watcher.follow()
        self._warn_about_versions()
        return progress

    def _warn_about_versions(self) -> None:
        """Warn, once per host and interpreter, about workers whose versions of Python or
        of a package the function uses by name differ from the caller's."""
        for report in self._database.version_reports.take(self.id):
            differences = report.differences()
            if differences and self.config.version_mismatch != "ignore":
                consequence = ("its tasks fail" if self.config.version_mismatch == "error"
                               else "its results may differ, or its tasks fail")
                log.warning("request %s: the worker on %s (%s) has other versions than the "
                            "caller: %s; %s (config key 'version_mismatch')", self.id,
                            report.host, report.python, "; ".join(differences), consequence)

    @property
    def ended(self) -> bool:
        """Whether the request has ended: every task finished and none will run again."""
        return self._ended

    def end(self) -> None:
        """The request has ended: remove its key file, once (a request of a warm pool
        keeps it while workers of its jobs may still start: its pool removes it)."""
        if not self._ended:
            self._ended = True
            if self.pool is None:
                self.withdraw_key()

    def results(self) -> list[tuple[tuple[Any, ...], Any]]:
        """``[(args, result), ...]`` in argument order; ``None`` where there is no result."""
        recalled, self.recalled = self.recalled, {}
        return [(_arguments(args), self._result(index, result, recalled) if state == DONE
                 else None)
                for index, (args, state, result)
                in enumerate(self.storage.results(self.id), 1)]

    def values(self) -> list[Any]:
        """The results alone, in argument order; ``None`` where there is no result
        (read and loaded ten thousand at a time: see ``storage/results.py``)."""
        recalled, self.recalled = self.recalled, {}
        if recalled and len(recalled) == self.storage.n_tasks(self.id):  # nothing else to read
            return [recalled[index] for index in range(1, len(recalled) + 1)]
        values: list[Any] = []
        unloadable: dict[int, str] = {}
        with contextlib.closing(self.storage.loaded_results(self.id)) as chunks:
            for chunk in chunks:  # closed at once if this stops early: it holds a read
                values += chunk.values
                unloadable.update(chunk.unloadable)
        for index, value in recalled.items():  # the very objects, loaded once already
            values[index - 1] = value
        for index, why in unloadable.items():  # once read: reading holds a transaction
            if index not in recalled:
                self._unloadable(index, why)
        return values

    def errors(self) -> list[tuple[tuple[Any, ...], str]]:
        """``[(args, error text), ...]`` for tasks that raised, were lost or were cancelled."""
        return [(_arguments(args), error) for args, _state, error in self.storage.errors(self.id)]

    def _result(self, index: int, payload: Optional[bytes | PayloadFile],
                recalled: dict[int, Any]) -> Any:
        """The loaded result (the one recalled, if it was), or None for one that cannot
        be loaded here (see :meth:`load_result`)."""
        if index in recalled:
            return recalled[index]
        loaded, value = self.load_result(index, payload)
        return value if loaded else None

    def load_result(self, index: int, payload: Optional[bytes | PayloadFile]) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, why)`` for a result that cannot be loaded here.

        Such a result becomes that task's error, so that a single result that
        needs, say, a module this process lacks costs that task alone, not
        every other result of the request.
        """
        loaded, value = serialisation.load_or_describe(payload_bytes(payload or b""))
        return (True, value) if loaded else (False, self._unloadable(index, value))

    def _unloadable(self, index: int, why: str) -> str:
        """Task ``index``'s result does not load here, for ``why``: it becomes the task's
        error (the reason, returned)."""
        reason = f"the result arrived but could not be loaded in this process: {why}"
        log.warning("request %s: task %s: %s", self.id, index, reason)
        self.storage.record_unloadable(self.id, index, reason)
        return reason

    def cancel(self) -> int:
        """Remove the request's jobs from the scheduler; return how many tasks were cancelled.

        The jobs of a warm pool serve other requests too: while another request of
        the pool has tasks open, they stay (a task of this one that runs now runs
        to its end, and its report is dropped), and the request's tasks are
        cancelled in the database, so that no worker takes them; otherwise the
        pool's jobs are removed, as a request's own would be.
        """
        if self.pool is not None:
            cancelled = self.storage.cancel_open(self.id, "cancelled by the user")
            if not any(member.id != self.id and not member.progress().complete
                       for member in self.pool.members()):
                self.pool.close()
            return cancelled
        for job in self.storage.jobs(self.id):
            try:
                self.backend.cancel(job.job_id)
            except Exception as error:  # the other jobs still deserve their cancel
                log.warning("request %s: could not cancel job %s: %s", self.id, job.job_id, error)
        self.withdraw_key()
        return self.storage.cancel_open(self.id, "cancelled by the user")


def recorded_port(storage: Storage, request_id: int) -> Optional[int]:
    """The port the workers of request ``request_id`` were given, if one was (as
    :meth:`Request.remember_server` keeps it)."""
    stored = storage.meta(f"server:{request_id}")
    return int(stored.split()[1]) if stored else None


def _arguments(payload: Optional[bytes | PayloadFile]) -> Any:
    """A task's loaded arguments, or a description of why they cannot be loaded here."""
    loaded, value = serialisation.load_or_describe(payload_bytes(payload or b""))
    return value if loaded else f"<arguments that cannot be loaded here: {value}>"
