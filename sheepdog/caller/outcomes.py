"""What a finished task comes to on the caller's side: its value, or an exception.

A future's ``result()``, :func:`sheepdog.as_completed` and ``map(...,
errors="raise")`` give a task's value when it ran to the end, and otherwise
raise:

- the task's own exception, when it raised one and that exception could be
  rebuilt here: its worker sends it pickled beside the traceback text (see
  ``wire/failures.py``), so built-in exceptions, the user's own classes
  (shipped by value) and those of installed libraries come back as they were,
  and ``except ValueError:`` works as it would around a local call. The
  remote traceback is attached as its ``__cause__``, a :class:`RemoteTraceback`
  that holds the text (and the task's output), so Python's own traceback
  printing shows it above the exception. (With the ``inline`` scheduler the
  exception raised is the very one the function raised, with its real
  traceback.)
- :class:`TaskError`, when the exception cannot be rebuilt here (it could not
  be pickled on the worker, or not loaded here), or the task failed otherwise
  (its function or arguments could not be loaded on the worker, its result
  could not be serialised): it says why, and carries the traceback text;
- :class:`TaskLost`: the task ended without reporting (its process was
  killed, its node died, the scheduler removed it) and will not be retried;
- ``concurrent.futures.CancelledError``: the task was cancelled.
"""

from __future__ import annotations

import builtins
import re
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..storage.states import CANCELLED, DONE, FAILED, LOST
from ..storage.outputs import with_output
from ..storage.summaries import TaskChange
from ..wire import serialisation

if TYPE_CHECKING:
    from .request import Request

#: The states a task does not leave unless it is retried.
FINISHED_STATES = (DONE, FAILED, LOST, CANCELLED)

#: The last line of a Python traceback: ``Name: message``, or ``Name`` alone.
_EXCEPTION_LINE = re.compile(r"(?P<name>[A-Za-z_][\w.<>]*)(?:: (?P<message>.*))?")


class RemoteTraceback(Exception):
    """The traceback of a task's exception on its worker: the ``__cause__`` of the exception raised.

    ``traceback`` is the text the worker reported, ``output`` the end of what
    the task wrote, by stream; ``request_id`` and ``index`` name the task.
    Printed, it shows the text, so a traceback of the caller shows the
    worker's above it (as ``concurrent.futures.ProcessPoolExecutor`` does).
    """

    def __init__(self, request_id: int, index: int, traceback: str,
                 output: Optional[Mapping[str, str]] = None) -> None:
        self.request_id = request_id
        self.index = index
        self.traceback = traceback
        self.output = dict(output or {})
        super().__init__(request_id, index, traceback, self.output)

    def __str__(self) -> str:
        return (f"task {self.index} of request {self.request_id} on its worker:\n\"\"\"\n"
                f"{with_output(self.traceback, self.output)}\n\"\"\"")


