"""SSH to the head node: ~/.ssh/config, errors that say what to fix, timeouts, reconnecting.

The connection tests talk to a real SSH server (paramiko's server side, see
``sshserver.py``) on a loopback port; the ProxyJump through OpenSSH's sshd is
in ``tests/cluster/test_ssh.py``.
"""

import getpass
import os
import stat
import threading
import time

import paramiko
import pytest

from sheepdog.remote import ssh
from sheepdog.config import resolve
from sheepdog.remote.ssh import SSHError

from .support.sshserver import SSHServer, new_key


@pytest.fixture
def server(tmp_path):
    running = SSHServer(tmp_path)
    yield running
    running.close()


def reach(server, **changes):
    """The server as sheepdog would resolve it from a config; ``changes`` replace settings."""
    settings = {"port": server.port, "user": server.user, "key_file": server.key_file,
                "known_hosts": str(server.known_hosts), **changes}
    return ssh.destination("127.0.0.1", **settings)


@pytest.fixture
def connection(server):
    opened = ssh.Connection(reach(server))
    yield opened
    opened.close()


@pytest.fixture
def ssh_config(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text(
        "Host headnode\n"
        "    HostName head.cluster.example\n"
        "    User alice\n"
        "    Port 2200\n"
        "    IdentityFile ~/.ssh/cluster_key\n"
        "    IdentityFile /keys/second\n"
        "    UserKnownHostsFile /etc/cluster_known_hosts ~/.ssh/more_known_hosts\n"
        "Host viacommand\n"
        "    ProxyCommand ssh -W %h:%p bastion\n"
        "Host viajump\n"
        "    ProxyJump bob@bastion:2022\n"
        "Host *.cluster.example\n"
        "    User everyone\n"
    )
    return str(path)


def test_ssh_config_gives_host_name_user_port_keys_and_known_hosts(ssh_config):
    home = os.path.expanduser("~")
    target = ssh.destination("headnode", ssh_config=ssh_config)
    assert (target.hostname, target.user, target.port) == ("head.cluster.example", "alice", 2200)
    assert target.key_files == (f"{home}/.ssh/cluster_key", "/keys/second")
    assert target.known_hosts == ("/etc/cluster_known_hosts", f"{home}/.ssh/more_known_hosts")
    assert str(target) == "alice@head.cluster.example:2200"


def test_settings_given_win_over_ssh_config_and_come_first(ssh_config):
    target = ssh.destination("headnode", port=22, user="carol", key_file="/mine",
                             known_hosts="/my_known_hosts", ssh_config=ssh_config)
    assert (target.port, target.user) == (22, "carol")
    assert target.key_files[0] == "/mine" and target.known_hosts[0] == "/my_known_hosts"


def test_a_host_absent_from_ssh_config_is_used_as_given(ssh_config):
    target = ssh.destination("other.example", ssh_config=ssh_config)
    assert (target.hostname, target.port, target.user) == ("other.example", 22, getpass.getuser())
    assert target.key_files == () and target.proxy_jump is None
    assert ssh.destination("node.cluster.example", ssh_config=ssh_config).user == "everyone"


def test_proxy_command_and_proxy_jump_are_read(ssh_config):
    assert ssh.destination("viacommand", ssh_config=ssh_config).proxy_command == (
        "ssh -W viacommand:22 bastion")
    assert ssh.destination("viajump", ssh_config=ssh_config).proxy_jump == "bob@bastion:2022"


def test_a_missing_ssh_config_file_is_no_error(tmp_path):
    target = ssh.destination("headnode", ssh_config=str(tmp_path / "absent"))
    assert (target.hostname, target.port) == ("headnode", 22)


def test_without_ssh_port_the_port_in_ssh_config_is_used(ssh_config):
    config = resolve({"host": "headnode", "ssh_config": ssh_config})
    assert ssh.destination_for(config).port == 2200
    given = resolve({"host": "headnode", "ssh_config": ssh_config, "ssh_port": 2222})
    assert ssh.destination_for(given).port == 2222


def test_an_ssh_port_of_22_set_in_the_config_wins_over_the_port_in_ssh_config(ssh_config):
    config = resolve({"host": "headnode", "ssh_port": 22, "ssh_config": ssh_config})
    assert ssh.destination_for(config).port == 22


def test_a_config_without_host_is_refused_with_what_to_set():
    with pytest.raises(SSHError, match="no 'host' in the config"):
        ssh.destination_for(resolve({"scheduler": "local"}))


def test_commands_give_their_status_output_and_errors(connection):
    result = connection.run("echo out; echo err >&2; exit 3")
    assert (result.status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    big = connection.run("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2")
    assert (len(big.stdout), len(big.stderr)) == (3000000, 3000000)  # both drained at once


def test_one_connection_serves_every_command(server, connection):
    for _ in range(3):
        assert connection.run("true").status == 0
    assert server.connections == 1
    assert ssh.get(reach(server)) is ssh.get(reach(server))


def test_an_unknown_host_key_is_refused_with_the_command_that_adds_it(server, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(SSHError) as refused:
        ssh.Connection(reach(server, known_hosts=str(empty))).run("true")
    message = str(refused.value)
    assert "is not in known_hosts, so sheepdog will not trust it" in message
    assert f"ssh-keyscan -p {server.port} 127.0.0.1 >> ~/.ssh/known_hosts" in message
    assert server.host_key.fingerprint in message
    assert server.commands == []


def test_a_changed_host_key_is_refused(server, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(server.key_file)  # not the host's key
    known = tmp_path / "stale_known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(SSHError) as refused:
        ssh.Connection(reach(server, known_hosts=str(known))).run("true")
    message = str(refused.value)
    assert f"host key of [127.0.0.1]:{server.port} (ssh-ed25519 " in message
    assert "is not the one in known_hosts" in message and server.host_key.fingerprint in message
    assert f"'ssh-keygen -R '[127.0.0.1]:{server.port}''" in message
    assert server.commands == []


def test_a_key_the_server_refuses_is_reported_with_what_to_set(server, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no default keys either
    stranger = new_key(tmp_path / "stranger")
    with pytest.raises(SSHError) as refused:
        ssh.Connection(reach(server, key_file=stranger)).run("true")
    message = str(refused.value)
    assert f"refused our keys ({stranger})" in message
    assert "Set 'ssh_keyfile' (and 'ssh_user')" in message
    assert f"'ssh -p {server.port} {server.user}@127.0.0.1'" in message


def test_an_unknown_head_node_name_is_named():
    with pytest.raises(SSHError, match="cannot resolve the head node 'no-such-head.invalid'"):
        ssh.Connection(ssh.destination("no-such-head.invalid")).run("true")


def test_a_port_where_nothing_listens_is_reported_as_unreachable(server):
    server.close()
    with pytest.raises(SSHError, match=rf"cannot reach {server.user}@127.0.0.1:{server.port} "
                                       rf"by SSH: .*(Refused|NoValidConnections)"):
        ssh.Connection(reach(server)).run("true")


def test_a_command_silent_past_its_timeout_raises_and_the_connection_still_serves(connection):
    started = time.monotonic()
    with pytest.raises(SSHError, match=r"'sleep 5' on .* did not finish in 0.5 s"):
        connection.run("sleep 5", timeout=0.5)
    assert time.monotonic() - started < 3
    assert connection.run("echo still here").stdout == "still here\n"


def test_a_dropped_connection_is_opened_again_for_the_next_command(server, connection):
    client = connection.client()
    assert connection.run("echo one").stdout == "one\n"
    server.drop_connections()
    assert connection.run("echo two").stdout == "two\n"  # noticed or not, it reconnects
    assert connection.client() is not client and server.connections == 2


def test_a_connection_that_drops_between_opening_a_channel_and_running_the_command_is_reopened(
        server, connection, monkeypatch):
    """The window that once made the test above fail with paramiko's "Channel closed": the
    channel opened, then the connection dropped before the command was sent. The command
    runs once, on a new connection."""
    assert connection.run("echo one").stdout == "one\n"
    first = connection.client()
    open_session = paramiko.Transport.open_session
    dropped = []

    def drop_once_opened(transport, *args, **kwargs):
        channel = open_session(transport, *args, **kwargs)
        if not dropped:
            dropped.append(channel)
            server.drop_connections()
            deadline = time.monotonic() + 10
            while transport.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
        return channel

    monkeypatch.setattr(paramiko.Transport, "open_session", drop_once_opened)
    assert connection.run("echo two").stdout == "two\n"
    # Once, on the new connection; or, when the drop went unnoticed until the command
    # was sent, a query sent again there (a second run of a query does no harm).
    assert len(dropped) == 1 and server.commands[0] == "echo one"
    assert server.commands[1:] in (["echo two"], ["echo two", "echo two"])
    assert connection.client() is not first


def test_a_command_that_must_run_once_is_an_ssh_error_when_its_start_was_not_confirmed(
        server, connection, monkeypatch):
    """The connection drops once the command was sent, before the server confirmed its
    start: it may have started (a job submitted), so it is an SSHError, not a second run."""
    exec_command = paramiko.Channel.exec_command
    sent = []

    def sent_then_dropped(channel, command):
        sent.append(command)
        raise paramiko.SSHException("Channel closed.")

    monkeypatch.setattr(paramiko.Channel, "exec_command", sent_then_dropped)
    with pytest.raises(SSHError, match=r"dropped as 'qsub job.sh' was sent: it may have "
                                       r"started, so it is not sent again \(SSHException: "
                                       r"Channel closed.\)"):
        connection.run("qsub job.sh", once=True)
    assert sent == ["qsub job.sh"]
    monkeypatch.setattr(paramiko.Channel, "exec_command", exec_command)
    assert connection.run("echo after").stdout == "after\n"


def test_a_query_whose_start_was_not_confirmed_is_sent_again_on_a_new_connection(
        server, connection, monkeypatch):
    exec_command = paramiko.Channel.exec_command
    sent = []

    def dropped_once(channel, command):
        sent.append(command)
        if len(sent) == 1:
            raise paramiko.SSHException("Channel closed.")
        return exec_command(channel, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command", dropped_once)
    assert connection.run("echo again").stdout == "again\n"
    assert sent == ["echo again", "echo again"]


def test_a_connection_dropped_while_a_command_runs_is_an_error_not_a_short_answer(server,
                                                                                  connection):
    outcome = []

    def run():
        try:
            outcome.append(connection.run("echo partial; sleep 5; echo rest"))  # never short
        except SSHError as error:
            outcome.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 10
    while not server.commands and time.monotonic() < deadline:
        time.sleep(0.01)
    server.drop_connections()
    runner.join(15)
    (ended,) = outcome
    if isinstance(ended, SSHError):  # dropped while it ran
        assert "dropped while 'echo partial" in str(ended)
    else:  # dropped before the server confirmed its start: a query, sent again in full
        assert ended.stdout == "partial\nrest\n"
    assert connection.run("echo after").stdout == "after\n"


def test_uploads_land_private_in_a_private_directory(server, connection):
    path = connection.upload("print('job')\n", ".sheepdog/job.py")
    assert path == "/.sheepdog/job.py"  # as the server names it
    written = server.home / ".sheepdog" / "job.py"
    assert written.read_text() == "print('job')\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    connection.upload("again\n", ".sheepdog/other.py")  # the directory exists now
    assert (server.home / ".sheepdog" / "other.py").read_text() == "again\n"


def test_an_upload_after_a_dropped_connection_reconnects(server, connection):
    connection.run("true")
    server.drop_connections()
    connection.upload("x\n", "file.txt")
    assert (server.home / "file.txt").read_text() == "x\n"


def test_proxy_jump_reaches_the_head_node_through_each_hop_in_order(tmp_path):
    """``ProxyJump first,second``: first directly, second through first, the head through second."""
    for name in ("first", "second", "head"):
        (tmp_path / name).mkdir()
    servers = {name: SSHServer(tmp_path / name) for name in ("first", "second", "head")}
    try:
        config = tmp_path / "ssh_config"
        known = tmp_path / "known_hosts"
        known.write_text("".join(s.known_hosts.read_text() for s in servers.values()))
        config.write_text("".join(
            f"Host {name}\n    HostName 127.0.0.1\n    Port {s.port}\n    User {s.user}\n"
            f"    IdentityFile {s.key_file}\n"
            for name, s in servers.items()) + "    ProxyJump first,second\n")
        connection = ssh.Connection(
            ssh.destination("head", known_hosts=str(known), ssh_config=str(config)))
        assert connection.run("echo through").stdout == "through\n"
        connection.close()
        assert servers["first"].forwarded == [("127.0.0.1", servers["second"].port)]
        assert servers["second"].forwarded == [("127.0.0.1", servers["head"].port)]
        assert servers["head"].commands == ["echo through"]
    finally:
        for running in servers.values():
            running.close()


def test_a_resent_query_leaves_alone_a_connection_another_thread_opened_meanwhile(
        server, connection, monkeypatch):
    """A query whose start was not confirmed is sent again on a new connection; if another
    thread has opened one meanwhile (the first job's questions go side by side), that one
    is used, not closed under the other thread's command."""
    exec_command = paramiko.Channel.exec_command
    fresh = []

    def dropped_once_while_another_thread_reconnected(channel, command):
        if not fresh:
            connection.close()
            fresh.append(connection.client())  # what another thread would have done
            raise paramiko.SSHException("Channel closed.")
        return exec_command(channel, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command",
                        dropped_once_while_another_thread_reconnected)
    assert connection.run("echo again").stdout == "again\n"
    assert connection.client() is fresh[0] and fresh[0].get_transport().is_active()
