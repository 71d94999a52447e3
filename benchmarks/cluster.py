"""End to end on the real test cluster (GridEngine and Slurm), each against its raw array job.

For each scheduler, in one run, alternating, for N trivial tasks (default 200):
  raw       ssh + the scheduler's own array job of ``python3 -c pass`` (the baseline):
            ``qsub -sync y -t 1-N``, or ``sbatch --array=1-N`` with squeue polled
            every 0.2 s until it is gone (``sbatch --wait`` polls too slowly)
  chunk=1   ``sheepdog.map`` with one argument per array task (like for like)
  auto      ``sheepdog.map`` with the automatic chunk size, workers calling back directly
  tunnel    the same, workers calling back through the head node (``callback: tunnel``)
and once, ``sheepdog.map`` over 20,000 trivial tasks with automatic chunking.
Goals: sheepdog/raw <= 1.1; tunnel/direct <= 1.2; 20,000 tasks <= 60 s on the
8-slot test cluster.

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
from sheepdog import ssh  # noqa: E402
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


def bench(scheduler: str, options: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp()
    conf = {
        "scheduler": scheduler,
        "host": os.environ["SHEEPDOG_TEST_HOST"],
        "ssh_user": os.environ["SHEEPDOG_TEST_USER"],
        "ssh_keyfile": os.environ["SHEEPDOG_TEST_KEY"],
        "ssh_known_hosts": os.environ["SHEEPDOG_TEST_KNOWN_HOSTS"],
        "dbfile": os.path.join(directory, f"bench-{scheduler}.sqlite"),
    }
    connection = ssh.get(ssh.destination_for(resolve(conf)))
    args = [(i,) for i in range(options.tasks)]
    raw = raw_job(connection, scheduler, options.tasks)

    def ours(chunksize: int | None, callback: str = "direct") -> Callable[[], None]:
        def run() -> None:
            results = sheepdog.map(abs, args, {**conf, "chunksize": chunksize,
                                               "callback": callback}, verbose=False)
            assert results == list(range(options.tasks))
        return run

    ours(None)()  # warm up: connection, server, certificate
    ours(None, "tunnel")()  # and the tunnel
    rows = []
    for _ in range(options.rounds):
        rows.append((timed(raw), timed(ours(1)), timed(ours(None)), timed(ours(None, "tunnel"))))
    print(f"{scheduler}, {options.tasks} tasks")
    print(f"{'round':<7}{'raw s':>12}{'chunk=1 s':>12}{'auto s':>12}{'tunnel s':>12}")
    for number, row in enumerate(rows, 1):
        print(f"{number:<7}" + "".join(f"{value:>12.1f}" for value in row))
    raw_s, one_s, auto_s, tunnel_s = (statistics.median(column) for column in zip(*rows))
    many_args = [(i,) for i in range(options.many)]
    many_s = timed(lambda: sheepdog.map(abs, many_args, conf, verbose=False))
    print(f"{scheduler}: {options.tasks} tasks: sheepdog {one_s:.1f} s (chunk=1) / "
          f"{auto_s:.1f} s (auto) vs raw {raw_s:.1f} s -> ratio {one_s / raw_s:.2f} / "
          f"{auto_s / raw_s:.2f} (goal <= 1.1)")
    print(f"{scheduler}: through the tunnel, {options.tasks} tasks (auto): {tunnel_s:.1f} s vs "
          f"direct {auto_s:.1f} s -> ratio {tunnel_s / auto_s:.2f} (goal <= 1.2)")
    print(f"{scheduler}: {options.many} tasks, automatic chunking: {many_s:.1f} s (goal <= 60)")


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
