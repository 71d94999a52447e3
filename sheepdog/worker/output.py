"""What each task wrote to stdout and stderr: sent straight to its files, its tail read back.

Embedded in the job file with the rest of ``wire`` and ``worker`` (see ``loop.py``), so
it imports only the standard library and ``protocol``.

The tail of what each task wrote to stdout and stderr travels with its report
(see :class:`TaskOutput`): both still go straight to the scheduler's output
files, unbuffered in the runner (see :func:`unbuffer_output`), so that what a
task wrote before a crash is there too; the task's part is read back from those
files. The runner notes the files' :meth:`~TaskOutput.positions` as each task
starts and ends; the supervisor reads the :meth:`~TaskOutput.tails` between them.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
from typing import Optional

from ..wire.protocol import OUTPUT, OUTPUT_TAIL_BYTES, STDERR, STDOUT, Buffer

#: The sizes of the stdout and stderr files (-1: not read back), when a task starts or ends.
_POSITIONS = struct.Struct("!qq")
_NO_POSITIONS = _POSITIONS.pack(-1, -1)


class TaskOutput:
    """What each task wrote to stdout and stderr, read back from the files they go to.

    The scheduler's ``-o`` and ``-e`` files (and the local backend's log) are
    regular files, so their size when a task starts and ends brackets what the
    task wrote, and the last ``OUTPUT_TAIL_BYTES`` of that are read back
    through a descriptor of their own (``/proc/self/fd``). When stdout and
    stderr are one file (``-j y``), their tail is one stream, ``OUTPUT``. A
    stream that is not a regular file (a terminal, a pipe) has no tail. Other
    array tasks that append to the same file would show in it too.
    """

    def __init__(self) -> None:
        self.files: list[list[int]] = []  # [kind, descriptor written to, descriptor to read from]
        #: (device, inode) of each file: a task that closed or replaced a descriptor shows.
        self.identities: list[tuple[int, int]] = []
        seen: dict[tuple[int, int], list[int]] = {}
        for descriptor, kind in ((1, STDOUT), (2, STDERR)):
            try:
                status = os.fstat(descriptor)
            except OSError:
                continue
            if not stat.S_ISREG(status.st_mode):
                continue
            identity = (status.st_dev, status.st_ino)
            if identity in seen:
                seen[identity][0] = OUTPUT
                continue
            reader = _open_for_reading(descriptor)
            if reader is not None:
                seen[identity] = [kind, descriptor, reader]
                self.files.append(seen[identity])
                self.identities.append(identity)

    def positions(self) -> bytes:
        """The files' sizes now, packed; what Python buffered for them is written first."""
        if not self.files:
            return _NO_POSITIONS
        for stream in (sys.stdout, sys.stderr):
            if not isinstance(stream, _Unbuffered):  # a task replaced it
                try:
                    stream.flush()
                except Exception:  # noqa: S110 - a closed stream has nothing to add
                    pass
        sizes = self._sizes()
        if sizes is None:  # the last task closed or replaced a descriptor: put ours back
            restore_descriptors()
            sizes = self._sizes()
        return _NO_POSITIONS if sizes is None else _POSITIONS.pack(*(sizes + [-1, -1])[:2])

    def _sizes(self) -> Optional[list[int]]:
        """The files' sizes, or None when a descriptor no longer writes to its file."""
        try:
            statuses = [os.fstat(descriptor) for _kind, descriptor, _reader in self.files]
        except OSError:
            return None
        if [(status.st_dev, status.st_ino) for status in statuses] != self.identities:
            return None
        return [status.st_size for status in statuses]

    def tails(self, start: Buffer, end: Buffer) -> list[tuple[int, bytes]]:
        """(kind, bytes) of each stream written between two :meth:`positions`."""
        tails: list[tuple[int, bytes]] = []
        if start == end:
            return tails
        starts, ends = _POSITIONS.unpack(start), _POSITIONS.unpack(end)
        for (kind, _descriptor, reader), first, last in zip(self.files, starts, ends):
            if first < 0 or last <= first:
                continue
            begin = max(first, last - OUTPUT_TAIL_BYTES)
            try:
                data = os.pread(reader, last - begin, begin)
            except OSError as error:
                data = f"(the output could not be read back: {error})".encode()
            if begin > first:
                data = f"[... {begin - first} earlier bytes not kept]\n".encode() + data
            tails.append((kind, data))
        return tails


def _open_for_reading(descriptor: int) -> Optional[int]:
    """A new read-only descriptor of the file that ``descriptor`` writes, or None."""
    try:
        return os.open(f"/proc/self/fd/{descriptor}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        pass
    try:  # macOS has no /proc, but can name the file
        import fcntl

        # By name: typeshed declares F_GETPATH on macOS only; elsewhere this is the
        # AttributeError below.
        get_path = getattr(fcntl, "F_GETPATH")  # noqa: B009
        path = fcntl.fcntl(descriptor, get_path, bytes(1024)).rstrip(b"\0")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, AttributeError, OSError):
        return None


#: The runner's own streams and copies of descriptors 1 and 2, which
#: :func:`restore_output` puts back before each task.
_STREAMS: dict[str, _Unbuffered] = {}
_COPIES: dict[int, int] = {}


def unbuffer_output() -> None:
    """Send what tasks print straight to the output files, as ``python -u`` would.

    Called once in each runner; it keeps the streams, and copies of the
    descriptors, that :func:`restore_output` puts back.
    """
    for name, descriptor in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            stream.flush()
            _COPIES[descriptor] = os.dup(descriptor)  # not inherited by what tasks start
            _STREAMS[name] = _unbuffered(descriptor, stream)
        except (OSError, ValueError, AttributeError):
            continue
        setattr(sys, name, _STREAMS[name])


def restore_output() -> None:
    """Give the next task the runner's ``sys.stdout`` and ``sys.stderr``, whatever the
    last one did with them.

    A task may close or replace them; the next task of its batch must neither
    fail for it (under its own name) nor write where the last one pointed
    them. This runs before every task, so it only compares objects: the
    descriptors behind them are checked when :meth:`TaskOutput.positions`
    finds one gone (see :func:`restore_descriptors`).
    """
    for name, stream in _STREAMS.items():
        if stream.closed:
            stream = _STREAMS[name] = _unbuffered(1 if name == "stdout" else 2, stream)
        if getattr(sys, name) is not stream:
            setattr(sys, name, stream)


def restore_descriptors() -> None:
    """Put back descriptors 1 and 2 if a task closed or replaced them."""
    for descriptor, copy in _COPIES.items():
        try:
            same = os.path.sameopenfile(copy, descriptor)
        except OSError:
            same = False
        if not same:
            os.dup2(copy, descriptor)


def _unbuffered(descriptor: int, like: io.TextIOBase) -> _Unbuffered:
    """A text stream that writes straight to ``descriptor``, encoded as ``like`` was."""
    return _Unbuffered(
        io.FileIO(descriptor, "w", closefd=False),
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors=getattr(like, "errors", None) or "backslashreplace", write_through=True)


class _Unbuffered(io.TextIOWrapper):
    """A text stream that writes straight to its file descriptor (nothing to flush)."""
