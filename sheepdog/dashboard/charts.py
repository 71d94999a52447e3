"""The dashboard's charts of a request, recomputed only so often: most polls read no task.

The histogram of durations and the throughput chart are made from every
finished task of a request, which takes about a second at a million tasks,
while the page polls every second. So each request's charts are kept with
the task counts they were made at: a poll of a request whose counts have not
changed (every finished request) is answered from them, and one whose counts
have changed gets new charts only once the kept ones are older than
``COST_FACTOR`` times what they took to make (and ``MIN_AGE_SECONDS``): the
charts then take at most about a tenth of the dashboard's time, however
large the request.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..storage.summaries import RequestSummary

#: Kept charts are remade once older than this many times what they took to make...
COST_FACTOR = 10.0
#: ...and than this many seconds.
MIN_AGE_SECONDS = 1.0

#: Makes a request's charts: (its summary, now) -> the fields of the answer.
Make = Callable[[RequestSummary, float], dict[str, Any]]


class Charts:
    """Each request's latest charts, with the counts and the time they were made at."""

    def __init__(self, make: Make) -> None:
        self._make = make
        self._kept: dict[int, tuple[tuple[tuple[str, int], ...], float, float, dict[str, Any]]] = {}
        self._lock = threading.Lock()  # the dashboard answers on a few threads

    def of(self, summary: RequestSummary, now: float) -> dict[str, Any]:
        """The charts of ``summary``'s request: kept ones while they may serve, else new."""
        counts = tuple(sorted(summary.counts.items()))
        with self._lock:
            kept = self._kept.get(summary.request_id)
        if kept is not None:
            kept_counts, made_at, cost, charts = kept
            age = time.monotonic() - made_at
            if kept_counts == counts or age < max(MIN_AGE_SECONDS, COST_FACTOR * cost):
                return charts
        started = time.monotonic()
        charts = self._make(summary, now)
        finished = time.monotonic()
        with self._lock:
            self._kept[summary.request_id] = (counts, finished, finished - started, charts)
        return charts
