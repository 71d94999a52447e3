"""What the worker and the server agree on: routes, frames, sizes, alignment and signatures.

Both sides import this one module, so that nothing here has to be kept equal
by hand: the worker's modules (embedded in the job file beside this one, see
``caller/jobscript.py``, so stdlib only) and ``server/callbacks.py``.

**Routes.** A worker talks to the server about its request, about itself (the
worker ``<launch>.<array task>``: array task t of the request's launch-th job)
and about single tasks; :func:`path` builds every path and :func:`parse_path`
reads it back, so the two sides cannot disagree::

    GET  /requests/<rid>/function                        the pickled function and namespace
    POST /requests/<rid>/workers/<L>.<T>/pull/<seq>/<n>/<m>
                                                         up to n more tasks' arguments, as
                                                         frames (at least m if that many
                                                         wait); none left: no frames
    POST /requests/<rid>/workers/<L>.<T>/heartbeat       the worker is alive (renews its lease)
    POST /requests/<rid>/workers/<L>.<T>/killing         the scheduler warned it will kill it
    POST /requests/<rid>/workers/<L>.<T>/leaving         it leaves before its walltime, holding
                                                         nothing
    POST /requests/<rid>/workers/<L>.<T>/release/<seq>   body: a JSON list of the tasks of
                                                         pull seq that it gives back, unstarted
    POST /requests/<rid>/workers/<L>.<T>/lost/<i>/<seq>  how task i (of pull seq)'s process
                                                         ended, UTF-8: it crashed; its worker
                                                         went on
    POST /requests/<rid>/results                         results, errors (and their exceptions),
                                                         output tails
    POST /requests/<rid>/tasks/<i>/result                one pickled result (1 MB or more)
    POST /requests/<rid>/tasks/<i>/error                 one traceback, UTF-8
    POST /requests/<rid>/tasks/<i>/output                one task's output tails, as frames

``seq`` numbers a worker's pulls from 1, so that a pull repeated after a lost
answer gets the same tasks again instead of leasing more, and a release or a
loss names the pull (the batch) it concerns. A pull may also be
answered with a single ``WAIT`` frame: nothing yet, but ask again soon. A
worker of a warm pool may be answered ``IDLE`` (the server held its pull with
no work for a while: ask again at once) or ``HANDOVER``: from now on it is the
named worker of another request of its caller, whose key the frame carries
over the TLS connection, and the arguments of its first pull there follow.

**Signatures.** Every worker request carries an HMAC-SHA256, under the
request's key, of its method, its path (which names the request, the route
and the worker or task) and the SHA-256 of its body. The key never travels: the
worker reads it from a private file (see ``docs/channel.rst``). So a request
seen in flight cannot be replayed for another task, route or request, nor
with another body, and the server can check a request from its headers alone,
before it reads a byte of the body. Replaying the very same request again is
harmless: reports are first-come, a pull repeated gets the same tasks, and a
loss or a release concerns only the tasks that the worker named still holds
from the pull it names, so one replayed after the worker took the same task
again in a later pull moves nothing.

**Frames.** Many arguments or reports travel in one body as frames: a 32-byte
header (index, kind, length), the payload, and zero padding to 16 bytes, so
that every payload starts aligned within the body. A task's report is its
pickled result or its error text; beside it may travel the tail of what the
task wrote to stdout and stderr (``STDOUT``, ``STDERR``, or ``OUTPUT`` when both
went to one file), beside an error the exception itself, pickled
(``EXCEPTION``, within ``failures.MAX_EXCEPTION_BYTES``), and beside any report
the seconds ``f`` ran (``RAN``); a task still running when its worker posts is
announced by a ``BEGUN`` frame. These three travel only in a ``results`` body,
as does, once per worker, its versions of what the function uses by name
(``VERSIONS``).

**Sizes.** An error report must always fit, or a task that failed would be
lost instead: the server accepts error and output bodies of up to
``REPORT_FLOOR_BYTES`` whatever its ``max_body_bytes``, and the worker keeps an
error text within ``MAX_ERROR_BYTES`` and an output tail within
``OUTPUT_TAIL_BYTES`` per stream.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections import namedtuple
from typing import Container, Iterable, Optional, Sized, TypeVar, Union

#: The authorisation scheme: ``Authorization: Sheepdog <hex HMAC>``.
AUTH_SCHEME = "Sheepdog"
#: The header that carries the hex SHA-256 of the body (of b"" when there is none).
DIGEST_HEADER = "X-Sheepdog-Digest"
#: How long a request's authorisation header may be; longer ones are refused unread.
MAX_AUTHORIZATION_CHARS = 200

#: Results this large are posted alone, so that the server can receive them
#: straight into a file; arguments this large are kept in files by the server.
ALONE_BYTES = 1 << 20

#: The longest error text a worker sends, in UTF-8 bytes.
MAX_ERROR_BYTES = 60_000
#: The most of each of a task's stdout and stderr that is kept: their last bytes.
OUTPUT_TAIL_BYTES = 64 << 10
#: Error and output bodies this large are accepted whatever the server's limit.
REPORT_FLOOR_BYTES = 256 << 10

#: The answer to a report that the server could not store because its disk is full.
DISK_FULL_STATUS = 507

#: The exit status of a worker that could not read the request's key.
EXIT_NO_KEY = 66

_FRAME_HEADER = struct.Struct("!QB15xQ")
#: A frame whose payload is smaller is packed as one bytes object, a copy: cheaper than
#: three parts (header, payload, padding) for the small arguments and results of most tasks.
_JOINED_BYTES = 4096
#: Payloads start at multiples of this within a body, and buffers within a payload
#: (``serialisation``), so that arrays load aligned.
ALIGNMENT = 16
ARGUMENTS, RESULT, ERROR = 0, 1, 2
#: Output tails: of stdout, of stderr, and of both when they went to one file.
STDOUT, STDERR, OUTPUT = 3, 4, 5
OUTPUT_KINDS = (STDOUT, STDERR, OUTPUT)
#: The answer to a pull that finds no task yet, while other workers may give some back.
WAIT = 6
#: The exception a task raised, pickled, beside its ``ERROR`` text (see ``failures.py``).
EXCEPTION = 7
#: A task's own time on its worker, in a ``results`` body: ``BEGUN`` (no payload) says
#: that it started to run, for a task still running when its worker posts; ``RAN`` beside
#: its report, how long ``f`` ran in seconds (a ``SECONDS`` double), however long the
#: batch it came in has waited.
BEGUN, RAN = 8, 9
SECONDS = struct.Struct("!d")
#: A worker's versions of Python and of the packages the function reaches by name, beside
#: the caller's, once per worker with its first report (``modules.VersionReport``, JSON).
VERSIONS = 10
#: The answer to a pull of a worker of a warm pool (``caller/pool.py``) that the server
#: moves on to another request of its pool: a JSON object naming the request, its key,
#: the worker's new name and the SHA-256 of the request's function. Arguments of the
#: worker's first pull in that request may follow it in the same body.
HANDOVER = 11
#: The answer to the pull of an idle worker of a warm pool after the server held it for
#: a while with no work: ask again at once (the server waits, not the worker).
IDLE = 12
_KINDS = frozenset((ARGUMENTS, RESULT, ERROR) + OUTPUT_KINDS + (WAIT, EXCEPTION, BEGUN, RAN,
                                                                  VERSIONS, HANDOVER, IDLE))

#: The largest task index a path or frame may name (SQLite integers are signed 64-bit).
MAX_INDEX = 2**62

#: A bytes-like object: what frames, payloads and bodies are made of.
Buffer = Union[bytes, bytearray, memoryview]
#: A body or a payload: one bytes-like object, or parts to send one after another
#: (a list of bytes is named apart, since a list[bytes] is no list[Buffer] to mypy).
Body = Union[Buffer, list[bytes], list[Buffer]]
#: One frame read from a body: (task index, kind, payload as a view of the body).
Frame = tuple[int, int, memoryview]
#: A part of what is sent: bytes-like on the worker; the server also sends files
#: (anything with a length in bytes), which pass through unjoined.
_Part = TypeVar("_Part", bound=Sized)
_Named = TypeVar("_Named")


def nbytes(payload: Sized) -> int:
    """The length in bytes of a payload given as one bytes-like object or a list of parts.

    Typed as any sized object: the server also measures files by their ``len()``.
    """
    kind = type(payload)
    if kind is bytes:  # the most frequent, first: this runs for every frame
        return len(payload)
    if kind is list:
        return sum(map(nbytes, payload))  # type: ignore[call-overload]
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


def body_digest(body: Optional[Body]) -> str:
    """The hex SHA-256 of a body given as bytes-like, a list of parts, or None."""
    digest = hashlib.sha256()
    for part in body if isinstance(body, list) else [body or b""]:
        digest.update(part)
    return digest.hexdigest()


def signature(key: bytes, method: str, path: str, digest: str) -> str:
    """The hex HMAC of one request under ``key`` (bytes)."""
    message = f"{method}\n{path}\n{digest}".encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def auth_headers(key: bytes, method: str, path: str, body: Optional[Body] = None
                 ) -> dict[str, str]:
    """The headers that authorise ``method path`` with ``body``."""
    digest = body_digest(body)
    return {
        "Authorization": f"{AUTH_SCHEME} {signature(key, method, path, digest)}",
        DIGEST_HEADER: digest,
    }


def signed_digest(key: bytes, method: str, path: str, authorization: Optional[str],
                  digest: Optional[str]) -> Optional[str]:
    """The body digest the request claims, if its signature under ``key`` is right; else None.

    Compares in constant time. The caller must still check that the body it
    then reads has this digest.
    """
    if not authorization or not digest or len(authorization) > MAX_AUTHORIZATION_CHARS:
        return None
    scheme, _, claimed = authorization.partition(" ")
    if scheme != AUTH_SCHEME or len(digest) != 64:
        return None
    expected = signature(key, method, path, digest)
    return digest if hmac.compare_digest(claimed.strip().encode(), expected.encode()) else None


def pack_frames(frames: Iterable[tuple[int, int, Union[_Part, list[_Part]]]]
                ) -> list[Union[bytes, _Part]]:
    """(index, kind, payload) triples as a list of parts to send one after another.

    A payload is bytes-like or a list of parts; parts of ``_JOINED_BYTES`` or more
    are not copied.
    """
    parts: list[Union[bytes, _Part]] = []
    for index, kind, payload in frames:
        length = nbytes(payload)
        if length < _JOINED_BYTES and isinstance(payload, (bytes, memoryview)):
            parts.append(frame_bytes(index, kind, payload))  # one part, not three
            continue
        parts.append(_FRAME_HEADER.pack(index, kind, length))
        parts.extend(payload if isinstance(payload, list) else [payload])
        if length % ALIGNMENT:
            parts.append(bytes(-length % ALIGNMENT))
    return parts


def frame_bytes(index: int, kind: int, data: Buffer) -> bytes:
    """One frame of a bytes-like ``data``, as one bytes object: quicker for a small payload."""
    length = len(data) if not isinstance(data, memoryview) else data.nbytes
    return b"".join((_FRAME_HEADER.pack(index, kind, length), data, bytes(-length % ALIGNMENT)))


def unpack_frames(data: Buffer) -> list[Frame]:
    """The inverse of :func:`pack_frames` for the whole body; ValueError when not frames.

    Payloads are memoryviews of ``data``, not copies.
    """
    view = memoryview(data).cast("B")
    frames, used = split_frames(view)
    if used != len(view):
        raise ValueError("truncated frame")
    return frames


def split_frames(data: Buffer, kinds: Container[int] = _KINDS) -> tuple[list[Frame], int]:
    """(frames, bytes they take) of the whole frames at the start of ``data``.

    For reading frames as they arrive: the bytes after ``used`` are the start
    of a frame still to come. A frame of a kind not in ``kinds`` is a ValueError.
    """
    view = memoryview(data).cast("B")
    frames: list[Frame] = []
    append, unpack_from = frames.append, _FRAME_HEADER.unpack_from  # a step per frame: lean
    size, header = len(view), _FRAME_HEADER.size
    offset = 0
    while offset + header <= size:
        index, kind, length = unpack_from(view, offset)
        if kind not in kinds:
            raise ValueError("bad frame")
        start = offset + header
        end = start + length + (-length % ALIGNMENT)
        if end > size:
            break
        append((index, kind, view[start:start + length]))
        offset = end
    return frames, offset


def coalesce(parts: Iterable[_Part], limit: int = 1 << 20) -> list[Union[bytes, _Part]]:
    """``parts`` with runs of small bytes-like ones joined into pieces of about ``limit``.

    Each part sent becomes at least one TLS record, so thousands of small
    frames sent one by one cost a record (and a read on the server) each.
    Large parts, and parts that are not bytes-like, pass through unjoined.
    """
    pieces: list[Union[bytes, _Part]] = []
    pending: list[Buffer] = []
    size = 0
    for part in parts:
        length = nbytes(part) if isinstance(part, (bytes, bytearray, memoryview)) else limit
        if length < limit:
            pending.append(part)  # type: ignore[arg-type]
            size += length
            if size >= limit:
                pieces.append(b"".join(pending))
                pending, size = [], 0
            continue
        if pending:
            pieces.append(b"".join(pending))
            pending, size = [], 0
        pieces.append(part)
    if pending:
        pieces.append(b"".join(pending))
    return pieces


def index_spec(indices: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``: task indices in few words, for messages and schedulers."""
    runs: list[list[int]] = []  # [first, last] of each stretch of consecutive indices
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


