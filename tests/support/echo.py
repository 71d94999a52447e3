"""A TCP echo server and its client, for the relay and tunnel tests.

``exchange`` is shipped as source to the head node in the cluster tests, so it
uses only ``socket`` and ``threading`` and runs on Python 3.6.
"""

import contextlib
import socket
import threading


@contextlib.contextmanager
def echo_server(greeting=b""):
    """The port of a server on 127.0.0.1 that sends back what it receives.

    It sends ``greeting`` first, which tells servers apart, and ends each
    connection when its client has ended its side. A client that goes away
    first (a reset, or a socket no longer connected when the server ends its
    side) ends its connection quietly.
    """
    listener = socket.create_server(("127.0.0.1", 0))

    def echo(connection):
        with connection:
            try:
                connection.sendall(greeting)
                while True:
                    data = connection.recv(1 << 18)
                    if not data:
                        connection.shutdown(socket.SHUT_WR)
                        return
                    connection.sendall(data)
            except OSError:  # the client went first (ENOTCONN, a reset): nothing to echo to
                return

    def accept():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    with listener:
        yield listener.getsockname()[1]


def exchange(host, port, payload):
    """Send ``payload`` to ``host:port``, end our side, and return all that comes back."""
    with socket.create_connection((host, port), timeout=60) as connection:
        def send():
            connection.sendall(payload)
            connection.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while True:
            data = connection.recv(1 << 20)
            if not data:
                break
            received += data
        sender.join()
    return bytes(received)


def cut_off(connection):
    """True when ``connection`` ends (EOF or reset) without anything more to read."""
    try:
        return connection.recv(100) == b""
    except ConnectionResetError:
        return True
