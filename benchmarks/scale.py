"""A thousand workers, a million tasks: one real caller against simulated workers.

The caller is real: ``sheepdog.map_async`` of N tasks with its HTTPS server,
database and dashboard, in this process, then ``get_results`` as a user
would call it. Only the scheduler is replaced: the ``simulated`` backend
(:class:`SimulatedBackend`) starts no process when the request submits its
job; it keeps the job file's settings, and W simulated workers run them in a
few processes of their own (threads, each one worker). Each simulated worker
speaks the protocol through the worker's own code: its :class:`Client`
(signed requests, retries), :class:`BatchSize`, the :class:`Supervisor`'s
report queue and flush, and the runner's :func:`run_one`, which loads each
task's arguments, calls the function and pickles its result. What is left
out is the fork of a runner per batch and the job file's start-up: the
caller sees every request a real worker would send (function, pull,
heartbeat, results), from W named workers ``<launch>.<array task>``.

Printed: end-to-end time and tasks/s, registration (``map_async`` until it
returns) and the time until every worker had its first answer, pull latency
p50/p99 and heartbeat latency p99 as the workers saw them, leases lost that
should not have been (tasks run twice or retried: must be 0), the caller's
peak RSS and CPU seconds, and the database's size; and every result is
checked to have arrived exactly once, with the right value. With ``--relay``
the workers connect through the head node's relay program
(``remote/relay.py``) run here, as workers behind a head node would.

    python benchmarks/scale.py [--workers 1000] [--tasks 1000000] [--task-seconds 0]
                               [--processes 8] [--relay]

Goals (issue 24, on 2 cores shared by the caller and the workers): W = 1,000,
N = 1,000,000: all correct, no false losses, p99 pull <= 1 s, caller RSS <=
1 GB, <= 120 s; W = 1,000 with 1 s tasks: <= 1.1x the ideal time, caller CPU
<= 50% of a core; through the relay: all correct.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import math
import os
import queue
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from typing import Any, Optional, Union

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import sheepdog  # noqa: E402 - after the path that finds this checkout
from sheepdog.backends import registry  # noqa: E402
from sheepdog.backends.base import TaskEnd  # noqa: E402
from sheepdog.backends.local import LocalBackend  # noqa: E402
from sheepdog.remote import relay  # noqa: E402
from sheepdog.wire import serialisation  # noqa: E402
from sheepdog.wire.protocol import BEGUN, WAIT, Buffer, unpack_frames, worker_name  # noqa: E402
from sheepdog.wire.settings import WorkerSettings  # noqa: E402
from sheepdog.worker.batching import BatchSize  # noqa: E402
from sheepdog.worker.client import Client, read_key  # noqa: E402
from sheepdog.worker.client import log as log_worker  # noqa: E402
from sheepdog.worker.loop import WAIT_SECONDS  # noqa: E402
from sheepdog.worker.output import TaskOutput  # noqa: E402
from sheepdog.worker.runner import compare_versions, run_one  # noqa: E402
from sheepdog.worker.supervisor import FLUSH_SECONDS, Supervisor  # noqa: E402

log = logging.getLogger("scale")

#: Simulated workers per process, unless told: threads that share one GIL.
WORKERS_PER_PROCESS = 125
#: The scheduler name the benchmark registers for its backend.
SCHEDULER = "simulated"


def task(index: int, seconds: float) -> int:
    """The mapped function: takes ``seconds`` and returns its index, so each result can be checked."""
    if seconds:
        time.sleep(seconds)
    return index


# -- the caller's side: a backend that starts nothing -----------------------------------


class SimulatedBackend(LocalBackend):
    """The local backend's key delivery, but a job starts no process: its settings are
    kept in :attr:`submitted` for the simulated workers, and no worker ever "ends"."""

    name = SCHEDULER
    #: The job files' settings, in the order their jobs were submitted.
    submitted: "queue.Queue[tuple[dict[str, Any], int]]" = queue.Queue()

    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        literal = script.split("\nSETTINGS = ", 1)[1].split("\nsys.meta_path", 1)[0]
        self.submitted.put((ast.literal_eval(literal), n_array_tasks))
        return f"simulated-{request_id}-{self.submitted.qsize()}"

    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        return {}

    def cancel(self, job_id: str) -> None:
        """The simulated workers end when no task is left."""

    def running_tasks(self, job_id: str) -> set[int]:
        return set()


def register_backend() -> None:
    """Make ``{"scheduler": "simulated"}`` name :class:`SimulatedBackend`, in this process."""
    registry.registered()[SCHEDULER] = f"{__name__}:SimulatedBackend"


# -- the workers' side ---------------------------------------------------------------


class _Reports:
    """The runner's report channel, minus its process: each report goes straight into the
    supervisor's queue, as the supervisor would queue it on reading the runner's socket."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def report(self, index: int, kind: int, payload: Union[Buffer, list[Buffer]]) -> None:
        data = b"".join(payload) if isinstance(payload, list) else bytes(payload)
        self.supervisor.queue(index, kind, data)


