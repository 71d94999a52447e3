"""What a finished task comes to on the caller's side: its value, or an exception.

A future's ``result()`` and :func:`sheepdog.as_completed` give a task's value
when it ran to the end, and otherwise raise one of these:

- :class:`TaskError`: the task raised on its worker. It carries the remote
  traceback as text (the worker's exception object itself never travels:
  it may not load here), and, where the exception is one of Python's own
  (``ZeroDivisionError``, ``KeyError``, ...), a rebuilt instance of it as
  ``exception`` and ``__cause__``;
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

if TYPE_CHECKING:
    from .request import Request

#: The states a task does not leave unless it is retried.
FINISHED_STATES = (DONE, FAILED, LOST, CANCELLED)

#: The last line of a Python traceback: ``Name: message``, or ``Name`` alone.
_EXCEPTION_LINE = re.compile(r"(?P<name>[A-Za-z_][\w.<>]*)(?:: (?P<message>.*))?")


class TaskError(Exception):
    """A task raised an exception on its worker.

    ``index`` is the task's 1-based position in its request; ``remote_traceback``
    the traceback the worker reported; ``output`` the end of what the task
    wrote, by stream (``"stdout"``, ``"stderr"``, or both in one), when it
    wrote anything. ``exception_type`` is the name on the traceback's last
    line (``"ZeroDivisionError"``, ``"mymodule.MyError"``), or None when it
    has none. ``exception`` is a rebuilt instance of that exception when it
    is one of Python's built-in exceptions, and None otherwise; it is also
    the ``__cause__``, so a printed traceback shows it. The message holds
    the traceback and the output.
    """

    def __init__(self, index: int, remote_traceback: str,
                 output: Optional[Mapping[str, str]] = None) -> None:
        self.index = index
        self.remote_traceback = remote_traceback
        self.output = dict(output or {})
        self.exception_type, self.exception = _rebuild(remote_traceback)
        self.__cause__ = self.exception
        what = self.exception_type or "an error"
        super().__init__(f"task {index} raised {what} on its worker; its traceback:\n"
                         f"{with_output(remote_traceback, self.output)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.index, self.remote_traceback, self.output)


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


def outcome(request: "Request", change: TaskChange) -> tuple[Any, Optional[BaseException]]:
    """``(value, None)`` for a task that finished well, ``(None, exception)`` otherwise."""
    if change.state == DONE:
        loaded, value = request.load_result(change.task, change.result)
        return (value, None) if loaded else (None, TaskError(change.task, value))
    if change.state == FAILED:
        return None, TaskError(change.task, change.error or "", change.output)
    error = with_output(change.error or "(no reason was kept)", change.output)
    if change.state == LOST:
        return None, TaskLost(change.task, error)
    if change.state == CANCELLED:
        return None, CancelledError(f"task {change.task} was cancelled: {error}")
    raise ValueError(f"task {change.task} has not finished: it is {change.state}")

