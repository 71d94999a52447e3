"""Warm pools against one job per request, on the local backend and the test cluster.

For each scheduler, in one run, each figure beside its baseline measured in the same run:
  second map   a map of N trivial tasks (default 200) while the first map's workers wait,
               against the same map with ``linger: 0`` (a new job each time); medians
  first map    the first map of a fresh pool, against the scheduler's own array job of
               ``python3 -c pass`` (``qsub -sync y -t 1-N`` / ``sbatch --array``; cluster only)
  dependent    ``executor.submit(f, x).result()`` one after another on a warm pool (median of
               50), against the same with ``linger: 0`` (median of 5: a job each); and the
               medians of the first and the last third of those calls, which must not grow
  released     seconds from a pool's last task until none of its workers is left, with
               ``linger`` L (goal: within L + 10 s); and whether a process that exits with
               a warm pool leaves any job behind (checked within 10 s)
  fairness     a 10-task map made while a 10,000-task map runs in the same pool (goal <= 3 s)
  walltime     600 tasks of 1 s on 8 workers whose walltime is 30 s (goal: 0 lost, 0 failed,
               each run once, <= 1.3x the ideal); only where the config has ``walltime``
  budget       the pool's looks at the scheduler and its submissions during these runs

    .venv/bin/python benchmarks/pool.py --scheduler local
    source /var/lib/sheepdog-test/env
    ip netns exec sheepdog .venv/bin/python benchmarks/pool.py --scheduler all
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sheepdog  # noqa: E402
from sheepdog.config import resolve  # noqa: E402
from sheepdog.remote import ssh  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import raw_job  # noqa: E402


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def config_for(scheduler: str, directory: str) -> dict[str, Any]:
    conf: dict[str, Any] = {"scheduler": scheduler, "dashboard": False,
                            "dbfile": os.path.join(directory, f"pool-{scheduler}.sqlite")}
    if scheduler == "local":
        return {**conf, "workers": 8}
    return {**conf, "host": os.environ["SHEEPDOG_TEST_HOST"],
            "ssh_user": os.environ["SHEEPDOG_TEST_USER"],
            "ssh_keyfile": os.environ["SHEEPDOG_TEST_KEY"],
            "ssh_known_hosts": os.environ["SHEEPDOG_TEST_KNOWN_HOSTS"]}


def maps(conf: dict[str, Any], tasks: int, rounds: int) -> tuple[list[float], list[float],
                                                                   list[float]]:
    """(first map of a fresh pool, second map, map with linger 0) times, per round."""
    args = [(i,) for i in range(tasks)]
    first, second, cold = [], [], []
    for _ in range(rounds):
        with sheepdog.Session() as session:
            for times in (first, second):
                times.append(timed(lambda: session.submit(abs, args, conf).wait()))
        cold.append(timed(lambda: sheepdog.map(abs, args, {**conf, "linger": 0},
                                               verbose=False)))
    return first, second, cold


def dependent(conf: dict[str, Any], calls: int) -> list[float]:
    times = []
    with sheepdog.Executor(conf) as executor:
        executor.submit(abs, 1).result()  # warm: the pool's workers are up
        value = 1
        for _ in range(calls):
            started = time.perf_counter()
            value = executor.submit(abs, value).result()
            times.append(time.perf_counter() - started)
    return times


def released(conf: dict[str, Any], linger: float) -> tuple[float, Any, int]:
    """Seconds from the last task of a map until no worker of its pool is left, the pool
    (for its counts), and the scheduler queries made while the map was waited for."""
    with sheepdog.Session() as session:
        request = session.submit(abs, [(i,) for i in range(50)], {**conf, "linger": linger})
        request.wait()
        ended = time.monotonic()
        backend, pool = request.backend, request.pool
        jobs = [job.job_id for job in request.storage.jobs(request.id) if job.n_workers]
        queries = backend.queries  # this loop's own questions come after
        while any(backend.running_tasks(job) for job in jobs) and \
                time.monotonic() - ended < linger + 120:
            time.sleep(0.5)
        return time.monotonic() - ended, pool, queries


EXITING = '''
import os, sheepdog
from sheepdog.storage import Storage
conf = {conf!r}
assert sheepdog.map(abs, [(-1,)], conf, verbose=False) == [1]
storage = Storage(conf["dbfile"])
print(os.getpid(), *(job.job_id for job in storage.jobs(max(storage.request_ids()))),
      flush=True)
'''


def left_after_exit(conf: dict[str, Any]) -> str:
    """Run a script that maps with a long linger and exits; what is left of its workers
    10 s later ("" when nothing): processes of the local scheduler whose caller it was,
    or its jobs in the scheduler's list."""
    directory = tempfile.mkdtemp(dir=os.path.dirname(conf["dbfile"]))
    script = textwrap.dedent(EXITING.format(conf={
        **conf, "linger": 600, "dbfile": os.path.join(directory, "exit.sqlite")}))
    said = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                          text=True, timeout=300).stdout.split()
    pid, jobs = said[0], said[1:]
    time.sleep(10)
    if conf["scheduler"] == "local":
        marker = f"SHEEPDOG_CALLER_PID={pid}".encode()
        left = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if marker in environ.read().split(b"\0"):
                        left.append(entry)
            except OSError:
                continue
        return " ".join(left)
    connection = ssh.get(ssh.destination_for(resolve(conf)))
    command = "qstat -u $USER" if conf["scheduler"] == "gridengine" else "squeue -h -u $USER"
    shown = connection.run(command).stdout
    return " ".join(job for job in jobs if job in shown)


