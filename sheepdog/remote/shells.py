"""Where a scheduler's commands run: on the head node over SSH, or on this machine.

A backend needs only two things of the machine that runs its scheduler: run a
command (``run``) and write a file that its user alone can read (``put``).
:class:`SSHShell` does both on the head node through ``ssh.py``;
:class:`LocalShell` does them here, for users who run sheepdog on the head
node itself (no ``host`` in the config). Keeping SSH behind this seam keeps
it out of every backend, and lets tests stand a recorded head node in for a
real one.
"""

from __future__ import annotations

import abc
import os
import shlex
import subprocess
import threading
from typing import Optional, Sequence

from . import ssh
from .ssh import CommandResult
from .tunnel import Tunnel

#: This process's tunnels, one per head node and local server port.
_tunnels: dict[tuple[ssh.Destination, int], Tunnel] = {}
_tunnels_lock = threading.Lock()


class Shell(abc.ABC):
    """Runs commands and writes private files where the scheduler is."""

    #: How messages name the machine: the head node's name, or "this machine".
    where: str

    @abc.abstractmethod
    def run(self, argv: Sequence[str], timeout: float = 120.0, once: bool = False
            ) -> CommandResult:
        """Run ``argv`` and wait for it; both its output streams are read in full.

        ``once``: the command must not run twice (it submits a job), even when a
        dropped connection leaves it unknown whether it ran.
        """

    def script(self, text: str, timeout: float = 120.0) -> CommandResult:
        """Run ``text`` with ``sh -c``, for the few commands that need globs or ``$HOME``."""
        return self.run(["sh", "-c", text], timeout)

    @abc.abstractmethod
    def put(self, text: str, path: str) -> str:
        """Write ``text`` to ``path`` (relative to the home directory), readable by its
        owner alone (0600, in a 0700 directory made if missing); the absolute path."""

    def reverse_route(self, local_port: int, python: str) -> Optional[tuple[str, int]]:
        """(host, port) where the scheduler's nodes reach ``local_port`` of this process, if
        this shell can make one (a tunnel through the head node)."""
        return None

    def close(self) -> None:
        """Release the connection, if any; the shell may be used again afterwards."""


class SSHShell(Shell):
    """The head node, through this session's SSH connection to it."""

    def __init__(self, connection: ssh.Connection) -> None:
        self.connection = connection
        self.where = connection.target.alias

    def run(self, argv: Sequence[str], timeout: float = 120.0, once: bool = False
            ) -> CommandResult:
        return self.connection.run(shlex.join(argv), timeout, once)

    def put(self, text: str, path: str) -> str:
        return self.connection.upload(text, path)

    def reverse_route(self, local_port: int, python: str) -> Optional[tuple[str, int]]:
        """A tunnel through the head node, opened once per local port and kept for reuse."""
        key = (self.connection.target, local_port)
        with _tunnels_lock:
            if key not in _tunnels:
                _tunnels[key] = Tunnel(self.connection, local_port, python=python)
            return _tunnels[key].open()

    def close(self) -> None:
        self.connection.close()


class LocalShell(Shell):
    """This machine, for a caller on the head node itself."""

    where = "this machine"

    def run(self, argv: Sequence[str], timeout: float = 120.0, once: bool = False
            ) -> CommandResult:
        try:
            completed = subprocess.run(list(argv), capture_output=True, timeout=timeout,
                                       stdin=subprocess.DEVNULL,
                                       cwd=os.path.expanduser("~"))  # as an SSH command
        except FileNotFoundError as error:
            return CommandResult(127, "", f"{argv[0]}: command not found ({error})")
        except subprocess.TimeoutExpired as error:
            raise ssh.SSHError(f"{shlex.join(argv)!r} did not finish in {timeout} s") from error
        return CommandResult(completed.returncode, completed.stdout.decode("utf-8", "replace"),
                             completed.stderr.decode("utf-8", "replace"))

    def put(self, text: str, path: str) -> str:
        full = os.path.join(os.path.expanduser("~"), path)
        directory = os.path.dirname(full)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        descriptor = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
        return full