@dataclasses.dataclass
class WorkerStats:
    """What the simulated workers of one process saw (lists are appended by many threads)."""

    pulls: list[float] = dataclasses.field(default_factory=list)
    beats: list[float] = dataclasses.field(default_factory=list)
    first_answers: list[float] = dataclasses.field(default_factory=list)
    reported: array = dataclasses.field(default_factory=lambda: array("q"))
    failures: list[str] = dataclasses.field(default_factory=list)


def simulate_worker(settings: WorkerSettings, key: bytes, array_task: int, started: float,
                    stats: WorkerStats) -> None:
    """Be worker ``<launch>.<array_task>`` until the server has no task left, as ``loop.run``
    is, with the tasks run in this thread rather than in a forked runner."""
    worker = worker_name(settings.launch, array_task)

    def connect(retry_seconds: float) -> Client:
        return Client(settings.urls, settings.request_id, key, retry_seconds,
                      settings.certificate, settings.disk_full_seconds)

    supervisor = Supervisor(connect(settings.retry_seconds), connect(settings.heartbeat_seconds),
                            worker, settings.heartbeat_seconds, TaskOutput())
    client, reports = supervisor.client, _Reports(supervisor)
    next_beat = time.monotonic() + settings.heartbeat_seconds

    def beat_if_due() -> None:
        nonlocal next_beat
        now = time.monotonic()
        if now >= next_beat:
            try:
                supervisor.beater.request("heartbeat", worker=worker)
            except Exception as error:  # as the supervisor: a missed beat is not fatal
                log_worker(f"heartbeat failed: {error}")
            stats.beats.append(time.monotonic() - now)
            next_beat = time.monotonic() + settings.heartbeat_seconds

    try:
        function, versions = serialisation.loads_function_and_versions(client.request("function"))
        stats.first_answers.append(time.monotonic() - started)
        batch, seq, versions_sent = BatchSize(settings.chunksize), 1, False
        while True:
            asked = time.monotonic()
            frames = unpack_frames(client.request("pull", worker=worker, seq=seq,
                                                  size=batch.size, least=batch.least))
            stats.pulls.append(time.monotonic() - asked)
            if not frames:
                return
            if frames[0][1] == WAIT:
                beat_if_due()
                time.sleep(WAIT_SECONDS)
                continue
            supervisor.batch, seq = seq, seq + 1
            indices = [index for index, _kind, _payload in frames]
            if not versions_sent:
                versions_sent = True
                compare_versions(versions, settings, reports, indices[:1])
            began = time.monotonic()
            for index, _kind, payload in frames:
                supervisor.queue(index, BEGUN, b"")
                run_one(function, index, payload, reports)
                stats.reported.append(index)
                if supervisor.since is not None and time.monotonic() - supervisor.since >= FLUSH_SECONDS:
                    supervisor.flush()
                beat_if_due()
            del frames, payload
            supervisor.flush()
            batch.took(len(indices), time.monotonic() - began)
    except Exception as error:  # counted and shown: the run is then not correct
        stats.failures.append(f"worker {worker}: {type(error).__name__}: {error}")
    finally:
        supervisor.client.close()
        supervisor.beater.close()


