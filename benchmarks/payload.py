"""Large payloads: a 200 MB numpy array as an argument, and as a result.

Each direction runs in a fresh caller process on the local backend (the worker
is that caller's child, so ``RUSAGE_CHILDREN`` gives the worker's peak). It
prints MB/s of the whole ``map`` call (for a result, until the caller has read
every byte of it) and the peak RSS of caller and worker as a multiple of the
payload, against an in-process ``pickle.dumps`` + ``pickle.loads`` of the same
array in the same run. A "cold" session times the first ``map`` of the
process, which also starts the server and makes its TLS certificate; a "warm"
session has run a tiny ``map`` first, as a script that moves many payloads
would have. Goals: >= 200 MB/s, peak memory <= 3x the payload on each side.

    python benchmarks/payload.py [--megabytes 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

ONE_RUN = """
import os, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import sheepdog

megabytes = {megabytes}
conf = {{"scheduler": "local", "dbfile": {dbfile!r}}}

def total(array):
    return float(array.sum())

def make(megabytes):
    import numpy as np
    return np.ones(megabytes * 2**20 // 8)

if {warm}:  # a session that has already run a map: no server start, no first imports
    sheepdog.map(make, [(0,)], conf, verbose=False)
    sheepdog.map(total, [(np.ones(1),)], conf, verbose=False)
if {direction!r} == "argument":
    payload = np.ones(megabytes * 2**20 // 8)
    started = time.perf_counter()
    (result,) = sheepdog.map(total, [(payload,)], conf, verbose=False)
    seconds = time.perf_counter() - started
    assert result == payload.size
else:
    started = time.perf_counter()
    (result,) = sheepdog.map(make, [(megabytes,)], conf, verbose=False)
    assert float(result.sum()) == result.size == megabytes * 2**20 // 8  # read it all
    seconds = time.perf_counter() - started
peak = lambda who: resource.getrusage(who).ru_maxrss / 1024
def children():
    found = []
    for thread in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{{thread}}/children") as listing:
                found += listing.read().split()
        except FileNotFoundError:
            pass  # the thread has ended
    return found
deadline = time.monotonic() + 30
while children() and time.monotonic() < deadline:
    time.sleep(0.05)  # the worker has reported; wait until it is reaped and counted
print(seconds, peak(resource.RUSAGE_SELF), peak(resource.RUSAGE_CHILDREN))
"""

BASELINE = """
import pickle, sys, time
import numpy as np
array = np.ones({megabytes} * 2**20 // 8)
started = time.perf_counter()
copy = pickle.loads(pickle.dumps(array, protocol=5))
print(time.perf_counter() - started)
"""


def run(program: str) -> list[float]:
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    if finished.returncode:
        sys.exit(f"a benchmark run failed:\n{finished.stderr}")
    output = finished.stdout
    return [float(value) for value in output.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    size = options.megabytes
    print(f"{'direction':<10}{'session':>8}{'round':>6}{'seconds':>9}{'MB/s':>8}"
          f"{'caller x':>10}{'worker x':>10}{'pickle s':>10}")
    summary = {}
    for direction in ("argument", "result"):
        for session in ("cold", "warm"):
            rows = []
            for number in range(1, options.rounds + 1):
                with tempfile.TemporaryDirectory() as directory:
                    program = ONE_RUN.format(root=ROOT, megabytes=size, direction=direction,
                                             warm=session == "warm",
                                             dbfile=os.path.join(directory, "bench.sqlite"))
                    seconds, caller_mb, worker_mb = run(program)
                (pickle_s,) = run(BASELINE.format(megabytes=size))
                rows.append((seconds, caller_mb / size, worker_mb / size, pickle_s))
                print(f"{direction:<10}{session:>8}{number:>6}{seconds:>9.2f}"
                      f"{size / seconds:>8.0f}{caller_mb / size:>10.2f}"
                      f"{worker_mb / size:>10.2f}{pickle_s:>10.2f}")
            summary[direction, session] = [statistics.median(column) for column in zip(*rows)]
    for (direction, session), (seconds, caller_x, worker_x, pickle_s) in summary.items():
        print(f"{size} MB {direction}, {session} session: {size / seconds:.0f} MB/s (goal >= 200; "
              f"in-process pickle round trip {size / pickle_s:.0f} MB/s), peak caller "
              f"{caller_x:.2f}x, worker {worker_x:.2f}x the payload (goal <= 3)")


if __name__ == "__main__":
    main()
