"""The caller's end of the head-node relay: one relay per SSH connection, shared by its tunnels.

sshd allows only a few sessions on one connection (``MaxSessions``, 10 by
default), and every qsub, qstat and SFTP transfer needs one while it runs. A
relay per tunnel would hold a session each for as long as its tunnel, so a
process that made a handful of callback servers could no longer submit
anything. So every tunnel of a connection shares one relay, one session, and
asks it for a listener of its own over the relay's stdin (the protocol is in
``relay.py``).

:func:`acquire` gives a tunnel the relay of its connection, starting one when
there is none or the last one ended; :func:`release` gives it back, and the
relay ends when its last tunnel gave it back. A reader thread hands each of
the relay's answers to the tunnel that waits for it, and when the relay ends
(its connection dropped, say) it sets :attr:`Relay.ended` and each tunnel's
wake-up event, so that the tunnels reopen on a new relay.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import threading
from typing import Optional

import paramiko

from . import relay
from .ssh import CONNECT_TIMEOUT, SSHError

log = logging.getLogger(__name__)

#: How much of the relay's other output (a login script's, say) is kept for error messages.
OUTPUT_KEPT_BYTES = 500


class Relay:
    """The relay on the head node of ``transport``, run by ``python``: one session for all tunnels.

    It starts when it is first asked for a listener; ``target`` names the
    head node in error messages.
    """

    def __init__(self, transport: paramiko.Transport, python: str, target: str) -> None:
        self.transport = transport
        self.python = python
        self.target = target
        #: Set when the relay has ended, or will never start; see :meth:`alive`.
        self.ended = threading.Event()
        self._channel: Optional[paramiko.Channel] = None
        self._start_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards what follows, and ``ended``
        self._waiting: dict[int, concurrent.futures.Future[relay.Answer]] = {}
        self._wakes: set[threading.Event] = set()  # one per tunnel on this relay
        self._users = 0  # tunnels that hold it; changed under _registry_lock
        self._answered = False
        self._output = b""  # the last lines that were not answers
        self._why_ended = ""

    def alive(self) -> bool:
        return not self.ended.is_set() and self.transport.is_active()

    def listen(self, forward_port: int, preferred_port: int, timeout: float) -> tuple[str, int]:
        """Where workers reach ``127.0.0.1:forward_port``: the relay's ``(host, port)``."""
        try:
            answer = self._ask(relay.forward_command(forward_port, preferred_port), forward_port,
                               timeout)
        except concurrent.futures.TimeoutError as error:
            self._send(relay.close_command(forward_port))  # should it answer after all
            raise SSHError(
                f"the relay on {self.target} did not say where it listens within {timeout} s "
                f"(its output: {self._output!r}; its errors: {self._stderr_so_far()!r})"
            ) from error
        if answer.address is None:
            raise SSHError(f"the relay on {self.target} cannot listen for workers: "
                           f"{answer.error or 'it closed the listener at once'}")
        return answer.address

    def stop_listening(self, forward_port: int, timeout: float) -> None:
        """Close the listener for ``forward_port`` and cut its connections, if the relay runs."""
        if not self.alive():
            return
        try:
            self._ask(relay.close_command(forward_port), forward_port, timeout)
        except (SSHError, concurrent.futures.TimeoutError) as error:
            log.warning("the relay on %s did not confirm that it closed a listener: %s",
                        self.target, str(error) or f"no answer within {timeout} s")

    def stop(self, timeout: float) -> None:
        """End the relay (EOF on its stdin, which ends every listener), waiting a little for it."""
        channel = self._channel
        if channel is None:
            self._end("it was stopped before it started")
            return
        with self._lock:
            self._why_ended = self._why_ended or "it was stopped"
        try:
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the connection is gone, and the relay with it
        if not self.ended.wait(timeout):
            log.warning("the relay on %s did not end within %s s", self.target, timeout)
        channel.close()

    def _ask(self, line: bytes, forward_port: int, timeout: float) -> relay.Answer:
        """Send ``line`` and wait for the relay's answer about ``forward_port``."""
        self._start()
        answer: concurrent.futures.Future[relay.Answer] = concurrent.futures.Future()
        with self._lock:
            if self.ended.is_set():
                raise self._ended_error()
            self._waiting[forward_port] = answer
        try:
            self._send(line)  # if it cannot be sent, the relay has ended and the reader says why
            return answer.result(timeout)
        finally:
            with self._lock:
                if self._waiting.get(forward_port) is answer:
                    del self._waiting[forward_port]

    def _send(self, line: bytes) -> None:
        """Write ``line`` to the relay's stdin, unless it has ended."""
        channel = self._channel
        try:
            if channel is not None:
                with self._send_lock:
                    channel.sendall(line)
        except (OSError, EOFError, paramiko.SSHException) as error:
            log.debug("cannot write to the relay on %s: %s", self.target, error)

    def _start(self) -> None:
        with self._start_lock:
            if self._channel is not None or self.ended.is_set():
                return
            channel: Optional[paramiko.Channel] = None
            try:
                channel = self.transport.open_session(timeout=CONNECT_TIMEOUT)
                channel.exec_command(relay.command(self.python))
            except (paramiko.SSHException, OSError, EOFError) as error:
                if channel is not None:
                    channel.close()
                raise SSHError(f"cannot start the relay on {self.target}: {error}") from error
            self._channel = channel
        threading.Thread(target=self._read, args=(channel,), daemon=True,
                         name=f"sheepdog-relay-{self.target}").start()

    def _read(self, channel: paramiko.Channel) -> None:
        """Hand each answer to whoever waits for it, until the relay's output ends."""
        unread = b""
        try:
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                *lines, unread = (unread + data).split(b"\n")
                for line in lines:
                    self._take(line)
        except (OSError, EOFError, paramiko.SSHException) as error:
            log.debug("reading from the relay on %s: %s", self.target, error)
        self._end(self._why_it_ended(channel))
        channel.close()

    def _take(self, line: bytes) -> None:
        answer = relay.parse_answer(line.decode(errors="replace"))
        with self._lock:
            if answer is None:
                self._output = (self._output + line + b"\n")[-OUTPUT_KEPT_BYTES:]
                return
            self._answered = True
            waiting = self._waiting.pop(answer.forward_port, None)
        if waiting is not None:
            waiting.set_result(answer)

    def _why_it_ended(self, channel: paramiko.Channel) -> str:
        said = _stderr(channel) or self._output.decode(errors="replace").strip()
        if not said and not self.transport.is_active():
            said = "the SSH connection closed"
        if not said and not self._answered and channel.status_event.wait(2.0):
            status = channel.recv_exit_status()  # -1 when the channel closed without one
            said = f"it exited with status {status}" if status >= 0 else ""
        return said or "it closed its output"

    def _end(self, why: str) -> None:
        """Mark the relay ended: fail whoever waits for it, and wake its tunnels."""
        with self._lock:
            self._why_ended = self._why_ended or why
            self.ended.set()
            waiting, self._waiting = self._waiting, {}
            wakes = set(self._wakes)
        with _registry_lock:
            if _registry.get((self.transport, self.python)) is self:
                del _registry[(self.transport, self.python)]
        error = self._ended_error()
        for answer in waiting.values():
            answer.set_exception(error)
        for wake in wakes:
            wake.set()
        log.info("the relay on %s ended: %s", self.target, self._why_ended)

    def _ended_error(self) -> SSHError:
        if self._answered:
            return SSHError(f"the relay on {self.target} ended: {self._why_ended}")
        return SSHError(
            f"the relay did not start on {self.target}: {self._why_ended or 'it closed its output'};"
            f" check that {self.python!r} runs Python 3 on the head node"
        )

    def _stderr_so_far(self) -> str:
        channel = self._channel
        errors = b""
        while channel is not None and channel.recv_stderr_ready():
            errors += channel.recv_stderr(65536)
        return errors.decode(errors="replace").strip()


