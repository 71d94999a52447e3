"""The dashboard's charts of a request, made in the background and only so often: no answer
waits long for them, and most polls read no task.

The histogram of durations and the throughput chart are made from every
finished task of a request, which takes about three seconds at a million
tasks, while the page wants its first answer within two and polls every
second. So each request's charts are made on a thread of their own, and the
answer that starts them waits for them at most :data:`WAIT_SECONDS` (small
requests get theirs at once); answers that find them being made do not wait.
Until the first are made an answer says ``charts_pending``, and later answers
give the newest made. Each request's charts are kept with the task counts
they were made at: a poll of a request whose counts have not changed (every
finished request) is answered from them, and one whose counts have changed
starts new charts only once the kept ones are older than ``COST_FACTOR``
times what they took to make (and ``MIN_AGE_SECONDS``): the charts then take
at most about a tenth of the dashboard's time, however large the request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

from ..storage.summaries import RequestSummary

log = logging.getLogger(__name__)

#: Kept charts are remade once older than this many times what they took to make...
COST_FACTOR = 10.0
#: ...and than this many seconds.
MIN_AGE_SECONDS = 1.0
#: How long an answer waits for charts being made before it goes without them.
WAIT_SECONDS = 0.1
#: What an answer says while a request's first charts are being made.
PENDING = {"durations": None, "throughput": None, "charts_pending": True}

#: Makes a request's charts: (its summary, now) -> the fields of the answer.
Make = Callable[[RequestSummary, float], dict[str, Any]]


class _Kept(NamedTuple):
    counts: tuple[tuple[str, int], ...]
    made_at: float
    cost: float
    charts: dict[str, Any]


class Charts:
    """Each request's latest charts, with the counts and the time they were made at."""

    def __init__(self, make: Make) -> None:
        self._make = make
        self._kept: dict[int, _Kept] = {}
        #: request id -> set when the charts being made for it are kept.
        self._making: dict[int, threading.Event] = {}
        self._lock = threading.Lock()  # the dashboard answers on a few threads

    def of(self, summary: RequestSummary, now: float) -> dict[str, Any]:
        """The charts of ``summary``'s request: kept ones while they may serve, else
        new ones if they are made within :data:`WAIT_SECONDS`, else the kept ones (or
        :data:`PENDING`) while new ones are made.

        Only the answer that starts new charts waits for them, and only when they may
        come in time (the first, or kept ones that took less): an answer that finds
        charts being made, or that would wait for slow ones, takes what is kept."""
        counts = tuple(sorted(summary.counts.items()))
        with self._lock:
            kept = self._kept.get(summary.request_id)
            if kept is not None and (kept.counts == counts or time.monotonic() - kept.made_at
                                     < max(MIN_AGE_SECONDS, COST_FACTOR * kept.cost)):
                return kept.charts
            if summary.request_id in self._making:  # being made: no answer waits again
                return PENDING if kept is None else kept.charts
            made = self._making[summary.request_id] = threading.Event()
            threading.Thread(target=self._make_and_keep, args=(summary, now, counts, made),
                             name=f"sheepdog-charts-{summary.request_id}", daemon=True).start()
        if kept is None or kept.cost < WAIT_SECONDS:  # they may well come in time
            made.wait(WAIT_SECONDS)
            with self._lock:
                kept = self._kept.get(summary.request_id)
        return PENDING if kept is None else kept.charts

    def _make_and_keep(self, summary: RequestSummary, now: float,
                       counts: tuple[tuple[str, int], ...], made: threading.Event) -> None:
        """On a thread of its own: make the charts, keep them, and say so."""
        started = time.monotonic()
        charts: Optional[dict[str, Any]] = None
        try:
            charts = self._make(summary, now)
        except Exception:  # noqa: BLE001 - the next poll tries again; the page goes on
            log.exception("the dashboard could not make the charts of request %s",
                          summary.request_id)
        finally:
            finished = time.monotonic()
            with self._lock:
                if charts is not None:
                    self._kept[summary.request_id] = _Kept(counts, finished, finished - started,
                                                           charts)
                del self._making[summary.request_id]
            made.set()
