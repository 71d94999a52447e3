"""End to end on the real GridEngine of ci/gridengine-up.sh, against raw qsub.

In one run, alternating, for N trivial tasks (default 200):
  raw       ssh + ``qsub -sync y -t 1-N`` of ``python3 -c pass`` (the baseline)
  chunk=1   ``sheepdog.map`` with one argument per array task (like for like)
  auto      ``sheepdog.map`` with the automatic chunk size, workers calling back directly
  tunnel    the same, workers calling back through the head node (``callback: tunnel``)
and once, ``sheepdog.map`` over 20,000 trivial tasks with automatic chunking.
Goals: sheepdog/raw <= 1.1; tunnel/direct <= 1.2; 20,000 tasks <= 60 s on the
8-slot test cluster.

    source /var/lib/sheepdog-test/env
    ip netns exec sheepdog .venv/bin/python benchmarks/cluster.py [--tasks 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sheepdog  # noqa: E402
from sheepdog import ssh  # noqa: E402
from sheepdog.config import resolve  # noqa: E402


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--many", type=int, default=20_000)
    options = parser.parse_args()
    directory = tempfile.mkdtemp()
    conf = {
        "host": os.environ["SHEEPDOG_TEST_HOST"],
        "ssh_user": os.environ["SHEEPDOG_TEST_USER"],
        "ssh_keyfile": os.environ["SHEEPDOG_TEST_KEY"],
        "ssh_known_hosts": os.environ["SHEEPDOG_TEST_KNOWN_HOSTS"],
        "dbfile": os.path.join(directory, "bench.sqlite"),
    }
    connection = ssh.get(ssh.destination_for(resolve(conf)))
    args = [(i,) for i in range(options.tasks)]
    raw_command = (f"qsub -sync y -t 1-{options.tasks} -b y -o /dev/null -e /dev/null "
                   f"/usr/bin/python3 -c pass")

    def raw() -> None:
        assert connection.run(raw_command, timeout=600).status == 0

    def ours(chunksize, callback="direct"):
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
    print(f"{'round':<7}{'raw qsub s':>12}{'chunk=1 s':>12}{'auto s':>12}{'tunnel s':>12}")
    for number, row in enumerate(rows, 1):
        print(f"{number:<7}" + "".join(f"{value:>12.1f}" for value in row))
    raw_s, one_s, auto_s, tunnel_s = (statistics.median(column) for column in zip(*rows))
    many_args = [(i,) for i in range(options.many)]
    many_s = timed(lambda: sheepdog.map(abs, many_args, conf, verbose=False))
    print(f"end to end, {options.tasks} tasks: sheepdog {one_s:.1f} s (chunk=1) / {auto_s:.1f} s "
          f"(auto) vs raw qsub {raw_s:.1f} s -> ratio {one_s / raw_s:.2f} / {auto_s / raw_s:.2f} "
          f"(goal <= 1.1)")
    print(f"through the tunnel, {options.tasks} tasks (auto): {tunnel_s:.1f} s vs direct "
          f"{auto_s:.1f} s -> ratio {tunnel_s / auto_s:.2f} (goal <= 1.2)")
    print(f"{options.many} tasks through GridEngine, automatic chunking: {many_s:.1f} s (goal <= 60)")


if __name__ == "__main__":
    main()
