"""The callback protocol: what each worker request means and how it is answered.

Kept apart from any web framework so that the Flask app and the native
Tornado handler (``server.py``) answer every request identically, and so that
the fast path costs no more than parsing a path, one HMAC over a few header
values (checked once, in :meth:`Callbacks.admit`) and one SQLite statement.

Routes, each signed by the worker under the request's own key (see
``protocol``). ``<tasks>`` names a chunk of tasks by index, as in ``7`` or
``1-200,205``::

    GET  /requests/<rid>/function               the pickled function and namespace
    GET  /requests/<rid>/tasks/<tasks>          their pickled arguments, as frames
    POST /requests/<rid>/tasks/<tasks>/start    the tasks started running
    POST /requests/<rid>/tasks/<tasks>/heartbeat  the tasks are still running
    POST /requests/<rid>/tasks/<tasks>/killing  the scheduler warned it will kill them
    POST /requests/<rid>/results                results, errors and output tails, as frames
    POST /requests/<rid>/tasks/<i>/result       body: one pickled result (how workers
                                                send one of 1 MB or more)
    POST /requests/<rid>/tasks/<i>/error        body: one traceback, UTF-8
    POST /requests/<rid>/tasks/<i>/output       body: the task's output tails, as frames
    POST /requests/<rid>/tasks/<i>/lost         body: how the task's process ended, UTF-8
                                                (it crashed; its worker went on)

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
parts in which arguments kept in files (:class:`~sheepdog.payloads.PayloadFile`)
are named rather than read, so the host streams them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional, Protocol, Sequence, Union

from .payloads import SPILL_BYTES, PayloadFile
from .storage import DiskFullError, Storage
from .protocol import (ARGUMENTS, DIGEST_HEADER, DISK_FULL_STATUS, ERROR, OUTPUT,
                       REPORT_FLOOR_BYTES, RESULT, STDERR, STDOUT, body_digest, nbytes,
                       pack_frames, parse_index_spec, signed_digest, unpack_frames)

log = logging.getLogger(__name__)

#: Largest request body accepted (a pickled result), unless the caller says otherwise.
DEFAULT_MAX_BODY_BYTES = 1 << 30

#: The most tasks one request may name.
MAX_TASKS_PER_REQUEST = 100_000

_ROUTE = re.compile(
    r"/requests/(?P<rid>\d{1,18})/(?:(?P<function>function)|(?P<results>results)|"
    r"tasks/(?P<spec>[0-9,-]{1,100000})(?:/(?P<action>[a-z]+))?)"
)
_CHUNK_ACTIONS = ("start", "heartbeat", "killing")
_SINGLE_ACTIONS = ("result", "error", "output", "lost")
#: Routes whose bodies are accepted up to REPORT_FLOOR_BYTES whatever the limit.
_FLOOR_ACTIONS = ("error", "output", "lost")
#: Output frame kinds and the stream each names in storage.
_STREAMS = {OUTPUT: "stdout and stderr", STDOUT: "stdout", STDERR: "stderr"}


class Headers(Protocol):
    """A request's headers, looked up by name (Tornado's and Werkzeug's both do)."""

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


class Route(NamedTuple):
    """A request whose signature was checked: what it asks for, and the body it vouches for."""

    match: "re.Match[str]"
    request_id: int
    digest: str