def _stderr(channel: paramiko.Channel) -> str:
    """What the relay wrote to stderr, waiting briefly for it to finish."""
    errors = b""
    channel.settimeout(2.0)
    try:
        while True:
            data = channel.recv_stderr(65536)
            if not data:
                break
            errors += data
    except socket.timeout:
        pass
    return errors.decode(errors="replace").strip()


#: The running relay of each SSH connection and head-node Python.
_registry: dict[tuple[paramiko.Transport, str], Relay] = {}
_registry_lock = threading.Lock()


def acquire(transport: paramiko.Transport, python: str, target: str,
            wake: threading.Event) -> Relay:
    """The relay of ``transport``, a new one when it has none; :func:`release` it when done.

    ``wake`` is set when the relay ends, so that its tunnel can reopen.
    """
    with _registry_lock:
        shared = _registry.get((transport, python))
        if shared is None or shared.ended.is_set():
            shared = _registry[(transport, python)] = Relay(transport, python, target)
        shared._users += 1
    with shared._lock:
        shared._wakes.add(wake)
        if shared.ended.is_set():
            wake.set()
    return shared


def release(shared: Relay, wake: threading.Event, timeout: float) -> None:
    """Give back a relay from :func:`acquire`: the last one to give it back ends it."""
    with shared._lock:
        shared._wakes.discard(wake)
    with _registry_lock:
        shared._users -= 1
        last = shared._users == 0
        if last and _registry.get((shared.transport, shared.python)) is shared:
            del _registry[(shared.transport, shared.python)]
    if last:
        shared.stop(timeout)
