"""The ``inline`` scheduler's work: a request's tasks run here, in this thread, in order.

For debugging: ``breakpoint()`` and debuggers work inside the function, and
the traceback of its exception is the real one, as with submitit's
``DebugExecutor``. What a worker would do is done the same way: the function
and each task's arguments are loaded from the very bytes a worker would be
sent (so what would not travel fails here too), and each outcome is stored
in the database as a worker's report would be, with the traceback text and
the pickled exception (``wire/failures.py``), so that ``get_results``,
``get_errors``, the CLI and the dashboard read it like any other request.
What is not done: no job file, no server, no key, no separate process, and
no output tails (what the task prints goes to this process's own streams).

:meth:`Request.submit_job` calls :func:`run_pending` when the backend runs
in the caller (``backends/inline.py``), whether for the first time or for a
retry. Ctrl-C, or quitting the debugger, stops the run: the tasks not yet
run are cancelled, and the interrupt goes on.
"""

from __future__ import annotations

import bdb
import logging
from typing import Any, Callable

from ..storage import Storage
from ..storage.payloads import payload_bytes
from ..wire import serialisation
from ..wire.failures import describe_failure, dumps_exception, error_bytes
from ..wire.protocol import Buffer

log = logging.getLogger(__name__)

#: What stops an inline run instead of being a task's error: the user's own stop.
_STOPS = (KeyboardInterrupt, bdb.BdbQuit)


def run_pending(storage: Storage, request_id: int) -> dict[int, BaseException]:
    """Run every pending task of the request here, in order; the exceptions they raised, by index.

    The exceptions are the live ones, with their tracebacks, for the caller
    to raise as they are.
    """
    indices = storage.open_indices(request_id)
    caught: dict[int, BaseException] = {}
    if not indices:
        return caught
    try:
        function = serialisation.loads_function(storage.function(request_id) or b"")
    except _STOPS:
        raise
    except BaseException as error:  # noqa: B902 - as a worker would: every task says why
        problem = "the function could not be loaded:\n" + describe_failure(error)
        storage.record_reports(request_id, [(i, True, error_bytes(problem)) for i in indices])
        return caught
    arguments = storage.task_arguments(request_id, indices)
    try:
        for index in indices:
            failure = _run_one(storage, request_id, index, function,
                               payload_bytes(arguments.pop(index)))
            if failure is not None:
                caught[index] = failure
    except _STOPS:
        cancelled = storage.cancel_open(request_id, "the inline run was interrupted")
        log.info("request %s: inline run interrupted; %d tasks cancelled", request_id, cancelled)
        raise
    return caught


def _run_one(storage: Storage, request_id: int, index: int, function: Callable[..., Any],
             payload: Buffer) -> BaseException | None:
    """Run one task and store its report; the exception it raised, if it did."""
    try:
        args, kwargs = serialisation.call_arguments(serialisation.loads(payload))
    except _STOPS:
        raise
    except BaseException as error:  # noqa: B902
        _report(storage, request_id, index, "the arguments could not be loaded:\n"
                + describe_failure(error))
        return None
    try:
        result = function(*args, **kwargs)
    except _STOPS:
        raise
    except BaseException as error:  # noqa: B902 - SystemExit from f is the user's error too
        # The traceback starts at the user's function, as a worker's does.
        storage.record_reports(
            request_id, [(index, True, error_bytes(describe_failure(error, skip_frames=1)))],
            exceptions=[(index, dumps_exception(error))])
        return error
    try:
        stored = serialisation.dumps(result)
    except BaseException as error:  # noqa: B902
        _report(storage, request_id, index, "the result could not be serialised:\n"
                + describe_failure(error))
        return None
    storage.record_reports(request_id, [(index, False, stored)])
    return None


def _report(storage: Storage, request_id: int, index: int, problem: str) -> None:
    storage.record_reports(request_id, [(index, True, error_bytes(problem))])