#: Each route and the method it takes.
ROUTES = {
    "function": "GET",
    "pull": "POST",
    "heartbeat": "POST",
    "killing": "POST",
    "leaving": "POST",
    "release": "POST",
    "results": "POST",
    "result": "POST",
    "error": "POST",
    "output": "POST",
    "lost": "POST",
}
_REQUEST_ROUTES = ("function", "results")
_WORKER_ROUTES = ("heartbeat", "killing", "leaving")
_TASK_ROUTES = ("result", "error", "output")
#: Routes whose bodies are accepted up to REPORT_FLOOR_BYTES whatever the server's limit.
FLOOR_ROUTES = ("error", "output", "lost")
#: The most tasks one pull may ask for.
MAX_PULL = 1_000_000

_PATH = re.compile(
    r"/requests/(?P<rid>[0-9]{1,18})/(?:"
    r"(?P<request_route>function|results)"
    r"|workers/(?P<launch>[0-9]{1,9})\.(?P<array_task>[0-9]{1,9})/"
    r"(?:(?P<worker_route>heartbeat|killing|leaving)"
    r"|pull/(?P<seq>[1-9][0-9]{0,8})/(?P<size>[1-9][0-9]{0,6})/(?P<least>[1-9][0-9]{0,6})"
    r"|release/(?P<release_seq>[1-9][0-9]{0,8})"
    r"|lost/(?P<lost>[0-9]{1,19})/(?P<lost_seq>[1-9][0-9]{0,8}))"
    r"|tasks/(?P<task>[0-9]{1,19})/(?P<task_route>result|error|output))"
)

