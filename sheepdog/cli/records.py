"""What the reading commands say about requests: one record per request, as a table row
and as JSON with stable keys (documented in ``docs/cli.rst``), and ``list``'s filters.

A request's *state* is one word: ``pending`` (no task has started), ``running``,
``done`` (every task done), ``failed`` (finished, and some task failed or was
lost), ``cancelled`` (finished, and the only tasks without a result were
cancelled). Its task counts split the tasks that workers hold into ``running``
(``f`` runs now) and ``queued`` (waiting in a worker's batch).
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping, Optional, Sequence

from ..storage.states import CANCELLED, DONE, FAILED, LOST, PENDING, RUNNING
from ..storage.summaries import RequestSummary, TaskLog

#: The counts of a record, in the order ``list`` shows them.
COUNTS = (DONE, FAILED, LOST, CANCELLED, RUNNING, "queued", PENDING)
#: ``--since`` units.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def request_state(summary: RequestSummary) -> str:
    """The request's state in one word (see the module's docstring)."""
    counts = summary.counts
    if not summary.complete:
        return RUNNING if counts.get(RUNNING) or counts.get(DONE) or counts.get(FAILED) \
            or counts.get(LOST) else PENDING
    if counts.get(DONE, 0) >= summary.n_tasks:
        return DONE
    return FAILED if counts.get(FAILED) or counts.get(LOST) else CANCELLED


def elapsed(summary: RequestSummary, now: float) -> float:
    """Seconds from the request's creation to its last finish, or to ``now`` while open."""
    return max((summary.ended if summary.ended is not None else now) - summary.created, 0.0)


def task_counts(summary: RequestSummary) -> dict[str, int]:
    """The request's tasks by state, with held tasks split into running and queued."""
    held = summary.counts.get(RUNNING, 0)
    split = {RUNNING: summary.executing, "queued": held - summary.executing}
    return {state: split.get(state, summary.counts.get(state, 0)) for state in COUNTS}


def request_record(summary: RequestSummary, now: float, size: int) -> dict[str, Any]:
    """A request as ``list --json`` and ``status --json`` give it; ``size`` is the bytes
    it takes on disk."""
    counts = task_counts(summary)
    return {"id": summary.request_id, "function": summary.function_name,
            "module": summary.function_module, "created": summary.created,
            "elapsed": round(elapsed(summary, now), 3), "state": request_state(summary),
            "backend": summary.backend, "total": summary.n_tasks,
            "finished": sum(counts[state] for state in (DONE, FAILED, LOST, CANCELLED)),
            "remembered": summary.remembered, "bytes": size, "counts": counts}


def log_record(entry: TaskLog, arguments: Optional[str] = None) -> dict[str, Any]:
    """A task's state, error and output, as ``logs --json`` and ``errors --json`` give it."""
    record: dict[str, Any] = {"index": entry.task, "state": entry.state}
    if arguments is not None:
        record["arguments"] = arguments
    return {**record, "error": entry.error, "output": entry.output}


def duration(text: str) -> float:
    """``"2h"`` -> 7200.0: a ``--since`` duration (s, m, h or d after a number)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: give a number and a unit, s, m, h or d "
                         f"(30m, 2h, 1d)")
    return float(match[1]) * _UNITS[match[2]]


def chosen(summaries: Sequence[RequestSummary], running: bool = False, failed: bool = False,
           since: Optional[float] = None, last: Optional[int] = None,
           now: Optional[float] = None) -> list[RequestSummary]:
    """The requests that ``list``'s filters keep, oldest first: still running, with
    failed or lost tasks, created within ``since`` seconds, the ``last`` newest."""
    now = time.time() if now is None else now
    kept = [summary for summary in summaries
            if (not running or not summary.complete)
            and (not failed or summary.counts.get(FAILED) or summary.counts.get(LOST))
            and (since is None or summary.created >= now - since)]
    return kept if last is None else kept[max(len(kept) - last, 0):]


def size(n_bytes: int) -> str:
    """``12.3 MB``: a size on disk, in its largest unit of 1000s."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def age(seconds: float) -> str:
    """``3 min ago``: how long ago something happened, roughly, as ``list`` shows it."""
    return f"{span(seconds)} ago"


def span(seconds: float) -> str:
    """``3 min``: a time span in its largest whole unit."""
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
    return f"{max(int(seconds), 0)} s"


def table(summaries: Sequence[RequestSummary], now: float, sizes: Mapping[int, int]
          ) -> list[str]:
    """``list``'s lines: a header and a row per request, columns aligned; ``sizes`` are
    the bytes each request takes on disk."""
    header = ("ID", "FUNCTION", "CREATED", "ELAPSED", "STATE",
              *(state.upper() for state in COUNTS), "TOTAL", "SIZE")
    rows = []
    for summary in summaries:
        counts = task_counts(summary)
        rows.append((str(summary.request_id), summary.function, age(now - summary.created),
                     span(elapsed(summary, now)), request_state(summary),
                     *(str(counts[state]) for state in COUNTS), str(summary.n_tasks),
                     size(sizes.get(summary.request_id, 0))))
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    left = range(1, 5)  # the words are left-aligned, the numbers right-aligned
    return ["  ".join(cell.ljust(width) if column in left else cell.rjust(width)
                      for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
            for row in (header, *rows)]
