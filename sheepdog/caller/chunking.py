"""How many workers a job starts: about one per slot, never more than there is work for.

Each array task of a job is a worker that pulls tasks until none is left
(see ``worker/loop.py``), so a job needs no more array tasks than can run at once:
the cluster's slots, within ``max_running`` and the scheduler's array limit,
and never more than there are tasks waiting. A scheduler that does not say
how many slots it has is assumed to have ``UNKNOWN_SLOTS``.
"""

from __future__ import annotations

from typing import Optional

#: Assumed when the scheduler does not say how many slots it has.
UNKNOWN_SLOTS = 100


def choose_workers(pending: int, slots: Optional[int], max_array_tasks: Optional[int],
                   max_running: Optional[int]) -> int:
    """Array tasks for a job over ``pending`` tasks on a cluster of ``slots`` slots."""
    limits = [pending, slots or UNKNOWN_SLOTS]
    limits += [limit for limit in (max_array_tasks, max_running) if limit]
    return max(1, min(limits))
