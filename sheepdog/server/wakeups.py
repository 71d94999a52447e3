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
    """The futures of the held pulls, each on its event loop, and the call that wakes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[tuple[Any, Any]] = []  # (event loop, future)

    async def wait(self, timeout: float) -> None:
        """Until :meth:`notify` is called or ``timeout`` seconds pass."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._waiters.append(entry)
        try:
            await asyncio.wait([future], timeout=timeout)
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)

    def notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:  # its loop has closed: nobody waits there any more
                pass


def _settle(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)
