"""A small SSH server for tests: paramiko's server side on a loopback port.

It accepts one user's key, runs exec requests with ``/bin/sh -c`` in a home
directory of its own, serves SFTP inside that directory, forwards
``direct-tcpip`` channels (so it can be a ProxyJump host), and can drop every
connection at once, as a network outage or a restarted sshd would. That is
enough to test ``sheepdog.remote.ssh`` (connecting, host key checks, errors, run
timeouts, reconnecting, uploads, jumps) without a cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import paramiko
from paramiko.sftp import SFTP_NO_SUCH_FILE, SFTP_OK


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: "SSHServer") -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.server.user and key == self.server.client_key:
            with self.server._lock:  # before the client hears of it
                self.server.connections += 1
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        self.server.forwards[chanid] = destination
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self.server._execute, args=(channel, command.decode()),
                         daemon=True).start()
        return True


class _Handle(paramiko.SFTPHandle):
    def stat(self):  # type: ignore[no-untyped-def]
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr):  # type: ignore[no-untyped-def]
        if attr.st_mode is not None:
            os.chmod(self.path, attr.st_mode)
        return SFTP_OK


class _SFTP(paramiko.SFTPServerInterface):
    """SFTP confined to the server's home directory; relative paths start there."""

    def __init__(self, server: paramiko.ServerInterface, *args: object, **kwargs: object) -> None:
        super().__init__(server, *args, **kwargs)
        self.home = server.server.home  # type: ignore[attr-defined]

    def _local(self, path: str) -> str:
        return str(self.home / path.lstrip("/"))

    def canonicalize(self, path: str) -> str:
        return os.path.normpath("/" + path)

    def stat(self, path):  # type: ignore[no-untyped-def]
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE

    lstat = stat

    def mkdir(self, path, attr):  # type: ignore[no-untyped-def]
        os.mkdir(self._local(path), attr.st_mode if attr.st_mode is not None else 0o777)
        return SFTP_OK

    def chattr(self, path, attr):  # type: ignore[no-untyped-def]
        if attr.st_mode is not None:
            os.chmod(self._local(path), attr.st_mode)
        return SFTP_OK

    def remove(self, path):  # type: ignore[no-untyped-def]
        os.remove(self._local(path))
        return SFTP_OK

    def open(self, path, flags, attr):  # type: ignore[no-untyped-def]
        local = self._local(path)
        descriptor = os.open(local, flags, 0o666)
        mode = "wb" if flags & (os.O_WRONLY | os.O_RDWR) else "rb"
        handle = _Handle(flags)
        handle.path = local  # type: ignore[attr-defined]
        handle.readfile = handle.writefile = os.fdopen(descriptor, mode)  # type: ignore[attr-defined]
        return handle


class SSHServer:
    """Listens on 127.0.0.1; ``known_hosts`` and ``key_file`` let a client in."""

    def __init__(self, directory: Path, user: str = "tester") -> None:
        self.user = user
        self.home = directory / "home"
        self.home.mkdir()
        self.host_key = paramiko.Ed25519Key.from_private_key_file(new_key(directory / "host"))
        self.key_file = new_key(directory / "client")
        self.client_key = paramiko.Ed25519Key.from_private_key_file(self.key_file)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n")
        #: Commands run, in order.
        self.commands: list[str] = []
        #: Channel id -> (host, port) of a forward asked for and not yet opened.
        self.forwards: dict[int, tuple[str, int]] = {}
        #: (host, port) of each forward opened, in order.
        self.forwarded: list[tuple[str, int]] = []
        #: Connections that logged in. Counting accepted sockets instead counted
        #: strangers too: a worker of an earlier test, still calling back to its caller's
        #: port, which this listener had been given since.
        self.connections = 0
        self._transports: list[paramiko.Transport] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _address = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP)
            with self._lock:
                self._transports.append(transport)
            try:
                transport.start_server(server=_Interface(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()
                continue
            threading.Thread(target=self._forward, args=(transport,), daemon=True).start()

    def _forward(self, transport: paramiko.Transport) -> None:
        """Connect each direct-tcpip channel the client opens to its destination."""
        while transport.is_active():
            channel = transport.accept(0.2)
            destination = self.forwards.pop(channel.get_id(), None) if channel else None
            if destination is None:
                continue  # a session: its exec request runs it
            self.forwarded.append(destination)
            sock = socket.create_connection(destination)
            for source, sink in ((channel, sock), (sock, channel)):
                threading.Thread(target=_copy, args=(source, sink), daemon=True).start()

    def _execute(self, channel: paramiko.Channel, command: str) -> None:
        self.commands.append(command)
        process = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.home,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            errors = threading.Thread(
                target=lambda: channel.sendall_stderr(process.stderr.read()), daemon=True)
            errors.start()
            for piece in iter(lambda: process.stdout.read1(65536), b""):
                channel.sendall(piece)
            errors.join()
            channel.send_exit_status(process.wait())
        except (OSError, EOFError, paramiko.SSHException):
            process.kill()  # the connection went away
            process.wait()
        finally:
            channel.close()

    def drop_connections(self) -> None:
        """Close every connection from the server's side, without a goodbye."""
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            try:
                transport.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already
            transport.close()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
        except OSError:
            pass
        self.listener.close()
        self.drop_connections()


def _copy(source, sink) -> None:  # type: ignore[no-untyped-def]
    try:
        for piece in iter(lambda: source.recv(65536), b""):
            sink.sendall(piece)
    except (OSError, EOFError):
        pass
    finally:
        sink.close()
        source.close()


def new_key(path: Path) -> str:
    """A new ed25519 private key in OpenSSH's format, as ssh-keygen writes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)
