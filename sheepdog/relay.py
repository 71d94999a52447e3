"""The relay that sheepdog runs on the head node for the "tunnel" callback route.

Compute nodes often cannot connect to the caller (a laptop behind NAT), but
they can reach the head node, and the caller already holds an SSH connection
to it. ``tunnel.py`` asks that sshd for a reverse port forward back to the
caller's server; sshd binds it on the head node's loopback only (its default
``GatewayPorts no``), where compute nodes cannot reach it. This relay listens
on every address of the head node and pipes each connection it accepts to that
loopback port.

The program is :func:`relay`, shipped as source (:data:`SOURCE`) in a one-line
``python3 -c`` command (:func:`command`) over the SSH connection itself, so it
must stay standard library only, run on Python 3.6, and import what it needs
inside itself. It announces its address in one line on stdout, and exits as soon as
its stdin reaches EOF, which happens when its SSH channel or the whole
connection closes: it never outlives the caller, and it writes no files.
"""

from __future__ import annotations

import base64
import inspect
from typing import Optional

#: The first word of the relay's announcement line, ``sheepdog-relay HOST PORT``.
ANNOUNCEMENT = "sheepdog-relay"


def relay(forward_port: int, preferred_port: int = 0) -> None:
    """Relay connections to ``127.0.0.1:forward_port`` until stdin reaches EOF.

    Listens on ``preferred_port`` when it is free within 3 s (so that a relay
    restarted after the SSH connection dropped keeps the address that running
    workers know), else on any free port.
    """
    import os
    import socket
    import threading
    import time

    chunk_bytes = 256 * 1024

    def listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("0.0.0.0", port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        return listener

    def listen_on_preferred_port() -> socket.socket:
        for _ in range(30):  # the relay before this one may be on its way out
            try:
                return listen(preferred_port)
            except OSError:
                time.sleep(0.1)
        return listen(0)

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
            for end in (source, sink):  # wakes the other direction's recv
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve(worker: socket.socket) -> None:
        try:
            caller = socket.create_connection(("127.0.0.1", forward_port))
        except OSError:
            worker.close()
            return
        for end in (worker, caller):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = threading.Thread(target=pipe, args=(worker, caller), daemon=True)
        upstream.start()
        pipe(caller, worker)
        upstream.join()
        worker.close()
        caller.close()

    def accept(listener: socket.socket) -> None:
        while True:
            try:
                worker, _ = listener.accept()
            except OSError:  # a connection reset before it was accepted, or no fds left
                time.sleep(0.05)
                continue
            threading.Thread(target=serve, args=(worker,), daemon=True).start()

    listener = listen_on_preferred_port() if preferred_port else listen(0)
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
    host = socket.getfqdn()
    os.write(1, "{} {} {}\n".format(ANNOUNCEMENT, host, listener.getsockname()[1]).encode())
    while os.read(0, 65536):
        pass
    os._exit(0)  # ends every thread and closes every socket at once


#: The relay as a program: ``python3 -c SOURCE FORWARD_PORT [PREFERRED_PORT]``.
SOURCE = (
    f"ANNOUNCEMENT = {ANNOUNCEMENT!r}\n\n"
    f"{inspect.getsource(relay)}\n"
    "import sys\n"
    "relay(*map(int, sys.argv[1:3]))\n"
)


def command(python: str, forward_port: int, preferred_port: int = 0) -> str:
    """The shell command that starts the relay with the head node's ``python``.

    The source travels base64-encoded on one line, so that every login shell
    (sh, bash, csh, tcsh, fish) passes it on unchanged; the comment names it
    in ``ps``. ``python`` is used as written: a path, or a command with
    arguments.
    """
    encoded = base64.b64encode(SOURCE.encode()).decode()
    program = f'import base64; exec(base64.b64decode("{encoded}"))  # {ANNOUNCEMENT}'
    return f"{python} -c '{program}' {forward_port:d} {preferred_port:d}"


def parse_announcement(line: str) -> Optional[tuple[str, int]]:
    """``(host, port)`` from the relay's announcement, or None for any other line.

    Other lines are expected: a login script on the head node may print its
    own output before the relay starts.
    """
    words = line.split()
    if len(words) != 3 or words[0] != ANNOUNCEMENT or not words[2].isdigit():
        return None
    return words[1], int(words[2])
