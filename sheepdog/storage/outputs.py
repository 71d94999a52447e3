"""The tail of what each task wrote to stdout and stderr, kept to show with its error.

Only tasks that wrote something have rows here, one per stream. A tail
arrives with the task's report and is kept with it (a duplicate run's output
does not replace it), or alone for a task that crashed; :func:`with_output`
appends it to the task's error text.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Mapping, Sequence

from .connection import Database
from .housekeeping import add_bytes
from ..wire.protocol import OUTPUT_TAIL_BYTES

#: The streams of a task's output, in the order they are shown: one file
#: for both, or one each.
STREAMS = ("stdout and stderr", "stdout", "stderr")
#: The most of one stream's tail that is stored (the worker's tail, and a
#: note that earlier bytes were left out).
MAX_OUTPUT_BYTES = OUTPUT_TAIL_BYTES + 1024


def with_output(error: str, output: Mapping[str, str]) -> str:
    """``error`` followed by each stream of the task's ``output`` in a marked section."""
    sections = [error.rstrip()]
    for stream in STREAMS:
        if stream in output:
            sections.append(f"--- the task's {stream} (its last "
                            f"{OUTPUT_TAIL_BYTES >> 10} KB at most) ---\n"
                            f"{output[stream].rstrip()}\n--- end of the task's {stream} ---")
    return "\n\n".join(sections)


def store_outputs(db: sqlite3.Connection, request_id: int, outputs: Sequence[tuple[int, str, Any]],
          accepted: set[int]) -> None:
    """Inside a transaction: (index, stream, bytes) output tails of the request's tasks.

    One that comes with its task's report (its index is in ``accepted``)
    replaces what was kept; any other is kept only where its task has none for
    that stream yet (it came after its report, or the task crashed), so a
    duplicate run's output never replaces the first's. What the request's outputs
    take grows (or shrinks) by the difference, measured on the tasks' rows.
    """
    if not outputs:
        return
    touched = json.dumps(sorted({index for index, _stream, _data in outputs}))
    before = _output_bytes(db, request_id, touched)
    for index, stream, data in outputs:
        if stream not in STREAMS:
            raise ValueError(f"unknown output stream {stream!r}")
        data = bytes(data)[-MAX_OUTPUT_BYTES:]
        if index in accepted:
            db.execute("INSERT OR REPLACE INTO outputs (request_id, idx, stream, data) "
                       "VALUES (?, ?, ?, ?)", (request_id, index, stream, data))
        else:
            db.execute("INSERT OR IGNORE INTO outputs (request_id, idx, stream, data) "
                       "SELECT request_id, idx, ?, ? FROM tasks WHERE request_id = ? "
                       "AND idx = ?", (stream, data, request_id, index))
    add_bytes(db, request_id, _output_bytes(db, request_id, touched) - before)


def _output_bytes(db: sqlite3.Connection, request_id: int, indices: str) -> int:
    """The bytes of the output kept for the tasks ``indices`` (a JSON list)."""
    return db.execute("SELECT coalesce(sum(length(data)), 0) FROM outputs WHERE request_id = ? "
                      "AND idx IN (SELECT value FROM json_each(?))",
                      (request_id, indices)).fetchone()[0]


def read_outputs(database: Database, request_id: int, where: str, parameters: Sequence[Any]
         ) -> dict[int, dict[str, str]]:
    """index -> stream -> text of the output kept for the tasks ``t`` that match ``where``."""
    rows = database.connection().execute(
        "SELECT o.idx, o.stream, o.data FROM outputs o JOIN tasks t "
        "ON t.request_id = o.request_id AND t.idx = o.idx "
        f"WHERE o.request_id = ? AND {where}", (request_id, *parameters))
    kept: dict[int, dict[str, str]] = {}
    for index, stream, data in rows:
        kept.setdefault(index, {})[stream] = bytes(data).decode("utf-8", "replace")
    return kept
