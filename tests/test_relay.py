"""The head-node relay, run here as the program it is shipped as, in front of an echo server."""

import ast
import glob
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from sheepdog import relay

from .echo import cut_off, echo_server, exchange


def _oldest_python():
    """A Python 3.6 to run the relay with, as an old head node would, if this machine has one."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3.6")))
    candidates.append(shutil.which("python3.6"))
    for python in filter(None, candidates):
        check = "import sys; assert sys.version_info[:2] == (3, 6)"
        if subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
            return python
    return None


OLDEST_PYTHON = _oldest_python()


PYTHONS = [pytest.param(sys.executable, id="this-python"),
           pytest.param(OLDEST_PYTHON, id="python3.6", marks=pytest.mark.skipif(
               OLDEST_PYTHON is None, reason="no Python 3.6 on this machine"))]


@pytest.fixture
def echo_port():
    with echo_server() as port:
        yield port


def _launch(forward_port, python=sys.executable, preferred_port=0):
    return subprocess.Popen(
        [python, "-c", relay.SOURCE, str(forward_port), str(preferred_port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _announced(process):
    address = relay.parse_announcement(process.stdout.readline().decode())
    assert address is not None, process.stderr.read()
    return address


def _start(forward_port, python=sys.executable, preferred_port=0):
    process = _launch(forward_port, python, preferred_port)
    return process, _announced(process)


def _free_port():
    probe = socket.create_server(("0.0.0.0", 0))
    with probe:
        return probe.getsockname()[1]


@pytest.fixture
def running_relay(echo_port):
    process, address = _start(echo_port)
    yield process, address
    process.stdin.close()
    process.wait(10)


def _exchange(port, payload):
    return exchange("127.0.0.1", port, payload)


def test_relay_announces_this_hosts_name_and_the_port_it_listens_on(running_relay):
    _, (host, port) = running_relay
    assert host == socket.getfqdn()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize("python", PYTHONS)
def test_megabytes_travel_both_ways_through_the_relay(echo_port, python):
    process, (_, port) = _start(echo_port, python)
    try:
        payload = os.urandom(5 << 20)
        assert _exchange(port, payload) == payload
        assert _exchange(port, b"") == b""
    finally:
        process.stdin.close()
        assert process.wait(10) == 0, process.stderr.read()


def test_concurrent_connections_are_relayed_each_to_its_own_end(running_relay):
    _, (_, port) = running_relay
    payloads = [bytes([n]) * (200_000 + n) for n in range(12)]
    echoed = [None] * len(payloads)

    def one(n):
        echoed[n] = _exchange(port, payloads[n])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert echoed == payloads


@pytest.mark.parametrize("python", PYTHONS)
def test_relay_exits_when_its_stdin_closes_and_leaves_no_listener(echo_port, python):
    process, (_, port) = _start(echo_port, python)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as open_connection:
        open_connection.sendall(b"in flight")
        assert open_connection.recv(100) == b"in flight"
        process.stdin.close()
        assert process.wait(5) == 0
        assert cut_off(open_connection)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_worker_is_cut_off_when_nothing_listens_on_the_forwarded_port():
    process, (_, port) = _start(_free_port())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"hello")
            assert cut_off(connection)
    finally:
        process.stdin.close()
        process.wait(10)


def test_a_restarted_relay_takes_over_the_port_of_the_relay_before_it(echo_port):
    first, (_, port) = _start(echo_port, preferred_port=_free_port())
    second = _launch(echo_port, preferred_port=port)
    try:
        first.stdin.close()
        first.wait(10)
        assert _announced(second)[1] == port
        assert _exchange(port, b"relayed by the second") == b"relayed by the second"
    finally:
        second.stdin.close()
        second.wait(10)


def test_a_relay_whose_port_stays_taken_listens_on_another(echo_port):
    first, (_, port) = _start(echo_port)
    second, (_, other) = _start(echo_port, preferred_port=port)
    try:
        assert other != port
        assert _exchange(other, b"still relayed") == b"still relayed"
    finally:
        for process in (first, second):
            process.stdin.close()
            process.wait(10)


def test_relay_source_parses_as_python_3_6():
    ast.parse(relay.SOURCE, feature_version=(3, 6))


def test_announcement_is_found_among_other_lines_a_login_script_may_print():
    assert relay.parse_announcement("sheepdog-relay head.example.org 40123\n") == (
        "head.example.org", 40123)
    assert relay.parse_announcement("Welcome to the cluster!") is None
    assert relay.parse_announcement("sheepdog-relay head.example.org") is None
    assert relay.parse_announcement("sheepdog-relay head port") is None


@pytest.mark.parametrize("shell", ["sh", "bash", "csh", "tcsh"])
def test_the_command_starts_the_relay_from_any_login_shell(echo_port, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    command = relay.command(sys.executable, echo_port)
    process = subprocess.Popen([shell, "-c", command], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, port = _announced(process)
    try:
        assert _exchange(port, b"through " + shell.encode()) == b"through " + shell.encode()
    finally:
        process.stdin.close()
        assert process.wait(10) == 0
