"""The tunnel callback route against the real sshd of the test cluster.

A command run on the head node over SSH plays the worker: it connects to the
address the tunnel announced and talks to an echo server in this process.
"""

import contextlib
import inspect
import os
import re
import subprocess
import time

import pytest

from sheepdog.remote import ssh
from sheepdog.config import resolve
from sheepdog.remote.ssh import SSHError
from sheepdog.remote.tunnel import Tunnel

from ..support.echo import echo_server, exchange

pytestmark = pytest.mark.cluster

#: Run on the head node: ``python3 -c WORKER HOST PORT BYTES CONNECTIONS`` sends
#: BYTES through one connection, then a little through CONNECTIONS at once.
WORKER = f"""
import os, socket, sys, threading
{inspect.getsource(exchange)}
host, port, size, connections = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
payload = os.urandom(size)
assert exchange(host, port, payload) == payload, "the large payload came back changed"
small = [os.urandom(1000 + n) for n in range(connections)]
echoed = [None] * connections
def one(n):
    echoed[n] = exchange(host, port, small[n])
threads = [threading.Thread(target=one, args=(n,)) for n in range(connections)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert echoed == small, "a small payload came back changed"
print("ok")
"""


@pytest.fixture
def connection(cluster_conf):
    """A connection of its own, so that dropping it disturbs no other test."""
    connection = ssh.Connection(ssh.destination_for(resolve(cluster_conf)))
    yield connection
    connection.close()


@pytest.fixture
def echo_port():
    with echo_server() as port:
        yield port


@pytest.fixture
def key_without_forwarding(cluster, tmp_path):
    """A key that the head node accepts with ``no-port-forwarding``, as a strict sshd would."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = f"no-port-forwarding {(tmp_path / 'id_ed25519.pub').read_text().strip()}\n"
    authorized = os.path.join(cluster["home"], ".ssh", "authorized_keys")
    if not os.access(authorized, os.W_OK):
        pytest.skip(f"cannot add a key to {authorized}")
    with open(authorized, "a") as keys:
        keys.write(line)
    yield str(key)
    with open(authorized) as keys:
        kept = [kept for kept in keys if kept != line]
    with open(authorized, "w") as keys:
        keys.writelines(kept)


def _worker(connection, address, size=1000, connections=0):
    host, port = address
    result = connection.run(f"python3 -c {ssh.quote(WORKER)} {host} {port} {size} {connections}")
    return result.stdout.strip() or result.stderr


def _relays(connection):
    """The process ids of this user's relays on the head node."""
    output = connection.run("pgrep -u \"$(id -u)\" -f '[s]heepdog-relay' || true").stdout
    return set(output.split())


def _listeners(connection, ports):
    """For each of ``ports`` that a process on the head node listens on, that process's id."""
    listening = {}
    for line in connection.run("ss -Htlnp").stdout.splitlines():
        words = line.split()
        port = words[3].rpartition(":")[2] if len(words) > 3 else ""
        if port.isdigit() and int(port) in ports:
            listening[int(port)] = set(re.findall(r"pid=(\d+)", line))
    return listening


