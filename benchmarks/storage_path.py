"""The storage a local map of N trivial tasks goes through, without HTTP or workers.

Creates a request of N tasks through :class:`sheepdog.storage.Storage`, then
lets two simulated workers pull batches of ``--batch`` tasks in turn and
report each batch in posts of ``--post`` results, each post also saying that
its tasks began and how long they ran (as a real worker's post does). Prints
the seconds spent creating, pulling and reporting, and the process's CPU: the
part of a map's caller cost that is SQLite's. Run it beside another checkout
(``PYTHONPATH``) to compare.

    python benchmarks/storage_path.py [--tasks 100000] [--batch 2500] [--post 250]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sheepdog.storage.store import Storage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2500)
    parser.add_argument("--post", type=int, default=250)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        storage = Storage(os.path.join(directory, "sheepdog.sqlite"))
        arguments = [pickle.dumps((i,)) for i in range(options.tasks)]
        started, cpu_started = time.perf_counter(), time.process_time()
        request_id = storage.create_request(b"f" * 200, arguments, "secret", "local")
        created = time.perf_counter()
        launch = storage.add_workers(request_id, 2)
        pulls = {f"{launch}.1": 0, f"{launch}.2": 0}
        pulling = reporting = 0.0
        while True:
            pulled_any = False
            for worker in pulls:
                pulls[worker] += 1
                before = time.perf_counter()
                indices = storage.pull(request_id, worker, pulls[worker], options.batch)
                pulling += time.perf_counter() - before
                if not isinstance(indices, list) or not indices:
                    continue
                pulled_any = True
                for start in range(0, len(indices), options.post):
                    post = indices[start:start + options.post]
                    before = time.perf_counter()
                    storage.record_reports(
                        request_id, [(i, False, pickle.dumps(2 * i)) for i in post],
                        begun=post, ran=[(i, 1e-6) for i in post])
                    reporting += time.perf_counter() - before
            if not pulled_any:
                break
        ended = time.perf_counter()
        done = storage.progress(request_id).done
        storage.close()
    print(f"{options.tasks} tasks ({done} done): create {created - started:.2f} s, "
          f"pull {pulling:.2f} s, report {reporting:.2f} s, all {ended - started:.2f} s, "
          f"CPU {time.process_time() - cpu_started:.2f} s")


if __name__ == "__main__":
    main()
