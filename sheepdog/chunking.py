"""How many arguments each array task runs: the automatic ``chunksize``.

One scheduler task per argument is best while tasks are few and long, but a
scheduler pays for every task it dispatches (about a tenth of a second each
on GridEngine) and caps an array's size (``max_aj_tasks``, often 75,000). So
the automatic choice keeps every argument in its own task while there are no
more than a few tasks per slot, and beyond that packs arguments into chunks,
aiming at ``TASKS_PER_SLOT`` tasks per slot (at least ``MIN_TASKS``), never
above the scheduler's array limit.
"""

from __future__ import annotations

from typing import Optional

#: Array tasks to aim for per slot of the cluster: enough to balance uneven work.
TASKS_PER_SLOT = 4
#: The fewest array tasks worth chunking down to, however small the cluster.
MIN_TASKS = 100
#: Assumed when the scheduler does not say how many slots it has.
UNKNOWN_SLOTS = 250


def choose_chunksize(n_arguments: int, slots: Optional[int], max_array_tasks: Optional[int]) -> int:
    """Arguments per array task for ``n_arguments`` on a cluster of ``slots`` slots."""
    target = max(TASKS_PER_SLOT * (slots or UNKNOWN_SLOTS), MIN_TASKS)
    if max_array_tasks:
        target = min(target, max_array_tasks)
    return max(1, -(-n_arguments // target))
