"""Resources by name on the real schedulers: what they are told, and how a task over a limit ends.

GridEngine's ``qstat -j`` and Slurm's ``scontrol show job`` show what each
scheduler made of ``cores``, ``memory``, ``walltime``, ``gpus``, ``queue`` and
``account`` (the test clusters have GridEngine's ``smp`` and ``long.q``, and
Slurm's ``long`` partition and two GPUs as a GRES: see ci/). A task past its
walltime or over its memory ends with words that say so, and is not retried.
"""

import os
import re
import time

import pytest

import sheepdog
from sheepdog.storage import Storage

from .test_faults import run_as_test_user, wait_until
from .test_schedulers import last_request, scheduler  # noqa: F401 - the fixture

pytestmark = pytest.mark.cluster

#: What each scheduler's test asks for, and how a task past its walltime is told.
WALLTIME = {"gridengine": ("4", "killed at its walltime of 0:00:04"),
            # Slurm counts whole minutes, and looks at limits every 30 s.
            "slurm": ("1m", "killed at its walltime of 0:01:00")}


def forever():
    import time

    time.sleep(600)


def job_of(conf, request_id):
    """The scheduler's id of the request's (first) job, once it is recorded."""
    storage = Storage(conf["dbfile"])
    wait_until(lambda: storage.jobs(request_id))
    return storage.jobs(request_id)[0].job_id


def test_gridengine_is_told_the_pe_slots_memory_per_slot_walltime_and_queue(cluster_conf):
    conf = {**cluster_conf, "scheduler": "gridengine", "cores": 2, "memory": "1G",
            "walltime": "0:10:00", "queue": "long.q"}
    request_id = sheepdog.map_async(forever, [()], conf)
    try:
        shown = run_as_test_user(conf, f"qstat -j {job_of(conf, request_id)}").stdout
    finally:
        sheepdog.cancel(request_id, conf["dbfile"])
    assert re.search(r"^parallel environment:\s+smp range: 2$", shown, re.MULTILINE), shown
    resources = re.search(r"^hard resource_list:\s+(\S+)", shown, re.MULTILINE).group(1)
    assert set(resources.split(",")) >= {"h_vmem=512M", "h_rt=600"}, shown
    assert re.search(r"^hard_queue_list:\s+long\.q$", shown, re.MULTILINE), shown


def cuda_devices():
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def slurm_conf(cluster_conf):
    if not os.environ.get("SHEEPDOG_SLURM"):
        pytest.skip("no Slurm on the test cluster (run ci/slurm-up.sh)")
    return {**cluster_conf, "scheduler": "slurm"}


def test_slurm_is_told_the_cpus_memory_time_partition_account_and_gpus(slurm_conf):
    conf = {**slurm_conf, "cores": 2, "memory": "1G", "walltime": "0:10:00", "queue": "long",
            "account": os.environ["SHEEPDOG_TEST_USER"], "gpus": 1}
    request_id = sheepdog.map_async(forever, [()], conf)
    try:
        shown = run_as_test_user(conf, f"scontrol show job {job_of(conf, request_id)}").stdout
    finally:
        sheepdog.cancel(request_id, conf["dbfile"])
    fields = dict(re.findall(r"(\S+?)=(\S+)", shown))
    assert fields["CPUs/Task"] == "2" and fields["TimeLimit"] == "00:10:00", shown
    assert fields["Partition"] == "long", shown
    assert fields["Account"] == os.environ["SHEEPDOG_TEST_USER"], shown
    assert fields.get("MinMemoryNode") == "1G", shown
    assert "gpu:1" in fields.get("TresPerNode", ""), shown


def test_a_slurm_worker_sees_the_gpu_it_asked_for(slurm_conf):
    assert sheepdog.map(cuda_devices, [()], {**slurm_conf, "gpus": 1}) in (["0"], ["1"])


def test_a_task_past_its_walltime_is_killed_saying_so_and_not_retried(scheduler):  # noqa: F811
    conf, _spec = scheduler
    walltime, words = WALLTIME[conf["scheduler"]]
    conf = {**conf, "walltime": walltime, "retries": 1}
    started = time.monotonic()
    assert sheepdog.map(forever, [()], conf) == [None]
    assert time.monotonic() - started < 150
    ((_args, error),) = sheepdog.get_errors(last_request(conf), conf["dbfile"])
    assert words in error, error
    assert len(Storage(conf["dbfile"]).jobs(last_request(conf))) == 1


def allocate(megabytes):
    return len(bytearray(megabytes * 2**20))


def test_a_task_over_its_memory_says_so_and_is_not_retried(scheduler):  # noqa: F811
    conf, _spec = scheduler
    with sheepdog.Executor({**conf, "retries": 1}) as executor:
        small = executor.options(memory="1G")
        fits, greedy = small.submit(allocate, 1), small.submit(allocate, 1500)
        assert fits.result(timeout=180) == 2**20
        error = greedy.exception(timeout=180)
    assert isinstance(error, MemoryError)
    assert any("killed: over its memory limit of 1G" in note for note in error.__notes__)
    assert len(Storage(conf["dbfile"]).jobs(last_request(conf))) == 1
