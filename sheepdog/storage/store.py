"""The one object the rest of sheepdog holds for a database: :class:`Storage`.

Storage opens a database file (checking that it and the files beside it are
the caller's alone, see ``file_safety.py``, and bringing its schema up to
date, see ``schema.py``; or, read-only, changing nothing, see
``read_only.py``) and builds the parts that read and write it over one
shared :class:`~sheepdog.storage.connection.Database`: requests, tasks,
leases and summaries. Its methods are theirs: callers need not know which
part holds which rows.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Generator, Iterable, Iterator, Mapping, Optional, Sequence, Union

from . import read_only as reading
from .connection import Database, DiskFullError, StorageError
from .file_safety import (
    UnsafePathError,
    check_database_files,
    check_directory,
    check_companions,
    private_directory,
    private_file,
)
from .housekeeping import Freed, Housekeeping
from .leases import AskAgain, Leases, WorkerEnd
from .memo import Computation, EarlierResult, Memo
from .outputs import STREAMS
from .payloads import PayloadDirectory, PayloadFile
from .requests import Job, Requests
from .results import LoadedChunk, ResultChunks
from .schema import SCHEMA_VERSION, migrate
from .summaries import RequestSummary, Summaries, TaskChange, TaskLog, TaskSummary
from .tasks import Progress, Tasks

#: What callers import from here (their classes live in the parts).
__all__ = ["DiskFullError", "Progress", "SCHEMA_VERSION", "STREAMS", "Storage", "StorageError"]


#: Database files this process has opened, by (device, inode), however their paths
#: are spelt: from then on they are checked without a descriptor of their own (see
#: ``file_safety.py``), since closing one would drop the locks of the connections open
#: on them. A file deleted and made again is a new inode, and so a first open again.
_opened: set[tuple[int, int]] = set()
_opened_lock = threading.Lock()


def _identity(dbfile: str) -> Optional[tuple[int, int]]:
    try:
        status = os.stat(dbfile)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _opened_here(dbfile: str) -> bool:
    """Whether a connection of this process may have ``dbfile`` open."""
    identity = _identity(dbfile)
    with _opened_lock:
        return identity is not None and identity in _opened


def _note_opened(dbfile: str) -> None:
    """From now on, connections of this process may have ``dbfile`` open."""
    identity = _identity(dbfile)
    if identity is not None:
        with _opened_lock:
            _opened.add(identity)


def _check_files(dbfile: str, payload_root: str) -> None:
    """Check (and on first open, create or tighten) the files of ``dbfile``."""
    check_directory(dbfile)
    check_companions(dbfile)
    if _opened_here(dbfile):
        check_database_files(dbfile, (), (payload_root,), follow_own_link=True)
        return
    private_file(dbfile)
    for suffix in ("-wal", "-shm"):
        private_file(dbfile + suffix, create=False)
    private_directory(payload_root, create=False)
    _note_opened(dbfile)


class Storage:
    """One SQLite database file; safe to share between threads of one process.

    Each method is that of the part it names (:attr:`requests`,
    :attr:`tasks`, :attr:`leases`, :attr:`summaries`, :attr:`memo`,
    :attr:`housekeeping`), where it is documented.
    """

    def __init__(self, dbfile: str | os.PathLike[str], read_only: bool = False) -> None:
        self.dbfile = os.path.abspath(os.fspath(dbfile))
        #: Whether this handle only reads (see ``read_only.py``): nothing is created,
        #: tightened or migrated, and a file that is not a sheepdog database is refused.
        self.read_only = read_only
        #: Large payloads live here, one directory per request.
        self.payloads = PayloadDirectory(self.dbfile + ".payloads")
        self.database = Database(self.dbfile, self.payloads, read_only)
        if read_only:
            self._open_to_read()
        else:
            try:
                _check_files(self.dbfile, self.payloads.root)
            except UnsafePathError as error:
                raise StorageError(str(error)) from error
            migrate(self.database)
            self.payloads.remove_leftovers()
        self.memo = Memo(self.database)
        self.requests = Requests(self.database, self.memo)
        self.tasks = Tasks(self.database, self.requests)
        self.leases = Leases(self.database)
        self.summaries = Summaries(self.database, self.requests)
        self.result_chunks = ResultChunks(self.database, self.requests)
        self.housekeeping = Housekeeping(self.database)

    def _open_to_read(self) -> None:
        """Check the files and the schema, changing nothing (see ``read_only.py``)."""
        try:
            reading.check_files(self.dbfile, self.payloads.root,
                                opened_here=_opened_here(self.dbfile))
            reading.check_connection(self.database)
        except StorageError:
            self.database.close()
            raise
        _note_opened(self.dbfile)

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs on exit)."""
        self.database.close()

    # -- changes (Database) ------------------------------------------------

    @property
    def change_count(self) -> int:
        return self.database.change_count

    def wait_for_change(self, since: int, timeout: float) -> None:
        self.database.wait_for_change(since, timeout)

    # -- requests (Requests) -----------------------------------------------

    def create_request(self, function: bytes, arguments: Iterable[bytes | Sequence[Any]],
                       secret: str, backend: str, config: Mapping[str, Any] | None = None,
                       function_name: tuple[str, str] | None = None,
                       computation: Computation | None = None) -> int:
        return self.requests.create_request(function, arguments, secret, backend, config,
                                            function_name, computation)

    def request_secret(self, request_id: int) -> str | None:
        return self.requests.request_secret(request_id)

    def function(self, request_id: int) -> bytes | None:
        return self.requests.function(request_id)

    def n_tasks(self, request_id: int) -> int:
        return self.requests.n_tasks(request_id)

    def request_config(self, request_id: int) -> dict[str, Any]:
        return self.requests.request_config(request_id)

    def request_ids(self) -> list[int]:
        return self.requests.request_ids()

    def open_requests(self) -> list[int]:
        return self.requests.open_requests()

    def add_job(self, request_id: int, job_id: str, launch: int, n_workers: int) -> None:
        self.requests.add_job(request_id, job_id, launch, n_workers)

    def jobs(self, request_id: int) -> list[Job]:
        return self.requests.jobs(request_id)

    def meta(self, key: str) -> bytes | None:
        return self.requests.meta(key)

    def set_meta(self, key: str, value: bytes) -> None:
        self.requests.set_meta(key, value)

    def set_meta_once(self, key: str, value: bytes) -> bytes:
        return self.requests.set_meta_once(key, value)

    # -- tasks (Tasks) -----------------------------------------------------

    def task_arguments(self, request_id: int, indices: Sequence[int]
                       ) -> dict[int, bytes | PayloadFile]:
        return self.tasks.task_arguments(request_id, indices)

    def task_exists(self, request_id: int, index: int) -> bool:
        return self.tasks.task_exists(request_id, index)

    def new_staging_file(self, request_id: int, index: int) -> tuple[int, str]:
        return self.tasks.new_staging_file(request_id, index)

    def record_reports(self, request_id: int, reports: Sequence[tuple[int, bool, Any]],
                       outputs: Sequence[tuple[int, str, Any]] = (),
                       exceptions: Sequence[tuple[int, Any]] = (),
                       begun: Sequence[int] = (), ran: Sequence[tuple[int, float]] = ()) -> int:
        return self.tasks.record_reports(request_id, reports, outputs, exceptions, begun, ran)

    def task_exception(self, request_id: int, index: int) -> Optional[bytes]:
        return self.tasks.task_exception(request_id, index)

    def record_unloadable(self, request_id: int, index: int, reason: str) -> bool:
        return self.tasks.record_unloadable(request_id, index, reason)

    def record_lost(self, request_id: int, index: int, reason: str,
                    retryable: bool = False) -> bool:
        return self.tasks.record_lost(request_id, index, reason, retryable)

    def lose_open(self, request_id: int, reason: str) -> int:
        return self.tasks.lose_open(request_id, reason)

    def cancel_open(self, request_id: int, reason: str) -> int:
        return self.tasks.cancel_open(request_id, reason)

    def cancel_tasks(self, request_id: int, indices: Sequence[int], reason: str) -> list[int]:
        return self.tasks.cancel_tasks(request_id, indices, reason)

    def requeue(self, request_id: int, max_attempts: int, failed_too: bool) -> list[int]:
        return self.tasks.requeue(request_id, max_attempts, failed_too)

    def progress(self, request_id: int) -> Progress:
        return self.tasks.progress(request_id)

    def open_indices(self, request_id: int) -> list[int]:
        return self.tasks.open_indices(request_id)

    def results(self, request_id: int, with_arguments: bool = True
                ) -> list[tuple[bytes | PayloadFile | None, str, bytes | PayloadFile | None]]:
        return self.tasks.results(request_id, with_arguments)

    def loaded_results(self, request_id: int) -> Generator[LoadedChunk, None, None]:
        return self.result_chunks.loaded(request_id)

    def errors(self, request_id: int) -> list[tuple[bytes | PayloadFile, str, str]]:
        return self.tasks.errors(request_id)

    def task_logs(self, request_id: int, index: Optional[int] = None) -> list[TaskLog]:
        return self.tasks.task_logs(request_id, index)

    # -- workers and their leases (Leases) -----------------------------------

    def add_workers(self, request_id: int, n_workers: int) -> int:
        return self.leases.add_workers(request_id, n_workers)

    def end_launch(self, request_id: int, launch: int, reason: str) -> None:
        self.leases.end_launch(request_id, launch, reason)

    def pull(self, request_id: int, worker: str, seq: int, size: int, least: int = 1,
             stay: bool = False) -> Union[list[int], AskAgain, None]:
        return self.leases.pull(request_id, worker, seq, size, least, stay)

    def hand_over(self, request_id: int, worker: str, seq: int, to_request: int
                  ) -> Optional[str]:
        return self.leases.hand_over(request_id, worker, seq, to_request)

    def leave(self, request_id: int, worker: str, reason: str) -> bool:
        return self.leases.leave(request_id, worker, reason)

    def live_worker_count(self, request_ids: list[int]) -> int:
        return self.leases.live_worker_count(request_ids)

    def pending_counts(self, request_ids: list[int]) -> dict[int, int]:
        return self.leases.pending_counts(request_ids)

    def live_counts(self, request_ids: list[int]) -> dict[int, int]:
        return self.leases.live_counts(request_ids)

    def finished_count(self, request_ids: list[int]) -> int:
        return self.leases.finished_count(request_ids)

    def lose_held(self, request_id: int, worker: str, batch: int, index: int,
                  reason: str) -> bool:
        return self.leases.lose_held(request_id, worker, batch, index, reason)

    def release(self, request_id: int, worker: str, batch: int, indices: list[int]
                ) -> list[int]:
        return self.leases.release(request_id, worker, batch, indices)

    def worker_heartbeat(self, request_id: int, worker: str) -> bool:
        return self.leases.worker_heartbeat(request_id, worker)

    def worker_kill_notice(self, request_id: int, worker: str) -> bool:
        return self.leases.worker_kill_notice(request_id, worker)

    def live_workers(self, request_id: int) -> list[tuple[str, int, int]]:
        return self.leases.live_workers(request_id)

    def any_worker_alive(self, request_id: int) -> bool:
        return self.leases.any_worker_alive(request_id)

    def newest_launch_ends(self, request_id: int) -> list[WorkerEnd]:
        return self.leases.newest_launch_ends(request_id)

    def end_worker(self, request_id: int, worker: str, reason: str, retryable: bool,
                   warned: str = "") -> list[int]:
        return self.leases.end_worker(request_id, worker, reason, retryable, warned)

    def lose_silent(self, request_id: int, silent_since: float, reason: str) -> list[int]:
        return self.leases.lose_silent(request_id, silent_since, reason)

    # -- remembered computations (Memo) ----------------------------------------

    def earlier_results(self, function_digest: bytes, keys: Sequence[bytes]
                        ) -> list[EarlierResult]:
        return self.memo.earlier_results(function_digest, keys)

    def remembered(self, request_id: int) -> int:
        return self.memo.remembered(request_id)

    # -- tidying (Housekeeping) -----------------------------------------------

    def request_sizes(self, request_ids: Optional[Sequence[int]] = None) -> dict[int, int]:
        return self.housekeeping.request_sizes(request_ids)

    def removable_before(self, created_before: float, keep_cached: bool) -> list[int]:
        return self.housekeeping.removable_before(created_before, keep_cached)

    def remove_requests(self, request_ids: Sequence[int]) -> Freed:
        return self.housekeeping.remove(request_ids)

    # -- summaries (Summaries) -----------------------------------------------

    def request_summaries(self, request_id: Optional[int] = None) -> list[RequestSummary]:
        return self.summaries.request_summaries(request_id)

    def dashboard_tasks(self, request_id: int, offset: int = 0, limit: int = 1000
                        ) -> list[TaskSummary]:
        return self.summaries.dashboard_tasks(request_id, offset, limit)

    def dashboard_durations(self, request_id: int) -> list[float]:
        return self.summaries.dashboard_durations(request_id)

    def dashboard_finishes(self, request_id: int, since: float, width: float
                           ) -> dict[int, int]:
        return self.summaries.dashboard_finishes(request_id, since, width)

    def dashboard_failures(self, request_id: int, limit: int) -> list[TaskLog]:
        return self.summaries.dashboard_failures(request_id, limit)

    def argument_reprs(self, request_id: int, indices: Sequence[int]) -> dict[int, str]:
        return self.summaries.argument_reprs(request_id, indices)

    def error_tails(self, request_id: int, limit: int) -> list[tuple[int, str]]:
        return self.summaries.error_tails(request_id, limit)

    def task_changes(self, request_id: int, since: float, max_attempts: int,
                     failed_too: bool) -> list[TaskChange]:
        return self.summaries.task_changes(request_id, since, max_attempts, failed_too)
