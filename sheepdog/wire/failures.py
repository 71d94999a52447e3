"""What a task's failure becomes on the wire: its traceback as text, and the exception itself.

A worker (``worker/runner.py``) and the ``inline`` scheduler (``caller/inline.py``)
report a task that raised in the same two parts:

- the traceback as text (:func:`describe_failure`, kept within
  ``MAX_ERROR_BYTES`` by :func:`error_bytes`): what ``get_errors``, the CLI
  and the dashboard show, and what the caller attaches to the exception;
- the exception pickled (:func:`dumps_exception`), beside the text in a
  frame of its own (``protocol.EXCEPTION``), so that the caller can raise the
  task's own exception: built-in ones, the user's own classes (shipped by
  value, as cloudpickle ships them) and those of installed libraries. When it
  cannot be pickled, or pickles too large, the frame holds instead a pickled
  ``str`` that says why, and the caller raises ``TaskError`` with that reason.

Embedded in the job file: the standard library and ``serialisation`` only.
"""

from __future__ import annotations

import traceback

from . import serialisation
from .protocol import MAX_ERROR_BYTES

#: The largest pickled exception that travels; a larger one is replaced by why it did not.
MAX_EXCEPTION_BYTES = 60_000


def error_bytes(text: str) -> bytes:
    """``text`` as UTF-8 of at most ``MAX_ERROR_BYTES``, whatever characters it holds.

    Characters that UTF-8 cannot encode (lone surrogates, as in a file name
    that was not UTF-8) are escaped; a long text keeps its head and its tail.
    """
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= MAX_ERROR_BYTES:
        return data
    note = b"\n... (traceback shortened) ...\n"
    half = (MAX_ERROR_BYTES - len(note)) // 2
    return (data[:half].decode("utf-8", "ignore").encode() + note
            + data[-half:].decode("utf-8", "ignore").encode())


def describe_failure(error: BaseException, skip_frames: int = 0) -> str:
    """The traceback of ``error`` as text, from its ``skip_frames``-th frame on."""
    frames = error.__traceback__
    for _ in range(skip_frames):
        frames = frames.tb_next if frames is not None else None
    try:
        return "".join(traceback.format_exception(type(error), error, frames))
    except BaseException as failure:  # noqa: B902 - a text must come out of this
        return (f"{type(error).__module__}.{type(error).__qualname__} was raised, and its "
                f"traceback could not be formatted ({type(failure).__name__})")


def dumps_exception(error: BaseException) -> bytes:
    """``error`` pickled for the caller to raise again; else a pickled ``str`` saying why not.

    Never raises: a task's failure is reported whatever its exception holds.
    """
    try:
        pickled = serialisation.dumps(error)
    except BaseException as failure:  # noqa: B902 - a lock in its args, a __reduce__ that raises
        message = " ".join(str(failure).split())
        why = (f"it could not be pickled on the worker ({type(failure).__name__}"
               f"{': ' + message if message else ''})")
    else:
        if len(pickled) <= MAX_EXCEPTION_BYTES:
            return pickled
        why = (f"it pickled to {len(pickled)} bytes, over the {MAX_EXCEPTION_BYTES} bytes "
               f"an exception may take")
    return serialisation.dumps(why)