def fairness(conf: dict[str, Any]) -> float:
    with sheepdog.Session() as session:
        large = session.submit(sleep_for, [(0.01,)] * 10_000, conf)
        while not large.progress().done:
            time.sleep(0.05)
        seconds = timed(lambda: session.submit(abs, [(i,) for i in range(10)], conf).wait())
        large.cancel()
        return seconds


def walltime_run(conf: dict[str, Any]) -> tuple[str, Any]:
    """600 tasks of 1 s on 8 workers whose walltime is 30 s: the summary, and the pool."""
    conf = {**conf, "walltime": 30, "workers": 8, "max_running": 8}
    started = time.perf_counter()
    with sheepdog.Session() as session:
        request = session.submit(sleep_for, [(1.0,)] * 600, conf)
        request.wait()
        seconds = time.perf_counter() - started
        progress, pool = request.progress(), request.pool
        jobs = len([job for job in request.storage.jobs(request.id) if job.n_workers])
    with sqlite3.connect(conf["dbfile"]) as raw:  # a task given back unstarted is no attempt
        (ran,) = raw.execute("SELECT sum(attempts) FROM tasks WHERE request_id = ?",
                             (request.id,)).fetchone()
    ideal = 600 / 8
    return (f"{seconds:.1f} s vs ideal {ideal:.0f} s -> {seconds / ideal:.2f}x (goal <= 1.3x); "
            f"done {progress.done}, failed {progress.failed}, lost {progress.lost}, "
            f"{ran} attempts for 600 tasks, {jobs} jobs"), pool


def bench(scheduler: str, options: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="sheepdog-pool-bench-")  # 0700, the caller's own
    conf = config_for(scheduler, directory)
    print(f"== {scheduler}")
    first, second, cold = maps(conf, options.tasks, options.rounds)
    print(f"second map of {options.tasks}, warm: median {statistics.median(second):.3f} s "
          f"(goal <= 0.20 s) vs a new job each map (linger 0): "
          f"{statistics.median(cold):.3f} s -> {statistics.median(second) / statistics.median(cold):.2f}x")
    if scheduler != "local":
        connection = ssh.get(ssh.destination_for(resolve(conf)))
        raw = statistics.median(timed(raw_job(connection, scheduler, options.tasks))
                                for _ in range(options.rounds))
        print(f"first map of {options.tasks} in a fresh pool: median "
              f"{statistics.median(first):.2f} s vs the raw array job {raw:.2f} s -> "
              f"{statistics.median(first) / raw:.2f}x (goal <= 0.10x)")
    else:
        print(f"first map of {options.tasks} in a fresh pool: median "
              f"{statistics.median(first):.2f} s")
    warm = dependent(conf, options.calls)
    baseline = dependent({**conf, "linger": 0}, 5)
    goal = "3" if scheduler == "local" else "10"
    print(f"dependent submit().result(), warm: median {1000 * statistics.median(warm):.1f} ms "
          f"of {len(warm)} (goal <= {goal} ms; mean {1000 * statistics.mean(warm):.1f} ms, "
          f"slowest {1000 * max(warm):.1f} ms) vs linger 0: "
          f"{1000 * statistics.median(baseline):.0f} ms of {len(baseline)}")
    third = len(warm) // 3
    if third:  # a session's calls must not slow down as it goes on
        print(f"dependent, median of the first and the last third of the calls: "
              f"{1000 * statistics.median(warm[:third]):.1f} / "
              f"{1000 * statistics.median(warm[-third:]):.1f} ms")
    seconds, pool, queries = released(conf, options.linger)
    print(f"slots released {seconds:.1f} s after the last task with linger {options.linger:g} "
          f"(goal <= {options.linger + 10:g} s)")
    left = left_after_exit(conf)
    print(f"after a process with a warm pool exits (10 s later): "
          f"{'nothing left' if not left else 'LEFT: ' + left}")
    print(f"a 10-task map while a 10,000-task map runs: {fairness(conf):.2f} s (goal <= 3 s)")
    print(f"budget, 50 tasks: {pool.looks} looks at the workers and the scheduler, "
          f"{pool.submissions} jobs submitted, {queries} scheduler queries "
          f"(goal: a look per 5 s at most)")
    summary, pool = walltime_run(conf)
    print(f"walltime: {summary}")
    if pool is not None:
        print(f"budget, walltime run: {pool.looks} looks, {pool.submissions} jobs submitted, "
              f"{pool.backend.queries} scheduler queries (goal: a look per 5 s at most)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", choices=["local", "gridengine", "slurm", "all"],
                        default="local")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--linger", type=float, default=5.0)
    options = parser.parse_args()
    chosen = (("local", "gridengine", "slurm") if options.scheduler == "all"
              else (options.scheduler,))
    for scheduler in chosen:
        bench(scheduler, options)


if __name__ == "__main__":
    main()
