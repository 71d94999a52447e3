"""How many tasks a worker asks for: one at first, then about a second's work of them.

Batches start at one task and grow or shrink so that a batch takes about
``BATCH_SECONDS``, so a pull's round trip is a small part of a batch while
work stays spread over the workers; the server never hands one worker more
than its share of what is left. Part of the worker side (``loop.py``).
"""

from __future__ import annotations

from typing import Optional

from ..wire.protocol import MAX_PULL

#: How long a batch of tasks should take: long enough that a pull's round trip
#: is a small part of it, short enough that work stays spread over the workers.
BATCH_SECONDS = 1.0
#: How many times larger than the last one a batch may grow.
BATCH_GROWTH = 8
#: A batch of at least this much work is asked for even when the queue runs short: a
#: pull, a runner and a post cost milliseconds, which tiny batches would multiply.
LEAST_BATCH_SECONDS = 0.05
#: A task that runs this many times longer than this worker's tasks took on average
#: (and at least GIVE_BACK_MIN_SECONDS) holds up the rest of its batch: they are given
#: back, for idle workers to run.
GIVE_BACK_FACTOR = 4
GIVE_BACK_MIN_SECONDS = 0.5


class BatchSize:
    """How many tasks to ask for next: one at first, then about ``BATCH_SECONDS`` of them.

    A fixed ``chunksize`` (the config key of that name) is asked for every time.
    """

    def __init__(self, chunksize: Optional[int] = None) -> None:
        self.chunksize = min(chunksize, MAX_PULL) if chunksize else None
        self.size = self.chunksize or 1
        self.per_task: Optional[float] = None  # seconds a task took, in the last batch

    def took(self, count: int, seconds: float) -> None:
        """A batch of ``count`` tasks took ``seconds``."""
        if not count:
            return
        self.per_task = max(seconds, 1e-6) / count
        if not self.chunksize:
            wanted = int(BATCH_SECONDS / self.per_task)
            self.size = max(1, min(wanted, count * BATCH_GROWTH, MAX_PULL))

    @property
    def least(self) -> int:
        """The fewest tasks worth a pull: about ``LEAST_BATCH_SECONDS`` of them."""
        if self.chunksize or self.per_task is None:
            return 1
        return max(1, min(self.size, int(LEAST_BATCH_SECONDS / self.per_task)))

    @property
    def give_back_after(self) -> float:
        """How long a task may run before the rest of its batch is given back."""
        return max(GIVE_BACK_MIN_SECONDS, GIVE_BACK_FACTOR * (self.per_task or BATCH_SECONDS))

