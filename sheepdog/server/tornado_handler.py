"""The Tornado request handler that serves the callback protocol (``callbacks.py``).

A request's body is read only after its headers passed ``Callbacks.admit``
(its size, and the signature that proves the sender holds the request's key),
so an oversized or unauthorised body is refused before any of it is read,
whatever its framing. A request that passes marks its connection proven
(``admission.py``), so that it no longer counts against the caps on
connections that have not authenticated.

A large result is received straight into its file; when the disk fills up
meanwhile, the rest of the body is still read (and dropped), so that the
worker hears the 507 that names the disk rather than a closed connection,
which it would retry.

This module imports Tornado; ``host.py`` imports it only when a server starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import logging
import os
import time
from typing import Any, Iterator, Optional

import tornado.http1connection
import tornado.iostream
import tornado.web

from ..storage import diskspace
from ..storage.payloads import CHUNK_BYTES, PayloadFile, write_all
from ..wire.protocol import ALONE_BYTES, DISK_FULL_STATUS, coalesce
from . import admission
from .callbacks import Callbacks, Reply, text_reply
from .wakeups import WorkSignal

log = logging.getLogger(__name__)

#: A large upload that stalls this long is dropped (the worker retries it).
BODY_TIMEOUT_SECONDS = 120
#: How long an idle worker's pull is held open (well within the worker's read timeout),
#: and how often it is asked again while nothing wakes it.
HOLD_SECONDS = 20.0
RECHECK_SECONDS = 5.0
#: The most of a refused request's body that is read (and dropped) to keep its connection.
UNAUTHORISED_READ_BYTES = 4096
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def callback_application(callbacks: Callbacks) -> tornado.web.Application:
    """A Tornado application answering every path with ``callbacks``."""
    return tornado.web.Application([(r"/.*", CallbackHandler, {"callbacks": callbacks})],
                                   log_function=lambda handler: None)


@tornado.web.stream_request_body
class CallbackHandler(tornado.web.RequestHandler):
    """Gathers small bodies in pieces; reads a large one into one buffer (or, for a
    result, into its file) after checking it; streams large replies."""

    SUPPORTED_METHODS = METHODS

    def initialize(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._body: Optional[bytearray] = None
        self._received = 0
        method, path, headers = self.request.method or "", self.request.path, self.request.headers
        admitted = self.callbacks.admit(method, path, headers)
        refusal = admitted if isinstance(admitted, Reply) else None
        self._route = None if isinstance(admitted, Reply) else admitted
        if self._route is not None:  # signed: the connection no longer counts as unproven
            admission.mark_authenticated(self.request.connection)
        length = headers.get("Content-Length", "0")
        small = "Transfer-Encoding" not in headers and length.isdigit() and (
            int(length) <= UNAUTHORISED_READ_BYTES)
        if refusal is not None and small and refusal.status != 413:
            return  # read (at most a few KB) and refused in _handle: the connection stays
        if refusal is not None:  # refused unread; Tornado then closes the connection
            self.set_header("Connection", "close")
            await self._reply(refusal)
            return
        length = headers.get("Content-Length") or "0"
        if int(length) < ALONE_BYTES or self._route is None:
            return  # gathered as it comes
        upload = self.callbacks.result_upload(method, self._route, headers)
        if upload is not None:
            await self._receive_result_file(*upload, int(length))
        else:
            self._body = bytearray(int(length))

    async def _receive_result_file(self, request_id: int, index: int, length: int) -> None:
        """Read a large result straight into its file, then answer and close.

        The connection is taken over from Tornado's HTTP code, so that the
        body is read in large pieces into one reused buffer (Tornado's own
        body reader hands over at most one TLS record at a time). Long because
        the read, the digest, the full disk and the answer share one buffer and
        one file descriptor, which a split would have to pass around.
        """
        descriptor, path = self.callbacks.storage.new_staging_file(request_id, index)
        digest = hashlib.sha256()
        full: list[OSError] = []  # the write that found the disk full

        def absorb(piece: memoryview) -> None:  # in a thread: both release the GIL
            digest.update(piece)
            if full:
                return  # read to the end, so that the worker hears why
            try:
                write_all(descriptor, piece)
            except OSError as error:
                if not diskspace.is_disk_full(error):
                    raise
                full.append(error)
                os.ftruncate(descriptor, 0)  # give the room back at once

        connection = self.request.connection
        assert isinstance(connection, tornado.http1connection.HTTP1Connection)
        stream = connection.detach()
        self._finished = True  # answered below, not through this handler
        # Two buffers: one is written to the file by a thread (os.write
        # releases the GIL) while the next piece is read into the other.
        buffers = [memoryview(bytearray(min(length, CHUNK_BYTES))) for _ in range(2)]
        writing: Optional[asyncio.Future[None]] = None
        try:
            try:
                remaining, turn = length, 0
                while remaining:
                    piece = buffers[turn][:min(remaining, CHUNK_BYTES)]
                    # Tornado reads into any writable buffer, though its hint says bytearray.
                    await asyncio.wait_for(stream.read_into(piece),  # type: ignore[arg-type]
                                           BODY_TIMEOUT_SECONDS)
                    if writing is not None:
                        await writing
                    writing = asyncio.get_running_loop().run_in_executor(
                        None, absorb, piece)
                    remaining -= len(piece)
                    turn = 1 - turn
                if writing is not None:
                    await writing
            finally:
                if writing is not None and not writing.done():
                    await asyncio.wait([writing])
                os.close(descriptor)
            if full:
                message = diskspace.describe(self.callbacks.storage.payloads.root, str(full[0]))
                log.error("result %s of request %s could not be stored: %s",
                          index, request_id, message)
                reply = text_reply(DISK_FULL_STATUS, message)
            else:
                reply = self.callbacks.respond("POST", self.request.path, self.request.headers,
                                               PayloadFile(path, length), digest.hexdigest(),
                                               self._route)
            await stream.write(_raw_response(reply))
        except (tornado.iostream.StreamClosedError, asyncio.TimeoutError) as error:
            log.warning("result %s of request %s: upload not finished: %r",
                        index, request_id, error)
        except Exception:  # the worker sees the connection close, and retries
            log.exception("result %s of request %s could not be stored", index, request_id)
        finally:
            if os.path.exists(path):
                os.remove(path)  # refused or unfinished; an accepted one was moved
            stream.close()

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        if self._body is None:  # a small body, or no length announced
            self._chunks.append(chunk)
            return
        end = self._received + len(chunk)
        self._body[self._received:end] = chunk
        self._received = end

    async def _handle(self, *args: str) -> None:
        body = b"".join(self._chunks) if self._body is None else self._body
        self._chunks, self._body = [], None
        pools = self.callbacks.pools
        looked_in = pools.signal.generation if pools is not None else 0
        reply = self._respond(body)
        if reply.held and pools is not None:
            reply = await self._hold(body, reply, pools.signal, looked_in)
        await self._reply(reply)

    def _respond(self, body: Any) -> Reply:
        return self.callbacks.respond(self.request.method or "GET", self.request.path,
                                      self.request.headers, body, route=self._route)

    async def _hold(self, body: Any, reply: Reply, signal: WorkSignal, looked_in: int
                    ) -> Reply:
        """Hold an idle worker's pull for up to ``HOLD_SECONDS``, asking again whenever
        work may have arrived since it last looked (in generation ``looked_in`` of the
        ``signal``), and every ``RECHECK_SECONDS``; the last answer."""
        deadline = time.monotonic() + HOLD_SECONDS
        while reply.held:
            left = deadline - time.monotonic()
            if left <= 0 or self.request.connection is None:
                break
            await signal.wait(min(left, RECHECK_SECONDS), since=looked_in)
            looked_in = signal.generation
            reply = self._respond(body)
        return reply

    async def _reply(self, reply: Reply) -> None:
        self.set_status(reply.status)
        self.set_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.set_header(name, value)
        if isinstance(reply.body, bytes):
            self.finish(reply.body)
            return
        self.set_header("Content-Length", reply.length)
        for piece in _stream(reply):
            self.write(piece)
            await self.flush()
        self.finish()

    get = head = post = put = delete = patch = options = _handle


def _raw_response(reply: Reply) -> bytes:
    """A whole HTTP/1.1 response for a small reply, ending the connection."""
    assert isinstance(reply.body, bytes)
    headers = {"Content-Type": reply.content_type, "Content-Length": str(len(reply.body)),
               "Connection": "close", **reply.headers}
    lines = [f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


def _stream(reply: Reply) -> Iterator[bytes]:
    """A reply's body in pieces of about ``CHUNK_BYTES``, reading files as it goes."""
    for piece in coalesce(reply.parts, CHUNK_BYTES):
        if isinstance(piece, PayloadFile):
            yield from piece.chunks(CHUNK_BYTES)
        else:
            yield bytes(piece)
