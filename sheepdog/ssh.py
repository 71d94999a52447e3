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
from typing import Optional

import paramiko

from .config import Config

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
#: Seconds between keepalive messages on an idle connection.
KEEPALIVE_SECONDS = 30


class SSHError(RuntimeError):
    """The head node cannot be reached or refused us; the message says what to fix."""


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
    )


def destination_for(config: Config) -> Destination:
    if not config.host:
        raise SSHError("no 'host' in the config: name the head node to SSH into")
    return destination(
        config.host,
        port=config.ssh_port if config.ssh_port != 22 else None,
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
            jump_host = target.proxy_jump.split(",")[-1]
            jump_user, _, jump_host = jump_host.rpartition("@")
            jump_host, _, jump_port = jump_host.partition(":")
            jump = get(destination(
                jump_host, port=int(jump_port) if jump_port else None, user=jump_user or None,
                known_hosts=target.known_hosts[0] if target.known_hosts else None,
            ))
            transport = jump.client().get_transport()
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
                key_filename=key_files or None,
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

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        """Run ``command`` on the head node; its output is read fully, both streams at once."""
        transport = self.client().get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=CONNECT_TIMEOUT)
        channel.settimeout(timeout)
        channel.exec_command(command)
        errors: list[bytes] = []
        reader = threading.Thread(
            target=lambda: errors.append(channel.makefile_stderr("rb").read()), daemon=True
        )
        reader.start()
        try:
            output = channel.makefile("rb").read()
            reader.join(timeout)
            status = channel.recv_exit_status()
        except socket.timeout as error:
            raise SSHError(f"{command!r} on {self.target} did not finish in {timeout} s") from error
        finally:
            channel.close()
        return CommandResult(
            status, output.decode("utf-8", "replace"), b"".join(errors).decode("utf-8", "replace")
        )

    def upload(self, text: str, remote_path: str) -> str:
        """Write ``text`` to ``remote_path`` (relative to home), private to the user.

        The directory is created with mode 0700 when missing and the file is
        made 0600 before anything is written to it.
        """
        sftp = self.client().open_sftp()
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


def quote(text: str) -> str:
    return shlex.quote(text)
