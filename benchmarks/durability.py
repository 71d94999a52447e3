"""Durability under load, for longer than a test run: writers, readers and SIGKILLs.

Runs ``tests/test_durability.py`` (several processes, each with sessions, an
Executor, ``map`` and extra ``Storage`` handles on one database, CLI readers
in a loop, writers killed with SIGKILL at random points; afterwards every
result an API call returned must be in the database, and ``PRAGMA
integrity_check`` must say ok) with many more rounds and writers than the
test suite uses, several times, and prints how many calls were checked.

    .venv/bin/python benchmarks/durability.py [--rounds 60] [--writers 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="API calls per writer")
    parser.add_argument("--writers", type=int, default=6, help="writer processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a new database")
    options = parser.parse_args()
    env = dict(os.environ, SHEEPDOG_DURABILITY_ROUNDS=str(options.rounds),
               SHEEPDOG_DURABILITY_WRITERS=str(options.writers))
    failed = 0
    for run in range(1, options.repeat + 1):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
             "tests/test_durability.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"run {run}: {options.writers} writers x {options.rounds} calls, "
              f"{time.monotonic() - started:.0f} s: {last}")
        failed += done.returncode != 0
        if done.returncode:
            print(done.stdout[-3000:], done.stderr[-2000:], sep="\n")
    print(f"{options.repeat - failed} of {options.repeat} runs kept every returned result")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
