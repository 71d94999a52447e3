"""The head-node relay, run here as the program it is shipped as, in front of echo servers."""

import ast
import glob
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from sheepdog.remote import relay

from .support.echo import cut_off, echo_server, exchange


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

#: Longest wait for one answer of the relay.
ANSWER_SECONDS = 10.0


class _Relay:
    """A relay process, and its answers read as they come."""

    def __init__(self, args):
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self._unread = b""

    def answer(self, seconds=ANSWER_SECONDS):
        """The next answer, skipping other lines; fails when none comes within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            line, newline, rest = self._unread.partition(b"\n")
            if newline:
                self._unread = rest
                answer = relay.parse_answer(line.decode())
                if answer is not None:
                    return answer
                continue
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.process.stdout], [], [], left)[0], \
                "the relay did not answer"
            data = os.read(self.process.stdout.fileno(), 65536)
            assert data, f"the relay ended: {self.process.stderr.read()!r}"
            self._unread += data

    def send(self, line):
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def forward(self, forward_port, preferred_port=0, address=None):
        """Ask for a listener for ``forward_port``; its ``(host, port)``."""
        self.send(relay.forward_command(forward_port, preferred_port, address))
        answer = self.answer()
        assert answer.forward_port == forward_port and answer.address is not None, answer
        return answer.address

    def close(self, forward_port):
        self.send(relay.close_command(forward_port))
        assert self.answer() == relay.Answer(forward_port)

    def end(self, seconds=10):
        """Close the relay's stdin; its exit status."""
        self.process.stdin.close()
        return self.process.wait(seconds)


def _launch(python=sys.executable, **limits):
    """A relay; ``limits`` override its constants (``MAX_PER_PEER=2``, say)."""
    overrides = "".join(f"{name} = {value!r}\n" for name, value in limits.items())
    return _Relay([python, "-c", relay.SOURCE.replace("\nrelay()\n", f"\n{overrides}relay()\n")])


@pytest.fixture
def running_relay():
    launched = _launch()
    yield launched
    launched.end()


@pytest.fixture
def echo_port():
    with echo_server() as port:
        yield port


def _free_port():
    probe = socket.create_server(("0.0.0.0", 0))
    with probe:
        return probe.getsockname()[1]


def _exchange(port, payload):
    return exchange("127.0.0.1", port, payload)