def run_worker_process(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the simulated workers ``spec["array_tasks"]`` in threads until each has finished;
    what they saw (the indices they reported go to ``spec["reported_file"]``)."""
    settings = WorkerSettings.from_dict(spec["settings"])
    key = read_key(settings)
    stats, started = WorkerStats(), time.monotonic()
    threading.stack_size(256 << 10)
    threads = [threading.Thread(target=simulate_worker, args=(settings, key, array_task, started,
                                                              stats), daemon=True)
               for array_task in spec["array_tasks"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(spec["reported_file"], "wb") as handle:
        stats.reported.tofile(handle)
    return {"pulls": stats.pulls, "beats": stats.beats, "first_answers": stats.first_answers,
            "failures": stats.failures[:20], "n_failures": len(stats.failures)}


# -- the run ----------------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    """What one run measured; :meth:`problems` says what was wrong with it."""

    workers: int
    tasks: int
    task_seconds: float
    relay: bool
    wall: float = 0.0
    registration: float = 0.0
    all_connected: float = 0.0
    n_pulls: int = 0
    pull_p50: float = 0.0
    pull_p99: float = 0.0
    beat_p99: float = 0.0
    n_beats: int = 0
    false_losses: int = 0
    wrong_results: int = 0
    reported_twice: int = 0
    never_reported: int = 0
    worker_failures: list[str] = dataclasses.field(default_factory=list)
    worker_complaints: list[str] = dataclasses.field(default_factory=list)
    caller_peak_rss_mb: float = 0.0
    caller_cpu: float = 0.0
    database_mb: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.wall if self.wall else 0.0

    @property
    def ideal(self) -> float:
        """The time the work itself takes on W workers, with no overhead at all."""
        return math.ceil(self.tasks / self.workers) * self.task_seconds

    def problems(self) -> list[str]:
        """What makes the run incorrect (never a speed goal): empty when all is well."""
        found = [f"{count} {what}" for count, what in (
            (self.false_losses, "tasks lost or retried though no worker ended"),
            (self.wrong_results, "results missing or wrong"),
            (self.reported_twice, "tasks reported more than once"),
            (self.never_reported, "tasks no worker reported")) if count]
        return found + self.worker_failures

    def lines(self) -> list[str]:
        route = " through the relay" if self.relay else ""
        ideal = (f" (ideal {self.ideal:.1f} s: {self.wall / self.ideal:.2f}x)"
                 if self.ideal else "")
        return [
            f"{self.workers} workers{route}, {self.tasks} tasks of {self.task_seconds} s "
            f"(load average before: {' '.join(f'{x:.2f}' for x in self.load_before)})",
            f"  end to end      {self.wall:8.2f} s{ideal}, {self.tasks_per_second:,.0f} tasks/s",
            f"  registration    {self.registration:8.2f} s (map_async), every worker answered "
            f"after {self.all_connected:.2f} s",
            f"  pull latency    p50 {self.pull_p50 * 1000:.0f} ms, p99 {self.pull_p99 * 1000:.0f} ms "
            f"({self.n_pulls} pulls)",
            f"  heartbeat       p99 {self.beat_p99 * 1000:.0f} ms ({self.n_beats} beats)",
            f"  false losses    {self.false_losses}",
            f"  caller          peak RSS {self.caller_peak_rss_mb:.0f} MB, CPU {self.caller_cpu:.1f} s "
            f"({100 * self.caller_cpu / self.wall:.0f}% of a core)",
            f"  database        {self.database_mb:.0f} MB",
            f"  correct         {'yes' if not self.problems() else '; '.join(self.problems())}",
        ] + [f"  worker stderr   {line[:150]}" for line in self.worker_complaints[:5]]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Relay:
    """The head node's relay program, run here, forwarding to the caller's server."""

    def __init__(self, server_port: int, workers: int) -> None:
        # Real workers arrive from many nodes; these all come from 127.0.0.1, so the
        # per-address cap is raised to what one address brings here.
        limits = (f"\nMAX_PER_PEER = {4 * workers + 64}\n"
                  f"MAX_CONNECTIONS = {4 * workers + 64}\nrelay()\n")
        self.process = subprocess.Popen(
            [sys.executable, "-c", relay.SOURCE.replace("\nrelay()\n", limits)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(relay.forward_command(server_port, 0, "127.0.0.1"))
        self.process.stdin.flush()
        for line in self.process.stdout:
            answer = relay.parse_answer(line.decode())
            if answer is not None:
                break
        else:
            raise RuntimeError("the relay ended without answering")
        if answer.address is None:
            raise RuntimeError(f"the relay could not listen: {answer.error}")
        self.port = answer.address[1]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def _spawn_workers(settings: dict[str, Any], n_workers: int, processes: int, directory: str
                   ) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Start the worker processes, array tasks 1..n_workers dealt out among them."""
    spawned = []
    for number in range(processes):
        reported_file = os.path.join(directory, f"reported-{number}")
        spec = {"settings": settings, "reported_file": reported_file,
                "array_tasks": list(range(number + 1, n_workers + 1, processes))}
        with open(os.path.join(directory, f"stderr-{number}"), "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker-process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                env=dict(os.environ, PYTHONPATH=ROOT))
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec).encode())
        process.stdin.close()
        spawned.append((process, reported_file))
    return spawned