#: A parsed path: the route's name, and what it names (None where it names nothing).
#: Its fields are untyped: the server reads ``seq`` or ``task`` only on the routes
#: that name them.
Path = namedtuple("Path", "request_id route worker task seq size least")


def worker_name(launch: Union[int, str], array_task: Union[int, str]) -> str:
    """How paths name array task ``array_task`` of a request's ``launch``-th job."""
    return f"{int(launch)}.{int(array_task)}"


def path(request_id: int, route: str, worker: Optional[str] = None, task: Optional[int] = None,
         seq: Optional[int] = None, size: Optional[int] = None, least: Optional[int] = None
         ) -> str:
    """The path of ``route`` for a request (and a worker ``L.T`` or a task, where it names one)."""
    prefix = f"/requests/{int(request_id)}/"
    if route in _REQUEST_ROUTES:
        return prefix + route
    if route == "pull":
        return (f"{prefix}workers/{_named(route, 'worker', worker)}/pull/"
                f"{int(_named(route, 'seq', seq))}/{int(_named(route, 'size', size))}/"
                f"{int(least or 1)}")
    if route in _WORKER_ROUTES:
        return f"{prefix}workers/{_named(route, 'worker', worker)}/{route}"
    if route == "release":
        return (f"{prefix}workers/{_named(route, 'worker', worker)}/release/"
                f"{int(_named(route, 'seq', seq))}")
    if route == "lost":
        return (f"{prefix}workers/{_named(route, 'worker', worker)}/lost/"
                f"{int(_named(route, 'task', task))}/{int(_named(route, 'seq', seq))}")
    if route in _TASK_ROUTES:
        return f"{prefix}tasks/{int(_named(route, 'task', task))}/{route}"
    raise ValueError(f"no route named {route!r}")


def _named(route: str, what: str, value: Optional[_Named]) -> _Named:
    """``value``, which the path of ``route`` names: a ValueError if it is missing."""
    if value is None:
        raise ValueError(f"the path of the {route!r} route names its {what}")
    return value


def parse_path(text: str) -> Optional[Path]:
    """The :data:`Path` that ``text`` names, or None when it names no route."""
    match = _PATH.fullmatch(text)
    if match is None:
        return None
    task, size = match["task"] or match["lost"], match["size"]
    if task is not None and not 1 <= int(task) <= MAX_INDEX:
        return None
    if size is not None and not 1 <= int(match["least"]) <= int(size) <= MAX_PULL:
        return None
    worker = (worker_name(match["launch"], match["array_task"])
              if match["launch"] is not None else None)
    route = (match["request_route"] or match["worker_route"] or match["task_route"]
             or ("lost" if match["lost"] else "release" if match["release_seq"] else "pull"))
    seq = match["seq"] or match["release_seq"] or match["lost_seq"]
    return Path(int(match["rid"]), route, worker, None if task is None else int(task),
                None if seq is None else int(seq),
                None if size is None else int(size),
                None if size is None else int(match["least"]))