class TaskError(Exception):
    """A task failed on its worker, and its own exception cannot be raised here.

    ``index`` is the task's 1-based position in its request; ``remote_traceback``
    the traceback the worker reported; ``output`` the end of what the task
    wrote, by stream (``"stdout"``, ``"stderr"``, or both in one), when it
    wrote anything; ``why`` why the task's exception could not be rebuilt
    here (it could not be pickled on the worker, or not loaded here), or None
    when the task failed otherwise (its function or arguments could not be
    loaded on the worker, its result could not be serialised).
    ``exception_type`` is the name on the traceback's last line
    (``"ZeroDivisionError"``, ``"mymodule.MyError"``), or None when it has
    none. ``exception`` is an instance of that exception rebuilt from the
    text when it is one of Python's built-in exceptions, and None otherwise;
    it is also the ``__cause__``, so a printed traceback shows it. The
    message holds the reason, the traceback and the output.
    """

    def __init__(self, index: int, remote_traceback: str,
                 output: Optional[Mapping[str, str]] = None, why: Optional[str] = None) -> None:
        self.index = index
        self.remote_traceback = remote_traceback
        self.output = dict(output or {})
        self.why = why
        self.exception_type, self.exception = _rebuild(remote_traceback)
        self.__cause__ = self.exception
        what = self.exception_type or "an error"
        because = f", which cannot be raised here: {why}" if why else ""
        super().__init__(f"task {index} raised {what} on its worker{because}; its traceback:\n"
                         f"{with_output(remote_traceback, self.output)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.index, self.remote_traceback, self.output, self.why)


class TaskLost(Exception):
    """A task ended without reporting, and is not retried (see ``retries``).

    ``reason`` says what sheepdog knows of its end: the scheduler's word, the
    signal that killed it, the silence of its heartbeats, and where its log is.
    """

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"task {index} was lost: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.index, self.reason)


def _rebuild(remote_traceback: str) -> tuple[Optional[str], Optional[BaseException]]:
    """The exception's name on a traceback's last line, and a built-in one rebuilt."""
    if "Traceback (most recent call last)" not in remote_traceback:
        return None, None
    lines = [line for line in remote_traceback.splitlines() if line.strip()]
    match = _EXCEPTION_LINE.fullmatch(lines[-1]) if lines else None
    if match is None:
        return None, None
    name, message = match["name"], match["message"]
    kind = getattr(builtins, name, None)
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        return name, None
    try:
        return name, kind(message) if message is not None else kind()
    except Exception:  # noqa: BLE001 - an exception that needs other arguments stays a name
        return name, None


def task_exception(request: "Request", change: TaskChange) -> BaseException:
    """What a failed task raises here: its own exception, rebuilt, or :class:`TaskError`.

    The exception the inline scheduler caught in this process is raised as
    it is; otherwise the one its worker pickled is loaded, and given the
    remote traceback as its ``__cause__``.
    """
    caught = request.caught.get(change.task)
    if caught is not None:
        return caught
    text = change.error or ""
    pickled = request.storage.task_exception(request.id, change.task)
    if pickled is None:  # it failed otherwise, or it ran before exceptions were kept
        return _over_memory(request, TaskError(change.task, text, change.output))
    loaded, exception = serialisation.load_or_describe(pickled)
    if loaded and isinstance(exception, BaseException):
        exception.__cause__ = RemoteTraceback(request.id, change.task, text, change.output)
        return _over_memory(request, exception)
    if loaded and isinstance(exception, str):
        why = exception  # the worker's words: it could not pickle it, or it was too large
    elif loaded:
        why = f"the worker sent a {type(exception).__name__}, not an exception"
    else:
        why = f"it could not be rebuilt in this process ({exception})"
    return _over_memory(request, TaskError(change.task, text, change.output, why))


def _over_memory(request: "Request", error: BaseException) -> BaseException:
    """A ``MemoryError`` under the request's memory limit (``memory``, ``--mem``...) says
    that the limit ended the task: the worker's address space is capped at it."""
    kind = error.exception_type if isinstance(error, TaskError) else type(error).__name__
    words = request.backend.limit_words("memory") if kind == "MemoryError" else None
    if words is not None:
        _add_note(error, f"sheepdog: {words}, which each worker's address space is capped "
                         f"at; ask for more 'memory', or use less")
    return error


def outcome(request: "Request", change: TaskChange) -> tuple[Any, Optional[BaseException]]:
    """``(value, None)`` for a task that finished well, ``(None, exception)`` otherwise."""
    if change.state == DONE:
        loaded, value = request.load_result(change.task, change.result)
        return (value, None) if loaded else (None, TaskError(change.task, value))
    if change.state == FAILED:
        return None, task_exception(request, change)
    error = with_output(change.error or "(no reason was kept)", change.output)
    if change.state == LOST:
        return None, TaskLost(change.task, error)
    if change.state == CANCELLED:
        return None, CancelledError(f"task {change.task} was cancelled: {error}")
    raise ValueError(f"task {change.task} has not finished: it is {change.state}")


def first_failure(request: "Request") -> Optional[BaseException]:
    """The exception of the request's first task, in argument order, that has no result.

    What :func:`outcome` gives that task (its own exception, :class:`TaskError`,
    :class:`TaskLost` or ``CancelledError``), with a note that names the
    request, so that the other results can still be read; None when every
    task has its result.
    """
    logs = request.storage.task_logs(request.id)  # failed, lost and cancelled, in order
    if not logs:
        return None
    first = logs[0]
    _value, error = outcome(request, TaskChange(first.task, first.state, 0.0, False, first.error,
                                                first.output, None))
    assert error is not None  # noqa: S101 - a failed, lost or cancelled task has no value
    _add_note(error, f"sheepdog: task {first.task} of request {request.id} raised this; "
                     f"the other results: sheepdog.get_results({request.id}, "
                     f"{request.storage.dbfile!r})")
    return error


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``; before Python 3.11, the ``__notes__`` that it would set."""
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(note)
    else:
        setattr(error, "__notes__", [*getattr(error, "__notes__", []), note])  # noqa: B010
