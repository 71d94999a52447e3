"""The relay that sheepdog runs on the head node for the "tunnel" callback route.

Compute nodes often cannot connect to the caller (a laptop behind NAT), but
they can reach the head node, and the caller already holds an SSH connection
to it. ``tunnel.py`` asks that sshd for a reverse port forward back to the
caller's server; sshd binds it on the head node's loopback only (its default
``GatewayPorts no``), where compute nodes cannot reach it. This relay listens
where workers reach the head node and pipes each connection it accepts to that
loopback port.

Where workers reach it: the address the caller names, else the head node's
own address, the one its fully qualified name resolves to there
(:func:`listening_address`). Only when that name resolves to a loopback
address (``127.0.1.1`` in many ``/etc/hosts``), which says nothing of the
way in, does it listen on every address.

It cannot tell a worker from anyone else who reaches that port (the bytes
are TLS, end to end), so it bounds what anyone can hold: at most
``MAX_PER_PEER`` connections from one address and ``MAX_CONNECTIONS`` in all
(more are closed as soon as they are accepted), and a connection that sends
nothing within ``FIRST_BYTE_SECONDS`` is closed before the relay opens the
forward for it. A worker's TLS client speaks first, at once. Beyond that,
the caller's server closes any piped connection that does not sign a
request within a few seconds (``server/admission.py``), which ends its pipe
here too.

One relay serves every tunnel of an SSH connection, because each relay takes
one session of the connection and sshd allows only a few (``MaxSessions``, 10
by default) that qsub, qstat and SFTP need too. It reads one command a line
on stdin and answers each on stdout::

    forward FORWARD_PORT [PREFERRED_PORT [ADDRESS]]
                            ->  sheepdog-relay HOST PORT FORWARD_PORT
                            or  sheepdog-relay-error FORWARD_PORT MESSAGE
    close FORWARD_PORT      ->  sheepdog-relay-closed FORWARD_PORT

``forward`` opens a listener on ADDRESS (an IPv4 address; without one, or
``-``, the head node's own, as above), on PREFERRED_PORT when it is
free within a few seconds (so that a relay restarted after the SSH connection
dropped keeps the address that running workers know), else on any free port.
HOST is the head node's name, or ADDRESS when the caller gave one. The third
word is new in 0.5; the relay is shipped by the caller that speaks to it, so
both ends always speak the same version.
``close`` stops that listener and cuts its connections. The caller's end of
this protocol is ``relay_client.py``.

The program is :func:`relay` and :func:`listening_address`, shipped as source (:data:`SOURCE`) in a one-line
``python3 -c`` command (:func:`command`) over the SSH connection itself, so it
must stay standard library only, run on Python 3.6, and import what it needs
inside itself. It exits as soon as its stdin reaches EOF, which happens when
its SSH channel or the whole connection closes: it never outlives the caller,
and it writes no files.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
from typing import Optional

#: ``sheepdog-relay HOST PORT FORWARD_PORT``: workers reach FORWARD_PORT at HOST:PORT.
LISTENING = "sheepdog-relay"
#: ``sheepdog-relay-error FORWARD_PORT MESSAGE``: the relay cannot listen for FORWARD_PORT.
REFUSED = "sheepdog-relay-error"
#: ``sheepdog-relay-closed FORWARD_PORT``: the relay no longer listens for FORWARD_PORT.
CLOSED = "sheepdog-relay-closed"
#: How long the relay tries for the port it was asked for before it takes any.
PREFERRED_PORT_SECONDS = 3.0
#: Connections one address may hold through the relay (a compute node runs many workers).
MAX_PER_PEER = 256
#: Connections all addresses together may hold (two threads of the relay each).
MAX_CONNECTIONS = 2048
#: Seconds a connection may stay silent before the relay closes it; a TLS client speaks first.
FIRST_BYTE_SECONDS = 5.0


def listening_address(host: str) -> str:
    """Where the relay listens unless told: the address ``host`` resolves to, if it
    is not a loopback one, else every address (``0.0.0.0``)."""
    import socket

    try:
        found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return "0.0.0.0"
    for _family, _type, _protocol, _name, sockaddr in found:
        address = str(sockaddr[0])
        if not address.startswith("127."):
            return address
    return "0.0.0.0"


def relay() -> None:
    """Serve the commands on stdin (see the module's docstring) until it reaches EOF.

    One thread, this one, reads the commands and accepts connections, so that
    a listener is only ever closed by the thread that accepts on it; each
    connection waits for its first bytes, and is then piped, in two threads
    of its own. Long because the program ships as this one function's source,
    with its helpers nested inside it.
    """
    import os
    import selectors
    import socket
    import threading
    import time

    chunk_bytes = 256 * 1024
    host = socket.getfqdn()
    own_address = listening_address(host)
    selector = selectors.DefaultSelector()
    listeners = {}  # type: dict[int, socket.socket]  # by forward port
    names = {}  # type: dict[int, str]  # the HOST of each listener's answer, by forward port
    pending = {}  # type: dict[int, tuple[int, str, float]]  # preferred port, address, deadline
    connections = {}  # type: dict[int, set[socket.socket]]  # both ends, by forward port
    held = {}  # type: dict[str, int]  # connections accepted and not yet ended, by address
    connections_lock = threading.Lock()  # guards connections and held

    def say(*words: object) -> None:
        os.write(1, (" ".join(str(word) for word in words) + "\n").encode())

    def listen(address: str, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((address, port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)  # a connection reset before accept must not block us
        return listener

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        try:
            while True:
                received = source.recv_into(buffer)
                if not received:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(view[:received])
        except OSError:
            cut(source, sink)  # wakes the other direction's recv

    def cut(*ends: socket.socket) -> None:
        for end in ends:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve(worker: socket.socket, peer: str, forward_port: int) -> None:
        try:
            worker.settimeout(FIRST_BYTE_SECONDS)
            try:
                first = worker.recv(chunk_bytes)
            except OSError:  # silent for too long (socket.timeout), or reset
                first = b""
            if first:
                worker.settimeout(None)
                relay_to_caller(worker, first, forward_port)
        finally:
            worker.close()
            with connections_lock:
                held[peer] -= 1
                if not held[peer]:
                    del held[peer]

    def relay_to_caller(worker: socket.socket, first: bytes, forward_port: int) -> None:
        try:
            caller = socket.create_connection(("127.0.0.1", forward_port))
        except OSError:
            return
        try:
            caller.sendall(first)
        except OSError:
            caller.close()
            return
        with connections_lock:
            ends = connections.get(forward_port)
            if ends is not None:
                ends.update((worker, caller))
        if ends is not None:  # else the forward closed while we connected
            for end in (worker, caller):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = threading.Thread(target=pipe, args=(worker, caller), daemon=True)
            upstream.start()
            pipe(caller, worker)
            upstream.join()
            with connections_lock:
                ends.difference_update((worker, caller))
        caller.close()

    def accept(forward_port: int) -> None:
        try:
            worker, (peer, _) = listeners[forward_port].accept()
        except BlockingIOError:  # the connection was reset before we took it
            return
        except OSError:  # no file descriptors left: let some connections end
            time.sleep(0.05)
            return
        with connections_lock:
            room = held.get(peer, 0) < MAX_PER_PEER and sum(held.values()) < MAX_CONNECTIONS
            if room:
                held[peer] = held.get(peer, 0) + 1
        if not room:
            worker.close()
            return
        worker.setblocking(True)
        threading.Thread(target=serve, args=(worker, peer, forward_port), daemon=True).start()

    def open_pending() -> None:
        for forward_port, (preferred_port, address, deadline) in list(pending.items()):
            try:
                listener = listen(address, preferred_port)
            except OSError:
                if time.monotonic() < deadline:
                    continue  # the relay before this one may be on its way out
                try:
                    listener = listen(address, 0)
                except OSError as error:
                    del pending[forward_port]
                    say(REFUSED, forward_port, error)
                    continue
            del pending[forward_port]
            listeners[forward_port] = listener
            with connections_lock:
                connections[forward_port] = set()
            selector.register(listener, selectors.EVENT_READ, forward_port)
            names[forward_port] = host if address == own_address else address
            say(LISTENING, names[forward_port], listener.getsockname()[1], forward_port)

    def close(forward_port: int) -> None:
        pending.pop(forward_port, None)
        listener = listeners.pop(forward_port, None)
        names.pop(forward_port, None)
        if listener is not None:
            selector.unregister(listener)
            listener.close()
        with connections_lock:
            ends = connections.pop(forward_port, set())
        cut(*ends)
        say(CLOSED, forward_port)

    def obey(line: str) -> None:
        words = line.split()
        address = words.pop() if len(words) == 4 else "-"
        if len(words) not in (2, 3) or not all(word.isdigit() for word in words[1:]):
            say(REFUSED, "-", "cannot read the command", repr(line))
            return
        verb, forward_port = words[0], int(words[1])
        if address != "-" and not is_ipv4(address):
            say(REFUSED, forward_port, "not an IPv4 address:", address)
        elif verb == "close":
            close(forward_port)
        elif verb != "forward":
            say(REFUSED, forward_port, "no such command:", verb)
        elif forward_port in listeners:  # asked again: the same listener
            say(LISTENING, names[forward_port], listeners[forward_port].getsockname()[1],
                forward_port)
        elif forward_port not in pending:
            preferred_port = int(words[2]) if len(words) == 3 else 0
            waits = PREFERRED_PORT_SECONDS if preferred_port else 0.0
            pending[forward_port] = (preferred_port, own_address if address == "-" else address,
                                     time.monotonic() + waits)

    def is_ipv4(address: str) -> bool:
        try:
            return socket.inet_aton(address) is not None and address.count(".") == 3
        except OSError:
            return False

    selector.register(0, selectors.EVENT_READ, None)
    unread = b""
    while True:
        open_pending()
        for key, _ in selector.select(0.1 if pending else None):
            if key.data is not None:
                if key.data in listeners:  # unless a command closed it just now
                    accept(key.data)
                continue
            data = os.read(0, 65536)
            if not data:
                os._exit(0)  # ends every thread and closes every socket at once
            lines = (unread + data).split(b"\n")
            unread = lines.pop()
            for line in lines:
                if line.strip():
                    obey(line.decode(errors="replace"))


#: The relay as a program: ``python3 -c SOURCE``.
SOURCE = (
    f"LISTENING = {LISTENING!r}\n"
    f"REFUSED = {REFUSED!r}\n"
    f"CLOSED = {CLOSED!r}\n"
    f"PREFERRED_PORT_SECONDS = {PREFERRED_PORT_SECONDS!r}\n"
    f"MAX_PER_PEER = {MAX_PER_PEER!r}\n"
    f"MAX_CONNECTIONS = {MAX_CONNECTIONS!r}\n"
    f"FIRST_BYTE_SECONDS = {FIRST_BYTE_SECONDS!r}\n\n"
    f"{inspect.getsource(listening_address)}\n"
    f"{inspect.getsource(relay)}\n"
    "relay()\n"
)


def command(python: str) -> str:
    """The shell command that starts the relay with the head node's ``python``.

    The source travels base64-encoded on one line, so that every login shell
    (sh, bash, csh, tcsh, fish) passes it on unchanged; the comment names it
    in ``ps``. ``python`` is used as written: a path, or a command with
    arguments.
    """
    encoded = base64.b64encode(SOURCE.encode()).decode()
    program = f'import base64; exec(base64.b64decode("{encoded}"))  # {LISTENING}'
    return f"{python} -c '{program}'"


def forward_command(forward_port: int, preferred_port: int = 0,
                    address: Optional[str] = None) -> bytes:
    """The line that asks the relay to listen for ``127.0.0.1:forward_port``, on
    ``address`` (an IPv4 address), by default the head node's own."""
    return f"forward {forward_port:d} {preferred_port:d} {address or '-'}\n".encode()


def close_command(forward_port: int) -> bytes:
    """The line that asks the relay to stop listening for ``forward_port``."""
    return f"close {forward_port:d}\n".encode()


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer of the relay, about the listener for ``forward_port``.

    It listens at ``address``, or could not listen (``error``), or stopped
    listening (neither).
    """

    forward_port: int
    address: Optional[tuple[str, int]] = None
    error: Optional[str] = None


def parse_answer(line: str) -> Optional[Answer]:
    """The relay's answer on ``line``, or None for any other line.

    Other lines are expected: a login script on the head node may print its
    own output before the relay starts.
    """
    words = line.split()
    if len(words) == 4 and words[0] == LISTENING and words[2].isdigit() and words[3].isdigit():
        return Answer(int(words[3]), address=(words[1], int(words[2])))
    if len(words) >= 2 and words[0] == REFUSED and words[1].isdigit():
        return Answer(int(words[1]), error=" ".join(words[2:]) or "no reason given")
    if len(words) == 2 and words[0] == CLOSED and words[1].isdigit():
        return Answer(int(words[1]))
    return None
