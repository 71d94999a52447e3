"""Chunk sizes, array limits, and results kept in argument order across chunks."""

import pytest

import sheepdog
from sheepdog.backends.gridengine import GridEngineBackend, parse_max_array_tasks, parse_total_slots
from sheepdog.chunking import MIN_TASKS, choose_chunksize
from sheepdog.config import resolve
from sheepdog.worker import argument_indices

from .test_api import max_request


@pytest.mark.parametrize(
    "n, slots, max_array, expected",
    [
        (3, 8, 75000, 1),            # few arguments: one task each
        (100, 8, 75000, 1),          # up to MIN_TASKS tasks: one each
        (20_000, 8, 75000, 200),     # 8 slots: 100 tasks of 200
        (20_000, 1000, 75000, 5),    # a big cluster: 4 tasks per slot
        (1_000_000, 100_000, 75000, 14),  # capped by max_aj_tasks
        (500, 8, 50, 10),            # a site with a small array limit
        (5_000, None, None, 5),      # unknown cluster: assume a mid-sized one
    ],
)
def test_chunksize_keeps_the_array_small_enough_and_busy(n, slots, max_array, expected):
    assert choose_chunksize(n, slots, max_array) == expected
    tasks = -(-n // expected)
    assert tasks <= (max_array or tasks)
    assert tasks >= min(n, MIN_TASKS, max_array or n)


def test_chunks_cover_every_argument_once_in_order():
    for n, chunksize in [(1, 1), (10, 3), (20_000, 200), (7, 7), (8, 3)]:
        tasks = -(-n // chunksize)
        covered = [i for t in range(1, tasks + 1) for i in argument_indices(t, chunksize, n)]
        assert covered == list(range(1, n + 1))


def test_retry_jobs_cover_their_listed_arguments_in_chunks():
    indices = [4, 9, 10, 17, 30]
    covered = [argument_indices(t, 2, 40, indices) for t in (1, 2, 3)]
    assert covered == [[4, 9], [10, 17], [30]]


def test_chunked_map_keeps_argument_order(local_conf):
    conf = {**local_conf, "chunksize": 7, "workers": 3}
    args = [(n,) for n in range(50)]
    assert sheepdog.map(lambda n: n * n, args, conf, verbose=False) == [n * n for n in range(50)]
    job = sheepdog.Storage(local_conf["dbfile"]).jobs(max_request(local_conf))[0]
    assert job.chunksize == 7


def test_automatic_chunking_packs_many_small_arguments(local_conf):
    conf = {**local_conf, "workers": 2}
    args = [(n,) for n in range(1000)]
    assert sheepdog.map(abs, args, conf, verbose=False) == list(range(1000))
    job = sheepdog.Storage(local_conf["dbfile"]).jobs(max_request(local_conf))[0]
    assert job.chunksize == 10  # 100 array tasks


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
