"""100,000 trivial tasks on the local backend: wall time, registration time, memory.

Prints, for ``sheepdog.map_async`` + ``get_results`` over N trivial tasks: the
time until ``map_async`` returns (registration), the wall time until every
result is back, and the caller's peak RSS (it also hosts the server). A
``multiprocessing.Pool.map`` over the same arguments with the same number of
processes, in the same run, is the baseline. Goals (issue 12): <= 3 s and a
caller peak RSS <= 200 MB; registration <= 2 s.

    python benchmarks/local_scale.py [--tasks 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

ONE_ROUND = """
import resource, sys, time
sys.path.insert(0, {root!r})
import sheepdog

def double(x):
    return 2 * x

args = [(i,) for i in range({tasks})]
started = time.perf_counter()
request_id = sheepdog.map_async(double, args, {{"scheduler": "local", "dbfile": {dbfile!r}}})
registered = time.perf_counter() - started
results = sheepdog.get_results(request_id, {dbfile!r})
wall = time.perf_counter() - started
assert [r for _a, r in results] == [2 * i for i in range({tasks})]
print(registered, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def double(x):
    return 2 * x


def pool_baseline(tasks: int) -> float:
    started = time.perf_counter()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        results = pool.map(double, range(tasks))
    assert results[-1] == 2 * (tasks - 1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    rows = []
    for _ in range(options.rounds):
        with tempfile.TemporaryDirectory() as directory:
            program = ONE_ROUND.format(root=ROOT, tasks=options.tasks,
                                       dbfile=os.path.join(directory, "bench.sqlite"))
            output = subprocess.run([sys.executable, "-c", program], capture_output=True,
                                    text=True, check=True).stdout
        registered, wall, peak_mb = (float(x) for x in output.split())
        rows.append((registered, wall, peak_mb, pool_baseline(options.tasks)))
    print(f"{'round':<8}{'register s':>12}{'wall s':>10}{'peak RSS MB':>14}{'Pool.map s':>12}")
    for number, (registered, wall, peak_mb, baseline) in enumerate(rows, 1):
        print(f"{number:<8}{registered:>12.2f}{wall:>10.2f}{peak_mb:>14.0f}{baseline:>12.2f}")
    registered, wall, peak_mb, baseline = (statistics.median(column) for column in zip(*rows))
    print(f"local {options.tasks} tasks: median wall {wall:.1f} s (goal <= 3), registration "
          f"{registered:.2f} s (goal <= 2), caller peak RSS {peak_mb:.0f} MB (goal <= 200), "
          f"{wall / baseline:.0f}x multiprocessing.Pool.map ({baseline:.2f} s)")


if __name__ == "__main__":
    main()