def _wait_until(condition, seconds=15.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_command_on_the_head_node_reaches_a_server_here_through_the_tunnel(connection, echo_port):
    with Tunnel(connection, echo_port) as tunnel:
        assert _worker(connection, tunnel.open(), size=8 << 20, connections=16) == "ok"


def test_opening_an_open_tunnel_again_keeps_its_address_and_relay(connection, echo_port):
    with Tunnel(connection, echo_port) as tunnel:
        address = tunnel.open()
        relays = _relays(connection)
        assert tunnel.open() == address == tunnel.address
        assert _relays(connection) == relays
        assert _worker(connection, address) == "ok"


def test_tunnels_sharing_a_connection_each_reach_their_own_server(connection):
    with echo_server() as first_port, echo_server() as second_port:
        with Tunnel(connection, first_port) as first, Tunnel(connection, second_port) as second:
            closed = first.open()
            assert closed != second.open()
            first.close()
            assert _worker(connection, second.open(), connections=4) == "ok"
            assert "Connection refused" in _worker(connection, closed)


def test_many_tunnels_on_one_connection_share_one_relay_and_leave_sessions_for_commands(
        connection):
    """sshd allows 10 sessions a connection: a relay each would leave none for qsub or SFTP."""
    remote_path = f"sheepdog-tunnel-test-{os.getpid()}.txt"
    relays = set()
    with contextlib.ExitStack() as servers:
        ports = [servers.enter_context(echo_server()) for _ in range(15)]
        tunnels = [Tunnel(connection, port) for port in ports]
        try:
            addresses = [tunnel.open() for tunnel in tunnels]
            assert connection.run("true").status == 0
            uploaded = connection.upload("through the same connection", remote_path)
            assert connection.run(f"cat {uploaded}").stdout == "through the same connection"
            listeners = _listeners(connection, {port for _, port in addresses})
            assert set(listeners) == {port for _, port in addresses}
            relays = set.union(*listeners.values())
            assert len(relays) == 1 and relays <= _relays(connection)
            assert _worker(connection, addresses[0]) == _worker(connection, addresses[-1]) == "ok"
        finally:
            for tunnel in tunnels:
                tunnel.close()
            connection.run(f"rm -f {remote_path}")
    assert not relays & _relays(connection)


def test_closing_the_tunnel_ends_its_relay_on_the_head_node(connection, echo_port):
    before = _relays(connection)
    tunnel = Tunnel(connection, echo_port)
    address = tunnel.open()
    assert len(_relays(connection) - before) == 1
    tunnel.close()
    assert _relays(connection) == before
    assert "Connection refused" in _worker(connection, address)


def test_the_relay_ends_by_itself_when_the_ssh_connection_drops(
        connection, echo_port, cluster_conf):
    before = _relays(connection)
    with Tunnel(connection, echo_port) as tunnel:
        tunnel.open()
        mine = _relays(connection) - before
        connection.client().get_transport().close()  # no goodbye to sshd, as when a laptop sleeps
        observer = ssh.Connection(ssh.destination_for(resolve(cluster_conf)))
        try:
            assert _wait_until(lambda: not mine & _relays(observer))
        finally:
            observer.close()


def test_the_tunnel_reopens_by_itself_at_the_same_address_after_the_connection_drops(
        connection, echo_port):
    before = _relays(connection)
    with Tunnel(connection, echo_port) as tunnel:
        address = tunnel.open()
        first = _relays(connection) - before
        connection.client().get_transport().close()
        assert _wait_until(lambda: len(_relays(connection) - before - first) == 1)
        assert tunnel.open() == address  # waits while the watcher's relay starts
        assert _relays(connection) - before - first == _relays(connection) - before
        assert _worker(connection, address, size=1 << 20) == "ok"


def test_every_tunnel_of_a_dropped_connection_reopens_at_its_address_on_one_new_relay(
        connection):
    with echo_server() as first_port, echo_server() as second_port, echo_server() as third_port:
        tunnels = [Tunnel(connection, port) for port in (first_port, second_port, third_port)]
        try:
            addresses = [tunnel.open() for tunnel in tunnels]
            old = set.union(*_listeners(connection, {port for _, port in addresses}).values())
            connection.client().get_transport().close()
            ports = {port for _, port in addresses}
            assert _wait_until(lambda: set(_listeners(connection, ports)) == ports
                               and not old & set.union(*_listeners(connection, ports).values()))
            assert [tunnel.open() for tunnel in tunnels] == addresses
            assert len(set.union(*_listeners(connection, ports).values())) == 1
            for address in addresses:
                assert _worker(connection, address) == "ok"
        finally:
            for tunnel in tunnels:
                tunnel.close()


def test_a_python_the_head_node_lacks_is_reported_with_the_shells_error(connection, echo_port):
    tunnel = Tunnel(connection, echo_port, python="/nonexistent/python3")
    with pytest.raises(SSHError, match="the relay did not start.*No such file"):
        tunnel.open()
    assert tunnel.address is None


def test_a_refused_reverse_forward_says_to_use_the_direct_route(
        cluster_conf, echo_port, key_without_forwarding):
    conf = {**cluster_conf, "ssh_keyfile": key_without_forwarding}
    connection = ssh.Connection(ssh.destination_for(resolve(conf)))
    try:
        with pytest.raises(SSHError, match="refused the reverse port forward.*'direct'"):
            Tunnel(connection, echo_port).open()
    finally:
        connection.close()