def run_scale(workers: int, tasks: int, task_seconds: float = 0.0,
              processes: Optional[int] = None, use_relay: bool = False,
              directory: Optional[str] = None, config: Optional[dict[str, Any]] = None,
              timeout: Optional[float] = None) -> Figures:
    """One run: a real caller in this process, ``workers`` simulated ones in others; a
    run not finished within ``timeout`` seconds is stopped, and says so."""
    register_backend()
    processes = processes or max(1, min(workers, math.ceil(workers / WORKERS_PER_PROCESS)))
    figures = Figures(workers, tasks, task_seconds, use_relay, load_before=os.getloadavg())
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        dbfile = os.path.join(folder, "scale.sqlite")
        # One request and all W workers at once, leaving when it is done: no warm pool
        # (whose first job starts few workers, and whose workers wait for the next request).
        conf = {"scheduler": SCHEDULER, "dbfile": dbfile, "workers": workers,
                "callback": "direct", "linger": 0, **(config or {})}
        arguments = [(index, task_seconds) for index in range(tasks)]
        cpu_before = _cpu_seconds()
        started = time.monotonic()
        request_id = sheepdog.map_async(task, arguments, conf)
        figures.registration = time.monotonic() - started
        settings, n_workers = SimulatedBackend.submitted.get_nowait()
        assert n_workers == workers, f"the job has {n_workers} workers, not {workers}"
        tunnel = _Relay(int(settings["urls"][0].rsplit(":", 1)[1]), workers) if use_relay else None
        if tunnel is not None:
            settings = dict(settings, urls=[f"https://127.0.0.1:{tunnel.port}"])
        spawned = _spawn_workers(settings, workers, processes, folder)
        try:
            try:
                results = sheepdog.get_results(request_id, dbfile, timeout=timeout)
            except TimeoutError as error:
                figures.worker_failures.append(f"not finished: {error}")
                results = []
            figures.wall = time.monotonic() - started
            figures.caller_cpu = _cpu_seconds() - cpu_before
            figures.caller_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            figures.wrong_results = tasks - len(results) + sum(
                result != index for index, (_args, result) in enumerate(results))
            del results
            if figures.worker_failures:  # timed out: the workers may wait on forever
                for process, _ in spawned:
                    process.kill()
            seen = [_figures_of(process) for process, _ in spawned]
        finally:
            for process, _ in spawned:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if tunnel is not None:
                tunnel.close()
        _read_worker_figures(figures, seen, [reported for _process, reported in spawned])
        figures.worker_complaints = _complaints(folder, processes)
        _read_database_figures(figures, dbfile, request_id)
    return figures


def _figures_of(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """What a worker process printed about its workers, once it has ended ({} if nothing)."""
    assert process.stdout is not None
    output = process.stdout.read()
    process.wait()
    return json.loads(output) if output else {}


def _complaints(folder: str, processes: int) -> list[str]:
    """What the workers wrote to stderr (retries, mostly): each kind of line once, with its
    count."""
    counts: dict[str, int] = {}
    for number in range(processes):
        with open(os.path.join(folder, f"stderr-{number}"), encoding="utf-8",
                  errors="replace") as handle:
            for line in handle:
                kind = re.sub(r"\d+", "N", line.strip())
                counts[kind] = counts.get(kind, 0) + 1
    return [f"{count} x {kind}" for kind, count in sorted(counts.items(), key=lambda kv: -kv[1])]


def _read_worker_figures(figures: Figures, seen: list[dict[str, Any]],
                         reported_files: list[str]) -> None:
    pulls = [x for one in seen for x in one.get("pulls", [])]
    beats = [x for one in seen for x in one.get("beats", [])]
    first = [x for one in seen for x in one.get("first_answers", [])]
    figures.n_pulls = len(pulls)
    figures.pull_p50, figures.pull_p99 = _quantile(pulls, 0.5), _quantile(pulls, 0.99)
    figures.beat_p99, figures.n_beats = _quantile(beats, 0.99), len(beats)
    figures.all_connected = max(first, default=0.0)
    figures.worker_failures = [failure for one in seen for failure in one.get("failures", [])]
    if len(seen) != sum(1 for one in seen if "pulls" in one):
        figures.worker_failures.append("a worker process ended without its figures")
    counts = bytearray(figures.tasks + 1)
    for path in reported_files:
        reported = array("q")
        with open(path, "rb") as handle:
            reported.frombytes(handle.read())
        for index in reported:
            counts[index] = min(255, counts[index] + 1)
    figures.reported_twice = sum(1 for count in counts[1:] if count > 1)
    figures.never_reported = counts[1:].count(0)


def _read_database_figures(figures: Figures, dbfile: str, request_id: int) -> None:
    figures.database_mb = sum(os.path.getsize(path) for path in (dbfile, dbfile + "-wal")
                              if os.path.exists(path)) / 1e6
    with sqlite3.connect(f"file:{dbfile}?mode=ro", uri=True) as db:
        figures.false_losses = db.execute(
            "SELECT count(*) FROM tasks WHERE request_id = ? AND (attempts > 1 OR state != 'done')",
            (request_id,)).fetchone()[0]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--task-seconds", type=float, default=0.0)
    parser.add_argument("--processes", type=int, default=None,
                        help=f"worker processes (default: one per {WORKERS_PER_PROCESS} workers)")
    parser.add_argument("--relay", action="store_true",
                        help="workers connect through the head node's relay, run here")
    parser.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker_process:
        json.dump(run_worker_process(json.load(sys.stdin)), sys.stdout)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    figures = run_scale(options.workers, options.tasks, options.task_seconds, options.processes,
                        options.relay)
    print("\n".join(figures.lines()))
    sys.exit(1 if figures.problems() else 0)


if __name__ == "__main__":
    main()
