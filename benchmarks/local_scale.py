"""100,000 trivial tasks on the local backend, timed as a user times them.

Each round starts a fresh interpreter per contender and times, in it, the
import of what it needs and the call, from the call to the returned list:
``sheepdog.map`` with the default config (dashboard on, verbose progress off
so nothing is written to the terminal), ``multiprocessing.Pool.map`` with as
many processes as the machine has cores, and
``concurrent.futures.ProcessPoolExecutor.map`` with ``chunksize=1000``, over
the same arguments, in the same run. sheepdog's caller peak RSS (it also
hosts the server) and the time until ``map_async`` would have returned are
printed too. Goal (issue 24): ``sheepdog.map`` <= 3 s.

    python benchmarks/local_scale.py [--tasks 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

#: Each contender's program: prints the seconds of its import, of its call, and its peak RSS (MB).
_PROGRAM = """
import resource, sys, time
sys.path.insert(0, {root!r})
started = time.perf_counter()
import {module}
imported = time.perf_counter()

def double(x):
    return 2 * x

if __name__ == "__main__":
    arguments = {arguments}
    called = time.perf_counter()
    {call}
    returned = time.perf_counter()
    assert results == [2 * i for i in range({tasks})]
    print(imported - started, returned - called,
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
#: What each contender imports, its arguments, and its call (which sets ``results``).
_CONTENDERS = {
    "sheepdog.map": ("sheepdog", "[(i,) for i in range({tasks})]",
                     "results = sheepdog.map(double, arguments, {{'scheduler': 'local', "
                     "'dbfile': {dbfile!r}}}, verbose=False)"),
    "Pool.map": ("multiprocessing", "range({tasks})",
                 "with multiprocessing.Pool() as pool: results = pool.map(double, arguments)"),
    "ProcessPoolExecutor.map": (
        "concurrent.futures", "range({tasks})",
        "with concurrent.futures.ProcessPoolExecutor() as executor: "
        "results = list(executor.map(double, arguments, chunksize=1000))"),
}


def one_round(tasks: int) -> dict[str, tuple[float, float, float]]:
    """(import s, call s, peak RSS MB) of each contender, each in a fresh interpreter."""
    figures = {}
    with tempfile.TemporaryDirectory() as directory:
        for name, (module, arguments, call) in _CONTENDERS.items():
            path = os.path.join(directory, f"{name.replace('.', '_')}.py")
            fill = {"tasks": tasks, "dbfile": os.path.join(directory, "bench.sqlite")}
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(_PROGRAM.format(root=ROOT, tasks=tasks, module=module,
                                             arguments=arguments.format(**fill),
                                             call=call.format(**fill)))
            environment = dict(os.environ)
            environment.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed package runs
            output = subprocess.run([sys.executable, path], capture_output=True, text=True,
                                    check=True, cwd=directory, env=environment).stdout
            imported, called, peak = (float(x) for x in output.split())
            figures[name] = (imported, called, peak)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    rounds = [one_round(options.tasks) for _ in range(options.rounds)]
    print(f"{options.tasks} trivial tasks, {options.rounds} rounds, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after")
    print(f"{'':<26}{'import s':>10}{'call s':>10}{'both s':>10}{'peak RSS MB':>13}")
    medians = {}
    for name in _CONTENDERS:
        imported, called, peak = (statistics.median(column) for column in
                                  zip(*(figures[name] for figures in rounds)))
        medians[name] = called
        print(f"{name:<26}{imported:>10.2f}{called:>10.2f}{imported + called:>10.2f}{peak:>13.0f}")
    ours = medians["sheepdog.map"]
    print(f"sheepdog.map: median {ours:.2f} s from the call to the list (goal <= 3), "
          f"{ours / medians['Pool.map']:.1f}x Pool.map, "
          f"{ours / medians['ProcessPoolExecutor.map']:.1f}x ProcessPoolExecutor.map")


if __name__ == "__main__":
    main()
