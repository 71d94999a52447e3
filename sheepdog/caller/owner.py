"""One owner per database file in this process: its storage handle, servers and dashboard.

SQLite keeps a database safe across processes with POSIX advisory locks, and
POSIX releases every lock a process holds on a file as soon as *any*
descriptor of that file is closed in that process. A second handle on the
same file (a second ``Storage``, or a permission check that opens and closes
the file) can therefore drop the locks of the first one's open connections,
so that another process takes itself for the last user and checkpoints and
removes the write-ahead log under them: committed results vanish. So every
``map``, :class:`~sheepdog.caller.session.Session`,
:class:`~sheepdog.Executor` and CLI read of one file in one process goes
through the one :class:`DatabaseOwner` of that file, which opens it once.

Owners are shared and counted: each session that uses a file holds it until
the session closes, and the last one to let go stops the servers and the
dashboard and closes the database. A reader (the reading ``sheepdog``
commands) may ask for the file read-only: a new owner then opens it
read-only (see ``storage/read_only.py``), and an owner that can write serves
the reader as it is. A file this process holds read-only cannot be written
until its readers let go: a second, writing handle is what this module avoids.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import TYPE_CHECKING, Optional

from ..config import Config
from ..server import Server
from ..server.versions import VersionReports
from ..storage import Storage, StorageError
from .pool import Pools

if TYPE_CHECKING:  # the dashboard (and Flask) is imported only when it is served
    from ..dashboard.server import DashboardServer

log = logging.getLogger(__name__)


class DatabaseOwner:
    """This process's storage, callback servers and dashboard of one database file."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path = path
        self.storage = Storage(path, read_only=read_only)
        self._lock = threading.RLock()
        self._servers: dict[str, Server] = {}  # scheme -> the server new requests use
        self._dashboard: Optional[DashboardServer] = None
        self._holders = 0
        #: What the workers of this process's servers said of their versions.
        self.version_reports = VersionReports()
        #: The warm pools of this database's requests made in this process.
        self.pools = Pools(self.storage)

    def server(self, config: Config, port: Optional[int] = None, wait: bool = True) -> Server:
        """The server that new requests of ``config``'s scheme use, started on first use.

        A running server is never stopped here: workers of earlier requests
        may still call it back. A call that needs another port gets a server
        of its own beside it. Without ``wait`` it may still be starting.
        """
        port = port if port is not None else config.port
        scheme = "https" if config.tls else "http"
        with self._lock:
            server = self._servers.get(scheme)
            if server is None or not server.running or port not in (None, server.port):
                server = Server(self.storage, port=port, bind=config.bind or "127.0.0.1",
                                max_body_bytes=config.max_body_bytes, use_tls=config.tls,
                                version_reports=self.version_reports, pools=self.pools)
                self._servers[scheme] = server
        return server.start(wait)

    def running_server(self, scheme: str = "https") -> Optional[Server]:
        """The server of ``scheme`` that new requests use, if one was started."""
        return self._servers.get(scheme)

    def dashboard(self, config: Config) -> Optional[DashboardServer]:
        """The live dashboard of this database, started on first use; None when the
        ``dashboard`` config key is False, or when its address cannot be had (a warning
        says so: the page is a convenience, never a reason to fail a request)."""
        if config.dashboard is False:
            return None
        from ..dashboard.server import DashboardServer

        with self._lock:
            if self._dashboard is None or not self._dashboard.running:
                dashboard = DashboardServer(self.storage, process_token(), str(config.dashboard))
                try:
                    dashboard.start()
                except OSError as error:
                    log.warning("no dashboard: it cannot listen on %s (config key 'dashboard'): "
                                "%s", config.dashboard, error)
                    return None
                self._dashboard = dashboard
            return self._dashboard

    def running_dashboard(self) -> Optional[DashboardServer]:
        """The dashboard, if one was started."""
        return self._dashboard

    def close(self) -> None:
        """Close the warm pools, stop the servers and the dashboard, close the database."""
        self.pools.close()
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
            dashboard, self._dashboard = self._dashboard, None
        for server in servers:
            server.stop()
        if dashboard is not None:
            dashboard.stop()
        self.storage.close()


_owners: dict[str, DatabaseOwner] = {}
_owners_lock = threading.Lock()
#: The dashboard token of this process: 256 random bits, safe in a URL, one for every
#: dashboard it serves, so that one link format opens any of them.
_TOKEN = secrets.token_urlsafe(32)


def process_token() -> str:
    """The token that opens this process's dashboards."""
    return _TOKEN


def acquire(dbfile: str, create: bool = True, read_only: bool = False) -> DatabaseOwner:
    """The owner of ``dbfile`` (opened on first use), held until :func:`release`.

    Without ``create``, a missing file is an error: reading never creates a
    database. With ``read_only``, a file not yet open here is opened
    read-only; one that is open here read-only cannot be had to write.
    """
    path = os.path.realpath(dbfile)  # one owner however the path is spelt
    with _owners_lock:
        owner = _owners.get(path)
        if owner is None:
            if (read_only or not create) and not os.path.exists(path):
                raise FileNotFoundError(missing_database(path))
            owner = _owners[path] = DatabaseOwner(path, read_only)
        elif owner.storage.read_only and not read_only:
            raise StorageError(
                f"{path} is open read-only in this process (a reading command or dashboard "
                f"still uses it): close what reads it before writing to it")
        owner._holders += 1
        return owner


def opened(dbfile: str) -> Optional[DatabaseOwner]:
    """The owner of ``dbfile`` if this process has it open, without opening it."""
    with _owners_lock:
        return _owners.get(os.path.realpath(dbfile))


def release(owner: DatabaseOwner) -> None:
    """One holder lets go of ``owner``; the last one closes it."""
    with _owners_lock:
        owner._holders -= 1
        if owner._holders > 0:
            return
        if _owners.get(owner.path) is owner:
            del _owners[owner.path]
    owner.close()


def missing_database(path: str) -> str:
    """Why ``path`` cannot be read, naming the sheepdog databases that do exist nearby."""
    directory = os.path.dirname(path)
    try:
        nearby = sorted(name for name in os.listdir(directory) if name.endswith(".sqlite"))
    except OSError:
        nearby = []
    hint = (f"; databases in {directory}: {', '.join(nearby)}" if nearby
            else f"; there is no .sqlite file in {directory}")
    return (f"no sheepdog database at {path}{hint}. Pass the dbfile the request was made "
            f"with (a relative dbfile, like the default ./sheepdog.sqlite, is relative to "
            f"the directory the request was made from)")
