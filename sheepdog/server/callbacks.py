"""The callback protocol: what each worker request means and how it is answered.

Kept apart from any web framework, so that it is tested in-process without
one and the Tornado handler (``tornado_handler.py``) is only its host, and so
that the fast path costs no more than parsing a path, one HMAC over a few
header values (checked once, in :meth:`Callbacks.admit`) and one SQLite
statement.

Routes are built and parsed in ``protocol`` (see its docstring for the list),
and each request is signed by the worker under the request's own key. A
worker pulls its tasks (``leases.py`` decides which), renews its lease with
heartbeats, and posts reports by task index.

Frames are ``protocol.pack_frames``: (index, kind, length) headers, the bytes,
and zero padding to 16 bytes. Bodies are stored as bytes and never unpickled
here. A request is authorised from its headers alone (:meth:`Callbacks.admit`),
so that the host refuses an unauthorised body before reading any of it; a body
is then stored only if it has the digest that the signature covers. Every
malformed or unauthorised request gets a 4xx answer with a one-line reason.

Bodies are refused over ``max_body_bytes``, except that the error, output and
lost routes accept up to ``protocol.REPORT_FLOOR_BYTES`` whatever the limit:
the report that a task failed (or that its result was refused) must always
fit. A report that cannot be stored because the disk is full is answered
with 507 and a message that names the disk; the worker retries it for a
while, then reports the task failed with that message.

Large payloads are not copied on the way through: a request body arrives as
one buffer and its frames are views of it, and a reply's body is a list of
parts in which arguments kept in files (:class:`~sheepdog.storage.payloads.PayloadFile`)
are named rather than read, so the host streams them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional, Protocol, Sequence, Union

from ..storage.payloads import PayloadFile
from ..storage import DiskFullError, Storage
from ..storage.leases import AskAgain
from ..wire.modules import VersionReport
from .versions import VersionReports
from .wakeups import WorkSignal
from ..wire.protocol import (
    ALONE_BYTES,
    ARGUMENTS,
    BEGUN,
    DIGEST_HEADER,
    DISK_FULL_STATUS,
    ERROR,
    EXCEPTION,
    FLOOR_ROUTES,
    HANDOVER,
    IDLE,
    MAX_INDEX,
    OUTPUT,
    RAN,
    REPORT_FLOOR_BYTES,
    RESULT,
    ROUTES,
    SECONDS,
    STDERR,
    STDOUT,
    VERSIONS,
    WAIT,
    Path,
    body_digest,
    nbytes,
    pack_frames,
    parse_path,
    signed_digest,
    unpack_frames,
)

log = logging.getLogger(__name__)

#: Largest request body accepted (a pickled result), unless the caller says otherwise.
DEFAULT_MAX_BODY_BYTES = 1 << 30

#: Output frame kinds and the stream each names in storage.
_STREAMS = {OUTPUT: "stdout and stderr", STDOUT: "stdout", STDERR: "stderr"}


class Headers(Protocol):
    """A request's headers, looked up by name regardless of case (as Tornado's are)."""

    def get(self, key: str, /) -> Optional[str]: ...

    def __contains__(self, key: str, /) -> bool: ...


#: A reply body: bytes, or parts to send in order (bytes-like, or files to stream).
Body = Union[bytes, Sequence[Union[bytes, memoryview, PayloadFile]]]


@dataclass(frozen=True)
class Reply:
    status: int
    body: Body
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)
    #: An idle worker's pull, which the host may hold open and ask again when work
    #: may have arrived (see ``caller/pool.py``); sent as it is when the host stops.
    held: bool = False

    @property
    def parts(self) -> Sequence[Union[bytes, memoryview, PayloadFile]]:
        return [self.body] if isinstance(self.body, bytes) else self.body

    @property
    def length(self) -> int:
        return nbytes(list(self.parts))


def text_reply(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, (message + "\n").encode(), headers=headers)


_UNAUTHORISED = text_reply(401, "wrong or missing signature")
_STORED = text_reply(200, "stored")
_ALREADY = text_reply(200, "already recorded")
_NO_WORKER = text_reply(404, "no such worker")


class WarmPool(Protocol):
    """What the server asks of the warm pool of a request (``caller/pool.py``)."""

    linger: float

    def handover_target(self, request_id: int) -> Optional[int]: ...

    def function_digest(self, request_id: int) -> str: ...

    def may_wait(self, request_id: int, worker: str) -> bool: ...

    def busy(self, request_id: int, worker: str) -> None: ...

    def left_early(self) -> None: ...


class WarmPools(Protocol):
    """The warm pools of the caller's process, by request."""

    signal: WorkSignal

    def of(self, request_id: int) -> Optional[WarmPool]: ...


