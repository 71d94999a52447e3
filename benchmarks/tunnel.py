"""The tunnel callback route against a direct TCP connection on loopback.

A small TCP server runs in this process. In one run, each measured both ways:
  direct   this process connects to the server at 127.0.0.1
  tunnel   this process connects to the relay on the head node (the test
           cluster of ci/gridengine-up.sh runs on this machine), so each byte
           travels relay -> sshd -> the SSH connection -> the server
Figures: MB/s of a 50 MB upload (what results do) and download (what arguments
do), medians of 5; the round trip of a 100-byte request and its reply on one
connection, and on a new connection each time (as a worker's call without
keep-alive), medians of 200. The ratio is the tunnel's time over the direct
connection's (for throughput, direct MB/s over tunnel MB/s): 1.0 is parity.

    source /var/lib/sheepdog-test/env
    ip netns exec sheepdog .venv/bin/python benchmarks/tunnel.py [--megabytes 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sheepdog.remote import ssh  # noqa: E402
from sheepdog.remote.tunnel import Tunnel  # noqa: E402

Address = tuple[str, int]
MESSAGE = b"x" * 100


def serve(listener: socket.socket, megabytes: int) -> None:
    """Per connection, by its first byte: u = read all then say b"ok", d = send, e = echo."""
    def one(connection: socket.socket) -> None:
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = connection.recv(1)
            if mode == b"d":
                connection.sendall(bytes(megabytes << 20))
                return
            while True:
                data = connection.recv(1 << 18)
                if not data:
                    break
                if mode == b"e":
                    connection.sendall(data)
            if mode == b"u":
                connection.sendall(b"ok")

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=one, args=(connection,), daemon=True).start()


def connect(address: Address, mode: bytes) -> socket.socket:
    connection = socket.create_connection(address)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.sendall(mode)
    return connection


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def upload(address: Address, payload: bytes) -> float:
    def send() -> None:
        with connect(address, b"u") as connection:
            connection.sendall(payload)
            connection.shutdown(socket.SHUT_WR)
            assert connection.recv(2) == b"ok"
    return timed(send)


def download(address: Address, size: int) -> float:
    def receive() -> None:
        with connect(address, b"d") as connection:
            received = 0
            while True:
                data = connection.recv(1 << 20)
                if not data:
                    break
                received += len(data)
            assert received == size
    return timed(receive)


def reply(connection: socket.socket) -> None:
    connection.sendall(MESSAGE)
    received = b""
    while len(received) < len(MESSAGE):
        received += connection.recv(len(MESSAGE))


def round_trips(address: Address, count: int) -> list[float]:
    with connect(address, b"e") as connection:
        return [timed(lambda: reply(connection)) for _ in range(count)]


def fresh_round_trips(address: Address, count: int) -> list[float]:
    def one() -> None:
        with connect(address, b"e") as connection:
            reply(connection)
    return [timed(one) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("SHEEPDOG_TEST_HOST"))
    parser.add_argument("--user", default=os.environ.get("SHEEPDOG_TEST_USER"))
    parser.add_argument("--key", default=os.environ.get("SHEEPDOG_TEST_KEY"))
    parser.add_argument("--known-hosts", default=os.environ.get("SHEEPDOG_TEST_KNOWN_HOSTS"))
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=200)
    options = parser.parse_args()
    if not options.host:
        parser.error("name the head node with --host (or source /var/lib/sheepdog-test/env)")

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener, options.megabytes), daemon=True).start()
    connection = ssh.Connection(ssh.destination(
        options.host, user=options.user, key_file=options.key, known_hosts=options.known_hosts))
    size = options.megabytes << 20
    payload = os.urandom(size)
    direct: Address = listener.getsockname()[:2]
    with Tunnel(connection, direct[1]) as tunnel:
        routes = {"direct": direct, "tunnel": tunnel.open()}
        transport = connection.client().get_transport()
        print(f"tunnel through {connection.target}, relay at {routes['tunnel'][0]}:"
              f"{routes['tunnel'][1]}, cipher {transport.remote_cipher}")
        ups: dict[str, list[float]] = {name: [] for name in routes}
        downs: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(options.rounds):  # alternating, so that drift hits both alike
            for name, address in routes.items():
                ups[name].append(upload(address, payload))
                downs[name].append(download(address, size))
        rtts = {name: statistics.median(round_trips(address, options.round_trips))
                for name, address in routes.items()}
        fresh = {name: statistics.median(fresh_round_trips(address, options.round_trips))
                 for name, address in routes.items()}
    connection.close()

    mb = options.megabytes
    rows = [
        (f"upload {mb} MB, MB/s", {n: mb / statistics.median(t) for n, t in ups.items()}, True),
        (f"download {mb} MB, MB/s", {n: mb / statistics.median(t) for n, t in downs.items()}, True),
        ("round trip, us", {n: t * 1e6 for n, t in rtts.items()}, False),
        ("connect + round trip, us", {n: t * 1e6 for n, t in fresh.items()}, False),
    ]
    print(f"{'':28s}{'direct':>10s}{'tunnel':>10s}{'ratio':>8s}")
    for label, values, is_rate in rows:
        ratio = (values["direct"] / values["tunnel"] if is_rate
                 else values["tunnel"] / values["direct"])
        print(f"{label:28s}{values['direct']:10.0f}{values['tunnel']:10.0f}{ratio:7.1f}x")


if __name__ == "__main__":
    main()
