"""End to end on the real test cluster (GridEngine and Slurm), each against its raw array job.

For each scheduler, in one run, alternating rounds (default 3), medians printed:
  raw       ssh + the scheduler's own array job of N trivial tasks (default 200) of
            ``python3 -c pass`` (the baseline): ``qsub -sync y -t 1-N``, or
            ``sbatch --array=1-N`` with squeue polled every 0.2 s until it is gone
  pull      ``sheepdog.map(abs, ...)`` over the same N tasks, workers calling back directly
  tunnel    the same, workers calling back through the head node (``callback: tunnel``)
  many      ``sheepdog.map`` over 20,000 trivial tasks
  uneven    800 tasks: 8 adjacent ones sleep 8 s, the other 792 sleep 0.2 s, against the
            ideal for the cluster's slots: total work / slots, or the longest task if more
Goals (issue 12): pull/raw <= 0.10 on GridEngine and <= 1.0 on Slurm; tunnel/direct
<= 1.2; 20,000 tasks <= 5 s (GridEngine) and <= 8 s (Slurm); uneven <= 1.2 x ideal + 3 s.

    source /var/lib/sheepdog-test/env
    ip netns exec sheepdog .venv/bin/python benchmarks/cluster.py \\
        [--scheduler gridengine|slurm|both] [--tasks 200] [--rounds 3] [--many 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sheepdog  # noqa: E402
from sheepdog.remote import ssh  # noqa: E402
from sheepdog.config import resolve  # noqa: E402


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def raw_job(connection: ssh.Connection, scheduler: str, tasks: int) -> Callable[[], None]:
    """The scheduler's own array job of ``python3 -c pass``, waited for."""
    if scheduler == "gridengine":
        command = (f"qsub -sync y -t 1-{tasks} -b y -o /dev/null -e /dev/null "
                   f"/usr/bin/python3 -c pass")

        def gridengine() -> None:
            assert connection.run(command, timeout=600).status == 0, "qsub failed"

        return gridengine

    def slurm() -> None:
        submitted = connection.run(f"sbatch --parsable --array=1-{tasks} --output=/dev/null "
                                   f"--wrap '/usr/bin/python3 -c pass'")
        job = submitted.stdout.strip().split(";")[0]
        while connection.run(f"squeue -h -j {job}").stdout.strip():
            time.sleep(0.2)

    return slurm


def uneven(x: int) -> int:
    """Tasks 400-407 sleep 8 s, every other one 0.2 s."""
    import time

    time.sleep(8.0 if 400 <= x < 408 else 0.2)
    return x


#: Per scheduler: (pull/raw, 20,000 tasks in s) goals.
GOALS = {"gridengine": (0.10, 5.0), "slurm": (1.0, 8.0)}


def bench(scheduler: str, options: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp()
    conf = {
        "scheduler": scheduler,
        "host": os.environ["SHEEPDOG_TEST_HOST"],
        "ssh_user": os.environ["SHEEPDOG_TEST_USER"],
        "ssh_keyfile": os.environ["SHEEPDOG_TEST_KEY"],
        "ssh_known_hosts": os.environ["SHEEPDOG_TEST_KNOWN_HOSTS"],
        "dbfile": os.path.join(directory, f"bench-{scheduler}.sqlite"),
        "linger": 0,  # one job per map, as before pools (benchmarks/pool.py compares)
    }
    connection = ssh.get(ssh.destination_for(resolve(conf)))
    raw = raw_job(connection, scheduler, options.tasks)

    def ours(n: int, callback: str = "direct", function: Callable[[int], int] = abs
             ) -> Callable[[], None]:
        args = [(i,) for i in range(n)]

        def run() -> None:
            results = sheepdog.map(function, args, {**conf, "callback": callback},
                                   verbose=False)
            assert results == list(range(n))
        return run

    ours(options.tasks)()  # warm up: connection, server, certificate
    ours(options.tasks, "tunnel")()  # and the tunnel
    slots = sheepdog.backends.create(resolve(conf)).capacity()[0] or 1
    ideal = max((8 * 8.0 + 792 * 0.2) / slots, 8.0)
    rows = []
    for _ in range(options.rounds):
        rows.append((timed(raw), timed(ours(options.tasks)), timed(ours(options.tasks, "tunnel")),
                     timed(ours(options.many)), timed(ours(800, function=uneven))))
    print(f"{scheduler}, {slots} slots")
    print(f"{'round':<7}{'raw s':>10}{'pull s':>10}{'tunnel s':>10}{'many s':>10}{'uneven s':>10}")
    for number, row in enumerate(rows, 1):
        print(f"{number:<7}" + "".join(f"{value:>10.1f}" for value in row))
    raw_s, pull_s, tunnel_s, many_s, uneven_s = (statistics.median(c) for c in zip(*rows))
    ratio_goal, many_goal = GOALS[scheduler]
    print(f"{scheduler}: {options.tasks} trivial tasks: sheepdog {pull_s:.1f} s vs raw "
          f"{raw_s:.1f} s -> ratio {pull_s / raw_s:.2f} (goal <= {ratio_goal})")
    print(f"{scheduler}: through the tunnel, {options.tasks} tasks: {tunnel_s:.1f} s vs direct "
          f"{pull_s:.1f} s -> ratio {tunnel_s / pull_s:.2f} (goal <= 1.2)")
    print(f"{scheduler}: {options.many} trivial tasks: {many_s:.1f} s (goal <= {many_goal})")
    print(f"{scheduler}: 800 uneven tasks: {uneven_s:.1f} s vs ideal {ideal:.1f} s -> "
          f"{uneven_s / ideal:.2f}x the ideal (goal <= 1.2x + 3 s = {1.2 * ideal + 3:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", choices=["gridengine", "slurm", "both"], default="both")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--many", type=int, default=20_000)
    options = parser.parse_args()
    for scheduler in ("gridengine", "slurm") if options.scheduler == "both" else (options.scheduler,):
        bench(scheduler, options)


if __name__ == "__main__":
    main()
