"""Waking the server's held pulls when work may have arrived, from any thread.

An idle worker of a warm pool (``caller/pool.py``) asks for work and the
server holds its pull open rather than answer "nothing" at once, so that a
task made a moment later starts at once rather than at the worker's next
poll. The server's event loop awaits :meth:`WorkSignal.wait`; the caller's
threads call :meth:`WorkSignal.notify` when they make a request or close a pool.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class WorkSignal:
    """The futures of the held pulls, each on its event loop, and the call that wakes them.

    Each :meth:`notify` starts a new :attr:`generation`. A pull that looked for
    work in generation G and found none waits only while the generation is
    still G: work that arrived while it looked, before it began to wait, would
    otherwise leave it asleep until its next recheck.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[tuple[Any, Any]] = []  # (event loop, future)
        self._generation = 0

    @property
    def generation(self) -> int:
        """How many times :meth:`notify` was called: read it before looking for work."""
        with self._lock:
            return self._generation

    async def wait(self, timeout: float, since: int) -> None:
        """Until :meth:`notify` is called or ``timeout`` seconds pass; not at all if it was
        called since :attr:`generation` was ``since``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = (loop, future)
        with self._lock:
            woken = self._generation != since
            if not woken:
                self._waiters.append(entry)
        if woken:
            await asyncio.sleep(0)  # as a wait would: others on the loop get their turn
            return
        try:
            await asyncio.wait([future], timeout=timeout)
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)

    def notify(self) -> None:
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:  # its loop has closed: nobody waits there any more
                pass


def _settle(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)
