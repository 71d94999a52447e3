"""Server ingest: results stored per second under concurrent posting clients.

Measures, in one run and on this machine, sheepdog's callback server storing
small results against a bare Tornado handler that only answers "OK", and
prints the ratio ours/bare (the goal is >= 0.5). Clients are separate
processes with keep-alive connections, several threads each.

    python benchmarks/ingest.py [--clients 32] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sheepdog.wire import protocol  # noqa: E402
from sheepdog.wire.protocol import auth_headers  # noqa: E402
from sheepdog.server.host import Server  # noqa: E402
from sheepdog.storage.store import Storage  # noqa: E402

PROCESSES = 4


BODY = b"\x80\x04K\x01."
KEY = b"pw"


def _client_process(port, paths, seconds, threads, counts):
    """Post as fast as possible for ``seconds`` from ``threads`` threads, each post signed
    as a worker signs it (to either server, so both pay the same client cost)."""
    done = [0] * threads
    deadline = time.monotonic() + seconds

    def post(slot):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < deadline:
            path = paths[(slot + n * threads) % len(paths)]
            headers = {**auth_headers(KEY, "POST", path, BODY),
                       "Content-Type": "application/octet-stream"}
            connection.request("POST", path, body=BODY, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            n += 1
        done[slot] = n

    workers = [threading.Thread(target=post, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counts.put(sum(done))


def measure(port, paths, clients, seconds):
    counts = multiprocessing.Queue()
    per_process = max(1, clients // PROCESSES)
    processes = [
        multiprocessing.Process(
            target=_client_process,
            args=(port, paths[number::PROCESSES], seconds, per_process, counts),
        )
        for number in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    total = sum(counts.get() for _ in processes)
    for process in processes:
        process.join()
    return total / seconds


def bare_tornado(port_holder, ready):
    import asyncio

    import tornado.web

    class Ok(tornado.web.RequestHandler):
        def post(self, *args):
            self.write("OK")

    async def main():
        app = tornado.web.Application([(r"/.*", Ok)])
        server = app.listen(0, address="127.0.0.1")
        port_holder.value = next(iter(server._sockets.values())).getsockname()[1]
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    directory = tempfile.mkdtemp()
    storage = Storage(os.path.join(directory, "bench.sqlite"))
    n_tasks = 200_000
    request_id = storage.create_request(b"f", (b"a" for _ in range(n_tasks)), KEY.decode(),
                                        "local")
    paths = [protocol.path(request_id, "result", task=i) for i in range(1, n_tasks + 1)]

    port_holder = multiprocessing.Value("i", 0)
    ready = multiprocessing.Event()
    bare = multiprocessing.Process(target=bare_tornado, args=(port_holder, ready), daemon=True)
    bare.start()
    ready.wait(30)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Server(storage.dbfile, port=port, use_tls=False)
    server_process = multiprocessing.Process(target=server.serve_forever, daemon=True)
    server_process.start()
    time.sleep(1.0)

    ours, baseline = [], []
    for round_number in range(options.rounds):
        # Each round posts to tasks not posted before, so every POST stores a result.
        fresh = paths[round_number::options.rounds]
        baseline.append(measure(port_holder.value, fresh, options.clients, options.seconds))
        ours.append(measure(port, fresh, options.clients, options.seconds))
    stored = storage.progress(request_id).done
    print(f"{'server':<22}{'median req/s':>14}{'rounds':>30}")
    print(f"{'bare tornado (OK)':<22}{statistics.median(baseline):>14.0f}"
          f"{str([round(x) for x in baseline]):>30}")
    print(f"{'sheepdog (stored)':<22}{statistics.median(ours):>14.0f}"
          f"{str([round(x) for x in ours]):>30}")
    ratio = statistics.median(ours) / statistics.median(baseline)
    print(f"ingest: sheepdog stores {statistics.median(ours):.0f} results/s, "
          f"{ratio:.2f}x bare Tornado (goal >= 0.5); {stored} results stored")
    bare.terminate()
    server_process.terminate()


if __name__ == "__main__":
    main()
