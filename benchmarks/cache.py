"""Remembered results (the ``cache`` config key) on the local backend: what they cost and save.

Each map runs in a new process, as a re-run script would, and prints its wall
time (the ``sheepdog.map`` call over N trivial tasks, once ``sheepdog.map`` has
been looked up, which imports the rest of sheepdog), the caller's peak RSS, the jobs
its request submitted and the tasks its workers received. Per round:

- cache on, nothing to remember (a new database), beside cache off in another
  new database: goal <= 1.1x;
- the same map again in a new process, every task remembered: goal <= 1 s
  where the computing map takes about 3 s (issue 21), so <= 0.33x of the
  computing run on a slower or busier machine; no job, peak RSS within 1.5x
  of the computing run;
- a map of ``--half`` tasks of which the first half were computed before:
  exactly half received by the job's workers.

    python benchmarks/cache.py [--tasks 100000] [--half 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

ONE_MAP = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import sheepdog
from sheepdog.api import default_session

def double(x):
    return 2 * x

config = {{"scheduler": "local", "dbfile": {dbfile!r}, "cache": {cache!r}}}
map_ = sheepdog.map  # imports sheepdog.api: the import's time, not the map's
started = time.perf_counter()
results = map_(double, [(i,) for i in range({tasks})], config, verbose=False)
wall = time.perf_counter() - started
assert results == [2 * i for i in range({tasks})]
storage = default_session().storage({dbfile!r})
request_id = storage.request_ids()[-1]
print(json.dumps({{
    "wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "jobs": len(storage.jobs(request_id)), "remembered": storage.progress(request_id).remembered,
    "received": sum(task.started is not None for task in storage.dashboard_tasks(
        request_id, limit={tasks})),
}}))
"""


def one_map(dbfile: str, tasks: int, cache: bool) -> dict[str, float]:
    """One ``sheepdog.map`` in a new process: its figures."""
    program = ONE_MAP.format(root=ROOT, dbfile=dbfile, tasks=tasks, cache=cache)
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(completed.stderr)
    return dict(json.loads(completed.stdout))


def one_round(tasks: int, half: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as directory:
        cached_db, plain_db, half_db = (os.path.join(directory, f"{name}.sqlite")
                                        for name in ("cached", "plain", "half"))
        figures = {"off": one_map(plain_db, tasks, False),
                   "on, new": one_map(cached_db, tasks, True),
                   "on, remembered": one_map(cached_db, tasks, True)}
        one_map(half_db, half // 2, True)
        figures["half remembered"] = one_map(half_db, half, True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--half", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    rounds = [one_round(options.tasks, options.half) for _ in range(options.rounds)]
    print(f"{'round':<7}{'run':<17}{'tasks':>8}{'wall s':>9}{'RSS MB':>9}{'jobs':>6}"
          f"{'remembered':>12}{'received':>10}")
    for number, figures in enumerate(rounds, 1):
        for run, row in figures.items():
            n = options.half if run == "half remembered" else options.tasks
            print(f"{number:<7}{run:<17}{n:>8}{row['wall']:>9.2f}{row['rss_mb']:>9.0f}"
                  f"{row['jobs']:>6.0f}{row['remembered']:>12.0f}{row['received']:>10.0f}")

    def median(run: str, key: str) -> float:
        return statistics.median(figures[run][key] for figures in rounds)

    off, new, again = (median(run, "wall") for run in ("off", "on, new", "on, remembered"))
    print(f"cache on, nothing to remember: median {new:.2f} s, {new / off:.2f}x cache off "
          f"({off:.2f} s) (goal <= 1.1x)")
    print(f"all {options.tasks} remembered, new process: median {again:.2f} s (goal <= 1 s "
          f"where computing takes about 3 s: <= 0.33x), "
          f"{again / new:.2f}x the computing run ({new:.2f} s), jobs "
          f"{max(f['on, remembered']['jobs'] for f in rounds):.0f} (goal 0), peak RSS "
          f"{median('on, remembered', 'rss_mb') / median('on, new', 'rss_mb'):.2f}x the "
          f"computing run's (goal <= 1.5x)")
    received = sorted({f["half remembered"]["received"] for f in rounds})
    print(f"{options.half} tasks, half remembered: received by the workers {received} "
          f"(goal exactly {options.half // 2})")


if __name__ == "__main__":
    main()