class Callbacks:
    """Answers worker requests from one :class:`Storage`."""

    def __init__(self, storage: Storage, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.storage = storage
        self.max_body_bytes = max_body_bytes
        self._secrets: dict[int, bytes] = {}

    @property
    def largest_body_bytes(self) -> int:
        """The largest body any route accepts: what the host must be ready to read."""
        return max(self.max_body_bytes, REPORT_FLOOR_BYTES)

    def body_limit(self, path: str) -> int:
        """The largest body accepted on ``path``."""
        match = _ROUTE.fullmatch(path)
        if match is not None and match["action"] in _FLOOR_ACTIONS:
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
        if method != "POST" or not length.isdigit() or int(length) < SPILL_BYTES:
            return None
        match, request_id = route.match, route.request_id
        spec = match["spec"] or ""
        if match["action"] != "result" or not spec.isdigit() or len(spec) > 18:
            return None
        index = int(spec)
        return (request_id, index) if self.storage.task_exists(request_id, index) else None

    def _authorised_route(self, method: str, path: str, headers: Headers) -> Union[Reply, "Route"]:
        """The route of a signed request, or the refusal."""
        match = _ROUTE.fullmatch(path)
        if match is None:
            return text_reply(404, "no such route")
        request_id = int(match["rid"])
        secret = self._secret(request_id)
        if secret is None:
            return text_reply(404, "no such request")
        digest = signed_digest(secret, method, path, headers.get("Authorization"),
                               headers.get(DIGEST_HEADER))
        if digest is None:
            return _UNAUTHORISED
        return Route(match, request_id, digest)

    def _respond(self, method: str, path: str, headers: Headers, body: Any,
                 digest: Optional[str], route: Optional["Route"]) -> Reply:
        if path == "/" and method in ("GET", "HEAD"):
            return text_reply(200, "sheepdog server")
        if route is None:
            checked = self._authorised_route(method, path, headers)
            if isinstance(checked, Reply):
                return checked
            route = checked
        match, request_id, signed = route
        if (digest or _digest_of(body)) != signed:
            return text_reply(400, "the body does not match its signed digest")
        if match["function"]:
            if method != "GET":
                return text_reply(405, "use GET", Allow="GET")
            return Reply(200, self.storage.function(request_id) or b"", "application/octet-stream")
        if match["results"]:
            if method != "POST":
                return text_reply(405, "use POST", Allow="POST")
            return self._results(request_id, body)
        indices = parse_index_spec(match["spec"], MAX_TASKS_PER_REQUEST)
        if indices is None:
            return text_reply(404, "no such tasks")
        action = match["action"]
        if action is None:
            if method != "GET":
                return text_reply(405, "use GET", Allow="GET")
            arguments = self.storage.task_arguments(request_id, indices)
            if len(arguments) != len(set(indices)):
                return text_reply(404, "no such task")
            cancelled = self.storage.cancelled_among(request_id, indices)  # never to run
            return Reply(200, pack_frames((i, ARGUMENTS, arguments[i]) for i in indices
                                          if i not in cancelled),
                         "application/octet-stream")
        if action not in _CHUNK_ACTIONS + _SINGLE_ACTIONS:
            return text_reply(404, "no such route")
        if method != "POST":
            return text_reply(405, "use POST", Allow="POST")
        limit = self.body_limit(path)
        if len(body) > limit:
            return text_reply(413, f"body over the limit of {limit} bytes")
        if action in _CHUNK_ACTIONS:
            return self._chunk_action(request_id, indices, action)
        if len(indices) != 1 or not self.storage.task_exists(request_id, indices[0]):
            return text_reply(404, "no such task")
        if action == "output":
            return self._output(request_id, indices[0], body)
        if action == "lost":
            return self._lost(request_id, indices[0], body)
        return self._report(request_id, indices[0], action, body)

    def _chunk_action(self, request_id: int, indices: list[int], action: str) -> Reply:
        update = {"start": self.storage.mark_running, "heartbeat": self.storage.heartbeat,
                  "killing": self.storage.note_kill_notice}[action]
        update(request_id, indices)
        return _STORED

    def _results(self, request_id: int, body: Any) -> Reply:
        """A batch of framed results, errors and output tails."""
        try:
            frames = unpack_frames(body)
        except ValueError as error:
            return text_reply(400, f"malformed results: {error}")
        reports = [(index, kind == ERROR, payload) for index, kind, payload in frames
                   if kind in (RESULT, ERROR)]
        outputs = [(index, _STREAMS[kind], payload) for index, kind, payload in frames
                   if kind in _STREAMS]
        if len(reports) + len(outputs) != len(frames) or not frames:
            return text_reply(400, "malformed results: frames other than results, errors "
                                   "and outputs, or none")
        return self._malformed(reports) or text_reply(
            200, f"stored {self.storage.record_reports(request_id, reports, outputs)} "
                 f"of {len(reports)}")

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

    def _lost(self, request_id: int, index: int, body: Any) -> Reply:
        """A task whose process crashed: lost, and retryable unless its kill was announced."""
        try:
            reason = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return text_reply(400, f"the reason why task {index} was lost must be UTF-8")
        if not reason:
            return text_reply(400, f"empty reason for task {index}")
        recorded = self.storage.record_lost(request_id, index, reason, retryable=None)
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


def _digest_of(body: Any) -> str:
    """The hex SHA-256 of a received body: bytes-like, or a file of a large result."""
    if isinstance(body, PayloadFile):
        digest = hashlib.sha256()
        for piece in body.chunks(SPILL_BYTES):
            digest.update(piece)
        return digest.hexdigest()
    return body_digest(body)
