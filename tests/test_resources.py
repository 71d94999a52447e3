"""Resources by name: parsed once, refused clearly, translated per backend, enforced locally.

The golden files ``script-<scheduler>.txt`` pin what ``job_script`` shows for
each backend with every resource set; regenerate them after an intended
change with ``python -m tests.support.regenerate_golden``.
"""

import os
import sys
import time
from concurrent.futures import CancelledError

import pytest

import sheepdog
from sheepdog.backends import create
from sheepdog.backends.gridengine import describe_accounting, parse_qacct
from sheepdog.backends.local import LocalBackend
from sheepdog.backends.slurm import parse_sacct, parse_time
from sheepdog.caller import jobscript
from sheepdog.cli import main
from sheepdog.config import resolve
from sheepdog.resources import (
    InvalidResource, Resources, format_memory, parse_memory, parse_walltime, resources_of,
)
from sheepdog.storage import Storage

from .test_backends import GOLDEN, RecordedShell, TestGridEngine, TestSlurm, ok, recorded

#: Every resource, as a user would write them.
EVERY_RESOURCE = {"cores": 4, "memory": "10G", "walltime": "1h30m", "gpus": 2, "queue": "long",
                  "account": "physics", "gpu_resource": "gpu"}
SCRIPT_SCHEDULERS = ("gridengine", "slurm", "local")


def resource_script(scheduler):
    """``job_script`` of ``scheduler`` with every resource (the golden ``script-*.txt``)."""
    conf = {"scheduler": scheduler, **EVERY_RESOURCE}
    if scheduler == "local":  # this machine: one core each, two of the GPUs it lists
        conf.update(cores=1, workers=1, shell="python3")
    else:
        conf.update(host="headnode", max_running=4)
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"
    try:
        return sheepdog.job_script(conf, tasks=250)
    finally:
        if saved is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


@pytest.mark.parametrize("scheduler", SCRIPT_SCHEDULERS)
def test_the_job_script_with_every_resource_matches_the_golden_file(scheduler):
    assert resource_script(scheduler) == (GOLDEN / f"script-{scheduler}.txt").read_text()


# -- parsing ----------------------------------------------------------------


@pytest.mark.parametrize("text, size", [("8G", 8 * 2**30), ("1.5G", 1536 * 2**20),
                                        ("512M", 512 * 2**20), ("8GiB", 8 * 2**30),
                                        ("2T", 2 * 2**40), ("100K", 100 * 2**10)])
def test_memory_units_are_powers_of_1024(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["8 gigs", "8GB", "8g", "0G", "", "G", "-1G", "8"])
def test_memory_without_a_clear_unit_is_refused_naming_the_key(text):
    with pytest.raises(InvalidResource, match=f"config key 'memory' is '{text}'") as refused:
        parse_memory(text)
    assert refused.value.key == "memory"


