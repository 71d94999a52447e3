"""The "tunnel" callback route: workers call the caller back through the head node.

When compute nodes cannot connect to the caller (a laptop behind NAT), they
can still reach the head node, and the caller already holds an SSH connection
to it. A :class:`Tunnel` carries each worker's connection this way::

    worker -> head node, any address:R   the relay (relay.py), started over SSH
           -> head node, 127.0.0.1:P     sshd's end of our reverse port forward
           -> the SSH connection         one channel per worker connection
           -> 127.0.0.1:local_port       the caller's server, pumped by this module

sshd binds a reverse forward on the head node's loopback only (its default
``GatewayPorts no``), which is why the relay is needed. The tunnels of one
connection share one relay (``relay_client.py``), each with a listener of its
own. The relay dies when its SSH channel or connection closes, so nothing is
left on the head node.

paramiko calls one handler for all the reverse forwards of a connection, so
the forwards of every tunnel that shares a connection are routed here by the
port that sshd bound. A watcher reopens a tunnel whose connection dropped,
asking the new relay for the port the old one had, so that workers that
already know the address can keep using it. It wakes when the relay ends,
which it does when the connection drops.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import weakref
from typing import Any, Callable, Optional

import paramiko

from . import relay_client
from .ssh import CONNECT_TIMEOUT, Connection, SSHError

log = logging.getLogger(__name__)

#: Bytes moved per read, each way, and the largest SSH packet sshd may send us:
#: paramiko's cost is per packet, and its 32 KB default made uploads through a
#: tunnel 1.1-1.4x slower here.
CHUNK_BYTES = 256 * 1024
#: How much sshd may send on a forwarded channel before we acknowledge it;
#: paramiko's 2 MB would cap an upload at 2 MB per round trip to the head node.
WINDOW_BYTES = 16 * 1024 * 1024
#: Longest wait for the relay to answer, and for it to exit.
RELAY_TIMEOUT = 30.0
#: Longest wait between attempts to reopen a tunnel whose connection dropped.
MAX_RETRY_SECONDS = 30.0

_ChannelHandler = Callable[[paramiko.Channel], None]

#: For each SSH transport, who takes the channels of each of its reverse forwards.
_forwards: weakref.WeakKeyDictionary[paramiko.Transport, dict[int, _ChannelHandler]] = (
    weakref.WeakKeyDictionary()
)
_forwards_lock = threading.Lock()


def _forward(transport: paramiko.Transport, handler: _ChannelHandler) -> int:
    """Ask sshd to forward its 127.0.0.1:<a free port> to ``handler``; that port.

    Global requests are made under one lock: paramiko keeps one pending reply
    per transport, so two requests at once could take each other's replies.
    """
    with _forwards_lock:
        routes = _forwards.setdefault(transport, {})

        def route(channel: paramiko.Channel, origin: Any, server: tuple[str, int]) -> None:
            take = routes.get(server[1])
            if take is None:
                channel.close()
            else:
                take(channel)

        port: int = transport.request_port_forward("127.0.0.1", 0, route)
        routes[port] = handler
        return port


def _cancel_forward(transport: paramiko.Transport, port: int) -> None:
    """Stop forwarding ``port``, leaving the other forwards of ``transport`` alone.

    ``Transport.cancel_port_forward`` would also unset the one handler that
    all the forwards of the transport share.
    """
    with _forwards_lock:
        _forwards.get(transport, {}).pop(port, None)
        if transport.is_active():
            transport.global_request("cancel-tcpip-forward", ("127.0.0.1", port), wait=True)


def _tune(transport: paramiko.Transport) -> None:
    """Let forwarded channels stream (larger window and packets), and small replies go at once.

    The window and packet sizes apply to every channel the connection opens
    from now on, which only lets them stream faster too.
    """
    transport.default_window_size = max(transport.default_window_size, WINDOW_BYTES)
    transport.default_max_packet_size = max(transport.default_max_packet_size, CHUNK_BYTES)
    if isinstance(transport.sock, socket.socket):  # not a ProxyCommand or ProxyJump channel
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Pump:
    """Moves the bytes of one forwarded channel to and from the caller's server."""

    def __init__(self, channel: paramiko.Channel, local: socket.socket) -> None:
        self.channel = channel
        self.local = local

    def run(self) -> None:
        upload = threading.Thread(target=self._to_local, daemon=True)
        upload.start()
        self._to_channel()
        upload.join()
        self.channel.close()
        self.local.close()

    def _to_local(self) -> None:
        try:
            while True:
                data = self.channel.recv(CHUNK_BYTES)
                if not data:
                    self.local.shutdown(socket.SHUT_WR)
                    return
                self.local.sendall(data)
        except OSError:
            self.abort()

    def _to_channel(self) -> None:
        try:
            while True:
                data = self.local.recv(CHUNK_BYTES)
                if not data:
                    self.channel.shutdown_write()
                    return
                self.channel.sendall(data)
        except OSError:
            self.abort()

    def abort(self) -> None:
        """Wake both directions: a closed channel reads as EOF, a shut socket too."""
        self.channel.close()
        try:
            self.local.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclasses.dataclass
class _Route:
    """One open tunnel: a reverse forward and the relay's listener in front of it."""

    transport: paramiko.Transport
    forward_port: int
    relay: relay_client.Relay
    address: tuple[str, int]

    def alive(self) -> bool:
        return self.relay.alive()  # which it is not once the connection dropped