class Route(NamedTuple):
    """A request whose signature was checked: what it asks for, and the body it vouches for."""

    path: Path
    digest: str


class Callbacks:
    """Answers worker requests from one :class:`Storage`."""

    def __init__(self, storage: Storage, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 version_reports: Optional[VersionReports] = None,
                 pools: Optional[WarmPools] = None) -> None:
        self.storage = storage
        #: The caller's warm pools: their workers move between requests, and wait for work.
        self.pools = pools
        self.max_body_bytes = max_body_bytes
        #: What workers said of their versions, for the caller to warn about.
        self.version_reports = version_reports or VersionReports()
        self._secrets: dict[int, bytes] = {}

    @property
    def largest_body_bytes(self) -> int:
        """The largest body any route accepts: what the host must be ready to read."""
        return max(self.max_body_bytes, REPORT_FLOOR_BYTES)

    def body_limit(self, path: str) -> int:
        """The largest body accepted on ``path``."""
        parsed = parse_path(path)
        if parsed is not None and parsed.route in FLOOR_ROUTES:
            return self.largest_body_bytes
        return self.max_body_bytes

    def too_large(self, content_length: Optional[str], path: str = "") -> Optional[Reply]:
        """A 413 reply when the announced body exceeds the limit, before it is read."""
        try:
            length = int(content_length or 0)
        except ValueError:
            return text_reply(400, "Content-Length is not a number")
        limit = self.body_limit(path)
        if length > limit:
            return text_reply(413, f"body of {length} bytes is over the limit of {limit} bytes")
        return None

    def _secret(self, request_id: int) -> Optional[bytes]:
        secret = self._secrets.get(request_id)
        if secret is None:
            stored = self.storage.request_secret(request_id)
            if stored is None:
                return None
            secret = self._secrets[request_id] = stored.encode()
        return secret

    def respond(self, method: str, path: str, headers: Headers, body: Any,
                digest: Optional[str] = None, route: Optional["Route"] = None) -> Reply:
        """The reply to one request; never raises for anything a client sends.

        ``digest`` is the body's SHA-256 when the host computed it while
        receiving the body (a result received into a file); otherwise it is
        computed here. ``route`` is what :meth:`admit` returned for the
        request, so that its signature is not checked twice.
        """
        try:
            return self._respond(method, path, headers, body, digest, route)
        except DiskFullError as error:
            log.error("cannot store %s %s: %s", method, path, error)
            return text_reply(DISK_FULL_STATUS, str(error))
        except sqlite3.OperationalError as error:
            log.warning("database busy answering %s %s: %s", method, path, error)
            return text_reply(503, "database busy, retry", **{"Retry-After": "1"})

    def admit(self, method: str, path: str, headers: Headers) -> Union[Reply, "Route", None]:
        """The refusal of a request not worth reading (too large, unknown or not
        authorised), else its authorised :class:`Route` (None for the health page).

        Checked from the headers alone, whatever the body's framing (a length
        or chunks), so that no byte of a body is read, and no memory set
        aside for it, before its sender proved it holds the request's key.
        The host hands the route back to :meth:`respond`.
        """
        refusal = self.too_large(headers.get("Content-Length"), path)
        if refusal is not None or (path == "/" and method in ("GET", "HEAD")):
            return refusal
        return self._authorised_route(method, path, headers)

    def result_upload(self, method: str, route: "Route", headers: Headers
                      ) -> Optional[tuple[int, int]]:
        """(request id, task index) when this is one large result to receive into a file.

        That is an authorised ``POST .../tasks/<i>/result`` of a known task
        with a body of at least ``ALONE_BYTES``: the host may then write the
        body straight into ``storage.new_staging_file``, computing its digest
        as it goes, and answer with :meth:`respond`, passing the file as the
        body, the digest and the route.
        """
        length = headers.get("Content-Length") or ""
        if method != "POST" or not length.isdigit() or int(length) < ALONE_BYTES:
            return None
        request_id, index = route.path.request_id, route.path.task
        if route.path.route != "result" or not self.storage.task_exists(request_id, index):
            return None
        return request_id, index

    def _authorised_route(self, method: str, path: str, headers: Headers) -> Union[Reply, "Route"]:
        """The route of a signed request, or the refusal."""
        parsed = parse_path(path)
        if parsed is None:
            return text_reply(404, "no such route")
        secret = self._secret(parsed.request_id)
        if secret is None:
            return text_reply(404, "no such request")
        digest = signed_digest(secret, method, path, headers.get("Authorization"),
                               headers.get(DIGEST_HEADER))
        if digest is None:
            return _UNAUTHORISED
        return Route(parsed, digest)

    def _respond(self, method: str, path: str, headers: Headers, body: Any,
                 digest: Optional[str], route: Optional["Route"]) -> Reply:
        if path == "/" and method in ("GET", "HEAD"):
            return text_reply(200, "sheepdog server")
        if route is None:
            checked = self._authorised_route(method, path, headers)
            if isinstance(checked, Reply):
                return checked
            route = checked
        parsed, signed = route
        request_id, name = parsed.request_id, parsed.route
        if (digest or _digest_of(body)) != signed:
            return text_reply(400, "the body does not match its signed digest")
        if method != ROUTES[name]:
            return text_reply(405, f"use {ROUTES[name]}", Allow=ROUTES[name])
        limit = self.body_limit(path)
        if body is not None and nbytes(body) > limit:
            return text_reply(413, f"body over the limit of {limit} bytes")
        if name == "function":
            return Reply(200, self.storage.function(request_id) or b"", "application/octet-stream")
        if name == "results":
            return self._results(request_id, body)
        if name == "pull":
            return self._pull(request_id, parsed)
        if name == "release":
            return self._release(request_id, parsed.worker, parsed.seq, body)
        if name == "leaving":
            left = self.storage.leave(request_id, parsed.worker,
                                      "it left before its walltime, holding no task")
            pool = self.pools.of(request_id) if self.pools is not None else None
            if left and pool is not None:
                pool.left_early()  # its watchers replace it at their next look
            return _STORED if left else _NO_WORKER
        if name in ("heartbeat", "killing"):
            update = (self.storage.worker_heartbeat if name == "heartbeat"
                      else self.storage.worker_kill_notice)
            return _STORED if update(request_id, parsed.worker) else _NO_WORKER
        index = parsed.task
        if not self.storage.task_exists(request_id, index):
            return text_reply(404, "no such task")
        if name == "output":
            return self._output(request_id, index, body)
        if name == "lost":
            return self._lost(request_id, parsed.worker, index, parsed.seq, body)
        return self._report(request_id, index, name, body)

    def _release(self, request_id: int, worker: str, batch: int, body: Any) -> Reply:
        """Tasks of pull ``batch`` that a worker gives back unstarted: a JSON list of their
        indices."""
        try:
            indices = json.loads(bytes(body))
        except ValueError:
            indices = None
        if not isinstance(indices, list) or not all(
                type(index) is int and 1 <= index <= MAX_INDEX for index in indices):
            return text_reply(400, "a release names the tasks given back as a JSON list of "
                                   "task indices")
        released = self.storage.release(request_id, worker, batch, indices)
        if released and self.pools is not None:
            self.pools.signal.notify()  # idle workers of its pool may take them
        return text_reply(200, f"released {len(released)} of {len(indices)}")

    def _pull(self, request_id: int, parsed: Path) -> Reply:
        """The arguments of the tasks the worker now holds, as frames; none: nothing left.

        A worker of a warm pool may instead be handed over to another request
        of its pool, or, with nothing to do anywhere in it, be held (an idle
        reply the host may hold open) until its pool's ``linger`` runs out.
        """
        pool = self.pools.of(request_id) if self.pools is not None else None
        if pool is not None:
            target = pool.handover_target(request_id)
            moved = None if target is None else self._hand_over(pool, request_id, parsed, target)
            if moved is not None:
                return moved
        indices = self.storage.pull(request_id, parsed.worker, parsed.seq, parsed.size,
                                    parsed.least, stay=pool is not None)
        if indices is None:
            return _NO_WORKER
        if isinstance(indices, AskAgain):
            if pool is None:
                return _frames_reply([(0, WAIT, b"")])
            if pool.may_wait(request_id, parsed.worker):
                return _frames_reply([(0, IDLE, b"")], held=True)
            self.storage.leave(request_id, parsed.worker,
                               f"it had no work for {pool.linger:g} s (the pool's linger)")
            return _frames_reply([])
        if pool is not None:
            pool.busy(request_id, parsed.worker)
        return self._arguments_reply(request_id, indices)

    def _arguments_reply(self, request_id: int, indices: list[int],
                         before: Sequence[tuple[int, int, bytes]] = ()) -> Reply:
        arguments = self.storage.task_arguments(request_id, indices)
        return _frames_reply([*before, *((i, ARGUMENTS, arguments[i]) for i in indices)])

    def _hand_over(self, pool: WarmPool, request_id: int, parsed: Path, target: int
                   ) -> Optional[Reply]:
        """Make the worker one of request ``target`` and answer with its ticket there (the
        request, its key, the worker's name, the function's digest) and the arguments
        of its first pull there; None if it cannot move."""
        secret = self._secret(target)
        if secret is None:
            return None
        name = self.storage.hand_over(request_id, parsed.worker, parsed.seq, target)
        if name is None:
            return None
        pool.busy(request_id, parsed.worker)
        ticket = json.dumps({"request": target, "key": secret.decode(), "worker": name,
                             "function": pool.function_digest(target)}).encode()
        indices = self.storage.pull(target, name, 1, parsed.size, parsed.least, stay=True)
        return self._arguments_reply(target, indices if isinstance(indices, list) else [],
                                     before=[(0, HANDOVER, ticket)])

    def _results(self, request_id: int, body: Any) -> Reply:
        """A batch of framed results, errors (with their exceptions) and output tails."""
        try:
            frames = unpack_frames(body)
        except ValueError as error:
            return text_reply(400, f"malformed results: {error}")
        reports = [(index, kind == ERROR, payload) for index, kind, payload in frames
                   if kind in (RESULT, ERROR)]
        outputs = [(index, _STREAMS[kind], payload) for index, kind, payload in frames
                   if kind in _STREAMS]
        exceptions = [(index, payload) for index, kind, payload in frames if kind == EXCEPTION]
        begun = [index for index, kind, _payload in frames if kind == BEGUN]
        versions = [payload for _index, kind, payload in frames if kind == VERSIONS]
        ran = _seconds_ran(frames)
        if ran is None:
            return text_reply(400, "malformed results: a task's seconds must be one double, "
                                   "0 or more")
        if (len(reports) + len(outputs) + len(exceptions) + len(begun) + len(ran)
                + len(versions) != len(frames) or not frames):
            return text_reply(400, "malformed results: frames other than results, errors, "
                                   "exceptions, outputs, times and versions, or none")
        if not all(1 <= index <= MAX_INDEX for index, _kind, _payload in frames):
            return text_reply(400, f"malformed results: task indices go from 1 to {MAX_INDEX}")
        malformed = self._malformed(reports)
        if malformed is not None:
            return malformed
        for payload in versions:
            try:
                self.version_reports.add(request_id, VersionReport.from_bytes(bytes(payload)))
            except ValueError:  # a courtesy of the worker's: nothing to refuse the rest for
                log.info("request %s: a worker's version report did not read", request_id)
        stored = self.storage.record_reports(request_id, reports, outputs, exceptions,
                                             begun=begun, ran=ran)
        return text_reply(200, f"stored {stored} of {len(reports)}")

    def _output(self, request_id: int, index: int, body: Any) -> Reply:
        """The output tails of one task, posted alone."""
        try:
            frames = unpack_frames(body)
        except ValueError as error:
            return text_reply(400, f"malformed output: {error}")
        outputs = [(index, _STREAMS[kind], payload) for frame_index, kind, payload in frames
                   if kind in _STREAMS and frame_index == index]
        if len(outputs) != len(frames) or not outputs:
            return text_reply(400, f"malformed output: only output frames of task {index}")
        self.storage.record_reports(request_id, [], outputs)
        return _STORED

    def _lost(self, request_id: int, worker: str, index: int, batch: int, body: Any) -> Reply:
        """A task whose process crashed: lost, and retryable unless its kill was announced.

        Only while ``worker`` still holds it from pull ``batch``: a late or replayed
        loss never touches a retry that another worker, or this one, runs now."""
        try:
            reason = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return text_reply(400, f"the reason why task {index} was lost must be UTF-8")
        if not reason:
            return text_reply(400, f"empty reason for task {index}")
        recorded = self.storage.lose_held(request_id, worker, batch, index, reason)
        return _STORED if recorded else _ALREADY

    def _report(self, request_id: int, index: int, action: str, body: Any) -> Reply:
        """One result or error, posted alone (a payload too large to batch)."""
        reports = [(index, action == "error", body)]
        return self._malformed(reports) or (
            _STORED if self.storage.record_reports(request_id, reports) else _ALREADY)

    @staticmethod
    def _malformed(reports: list[tuple[int, bool, Any]]) -> Optional[Reply]:
        """A 400 reply when a report is malformed: an empty result, an error not in UTF-8."""
        for index, failed, payload in reports:
            if not nbytes(payload):
                return text_reply(400, f"empty report for task {index}")
            if failed:
                try:
                    bytes(payload).decode("utf-8")
                except UnicodeDecodeError:
                    return text_reply(400, f"the error text of task {index} must be UTF-8")
        return None


def _frames_reply(frames: Sequence[tuple[int, int, Any]], held: bool = False) -> Reply:
    return Reply(200, pack_frames(frames), "application/octet-stream", held=held)


def _seconds_ran(frames: Sequence[tuple[int, int, memoryview]]
                 ) -> Optional[list[tuple[int, float]]]:
    """(index, seconds ``f`` ran) of the ``RAN`` frames; None when one is malformed."""
    ran = []
    for index, kind, payload in frames:
        if kind != RAN:
            continue
        if payload.nbytes != SECONDS.size:
            return None
        (seconds,) = SECONDS.unpack(payload)
        if not 0 <= seconds < float("inf"):
            return None
        ran.append((index, seconds))
    return ran


def _digest_of(body: Any) -> str:
    """The hex SHA-256 of a received body: bytes-like, or a file of a large result."""
    if isinstance(body, PayloadFile):
        digest = hashlib.sha256()
        for piece in body.chunks(ALONE_BYTES):
            digest.update(piece)
        return digest.hexdigest()
    return body_digest(body)