def test_memory_is_written_in_the_largest_whole_unit():
    assert [format_memory(size) for size in (8 * 2**30, 1536 * 2**20, 2**30 // 3 + 1)] == \
        ["8G", "1536M", "349526K"]


@pytest.mark.parametrize("value, seconds", [("2:00:00", 7200), ("90m", 5400), ("1h30m", 5400),
                                            ("1d", 86400), ("45s", 45), (5400, 5400),
                                            ("5400", 5400), (1.5, 2), ("0:00:30", 30)])
def test_walltimes_in_each_form(value, seconds):
    assert parse_walltime(value) == seconds


@pytest.mark.parametrize("value", ["-1", -1, 0, "", "2 hours", "1:5:00", "h", "0:00:00"])
def test_a_walltime_that_cannot_be_read_is_refused_naming_the_key(value):
    with pytest.raises(InvalidResource, match="config key 'walltime'.*H:MM:SS"):
        parse_walltime(value)


def test_equal_requests_have_equal_resources_whichever_way_they_were_written():
    one = resources_of(resolve({"walltime": "90m", "memory": "1.5G", "cores": 2}))
    other = resources_of(resolve({"walltime": "1:30:00", "memory": "1536M", "cores": 2}))
    assert one == other and hash(one) == hash(other)
    assert one != resources_of(resolve({"walltime": "90m", "memory": "1.5G", "cores": 3}))
    assert resources_of(resolve({})) == Resources()


def test_environment_variables_set_walltimes_as_text_or_seconds(monkeypatch):
    monkeypatch.setenv("SHEEPDOG_WALLTIME", "90m")
    assert resolve({}).walltime == "90m"
    monkeypatch.setenv("SHEEPDOG_WALLTIME", "5400")
    assert resolve({}).walltime == 5400


# -- bad input: a clear error before anything is stored or submitted --------


@pytest.mark.parametrize("conf, words", [
    ({"memory": "8 gigs"}, "config key 'memory' is '8 gigs'"),
    ({"cores": 0}, "config key 'cores' must be at least 1, not 0"),
    ({"walltime": "-1"}, "config key 'walltime' is '-1'"),
    ({"gpus": 1}, "set 'gpu_resource' to your site's GPU complex"),
    ({"queue": "two words"}, "config key 'queue' is 'two words'"),
    ({"memory": "2G", "ge_opts": ["-l h_vmem=1G"]},
     "config key 'memory' and the ge_opts option '-l h_vmem=1G' both ask for memory"),
    ({"cores": 2, "ge_opts": ["-pe mpi 2"]}, "'cores' and the ge_opts option '-pe mpi 2'"),
    ({"walltime": 60, "ge_opts": ["-l mem_grab=1G,h_rt=60"]}, "'walltime' and the ge_opts"),
    ({"gpus": 1, "gpu_resource": "gpu", "ge_opts": ["-l gpu=1"]}, "'gpus' and the ge_opts"),
    ({"queue": "long", "ge_opts": ["-q short"]}, "'queue' and the ge_opts option '-q short'"),
    ({"account": "a", "ge_opts": ["-P b"]}, "'account' and the ge_opts option '-P b'"),
    ({"scheduler": "slurm", "memory": "2G", "slurm_opts": ["--mem-per-cpu=1G"]},
     "'memory' and the slurm_opts option '--mem-per-cpu=1G'"),
    ({"scheduler": "slurm", "cores": 2, "slurm_opts": ["-c 2"]}, "'cores' and the slurm_opts"),
    ({"scheduler": "slurm", "walltime": "1h", "slurm_opts": ["-t 60"]}, "'walltime' and the"),
    ({"scheduler": "slurm", "gpus": 1, "slurm_opts": ["--gres=gpu:1"]}, "'gpus' and the"),
    ({"scheduler": "slurm", "queue": "a", "slurm_opts": ["--partition=b"]}, "'queue' and the"),
    ({"scheduler": "slurm", "account": "a", "slurm_opts": ["-A b"]}, "'account' and the"),
])
def test_bad_resources_are_refused_before_anything_is_stored(dbfile, conf, words):
    conf = {"host": "headnode", "dbfile": dbfile, **conf}
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        sheepdog.map(abs, [(1,)], conf)
    assert not os.path.exists(dbfile)


def test_resources_for_other_schedulers_options_do_not_clash():
    """GridEngine's memory option is no clash with a Slurm option that looks like it."""
    create(resolve({"host": "headnode", "memory": "2G", "ge_opts": ["-l lr=0"]})).check()
    create(resolve({"scheduler": "slurm", "host": "headnode", "memory": "2G",
                    "slurm_opts": ["--qos=normal", "--time-min=10"]})).check()


# -- translation, and how a limit's end is told ------------------------------


def test_h_vmem_is_memory_per_slot_rounded_up():
    backend = create(resolve({"host": "headnode", "cores": 3, "memory": "1G"}))
    assert backend.resource_directives() == ["-pe smp 3", "-l h_vmem=349526K"]
    assert backend.memory_limit() == 2**30  # the worker's own limit is all of it


def test_walltimes_are_read_from_the_schedulers_own_options_too():
    def walltime(scheduler, options):
        key = {"gridengine": "ge_opts", "slurm": "slurm_opts"}[scheduler]
        conf = {"scheduler": scheduler, "host": "headnode", key: options}
        return create(resolve(conf)).walltime_seconds()

    assert walltime("gridengine", ["-l h_rt=1:00:00"]) == 3600
    assert walltime("gridengine", ["-l mem_grab=1G,h_rt=90"]) == 90
    assert walltime("gridengine", ["-l lr=0"]) is None
    assert walltime("slurm", ["--time=90"]) == 5400
    assert walltime("slurm", ["-t 2:30"]) == 180  # Slurm rounds up to whole minutes
    assert walltime("slurm", ["--time=1-0"]) == 86400
    assert walltime("slurm", ["--time=1:02:03"]) == 3780
    assert parse_time("1:02:03") == 3723
    assert parse_time("2-3:04:05") == ((2 * 24 + 3) * 60 + 4) * 60 + 5


def test_workers_are_told_their_walltime(local_conf, monkeypatch):
    told = []
    render = jobscript.render
    monkeypatch.setattr(jobscript, "render",
                        lambda shell, header, settings: told.append(settings)
                        or render(shell, header, settings))
    assert sheepdog.map(abs, [(-1,)], {**local_conf, "walltime": "1h"}) == [1]
    assert told[0].walltime_seconds == 3600


def test_gridengine_tells_a_task_killed_at_its_walltime_so():
    backend = TestGridEngine().backend({"qstat -xml -g d": ok(recorded("gridengine/qstat-after.xml")),
                                        "qacct -j": ok(recorded("gridengine/qacct-h_rt.txt"))},
                                       ge_opts=["-l h_rt=0:0:4"])
    end = backend.ended_tasks("1", {1})[1]
    assert end.reason.startswith("killed at its walltime of 0:00:04 (exit status")
    assert not end.retryable


def test_gridengine_tells_a_limit_enforced_before_the_walltime_as_the_memory():
    (fields,) = parse_qacct(recorded("gridengine/qacct-h_rt.txt")).values()
    words = {"walltime": "killed at its walltime of 1:00:00",
             "memory": "killed: over its memory limit of 2G"}
    end = describe_accounting(fields, {"walltime": 3600}, words)
    assert end.reason.startswith("killed: over its memory limit of 2G") and not end.retryable


def test_slurm_tells_a_task_killed_at_its_walltime_so():
    backend = TestSlurm().backend({"sacct": ok(recorded("slurm/sacct-timeout.txt"))},
                                  walltime="1m", slurm_opts=[])
    job = recorded("slurm/jobs.txt").split("timelimit ")[1].split()[0]
    (end,) = backend.accounting(job).values()
    assert end.reason.startswith("killed at its walltime of 0:01:00 (TIMEOUT)")
    assert not end.retryable


def test_slurm_tells_a_task_out_of_memory_so():
    words = {"OUT_OF_MEMORY": "killed: over its memory limit of 8G (OUT_OF_MEMORY)"}
    (end,) = parse_sacct("9_1|OUT_OF_MEMORY|0:125\n", "9", words).values()
    assert end.reason.startswith("killed: over its memory limit of 8G (OUT_OF_MEMORY)")


# -- the local scheduler enforces them --------------------------------------


def count_at_once(folder):
    """A job file that notes how many of its tasks run at once (as test_local_backend's)."""
    return (
        "import os, pathlib, time\n"
        f"mark = pathlib.Path({str(folder)!r}, 'running-' + os.environ['SHEEPDOG_TASK_ID'])\n"
        "mark.touch()\n"
        f"at_once = len(list(pathlib.Path({str(folder)!r}).glob('running-*')))\n"
        "time.sleep(0.3)\n"
        "mark.unlink()\n"
        f"pathlib.Path({str(folder)!r}, 'seen-' + mark.name).write_text(str(at_once))\n"
        "print(os.environ.get('CUDA_VISIBLE_DEVICES'))\n"
    )


def wait_for_ends(backend, job_id, n, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ended = backend.ended_tasks(job_id, set(range(1, n + 1)))
        if len(ended) == n:
            return ended
        time.sleep(0.05)
    raise AssertionError(f"the tasks of {job_id} did not end in {seconds} s")


def test_local_cores_limit_the_workers_at_once(tmp_path):
    cores = os.cpu_count() or 1
    backend = LocalBackend(resolve({"scheduler": "local", "workers": 4 * cores, "cores": cores}))
    assert backend.capacity() == (1, None)
    job_id = backend.submit(count_at_once(tmp_path), 1, 3)
    wait_for_ends(backend, job_id, 3)
    assert [path.read_text() for path in tmp_path.glob("seen-*")] == ["1", "1", "1"]


def test_local_cores_beyond_this_machine_are_refused():
    backend = LocalBackend(resolve({"scheduler": "local", "cores": (os.cpu_count() or 1) + 1}))
    with pytest.raises(ValueError, match="config key 'cores'.*this machine has"):
        backend.check()


def test_local_gpus_share_out_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    backend = LocalBackend(resolve({"scheduler": "local", "workers": 8, "gpus": 1}))
    assert backend.capacity() == (3, None)
    job_id = backend.submit(count_at_once(tmp_path), 1, 3)
    wait_for_ends(backend, job_id, 3)
    job = backend._jobs[job_id]
    assert job.devices == ["3", "5", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="config key 'gpus'.*CUDA_VISIBLE_DEVICES lists 0"):
        LocalBackend(resolve({"scheduler": "local", "gpus": 1})).check()


def cuda_devices(_n):
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_gpus_reach_the_workers_environment(local_conf, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert set(sheepdog.map(cuda_devices, [(n,) for n in range(4)],
                            {**local_conf, "gpus": 1})) <= {"3", "5"}


def forever():
    import time

    time.sleep(120)


def test_a_local_task_past_its_walltime_is_killed_saying_so_and_not_retried(local_conf):
    started = time.monotonic()
    conf = {**local_conf, "walltime": 2, "retries": 1}
    assert sheepdog.map(forever, [()], conf) == [None]
    assert time.monotonic() - started < 60
    request_id = Storage(conf["dbfile"]).request_summaries()[-1].request_id
    ((_args, error),) = sheepdog.get_errors(request_id, conf["dbfile"])
    assert "killed at its walltime of 0:00:02" in error
    assert len(Storage(conf["dbfile"]).jobs(request_id)) == 1


def allocate(megabytes):
    return len(bytearray(megabytes * 2**20))


def test_a_local_task_over_its_memory_says_so(local_conf):
    with sheepdog.Executor({**local_conf, "retries": 1}) as executor:
        fits = executor.options(memory="1G").submit(allocate, 1)
        greedy = executor.options(memory="1G").submit(allocate, 1500)
        assert fits.result(timeout=120) == 2**20
        error = greedy.exception(timeout=120)
    assert isinstance(error, MemoryError)
    assert any("killed: over its memory limit of 1G" in note for note in error.__notes__)


def test_a_task_over_its_memory_is_stored_as_killed_over_its_limit(local_conf):
    """What ``get_errors``, ``sheepdog errors`` and the dashboard show starts with the
    limit that ended the task, before the MemoryError's traceback."""
    conf = {**local_conf, "memory": "1G"}
    request_id = sheepdog.map_async(allocate, [(1500,)], conf)
    sheepdog.get_results(request_id, conf["dbfile"], timeout=120)
    ((_args, error),) = sheepdog.get_errors(request_id, conf["dbfile"])
    assert error.startswith("killed: over its memory limit of 1G\n")
    assert "MemoryError" in error


# -- per call, and before submitting -----------------------------------------


def test_options_give_requests_of_their_own_resources(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        small = executor.options(walltime=2)
        plain, short = executor.submit(abs, -1), small.submit(forever)
        also_plain = executor.submit(abs, -2)
        assert plain.result(timeout=60) == 1 and also_plain.result(timeout=60) == 2
        with pytest.raises(sheepdog.TaskLost, match="killed at its walltime of 0:00:02"):
            short.result(timeout=60)
        assert small.options(cores=1).config.walltime == 2
    storage = Storage(local_conf["dbfile"])
    walltimes = sorted(str(storage.request_config(summary.request_id).get("walltime"))
                       for summary in storage.request_summaries())
    assert walltimes == ["2", "None"]


def test_options_are_checked_when_given(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        with pytest.raises(ValueError, match="config key 'cores' must be at least 1"):
            executor.options(cores=0)
        with pytest.raises(TypeError, match="Executor.options takes resources, not 'host'"):
            executor.options(host="elsewhere")


def test_leaving_options_waits_for_its_futures_and_leaves_the_executor_running(local_conf):
    with sheepdog.Executor(local_conf) as executor:
        with executor.options(cores=1) as one_core:
            future = one_core.submit(abs, -3)
        assert future.done() and future.result() == 3
        assert executor.submit(abs, -4).result(timeout=60) == 4
        with executor.options(cores=1) as one_core:
            slow = one_core.submit(forever)
            one_core.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(CancelledError):
            slow.result(timeout=60)


def test_sheepdog_script_prints_the_header_without_submitting(capsys, tmp_path):
    dbfile = str(tmp_path / "never.sqlite")
    assert main(["script", "--dbfile", dbfile, "scheduler=slurm", "host=headnode", "cores=2",
                 "walltime=90m", 'slurm_opts=["--qos=high"]', "--tasks", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[1:] == [
        "#SBATCH --array=1-3", "#SBATCH --job-name=sheepdog",
        "#SBATCH --output=.sheepdog/sheepdog-%A_%a.out",
        "#SBATCH --error=.sheepdog/sheepdog-%A_%a.err", "#SBATCH --cpus-per-task=2",
        "#SBATCH --time=1:30:00", "#SBATCH --qos=high",
        "# sheepdog: each worker may run for 1:30:00"]
    assert not os.path.exists(dbfile)
    assert main(["script", "memory=8 gigs"]) == 2
    assert "config key 'memory' is '8 gigs'" in capsys.readouterr().err
    assert main(["script", "cores"]) == 2
    assert "'cores' is not KEY=VALUE" in capsys.readouterr().err


def test_job_script_starts_as_the_submitted_job_file_does():
    conf = resolve({"host": "headnode", "cores": 2, "ge_opts": ["-l lr=0"]})
    backend = create(conf)
    backend.shell = RecordedShell({})
    script = sheepdog.job_script(conf, tasks=5)
    assert script.splitlines() == [f"#!{conf.shell}", *backend.header(5)]
    assert sys.modules["sheepdog"].job_script is jobscript.job_script


def test_a_queue_or_account_for_the_local_scheduler_is_warned_about_as_unused():
    from sheepdog.config import resolve_with_origins, unused_key_warnings

    config, origins = resolve_with_origins({"scheduler": "local", "queue": "long", "cores": 1})
    assert unused_key_warnings(config, origins) == [
        "config key 'queue' (the config dict) is not used by the local scheduler, whose tasks "
        "run on this machine; it is ignored"]
