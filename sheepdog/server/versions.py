"""What workers said of their versions, held in memory until the caller's process warns.

A worker sends, with its first report, its versions of Python and of the
packages the function uses by name beside the caller's
(``wire/modules.py``'s :class:`VersionReport`). The server keeps each report
here, one per request, host and interpreter, never in the database: the
process that waits for the request (``caller/watcher.py``) takes them and
warns about the versions that differ. A process that only serves
(``sheepdog serve``) has nobody to warn, and keeps them until it ends.
"""

from __future__ import annotations

import threading

from ..wire.modules import VersionReport


class VersionReports:
    """The workers' version reports, by request, until they are taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: dict[int, list[VersionReport]] = {}
        self._seen: set[tuple[int, str, str]] = set()

    def add(self, request_id: int, report: VersionReport) -> None:
        """Keep ``report`` unless one of the same request, host and interpreter came first."""
        key = (request_id, report.host, report.python)
        with self._lock:
            if key not in self._seen:
                self._seen.add(key)
                self._new.setdefault(request_id, []).append(report)

    def take(self, request_id: int) -> list[VersionReport]:
        """The reports of ``request_id`` that came since the last call."""
        with self._lock:
            return self._new.pop(request_id, [])