class Tunnel:
    """Workers reach ``127.0.0.1:local_port`` of this process at :meth:`open`'s address.

    ``python`` is the head node's Python 3 that runs the relay, as a shell
    command. Open a tunnel once per server and keep it while workers may call
    back; :meth:`close` stops its listener on the relay and the forward. Close
    it before its connection: a tunnel reconnects a connection that closes
    under it.
    """

    def __init__(self, connection: Connection, local_port: int, python: str = "python3",
                 timeout: float = RELAY_TIMEOUT) -> None:
        self.connection = connection
        self.local_port = local_port
        self.python = python
        self.timeout = timeout
        self._route: Optional[_Route] = None
        self._port = 0  # the relay's port, asked for again when the tunnel reopens
        self._pumps: set[_Pump] = set()
        self._pumps_lock = threading.Lock()
        self._lock = threading.Lock()  # held while the tunnel opens, closes or reopens
        self._closed = threading.Event()
        self._wake = threading.Event()  # set when the relay ends or the tunnel closes
        self._watcher: Optional[threading.Thread] = None

    @property
    def address(self) -> Optional[tuple[str, int]]:
        """Where workers connect (head node, relay port), or None while the tunnel is not open."""
        route = self._route
        return route.address if route else None

    def open(self) -> tuple[str, int]:
        """Start the tunnel, or reopen it if it broke; ``(host, port)`` for workers."""
        with self._lock:
            self._closed.clear()
            address = self._ensure()
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(
                    target=self._watch, name=f"sheepdog-tunnel-{self.local_port}", daemon=True)
                self._watcher.start()
            return address

    def close(self) -> None:
        """Stop the relay's listener and the forward, and cut the connections in flight."""
        with self._lock:
            self._closed.set()
            route, self._route = self._route, None
        self._wake.set()
        with self._pumps_lock:
            pumps, self._pumps = self._pumps, set()
        if route is not None:
            self._stop(route)
        for pump in pumps:
            pump.abort()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(self.timeout)

    def __enter__(self) -> "Tunnel":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure(self) -> tuple[str, int]:
        """The live route's address, opening a new route when there is none."""
        route = self._route
        if route is not None and route.alive():
            return route.address
        if route is not None:
            log.warning("the tunnel through %s broke; reopening it", self.connection.target)
            self._route = None
            self._stop(route)
        self._route = self._start(self._port)
        self._port = self._route.address[1]
        return self._route.address

    def _watch(self) -> None:
        """Reopen the tunnel whenever it breaks, until it is closed."""
        delay = 1.0
        while not self._closed.is_set():
            self._wake.clear()
            route = self._route
            if route is not None and route.alive():
                self._wake.wait()  # until the relay, or the connection, ends
                delay = 1.0
                continue
            with self._lock:
                if self._closed.is_set():
                    return
                try:
                    self._ensure()
                    continue
                except Exception as error:  # the watcher must outlive any one failure
                    log.warning("the tunnel through %s is down, retrying in %.0f s: %s",
                                self.connection.target, delay, error)
            self._closed.wait(delay)
            delay = min(2 * delay, MAX_RETRY_SECONDS)

    def _start(self, preferred_port: int) -> _Route:
        target = self.connection.target
        transport = self.connection.client().get_transport()
        assert transport is not None
        _tune(transport)
        try:
            forward_port = _forward(transport, self._take)
        except paramiko.SSHException as error:
            raise SSHError(
                f"sshd on {target} refused the reverse port forward ({error}): its "
                f"'AllowTcpForwarding' setting, or a 'no-port-forwarding' option on your key "
                f"in authorized_keys, forbids it. Ask its administrator to allow it, or use "
                f"{{'callback': 'direct'}} when the compute nodes can connect to this machine"
            ) from error
        shared = relay_client.acquire(transport, self.python, str(target), self._wake)
        try:
            address = shared.listen(forward_port, preferred_port, self.timeout)
        except BaseException:
            relay_client.release(shared, self._wake, self.timeout)
            _cancel_forward(transport, forward_port)
            raise
        log.info("tunnel open: workers call %s:%d, relayed on %s to 127.0.0.1:%d here",
                 address[0], address[1], target, self.local_port)
        return _Route(transport, forward_port, shared, address)

    def _stop(self, route: _Route) -> None:
        """Close our listener on the relay, let go of the relay, and cancel the forward."""
        route.relay.stop_listening(route.forward_port, self.timeout)
        relay_client.release(route.relay, self._wake, self.timeout)
        _cancel_forward(route.transport, route.forward_port)

    def _take(self, channel: paramiko.Channel) -> None:
        """Serve a forwarded connection; called on paramiko's thread, so it must not block."""
        threading.Thread(target=self._serve, args=(channel,), daemon=True).start()

    def _serve(self, channel: paramiko.Channel) -> None:
        server = ("127.0.0.1", self.local_port)
        try:
            local = socket.create_connection(server, timeout=CONNECT_TIMEOUT)
        except OSError as error:
            log.warning("the tunnel cannot reach the server on %s:%d: %s", *server, error)
            channel.close()
            return
        local.settimeout(None)
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pump = _Pump(channel, local)
        with self._pumps_lock:
            if self._closed.is_set():
                pump.abort()
                local.close()
                return
            self._pumps.add(pump)
        try:
            pump.run()
        finally:
            with self._pumps_lock:
                self._pumps.discard(pump)
