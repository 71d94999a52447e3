"""SSH to the head node with paramiko: connect, run commands, upload job files.

Connection settings come from the sheepdog config first and ``~/.ssh/config``
second (HostName, User, Port, IdentityFile, ProxyCommand, ProxyJump,
UserKnownHostsFile), as ``ssh`` itself would resolve them. Keys come from the
agent, the key files named, and the default key files. Host keys are always
checked against known_hosts: an unknown host is an error that says how to add
its key, never a silent accept.

One connection per destination is kept for the session and reopened when it
drops, so polling the scheduler does not pay for a handshake each time.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import posixpath
import shlex
import socket
import threading
import time
from typing import Callable, Optional, TypeVar

import paramiko

from .errors import SSHError

from ..config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT = 30.0
#: Seconds between keepalive messages on an idle connection.
KEEPALIVE_SECONDS = 30


class _Unconfirmed(Exception):
    """A command was sent and its start was not confirmed: whether it ran is unknown.
    ``transport`` is the one it was sent on."""

    def __init__(self, message: str, transport: Optional[paramiko.Transport]) -> None:
        super().__init__(message)
        self.transport = transport


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where to connect, after ``~/.ssh/config`` was applied."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...] = ()
    known_hosts: tuple[str, ...] = ()
    proxy_command: Optional[str] = None
    proxy_jump: Optional[str] = None
    #: The ssh_config file it was resolved with, which also resolves its ProxyJump hosts.
    ssh_config: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def _read_ssh_config(path: Optional[str]) -> paramiko.SSHConfig:
    path = os.path.expanduser(path or "~/.ssh/config")
    if os.path.exists(path):
        return paramiko.SSHConfig.from_path(path)
    return paramiko.SSHConfig()


def destination(
    host: str,
    port: Optional[int] = None,
    user: Optional[str] = None,
    key_file: Optional[str] = None,
    known_hosts: Optional[str] = None,
    ssh_config: Optional[str] = None,
) -> Destination:
    """Resolve ``host`` as ``ssh`` would; explicit arguments win over ~/.ssh/config."""
    entry = _read_ssh_config(ssh_config).lookup(host)
    key_files = [key_file] if key_file else []
    key_files += entry.get("identityfile", [])
    known = [known_hosts] if known_hosts else []
    known += entry.get("userknownhostsfile", "").split()
    return Destination(
        alias=host,
        hostname=entry.get("hostname", host),
        port=int(port if port is not None else entry.get("port", 22)),
        user=user or entry.get("user") or getpass.getuser(),
        key_files=tuple(os.path.expanduser(path) for path in key_files),
        known_hosts=tuple(os.path.expanduser(path) for path in known),
        proxy_command=entry.get("proxycommand"),
        proxy_jump=entry.get("proxyjump"),
        ssh_config=ssh_config,
    )


def destination_for(config: Config) -> Destination:
    if not config.host:
        raise SSHError("no 'host' in the config: name the head node to SSH into")
    return destination(
        config.host,
        port=config.ssh_port,  # set explicitly, it wins over ~/.ssh/config
        user=config.ssh_user,
        key_file=config.ssh_keyfile,
        known_hosts=config.ssh_known_hosts,
        ssh_config=config.ssh_config,
    )


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not known, saying how to trust it."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        host, _, port = hostname.strip("[").partition("]:")
        port_option = f"-p {port} " if port else ""
        raise SSHError(
            f"the host key of {hostname} ({key.get_name()} "
            f"{key.fingerprint}) is not in known_hosts, so sheepdog will not trust it. "
            f"Check the fingerprint with your administrator, then add it with "
            f"'ssh {port_option}{host}' (answer yes) or "
            f"'ssh-keyscan {port_option}{host} >> ~/.ssh/known_hosts'"
        )


@dataclasses.dataclass
class CommandResult:
    status: int
    stdout: str
    stderr: str


class Connection:
    """One SSH connection to a head node, reopened when it drops."""

    def __init__(self, target: Destination) -> None:
        self.target = target
        self._client: Optional[paramiko.SSHClient] = None
        self._lock = threading.RLock()

    def _socket_for_proxy(self) -> Optional[object]:
        target = self.target
        if target.proxy_command:
            return paramiko.ProxyCommand(target.proxy_command)
        if target.proxy_jump and target.proxy_jump.lower() != "none":
            transport = get(_last_hop(target)).client().get_transport()
            assert transport is not None
            return transport.open_channel(
                "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0)
            )
        return None

    def client(self) -> paramiko.SSHClient:
        """The live client, connecting (again) when needed."""
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is not None and transport.is_active():
                return self._client  # type: ignore[return-value]
            self.close()
            self._client = self._connect()
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        target = self.target
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        for path in target.known_hosts:
            if os.path.exists(path):
                client.load_host_keys(path)
        client.set_missing_host_key_policy(_RefuseUnknownHost())
        key_files = [path for path in target.key_files if os.path.exists(path)]
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                key_filename=key_files or None,  # type: ignore[arg-type]  # a list is documented
                allow_agent=True,
                look_for_keys=True,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                sock=self._socket_for_proxy(),  # type: ignore[arg-type]
            )
        except SSHError:
            client.close()
            raise
        except paramiko.BadHostKeyException as error:
            client.close()
            name = target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"
            raise SSHError(
                f"the host key of {name} ({error.key.get_name()} {error.key.fingerprint}) is not "
                f"the one in known_hosts: the head node was reinstalled, or something stands "
                f"between you and it. Check the new fingerprint with your administrator, then "
                f"replace the old key: 'ssh-keygen -R {shlex.quote(name)}', and add the new one "
                f"as for a new host"
            ) from error
        except paramiko.AuthenticationException as error:
            client.close()
            offered = ", ".join(key_files) or "the agent's and the default key files"
            raise SSHError(
                f"SSH to {target} refused our keys ({offered}): {error}. Set 'ssh_keyfile' "
                f"(and 'ssh_user') in the config, or check that 'ssh -p {target.port} "
                f"{target.user}@{target.hostname}' logs in without a password"
            ) from error
        except socket.gaierror as error:
            client.close()
            raise SSHError(f"cannot resolve the head node {target.hostname!r}: {error}") from error
        except (OSError, paramiko.SSHException, EOFError) as error:
            client.close()
            raise SSHError(f"cannot reach {target} by SSH: {type(error).__name__}: {error}") from error
        transport = client.get_transport()
        if transport is not None:  # notice a connection that died silently (a laptop asleep)
            transport.set_keepalive(KEEPALIVE_SECONDS)
        log.info("connected to %s", target)
        return client

    def _transport(self) -> paramiko.Transport:
        transport = self.client().get_transport()
        assert transport is not None
        return transport

    def _on_live_connection(self, open_channel: Callable[[paramiko.Transport], T]) -> T:
        """``open_channel(transport)``, reconnecting once if the connection died unnoticed
        (``open_channel`` must not have started anything when it raises)."""
        client = self.client()
        try:
            transport = client.get_transport()
            assert transport is not None
            return open_channel(transport)
        except (paramiko.SSHException, EOFError, OSError) as error:
            log.info("the connection to %s dropped (%s); reconnecting", self.target, error)
            self._close_if(client.get_transport())
        try:
            return open_channel(self._transport())
        except (paramiko.SSHException, EOFError, OSError) as error:
            raise SSHError(f"the connection to {self.target} dropped at once again: "
                           f"{type(error).__name__}: {error}") from error

    def run(self, command: str, timeout: float = 120.0, once: bool = False) -> CommandResult:
        """Run ``command`` on the head node; its output is read fully, both streams at once.

        A connection found dead before the command is sent, even after its
        channel opened, is reopened first. One that drops as the command is
        sent, before the server confirmed its start, leaves it unknown whether
        it ran: a command that may run twice (a query) is sent again on a new
        connection; one that must run ``once`` (``qsub``: a second job) raises
        SSHError instead. A command that has not ended within ``timeout``
        seconds, or whose connection drops while it runs, raises SSHError.
        """
        try:
            return self._run(command, timeout)
        except _Unconfirmed as unsure:
            if once:
                raise SSHError(f"the connection to {self.target} dropped as {command!r} was "
                               f"sent: it may have started, so it is not sent again "
                               f"({unsure})") from unsure.__cause__
            log.info("the connection to %s dropped as %r was sent (%s); sending it again",
                     self.target, command, unsure)
            self._close_if(unsure.transport)
        try:
            return self._run(command, timeout)
        except _Unconfirmed as unsure:
            raise SSHError(f"the connection to {self.target} dropped twice as {command!r} was "
                           f"sent ({unsure})") from unsure.__cause__

    def _run(self, command: str, timeout: float) -> CommandResult:

        def open_session(transport: paramiko.Transport) -> paramiko.Channel:
            channel = transport.open_session(timeout=CONNECT_TIMEOUT)
            if channel.closed or not transport.is_active():  # nothing sent yet: try again
                channel.close()
                raise EOFError("the connection closed as the channel opened")
            return channel

        channel = self._on_live_connection(open_session)
        deadline = time.monotonic() + timeout
        output: list[bytes] = []
        errors: list[bytes] = []
        readers = [threading.Thread(target=_read_all, args=(stream, into), daemon=True)
                   for stream, into in ((channel.makefile("rb"), output),
                                        (channel.makefile_stderr("rb"), errors))]
        try:
            try:
                channel.exec_command(command)
            except (paramiko.SSHException, EOFError, OSError) as error:
                raise _Unconfirmed(f"{type(error).__name__}: {error}",
                                   channel.get_transport()) from error
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join(max(0.0, deadline - time.monotonic()))
            ended = channel.status_event.wait(max(0.0, deadline - time.monotonic()))
            if not ended or any(reader.is_alive() for reader in readers):
                raise SSHError(f"{command!r} on {self.target} did not finish in {timeout} s")
            status = channel.recv_exit_status()
        finally:
            channel.close()  # ends the readers of a command that did not finish
        if status == -1:  # the channel closed without an exit status
            raise SSHError(f"the connection to {self.target} dropped while {command!r} ran; "
                           f"its output may be incomplete")
        return CommandResult(status, b"".join(output).decode("utf-8", "replace"),
                             b"".join(errors).decode("utf-8", "replace"))

    def upload(self, text: str, remote_path: str) -> str:
        """Write ``text`` to ``remote_path`` (relative to home), private to the user.

        The directory is created with mode 0700 when missing and the file is
        made 0600 before anything is written to it.
        """
        sftp = self._on_live_connection(paramiko.SFTPClient.from_transport)
        assert sftp is not None
        try:
            directory = posixpath.dirname(remote_path)
            if directory:
                try:
                    sftp.stat(directory)
                except FileNotFoundError:
                    sftp.mkdir(directory, mode=0o700)
                    sftp.chmod(directory, 0o700)
            with sftp.open(remote_path, "w") as handle:
                handle.chmod(0o600)
                handle.write(text.encode("utf-8"))
            return sftp.normalize(remote_path)
        finally:
            sftp.close()

    def _close_if(self, transport: Optional[paramiko.Transport]) -> None:
        """Close the connection if ``transport`` (the one that failed) is still its own:
        another thread may have reconnected already (the first job's tunnel, key and
        questions go side by side)."""
        with self._lock:
            if self._client is not None and self._client.get_transport() is transport:
                self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


_connections: dict[Destination, Connection] = {}
_connections_lock = threading.Lock()


def get(target: Destination) -> Connection:
    """This session's connection to ``target``, shared by every caller."""
    with _connections_lock:
        if target not in _connections:
            _connections[target] = Connection(target)
        return _connections[target]


def _read_all(stream: paramiko.ChannelFile, into: list[bytes]) -> None:
    """Read ``stream`` to its end into ``into``; a channel closed under it ends it early."""
    try:
        for piece in iter(lambda: stream.read(65536), b""):
            into.append(piece)
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _last_hop(target: Destination) -> Destination:
    """The host ``target``'s ProxyJump list reaches it from, with the hops before it as its
    own ProxyJump; each resolved in the same ssh_config, as ``ssh -J`` does."""
    *earlier, last = [hop.strip() for hop in (target.proxy_jump or "").split(",")]
    user, _, host = last.rpartition("@")
    host, _, port = host.partition(":")
    hop = destination(host, port=int(port) if port else None, user=user or None,
                      known_hosts=target.known_hosts[0] if target.known_hosts else None,
                      ssh_config=target.ssh_config)
    return dataclasses.replace(hop, proxy_jump=",".join(earlier) or hop.proxy_jump,
                               proxy_command=None if earlier else hop.proxy_command)


def quote(text: str) -> str:
    return shlex.quote(text)
