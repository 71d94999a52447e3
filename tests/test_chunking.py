"""How many workers a job starts, and the scheduler limits that bound it."""

import pytest

from sheepdog.backends.gridengine import (
    GridEngineBackend,
    parse_max_array_tasks,
    parse_total_slots,
)
from sheepdog.caller.chunking import UNKNOWN_SLOTS, choose_workers
from sheepdog.config import resolve


@pytest.mark.parametrize(
    "pending, slots, max_array, max_running, expected",
    [
        (3, 8, 75000, None, 3),            # fewer tasks than slots: a worker each
        (20_000, 8, 75000, None, 8),       # a worker per slot
        (20_000, 8, 75000, 2, 2),          # within max_running
        (500, 1000, 50, None, 50),         # a site with a small array limit
        (5_000, None, None, None, UNKNOWN_SLOTS),  # a scheduler that does not say
        (0, 8, None, None, 1),
    ],
)
def test_a_job_starts_a_worker_per_slot_within_every_limit(pending, slots, max_array,
                                                            max_running, expected):
    assert choose_workers(pending, slots, max_array, max_running) == expected


def test_max_running_becomes_a_tc_directive():
    backend = GridEngineBackend(resolve({"host": "h", "max_running": 5}))
    assert "-tc 5" in backend.directives(100)
    assert not any(d.startswith("-tc") for d in GridEngineBackend(resolve({"host": "h"})).directives(9))


def test_cluster_limits_are_read_from_qconf_and_qstat():
    assert parse_max_array_tasks("max_u_jobs 0\nmax_aj_tasks                 75000\n") == 75000
    assert parse_max_array_tasks("max_aj_tasks 0\n") is None
    assert parse_max_array_tasks("nothing here") is None
    qstat = (
        "CLUSTER QUEUE                   CQLOAD   USED    RES  AVAIL  TOTAL aoACDS  cdsuE  \n"
        "--------------------------------------------------------------------------------\n"
        "all.q                             0.47      0      0      8      8      0      0 \n"
        "long.q                            0.10      2      0     14     16      0      0 \n"
    )
    assert parse_total_slots(qstat) == 24
    assert parse_total_slots("") is None
