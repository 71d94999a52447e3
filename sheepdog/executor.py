"""``sheepdog.Executor``: the cluster as a ``concurrent.futures.Executor``.

``submit(f, *args)`` returns a plain ``concurrent.futures.Future`` at once;
``as_completed``, ``wait`` and ``asyncio.wrap_future`` work on it as on any
other. Two threads of the executor do the rest, so that nothing the caller
runs (a script, a Jupyter kernel's event loop) is blocked:

- the *submitter* gathers the submits of a short window (``batch_seconds``,
  or ``max_batch`` of them) and sends those of one function out as one
  request, which is one array job;
- the *watcher* follows every request the executor sent (``completion.py``:
  workers, scheduler, retries) and settles each future as its task
  finishes: its value, or :class:`~sheepdog.TaskError`,
  :class:`~sheepdog.TaskLost` or ``CancelledError`` (``outcomes.py``). It
  sleeps until the server thread of this process stores something
  (``Storage.wait_for_change``).

``future.cancel()`` succeeds until the watcher has seen a worker take the
task; the task is then marked cancelled in the database, and no worker is
handed it. When every task of a request has
finished and some were cancelled, its jobs are removed from the scheduler.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional

from .wire import serialisation
from .backends.registry import backend_class
from .caller.completion import FIRST_DELAY, LONGEST_DELAY, TaskFollower
from .config import Config, resolve_with_origins
from .caller import remembering
from .caller.outcomes import outcome
from .caller.request import Request
from .caller.session import Session, function_name

if TYPE_CHECKING:
    from .executor_options import ExecutorOptions

log = logging.getLogger(__name__)

#: Seconds the submitter waits for more submits before it sends a batch out.
BATCH_SECONDS = 0.05
#: Submits that are sent out at once, without waiting for the window to end.
MAX_BATCH = 10_000


class _Submission(NamedTuple):
    function: Callable[..., Any]
    function_blob: bytes
    arguments: Any  # serialised, see serialisation.dumps_call
    future: "Future[Any]"
    config: Config  # its request's: the executor's, with Executor.map's chunksize or options


@dataclass
class _Followed:
    """A request the executor sent, and the future of each of its tasks by index."""

    request: Request
    follower: TaskFollower
    futures: dict[int, "Future[Any]"]
    cancelled: set[int] = field(default_factory=set)


class Executor(concurrent.futures.Executor):
    """Runs ``f(*args)`` as tasks of array jobs and gives a ``Future`` for each.

    ``config`` and ``ns`` are those of :func:`sheepdog.map`. The executor
    uses ``session`` when one is given, and otherwise a session of its own,
    which :meth:`shutdown` closes. Use it as a context manager: leaving the
    ``with`` block waits for every future; leaving it by an exception (Ctrl-C)
    first cancels the futures whose tasks have not started.
    """

    def __init__(self, config: Optional[Mapping[str, Any]] = None,
                 ns: Optional[Mapping[str, Any]] = None, *, session: Optional[Session] = None,
                 batch_seconds: float = BATCH_SECONDS, max_batch: int = MAX_BATCH) -> None:
        self.config, self._origins = resolve_with_origins(config)
        self.ns = ns
        self.batch_seconds = batch_seconds
        self.max_batch = max_batch
        #: The scheduler runs tasks in this thread (``inline``): each submit runs at once.
        self._inline: bool = backend_class(self.config.scheduler).runs_in_caller
        self._session = session if session is not None else Session()
        self._owns_session = session is None
        self._lock = threading.Condition()
        self._queue: list[_Submission] = []
        self._function_blobs: dict[int, bytes] = {}  # id(function) -> blob, for the queue
        self._submitting = False  # the submitter holds a batch it has not registered yet
        self._followed: dict[int, _Followed] = {}  # request id -> what the watcher follows
        self._task_of: dict["Future[Any]", tuple[int, int]] = {}  # -> (request id, index)
        self._notified: set["Future[Any]"] = set()  # set_running_or_notify_cancel was called
        self._submitted = 0
        self._shut_down = False
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return (f"<sheepdog.Executor {self.config.scheduler} {len(self._followed)} requests "
                f"followed{', shut down' if self._shut_down else ''}>")

    # -- submitting ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        """Schedule ``fn(*args, **kwargs)``; its future, at once.

        The function and the arguments are serialised here, so that what
        cannot travel raises here (:class:`~sheepdog.SerialisationError`).
        Keyword arguments travel with the positional ones, task by task.
        """
        return self._submit(fn, [(args, kwargs)], self.config)[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """``fn(*a)`` for ``a`` in ``zip(*iterables)``, in order; as ``concurrent.futures``.

        Every call is submitted at once, so they go out as one array job.
        ``timeout`` counts from this call: a result not ready by then raises
        ``TimeoutError``. ``chunksize`` above 1 is how many of these tasks a
        worker takes at a time (the config's ``chunksize``, for this map's
        request alone); 1, the default, leaves that to the config (by default
        sheepdog sizes each worker's batches itself). Less than 1 is a
        ``ValueError``.
        """
        return self._map(fn, iterables, timeout, chunksize, self.config)

    def options(self, **resources: Any) -> "ExecutorOptions":
        """An executor whose submits ask for ``resources`` (``cores=4, memory="8G"``...;
        see docs/resources.rst) over this one's config; checked here.

        It shares this executor's session and threads; its requests never share
        workers with those of other resources.
        """
        from .executor_options import ExecutorOptions, with_resources

        return ExecutorOptions(self, with_resources(self.config, resources))

    def _map(self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...],
             timeout: Optional[float], chunksize: int, config: Config) -> Iterator[Any]:
        """:meth:`map` with ``config`` for its request."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = self._submit(fn, [(args, {}) for args in zip(*iterables)],
                               config if chunksize == 1 else replace(config, chunksize=chunksize))
        return _results_in_order(futures, deadline)

    def _submit(self, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                config: Config) -> "list[Future[Any]]":
        """Serialise the ``(args, kwargs)`` of each call of ``fn`` and queue it; their futures."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._lock:
            self._refuse_after_shutdown()
            first = self._submitted
            self._submitted += len(calls)
            function_blob = self._function_blobs.get(id(fn))
        arguments = [serialisation.dumps_call(position, args, kwargs)
                     for position, (args, kwargs) in enumerate(calls, first)]
        if function_blob is None:
            function_blob = serialisation.dumps_function(fn, self.ns)
        futures: "list[Future[Any]]" = [Future() for _ in calls]
        if self._inline:
            self._run_inline(function_blob, arguments, futures, config, function_name(fn),
                             remembering.function_key(config, fn, self.ns))
            return futures
        with self._lock:
            self._refuse_after_shutdown()
            function_blob = self._function_blobs.setdefault(id(fn), function_blob)
            self._queue += [_Submission(fn, function_blob, blob, future, config)
                            for blob, future in zip(arguments, futures)]
            self._start_threads()
            self._lock.notify_all()
        for future in futures:
            future.add_done_callback(self._on_done)
        return futures

    def _run_inline(self, function_blob: bytes, arguments: list[Any],
                    futures: "list[Future[Any]]", config: Config,
                    name: tuple[str, str], computation: Optional[bytes]) -> None:
        """The inline scheduler: run the calls here and now, in order, as one request."""
        request = self._session.submit_serialised(function_blob, arguments, config, name=name,
                                                  computation=computation)
        changes = request.storage.task_changes(request.id, 0.0, 1, False)
        for change in sorted(changes, key=lambda change: change.task):
            future = futures[change.task - 1]
            if future.set_running_or_notify_cancel():
                _settle(future, *outcome(request, change))

    def _refuse_after_shutdown(self) -> None:
        if self._shut_down:
            raise RuntimeError("this sheepdog Executor has been shut down: make a new one "
                               "to submit more")

    def _start_threads(self) -> None:
        """Start the submitter and the watcher on the first submit (under the lock)."""
        if self._threads:
            return
        self._threads = [threading.Thread(target=target, name=f"sheepdog-executor-{name}",
                                          daemon=True)
                         for name, target in (("submitter", self._submit_batches),
                                              ("watcher", self._watch))]
        for thread in self._threads:
            thread.start()

    def _submit_batches(self) -> None:
        """The submitter: send out what was submitted in each window, until shutdown."""
        while True:
            with self._lock:
                while not self._queue and not self._shut_down:
                    self._lock.wait()
                if not self._queue:
                    return
                # Workers of a warm pool wait for work: a lone submit goes out at once.
                window = 0.0 if self._pool_is_warm() else self.batch_seconds
                due = time.monotonic() + window
                while (not self._shut_down and len(self._queue) < self.max_batch
                       and time.monotonic() < due):
                    self._lock.wait(due - time.monotonic())
                batch, self._queue, self._function_blobs = self._queue, [], {}
                self._submitting = True
            try:
                self._send(batch)
            finally:
                with self._lock:
                    self._submitting = False
                    self._lock.notify_all()

    def _pool_is_warm(self) -> bool:
        try:
            return self._session.pool_is_warm(self.config)
        except Exception:  # the window is an optimisation: a failure here costs 50 ms
            log.debug("could not tell whether the pool is warm", exc_info=True)
            return False

    def _send(self, batch: list[_Submission]) -> None:
        """One request per function and config (``Executor.map``'s chunksize, ``options``) in
        ``batch``; their futures go to the watcher."""
        by_function: dict[tuple[int, Config], list[_Submission]] = {}
        for submission in batch:
            by_function.setdefault((id(submission.function), submission.config),
                                   []).append(submission)
        for (_function, config), submissions in by_function.items():
            wanted = [submission for submission in submissions
                      if not submission.future.cancelled()]
            if not wanted:
                continue
            try:
                request = self._session.submit_serialised(
                    wanted[0].function_blob, [s.arguments for s in wanted],
                    config, self._origins,
                    function_name(wanted[0].function),
                    remembering.function_key(config, wanted[0].function, self.ns))
            except Exception as error:  # the scheduler's refusal is each future's error
                for submission in wanted:
                    _settle(submission.future, None, error)
                continue
            followed = _Followed(request, TaskFollower(request),
                                 {index: s.future for index, s in enumerate(wanted, 1)})
            with self._lock:
                self._followed[request.id] = followed
                for index, future in followed.futures.items():
                    self._task_of[future] = (request.id, index)
                cancelled_meanwhile = [index for index, future in followed.futures.items()
                                       if future.cancelled()]
                self._lock.notify_all()
            self._cancel_tasks(followed, cancelled_meanwhile)

    # -- cancelling ---------------------------------------------------------

    def _on_done(self, future: "Future[Any]") -> None:
        """A future has finished; if it was cancelled, its task must not run."""
        if not future.cancelled():
            return
        with self._lock:
            self._notify(future)
            request_id, index = self._task_of.get(future, (None, 0))
            followed = self._followed.get(request_id) if request_id is not None else None
        if followed is not None:
            self._cancel_tasks(followed, [index])

    def _notify(self, future: "Future[Any]") -> bool:
        """Mark a future running, or let its waiters know it was cancelled; once per future.

        ``concurrent.futures.wait`` and ``as_completed`` see a cancelled
        future only once this has been called. Under the lock.
        """
        if future in self._notified:
            return False
        self._notified.add(future)
        return future.set_running_or_notify_cancel()

    def _cancel_tasks(self, followed: _Followed, indices: list[int]) -> None:
        """Mark still-pending tasks cancelled in the database, so that no worker runs them."""
        if not indices:
            return
        moved = followed.request.storage.cancel_tasks(
            followed.request.id, indices, "its future was cancelled")
        with self._lock:
            followed.cancelled.update(moved)
        log.info("request %s: tasks %s cancelled with their futures", followed.request.id, moved)

    # -- watching -------------------------------------------------------------

    def _watch(self) -> None:
        """The watcher: settle futures as their tasks finish, until shutdown and the last one."""
        storage = self._session.storage(self.config.dbfile)
        delay = FIRST_DELAY
        while True:
            with self._lock:
                while not self._followed and not self._all_sent():
                    self._lock.wait()
                if not self._followed:
                    break
                followed = list(self._followed.values())
            seen = storage.change_count
            settled = sum(self._look(entry) for entry in followed)
            if settled:
                delay = FIRST_DELAY
            else:
                storage.wait_for_change(seen, delay)
                delay = min(delay * 1.5, LONGEST_DELAY)
        if self._owns_session:
            self._session.close()

    def _all_sent(self) -> bool:
        """Shut down, and nothing is left to send out (under the lock)."""
        return self._shut_down and not self._queue and not self._submitting

    def _look(self, followed: _Followed) -> int:
        """Follow one request once; how many of its futures this settled."""
        request = followed.request
        try:
            started, finished = followed.follower.look()
        except Exception as problem:  # CallbackError, a refused resubmission: every task's end
            log.warning("request %s: %s", request.id, problem)
            for future in followed.futures.values():
                _settle(future, None, problem)
            self._forget(followed)
            return len(followed.futures)
        with self._lock:
            for index in started:
                future = followed.futures[index]
                if not future.done():
                    self._notify(future)
        for change in finished:
            value, error = outcome(request, change)
            _settle(followed.futures[change.task], value, error)
        if followed.follower.complete:
            self._forget(followed)
            if followed.cancelled:
                request.cancel()  # what is left of its jobs holds the scheduler in vain
        return len(finished)

    def _forget(self, followed: _Followed) -> None:
        with self._lock:
            self._followed.pop(followed.request.id, None)
            for future in followed.futures.values():
                self._task_of.pop(future, None)
                self._notified.discard(future)
            self._lock.notify_all()

    # -- shutting down ----------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more submits; send out what was submitted at once.

        ``cancel_futures`` cancels every future whose task has not started.
        ``wait`` blocks until every future has settled; the executor's own
        session is then closed (without ``wait``, the watcher closes it after
        the last future).
        """
        with self._lock:
            self._shut_down = True
            self._lock.notify_all()
            futures = [submission.future for submission in self._queue]
            futures += [future for followed in self._followed.values()
                        for future in followed.futures.values()]
            threads = list(self._threads)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if not threads and self._owns_session:
            self._session.close()
        if wait:
            for thread in threads:
                thread.join()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> Optional[bool]:
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return None


def _settle(future: "Future[Any]", value: Any, error: Optional[BaseException]) -> None:
    """Give a future its value or exception, unless it was cancelled meanwhile."""
    if future.done():
        return
    try:
        if error is None:
            future.set_result(value)
        elif not (isinstance(error, CancelledError) and future.cancel()):
            future.set_exception(error)  # a running future cannot be cancelled: it raises
    except concurrent.futures.InvalidStateError:
        pass  # the caller cancelled it between the check and now


def _results_in_order(futures: "list[Future[Any]]", deadline: Optional[float]) -> Iterator[Any]:
    """Each future's result in turn, by ``deadline`` (a ``time.monotonic()``) if given; the
    futures not yet reached are cancelled when the iterator is closed or raises, as
    ``concurrent.futures.Executor.map`` does."""
    pending = list(reversed(futures))
    try:
        while pending:
            future = pending.pop()
            try:
                if deadline is None:
                    yield future.result()
                else:
                    yield future.result(max(0.0, deadline - time.monotonic()))
            finally:
                future.cancel()  # settled: a no-op; else (timed out, closed) it must not run
    finally:
        for future in pending:
            future.cancel()
