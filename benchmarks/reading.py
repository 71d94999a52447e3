"""Reading a database of a million tasks: the CLI and the dashboard.

Makes (once; ``--dbfile`` keeps it for the next run) a database with one
request of N tasks, stored through ``Storage`` as ``map`` stores them: most
done with a result, one in a thousand failed with an error. Then it times,
each in a fresh ``python -m sheepdog`` as a user runs it: ``list``,
``status``, ``errors`` and ``results --json`` (written to a pipe that is read
and thrown away; its rate in tasks per second), and the dashboard's JSON API
in this process: the first paint (the page, the list, the request's detail
and its first page of tasks), one poll (the list, the detail and the
tasks) while the charts are made in the background, as server time, when
the charts arrive, and one poll once they are kept.
A ``python -c pass`` start-up is the baseline.

    python benchmarks/reading.py [--tasks 1000000] [--dbfile reading.sqlite] [--rounds 3]

Goals (issue 24): each command <= 1 s, except ``results``, which streams at
>= 200,000 tasks/s; the dashboard's first paint <= 2 s and each poll <= 200 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sheepdog.storage import Storage  # noqa: E402
from sheepdog.wire import serialisation  # noqa: E402

#: One task in this many failed.
FAILING_EVERY = 1000
#: Tasks shown in the dashboard's grid (``TASKS_SHOWN`` of its page).
TASKS_SHOWN = 2000


def simulate(x: int) -> int:
    return 2 * x


def make_database(dbfile: str, tasks: int) -> None:
    """One request of ``tasks`` tasks, finished: results, and some failures."""
    storage = Storage(dbfile)
    request_id = storage.create_request(
        serialisation.dumps_function(simulate),
        [serialisation.dumps_argument(i, (i,)) for i in range(tasks)], "secret", "local",
        {}, ("__main__", "simulate"))
    storage.add_workers(request_id, 100)
    batch, pulls = 10_000, [0] * 100
    for first in range(1, tasks + 1, batch):
        indices = range(first, min(first + batch, tasks + 1))
        array_task = first // batch % 100
        pulls[array_task] += 1
        held = storage.pull(request_id, f"1.{array_task + 1}", pulls[array_task], len(indices),
                            len(indices))
        assert held == list(indices), "the pull did not hand out the batch in order"
        storage.record_reports(
            request_id,
            [(i, True, f"Traceback ...\nValueError: bad input {i}".encode())
             if i % FAILING_EVERY == 0 else (i, False, serialisation.dumps(2 * (i - 1)))
             for i in indices],
            ran=[(i, 0.001) for i in indices])
    storage.close()


def _environment() -> dict[str, str]:
    """This checkout first; compiled modules written and read, as an installed package's are."""
    environment = dict(os.environ, PYTHONPATH=ROOT)
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    return environment


def time_command(dbfile: str, *words: str) -> tuple[float, int]:
    """(seconds, bytes printed) of ``python -m sheepdog --dbfile DBFILE WORDS...``."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "sheepdog", "--dbfile", dbfile, *words],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=_environment())
    assert process.stdout is not None
    printed = 0
    while chunk := process.stdout.read(1 << 20):
        printed += len(chunk)
    process.wait()
    return time.perf_counter() - started, printed


def time_dashboard(dbfile: str) -> tuple[float, float, float, float]:
    """(first paint, one poll, charts made, a poll then) in seconds of server time, through
    the Flask app itself; the charts are made in the background, and the third figure is
    the time from the first paint's start until an answer carries them."""
    from sheepdog.dashboard.app import create_app

    token = "t" * 32
    client = create_app(dbfile, token).test_client()
    headers = {"Authorization": f"Bearer {token}", "Host": "127.0.0.1"}

    def get(path: str) -> dict:
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.status_code)
        return response.get_json(silent=True) or {}

    def poll() -> None:
        get("/dashboard/api/requests")
        get("/dashboard/api/requests/1")
        get(f"/dashboard/api/requests/1/tasks?limit={TASKS_SHOWN}")

    started = time.perf_counter()
    get("/dashboard")
    poll()
    first = time.perf_counter() - started
    one_poll = _timed(poll)
    while get("/dashboard/api/requests/1").get("charts_pending"):
        time.sleep(0.05)
    return first, one_poll, time.perf_counter() - started, _timed(poll)


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--dbfile", help="keep the generated database here, and reuse it")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        dbfile = options.dbfile or os.path.join(directory, "reading.sqlite")
        if not os.path.exists(dbfile):
            started = time.perf_counter()
            make_database(dbfile, options.tasks)
            print(f"made {dbfile} ({options.tasks} tasks) in {time.perf_counter() - started:.0f} s")
        rows: dict[str, list[float]] = {}
        results_rate = []
        for _ in range(options.rounds):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            rows.setdefault("python -c pass", []).append(time.perf_counter() - started)
            for words in (("list",), ("status", "1"), ("errors", "1"), ("results", "1", "--json")):
                seconds, _printed = time_command(dbfile, *words)
                rows.setdefault("sheepdog " + " ".join(words), []).append(seconds)
                if words[0] == "results":
                    results_rate.append(options.tasks / seconds)
            first, poll, charts, poll_then = time_dashboard(dbfile)
            rows.setdefault("dashboard first paint", []).append(first)
            rows.setdefault("dashboard poll", []).append(poll)
            rows.setdefault("dashboard charts made", []).append(charts)
            rows.setdefault("dashboard poll, charts kept", []).append(poll_then)
        print(f"{options.tasks} tasks, median of {options.rounds} rounds, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after")
        for name, values in rows.items():
            print(f"  {name:<34}{statistics.median(values):8.2f} s")
        print(f"  results --json streams {statistics.median(results_rate):,.0f} tasks/s "
              f"(goal >= 200,000)")


if __name__ == "__main__":
    main()
