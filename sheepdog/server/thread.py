"""One Tornado server on an I/O loop of its own: in a daemon thread, or in the foreground.

The callback server (``host.py``) and the dashboard (``dashboard/server.py``)
both run this way. Each gives a ``listen`` function, which runs on the new
loop's thread: it binds its sockets, starts serving on them, and returns the
coroutine function that closes what it opened. :meth:`ServerThread.start`
returns once ``listen`` has returned (or raised: its error is raised again in
the starting thread), :meth:`ServerThread.stop` stops the loop and waits for
the thread to end.

Tornado is imported here only when a server starts, so that importing
sheepdog costs no web framework.
"""

from __future__ import annotations

import threading
from typing import Awaitable, Callable, Optional

#: What ``listen`` returns: closes the server's sockets and connections, on its loop.
Close = Callable[[], Awaitable[None]]


class ServerThread:
    """Runs ``listen`` and then an I/O loop, until :meth:`stop`."""

    def __init__(self, name: str, listen: Callable[[], Close]) -> None:
        self.name = name
        self.listen = listen
        self._thread: Optional[threading.Thread] = None
        self._listening = threading.Event()
        self._failure: list[BaseException] = []
        self._stop: Optional[Callable[[], None]] = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, wait: bool = True) -> "ServerThread":
        """Serve in a daemon thread; with ``wait``, return once it listens (see :meth:`wait`)."""
        if self._thread is None:
            self._listening.clear()
            self._failure.clear()
            self._thread = threading.Thread(target=self._run_handing_over_failure,
                                            name=self.name, daemon=True)
            self._thread.start()
        if wait:
            self.wait()
        return self

    def wait(self) -> None:
        """Wait until the server listens; raise what stopped it from listening, if anything."""
        self._listening.wait()
        if self._failure:
            self._thread = None
            raise self._failure[0]

    def run(self) -> None:
        """Listen and serve in this thread until :meth:`stop` (from another thread)."""
        import tornado.ioloop

        import asyncio  # with Tornado, only once a server starts

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        io_loop = tornado.ioloop.IOLoop.current()
        try:
            close = self.listen()
        except BaseException:
            io_loop.close(all_fds=True)
            raise
        self._stop = lambda: io_loop.add_callback(io_loop.stop)
        self._listening.set()
        try:
            io_loop.start()
        finally:
            loop.run_until_complete(close())
            io_loop.close(all_fds=True)

    def _run_handing_over_failure(self) -> None:
        try:
            self.run()
        except BaseException as error:  # noqa: B902 - handed to the starting thread
            self._failure.append(error)
            self._listening.set()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until the thread ends (Ctrl-C interrupts the wait)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """Stop the loop, and wait (up to 10 s) for the thread to end."""
        if self._thread is not None:
            self._listening.wait(timeout=10)  # started without waiting: let it listen first
        if self._stop is not None:
            self._stop()
        self.join(timeout=10)
        self._thread = self._stop = None
