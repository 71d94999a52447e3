"""Import time: how long ``import sheepdog`` takes, and what it pulls in.

Runs ``python -X importtime -c "import sheepdog"`` in fresh interpreters (the
interpreter running this script, so run it with the project's venv) and prints
the median cumulative time of the top-level ``sheepdog`` entry against the
goal (under 100 ms), next to two baselines of the same run: ``import json``
and a bare ``python -c pass`` start-up. Since the public names load on first
use, it also times what a script's first ``sheepdog.map`` loads (the
``sheepdog.api`` module and all below it). Then it names the heavy packages
left in ``sys.modules`` after each, and the ten slowest packages that the
first map's imports bring in (each with its cumulative time and the sheepdog
module that imports it first), beside the time spent in sheepdog's own
modules.

    .venv/bin/python benchmarks/import_time.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GOAL_MS = 100.0
HEAVY = ("flask", "werkzeug", "paramiko", "cryptography", "tornado")
SLOWEST = 10


@dataclass
class Entry:
    """One line of ``-X importtime``: a module, its own and its cumulative time."""

    name: str
    self_us: int
    cumulative_us: int
    children: list[Entry] = field(default_factory=list)

    @property
    def package(self) -> str:
        return self.name.split(".")[0]


def parse_importtime(stderr: str) -> list[Entry]:
    """The top-level entries of ``-X importtime`` output, each with its children.

    Python prints a module after the modules it imported, indented two spaces
    deeper, so the entries one level down that are still unclaimed when a
    module's line comes are its children.
    """
    unclaimed: dict[int, list[Entry]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        entry = Entry(name.strip(), int(self_us), int(cumulative_us),
                      unclaimed.pop(depth + 1, []))
        unclaimed.setdefault(depth, []).append(entry)
    return unclaimed.get(0, [])


def python(code: str, *options: str) -> tuple[float, str, str]:
    """Wall seconds, stdout and stderr of a fresh interpreter running ``code`` here."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *options, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout, done.stderr


def top_level(stderr: str, name: str) -> Entry:
    return next(entry for entry in parse_importtime(stderr) if entry.name == name)


def packages_entered(entry: Entry, importer: str = "") -> list[tuple[Entry, str]]:
    """Each first import of another package under ``entry``, with the module importing it.

    Their cumulative times and the self times of ``entry``'s own package add
    up to ``entry``'s cumulative time.
    """
    found = []
    for child in entry.children:
        if child.package == entry.package:
            found += packages_entered(child, child.name)
        else:
            found.append((child, importer or entry.name))
    return found


def own_self_us(entry: Entry) -> int:
    """The self time of ``entry`` and of its descendants in its own package."""
    return entry.self_us + sum(own_self_us(child) for child in entry.children
                               if child.package == entry.package)


def ms(values: Sequence[float]) -> float:
    """The median of ``values`` in microseconds, in milliseconds."""
    return statistics.median(values) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    options = parser.parse_args()

    python("import sheepdog")  # writes the .pyc files; not counted
    sheepdog_us, api_us, json_us, own_us, start_s, import_s = [], [], [], [], [], []
    entered: dict[str, list[int]] = {}
    importers: dict[str, str] = {}
    for _ in range(options.rounds):
        _, _, stderr = python("import sheepdog", "-X", "importtime")
        sheepdog_us.append(top_level(stderr, "sheepdog").cumulative_us)
        _, _, stderr = python("import sheepdog.api", "-X", "importtime")
        api = top_level(stderr, "sheepdog.api")
        api_us.append(api.cumulative_us)  # the package itself is among its children
        own_us.append(own_self_us(api))
        for entry, importer in packages_entered(api):
            entered.setdefault(entry.name, []).append(entry.cumulative_us)
            importers.setdefault(entry.name, importer)
        _, _, stderr = python("import json", "-X", "importtime")
        json_us.append(top_level(stderr, "json").cumulative_us)
        start_s.append(python("pass")[0])
        import_s.append(python("import sheepdog")[0])

    median_ms = ms(sheepdog_us)
    print(f"{'measure':<44}{'median ms':>10}   ({options.rounds} fresh interpreters each)")
    print(f"{'import sheepdog (cumulative, -X importtime)':<44}{median_ms:>10.1f}"
          f"   goal < {GOAL_MS:.0f} ms: {'met' if median_ms < GOAL_MS else 'not met'}")
    print(f"{'what the first sheepdog.map loads (api)':<44}{ms(api_us):>10.1f}")
    print(f"{'  of which in sheepdog modules (self)':<44}{ms(own_us):>10.1f}")
    print(f"{'baseline: import json (cumulative)':<44}{ms(json_us):>10.1f}")
    for label, seconds in (('python -c "import sheepdog" (wall)', import_s),
                           ("baseline: python -c pass (wall)", start_s)):
        print(f"{label:<44}{statistics.median(seconds) * 1000:>10.1f}")

    for probe in ("import sheepdog", "import sheepdog; sheepdog.map"):
        _, stdout, _ = python(f"import sys; {probe}; "
                              f"print(*[name for name in {HEAVY!r} if name in sys.modules])")
        loaded = stdout.split()
        print(f"\nafter {probe}, in sys.modules: {', '.join(loaded) or 'none'} "
              f"(of {', '.join(HEAVY)})")

    print(f"\n{SLOWEST} slowest packages imported under sheepdog.api "
          "(median cumulative ms, first importer):")
    slowest = sorted(entered, key=lambda name: -statistics.median(entered[name]))[:SLOWEST]
    for name in slowest:
        print(f"  {name:<28}{ms(entered[name]):>8.1f}   from {importers[name]}")


if __name__ == "__main__":
    main()
