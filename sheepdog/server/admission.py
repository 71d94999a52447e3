"""Which connections have not yet proven themselves, and which of them to close first.

A connection is *unproven* from the moment it is accepted until a request on
it passes the signature check of ``Callbacks.admit`` (the handler then calls
:func:`mark_authenticated`). Only unproven connections are counted against
the caps of ``connections.py``; a proven one counts against nothing, so a
worker that signs its requests is never refused for want of room, however
many connections others hold.

When a newcomer would exceed a cap, the server closes the oldest unproven
connection in its way rather than the newcomer (unless that one is still in
its first ``HANDSHAKE_GRACE_SECONDS``: then the newcomer is closed, and a
worker's client tries again; a burst of workers through one tunnel would
otherwise close its own handshakes, each accept turn those of the turn
before), preferring idle connections
whose requests did not authenticate (a health check, a request with a wrong
signature, a dashboard reader's) to those still in their TLS handshake or
first headers. A connection whose request is being answered is neither
counted nor closed until the answer is sent (the body deadline of
``connections.py`` bounds how long that takes). So idle connections, however many and however often renewed,
never keep a new worker out: to close a worker's connection before it
authenticates, others would have to open as many connections as the cap
while its TLS handshake and first request are under way (a few
milliseconds), and any unproven connection is closed anyway once its
deadline passes without a request.

Everything here runs on the server's I/O loop; only :func:`mark_authenticated`
may be called from the handler of any server of the process, so the map from
streams to their ledgers is guarded by a lock. This module imports no
Tornado, so that ``host.py`` can read its defaults.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # Tornado is imported when a server starts; host.py reads the defaults
    import tornado.httputil
    import tornado.iostream

#: Seconds an unproven connection gets for its TLS handshake and first request's headers.
HANDSHAKE_SECONDS = 5.0
#: Seconds in which a new connection is not closed to make room: the newcomer gives way.
HANDSHAKE_GRACE_SECONDS = 2.0
#: Unproven connections one peer address may hold (a proven one counts against nothing).
MAX_UNPROVEN_PER_PEER = 128
#: Unproven connections all peers together may hold.
MAX_UNPROVEN = 512

#: The streams of every guarded server of this process, to their ledgers.
_LEDGERS: dict[tornado.iostream.IOStream, "Ledger"] = {}
_LEDGERS_LOCK = threading.Lock()


def mark_authenticated(connection: Optional[tornado.httputil.HTTPConnection]) -> None:
    """Count ``connection`` no more against the caps on unproven connections.

    Called by a handler once a request on the connection carried a valid
    signature; a connection of a server without a ledger is left alone.
    """
    stream = getattr(connection, "stream", None)
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.get(stream) if stream is not None else None
    if ledger is not None and stream is not None:
        ledger.discard(stream)


class _Queue:
    """Unproven streams oldest first: idle ones whose requests did not authenticate
    apart from those still silent."""

    def __init__(self) -> None:
        self.silent: collections.OrderedDict[tornado.iostream.IOStream, None] = (
            collections.OrderedDict())
        self.heard: collections.OrderedDict[tornado.iostream.IOStream, None] = (
            collections.OrderedDict())

    def __len__(self) -> int:
        return len(self.silent) + len(self.heard)

    def first_to_close(self) -> tornado.iostream.IOStream:
        return next(iter(self.heard or self.silent))

    def discard(self, stream: tornado.iostream.IOStream) -> None:
        self.silent.pop(stream, None)
        self.heard.pop(stream, None)


class Ledger:
    """The unproven connections of one server, per peer address and in all,
    within ``per_peer`` and ``total``."""

    def __init__(self, per_peer: int, total: int, grace: Optional[float] = None) -> None:
        self.per_peer = per_peer
        self.total = total
        self.grace = grace  # None: HANDSHAKE_GRACE_SECONDS
        self._all = _Queue()
        self._by_peer: dict[str, _Queue] = {}
        self._peer_of: dict[tornado.iostream.IOStream, str] = {}
        self._answering: set[tornado.iostream.IOStream] = set()
        self._added: dict[tornado.iostream.IOStream, float] = {}  # when, on the monotonic clock

    def __len__(self) -> int:
        return len(self._all)

    def in_its_grace(self, stream: tornado.iostream.IOStream) -> bool:
        """Whether ``stream`` is silent and was accepted less than the grace
        (``HANDSHAKE_GRACE_SECONDS``) ago: most likely a worker amid its TLS handshake."""
        added = self._added.get(stream)
        grace = HANDSHAKE_GRACE_SECONDS if self.grace is None else self.grace
        return (added is not None and self.is_silent(stream)
                and time.monotonic() - added < grace)

    def count(self, peer: str) -> int:
        queue = self._by_peer.get(peer)
        return len(queue) if queue is not None else 0

    def in_the_way(self, peer: str, newcomers: int = 1) -> Optional[tornado.iostream.IOStream]:
        """The connection to close so that ``newcomers`` more from ``peer`` fit, if any."""
        if self.count(peer) + newcomers > self.per_peer:
            return self._by_peer[peer].first_to_close()
        if len(self._all) + newcomers > self.total:
            return self._all.first_to_close()
        return None

    def peer_of(self, stream: tornado.iostream.IOStream) -> Optional[str]:
        return self._peer_of.get(stream)

    def add(self, stream: tornado.iostream.IOStream, peer: str) -> None:
        """Count a new connection as unproven and silent."""
        self._peer_of[stream] = peer
        self._added[stream] = time.monotonic()
        self._all.silent[stream] = None
        self._by_peer.setdefault(peer, _Queue()).silent[stream] = None
        with _LEDGERS_LOCK:
            _LEDGERS[stream] = self

    def is_silent(self, stream: tornado.iostream.IOStream) -> bool:
        """True while ``stream`` is unproven and has sent no request's headers."""
        return stream in self._all.silent

    def answering(self, stream: tornado.iostream.IOStream) -> None:
        """``stream`` sent a request's headers: neither count nor close it until it is
        answered (:meth:`idle`), unless the request proves it."""
        peer = self._peer_of.get(stream)
        if peer is None or stream in self._answering:
            return
        self._all.discard(stream)
        self._by_peer[peer].discard(stream)
        if not self._by_peer[peer]:
            del self._by_peer[peer]
        self._answering.add(stream)

    def idle(self, stream: tornado.iostream.IOStream) -> None:
        """``stream``'s request was answered and it did not prove itself: count it again,
        as the newest of those heard from (the caller then makes room for it)."""
        peer = self._peer_of.get(stream)
        if peer is None or stream not in self._answering:
            return
        self._answering.discard(stream)
        self._all.heard[stream] = None
        self._by_peer.setdefault(peer, _Queue()).heard[stream] = None

    def discard(self, stream: tornado.iostream.IOStream) -> None:
        """Count ``stream`` no more: it authenticated, or it closed."""
        with _LEDGERS_LOCK:
            _LEDGERS.pop(stream, None)
        peer = self._peer_of.pop(stream, None)
        self._added.pop(stream, None)
        if peer is None:
            return
        self._answering.discard(stream)
        self._all.discard(stream)
        queue = self._by_peer.get(peer)
        if queue is not None:
            queue.discard(stream)
            if not queue:
                del self._by_peer[peer]
