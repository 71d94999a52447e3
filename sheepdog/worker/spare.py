"""Runners for a worker's batches, one forked ahead of time: the *spare*.

Each batch runs in a runner of its own, forked from the supervisor (see
``runner.py``), so that nothing one batch leaves in its process reaches the
next. Forking a runner and loading ``f`` in it take milliseconds, which a
warm pool's worker would otherwise pay on the time of every lone task it is
handed (``executor.submit(f, x).result()`` one after another). So once a
batch has run, the worker forks the runner of its next batch at once: the
spare loads ``f`` and waits on its socket pair for its batch, which the
supervisor sends it when one comes: the tasks' arguments, and the request
they belong to (a warm pool hands a worker from request to request, and the
runner posts large results itself). A batch of another function, or whose
arguments exceed ``SPARE_BATCH_BYTES`` (sent through the socket, they must fit
in what it holds, and would be copied, where a runner forked for them shares
their memory), gets a
runner forked for it, as before, and the spare is killed unused.

Embedded in the job file with the rest of ``worker``; standard library only.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Callable, Iterable, Optional

from ..wire.protocol import (
    ARGUMENTS,
    HANDOVER,
    Buffer,
    coalesce,
    nbytes,
    pack_frames,
    unpack_frames,
)
from ..wire.settings import WorkerSettings
from .client import Client, Identity
from .output import TaskOutput
from .runner import Claims, Loaded, Runner, run_tasks

#: The most bytes of arguments sent to a spare runner through its socket pair: less than
#: the pair holds (about 200 KiB on Linux), so that sending never waits for a spare
#: still loading ``f`` (the supervisor would beat no heartbeat meanwhile).
SPARE_BATCH_BYTES = 64 << 10
#: The length of a batch's frames, before them on the socket pair.
_LENGTH = struct.Struct("!Q")


class Runners:
    """Starts the runner of each batch: the spare when it suits, else a new one."""

    def __init__(self, me: Identity, settings: WorkerSettings,
                 connect: Callable[[], Client], output: TaskOutput,
                 kill_signals: Iterable[int]) -> None:
        self.me = me
        self.settings = settings
        self.connect = connect
        self.output = output
        self.kill_signals = list(kill_signals)
        self.spare: Optional[Runner] = None
        self.spare_digest = ""  # the digest of the function the spare loaded

    def start(self, function_blob: Buffer, digest: str, arguments: dict[int, memoryview],
              todo: list[int], versions_told: bool) -> Runner:
        """The runner of tasks ``todo`` of ``arguments``, running them."""
        spare, self.spare = self.spare, None
        if spare is not None:
            fits = (self.spare_digest == digest
                    and sum(nbytes(arguments[index]) for index in todo) <= SPARE_BATCH_BYTES)
            if fits and _hand_batch(spare, self.me, arguments, todo):
                return spare
            spare.kill()
            spare.wait()

        def target(channel: socket.socket) -> int:
            return run_tasks(Loaded(function_blob, self.settings), arguments, todo, channel,
                             self.connect, self.settings, self.output, runner_claims,
                             versions_told)

        runner_claims = Claims(len(todo))
        return Runner(target, runner_claims, self.kill_signals)

    def prepare(self, function_blob: Buffer, digest: str) -> None:
        """Fork the spare for the next batch of the function ``digest``, whose versions the
        caller has been told."""
        if self.spare is not None:
            return
        claims = Claims(0)  # nothing may start before its batch is handed over

        def target(channel: socket.socket) -> int:
            loaded = Loaded(function_blob, self.settings)
            batch = _receive_batch(channel, self.me)
            if batch is None:
                return 0  # discarded before any batch came
            arguments, todo = batch
            return run_tasks(loaded, arguments, todo, channel, self.connect, self.settings,
                             self.output, claims, versions_told=True)

        self.spare, self.spare_digest = Runner(target, claims, self.kill_signals), digest

    def discard(self) -> None:
        """Kill the spare, unused (the worker leaves)."""
        if self.spare is not None:
            self.spare.kill()
            self.spare.wait()
            self.spare = None


def _hand_batch(spare: Runner, me: Identity, arguments: dict[int, memoryview],
                todo: list[int]) -> bool:
    """Send the spare its batch; False if it cannot take it (it died meanwhile)."""
    if spare.poll() is not None:
        return False
    spare.claims.resume(len(todo))  # before it can read its batch and claim the first
    ticket = json.dumps({"request": me.request_id, "key": me.key.decode()}).encode()
    frames = pack_frames([(0, HANDOVER, memoryview(ticket))]
                         + [(index, ARGUMENTS, arguments[index]) for index in todo])
    try:
        for part in coalesce([_LENGTH.pack(sum(nbytes(part) for part in frames)), *frames]):
            spare.channel.sendall(part)
    except OSError:
        return False
    return True


def _receive_batch(channel: socket.socket, me: Identity
                   ) -> Optional[tuple[dict[int, memoryview], list[int]]]:
    """In the spare: wait for its batch, and speak for its request from then on; None if the
    supervisor closed the channel first."""
    header = _receive_exactly(channel, _LENGTH.size)
    if header is None:
        return None
    body = _receive_exactly(channel, _LENGTH.unpack(header)[0])
    if body is None:
        return None
    frames = unpack_frames(body)
    ticket = json.loads(bytes(frames[0][2]))
    me.request_id, me.key = int(ticket["request"]), str(ticket["key"]).encode()
    arguments = {index: payload for index, _kind, payload in frames[1:]}
    return arguments, list(arguments)


def _receive_exactly(channel: socket.socket, length: int) -> Optional[bytearray]:
    """``length`` bytes from ``channel``, or None if it closes first."""
    data = bytearray(length)
    view, received = memoryview(data), 0
    while received < length:
        count = channel.recv_into(view[received:])
        if not count:
            return None
        received += count
    return data