def _refused(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _in_flight(port):
    """A connection through the relay at ``port`` to an echo server, shown to work."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.sendall(b"in flight")
    assert connection.recv(100) == b"in flight"
    return connection


def test_relay_answers_with_this_hosts_name_and_the_port_it_listens_on(running_relay, echo_port):
    host, port = running_relay.forward(echo_port)
    assert host == socket.getfqdn()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize("python", PYTHONS)
def test_megabytes_travel_both_ways_through_the_relay(echo_port, python):
    launched = _launch(python)
    try:
        _, port = launched.forward(echo_port)
        payload = os.urandom(5 << 20)
        assert _exchange(port, payload) == payload
        assert _exchange(port, b"") == b""
    finally:
        assert launched.end() == 0, launched.process.stderr.read()


def test_concurrent_connections_are_relayed_each_to_its_own_end(running_relay, echo_port):
    _, port = running_relay.forward(echo_port)
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


def test_one_relay_takes_many_forwards_each_to_its_own_server(running_relay):
    with echo_server(b"first:") as first, echo_server(b"second:") as second, \
            echo_server(b"third:") as third:
        ports = {greeting: running_relay.forward(server)[1] for greeting, server in
                 ((b"first:", first), (b"second:", second), (b"third:", third))}
        assert len(set(ports.values())) == 3
        echoed = {}

        def one(greeting):
            echoed[greeting] = _exchange(ports[greeting], greeting * 50_000)

        threads = [threading.Thread(target=one, args=(greeting,)) for greeting in ports]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert echoed == {greeting: greeting * 50_001 for greeting in ports}


def test_closing_one_forward_cuts_it_off_and_leaves_the_others_working(running_relay):
    with echo_server() as closing, echo_server() as staying:
        _, closed_port = running_relay.forward(closing)
        _, open_port = running_relay.forward(staying)
        with _in_flight(closed_port) as cut, _in_flight(open_port) as kept:
            running_relay.close(closing)
            assert cut_off(cut)
            assert _refused(closed_port)
            kept.sendall(b"still here")
            assert kept.recv(100) == b"still here"
        payload = os.urandom(2 << 20)
        assert _exchange(open_port, payload) == payload


@pytest.mark.parametrize("python", PYTHONS)
def test_relay_ends_every_forward_promptly_when_its_stdin_closes(python):
    launched = _launch(python)
    with echo_server() as first, echo_server() as second:
        ports = [launched.forward(first)[1], launched.forward(second)[1]]
        connections = [_in_flight(port) for port in ports]
        assert launched.end(seconds=5) == 0
        for connection, port in zip(connections, ports):
            with connection:
                assert cut_off(connection)
            assert _refused(port)


def test_a_worker_is_cut_off_when_nothing_listens_on_the_forwarded_port(running_relay):
    _, port = running_relay.forward(_free_port())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"hello")
        assert cut_off(connection)


def test_a_restarted_relay_takes_over_the_port_of_the_relay_before_it(echo_port):
    first = _launch()
    _, port = first.forward(echo_port, preferred_port=_free_port())
    second = _launch()
    try:
        second.send(relay.forward_command(echo_port, preferred_port=port))
        with echo_server(b"other:") as other:  # waiting for the port holds up no other forward
            _, other_port = second.forward(other)
            assert _exchange(other_port, b"at once") == b"other:at once"
        first.end()
        assert second.answer().address[1] == port
        assert _exchange(port, b"relayed by the second") == b"relayed by the second"
    finally:
        second.end()


def test_a_forward_whose_port_stays_taken_listens_on_another(echo_port):
    first, second = _launch(), _launch()
    try:
        _, port = first.forward(echo_port)
        started = time.monotonic()
        _, other = second.forward(echo_port, preferred_port=port)
        assert other != port
        assert time.monotonic() - started >= relay.PREFERRED_PORT_SECONDS
        assert _exchange(other, b"still relayed") == b"still relayed"
    finally:
        first.end()
        second.end()


def test_asking_again_for_a_forward_answers_with_the_same_listener(running_relay, echo_port):
    address = running_relay.forward(echo_port)
    assert running_relay.forward(echo_port) == address


def test_an_unknown_command_is_refused_and_the_relay_carries_on(running_relay, echo_port):
    running_relay.send(b"open 1234\n")
    assert running_relay.answer() == relay.Answer(1234, error="no such command: open")
    running_relay.send(b"gibberish\n")
    _, port = running_relay.forward(echo_port)
    assert _exchange(port, b"carried on") == b"carried on"


def test_relay_source_parses_as_python_3_6():
    ast.parse(relay.SOURCE, feature_version=(3, 6))


def test_answers_are_found_among_other_lines_a_login_script_may_print():
    assert relay.parse_answer("sheepdog-relay head.example.org 40123 35000\n") == relay.Answer(
        35000, address=("head.example.org", 40123))
    assert relay.parse_answer("sheepdog-relay-error 35000 [Errno 98] Address in use") == \
        relay.Answer(35000, error="[Errno 98] Address in use")
    assert relay.parse_answer("sheepdog-relay-closed 35000") == relay.Answer(35000)
    assert relay.parse_answer("Welcome to the cluster!") is None
    assert relay.parse_answer("sheepdog-relay head.example.org 40123") is None
    assert relay.parse_answer("sheepdog-relay head port 35000") is None
    assert relay.parse_answer("sheepdog-relay-error - cannot read the command") is None


@pytest.mark.parametrize("shell", ["sh", "bash", "csh", "tcsh"])
def test_the_command_starts_the_relay_from_any_login_shell(echo_port, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    launched = _Relay([shell, "-c", relay.command(sys.executable)])
    try:
        _, port = launched.forward(echo_port)
        assert _exchange(port, b"through " + shell.encode()) == b"through " + shell.encode()
    finally:
        assert launched.end() == 0


def test_relay_listens_only_on_the_address_it_is_given(running_relay, echo_port):
    host, port = running_relay.forward(echo_port, address="127.0.0.2")
    assert host == "127.0.0.2"
    assert exchange("127.0.0.2", port, b"there") == b"there"
    assert _refused(port, "127.0.0.1")


def test_relay_listens_on_the_address_of_the_head_nodes_name_unless_it_is_loopback(
        monkeypatch):
    resolved = {"head.example.org": ["10.1.2.3"], "loopback.example.org": ["127.0.1.1"],
                "both.example.org": ["127.0.1.1", "10.9.8.7"]}

    def getaddrinfo(host, port, family=0, type=0, *args):
        if host not in resolved:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))
                for address in resolved[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert relay.listening_address("head.example.org") == "10.1.2.3"
    assert relay.listening_address("both.example.org") == "10.9.8.7"
    assert relay.listening_address("loopback.example.org") == "0.0.0.0"
    assert relay.listening_address("unknown.example.org") == "0.0.0.0"


def test_a_forward_to_an_address_that_is_not_ipv4_is_refused(running_relay, echo_port):
    running_relay.send(f"forward {echo_port} 0 head.example.org\n".encode())
    answer = running_relay.answer()
    assert answer == relay.Answer(echo_port, error="not an IPv4 address: head.example.org")


def _connect(port, source):
    return socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))


def _piped_soon(port, source, seconds=5.0):
    """True once a connection from ``source`` is piped, trying again for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with _connect(port, source) as connection:
            connection.sendall(b"piped?")
            try:
                if connection.recv(100) == b"piped?":
                    return True
            except ConnectionResetError:
                pass
        time.sleep(0.1)  # the relay's count drops when the pipe of an ended one ends
    return False


def test_relay_closes_connections_beyond_its_caps_per_address_and_in_all(echo_port):
    launched = _launch(MAX_PER_PEER=3, MAX_CONNECTIONS=5, FIRST_BYTE_SECONDS=60.0)
    held = []
    try:
        _, port = launched.forward(echo_port, address="127.0.0.1")
        held += [_connect(port, "127.0.0.1") for _ in range(3)]
        with _connect(port, "127.0.0.1") as fourth:
            fourth.settimeout(1.0)
            assert cut_off(fourth)  # beyond the cap of its address
        held += [_connect(port, "127.0.0.2") for _ in range(2)]
        with _connect(port, "127.0.0.3") as sixth:
            sixth.settimeout(1.0)
            assert cut_off(sixth)  # beyond the cap in all
        for connection in held:  # those within the caps are piped
            connection.sendall(b"held")
            assert connection.recv(100) == b"held"
        held.pop(0).close()
        assert _piped_soon(port, "127.0.0.1")  # an ended one makes room
    finally:
        for connection in held:
            connection.close()
        assert launched.end() == 0


def test_relay_closes_a_connection_that_stays_silent(echo_port):
    launched = _launch(FIRST_BYTE_SECONDS=1.0)
    try:
        _, port = launched.forward(echo_port, address="127.0.0.1")
        with _connect(port, "127.0.0.1") as silent, _connect(port, "127.0.0.1") as talker:
            opened = time.monotonic()
            talker.sendall(b"first")
            assert talker.recv(100) == b"first"
            assert cut_off(silent)
            assert 0.9 < time.monotonic() - opened < 3.0
            talker.sendall(b"later")  # once it spoke, it may pause as long as it likes
            assert talker.recv(100) == b"later"
    finally:
        assert launched.end() == 0
