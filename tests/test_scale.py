"""The scale benchmark's correctness checks, at a size a test run affords.

``benchmarks/scale.py`` runs a real caller (``map_async``, its HTTPS server and
database) against simulated workers that speak the protocol through the
worker's own code, in processes of their own. Here 50 of them share 20,000
tasks, directly and through the head node's relay: every result must arrive
exactly once with its value, no lease may be lost, and every worker must have
been answered. The speed goals are the benchmark's, not timed here.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"
#: However loaded the machine, a run that has not finished by then never will.
TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def scale():
    """The benchmark's module, under a name of its own (the backend is found by it)."""
    name = "sheepdog_scale_benchmark"
    spec = importlib.util.spec_from_file_location(name, BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


def _assert_correct(figures, workers, tasks):
    assert figures.problems() == [], "\n".join(figures.lines())
    assert (figures.workers, figures.tasks) == (workers, tasks)
    assert figures.n_pulls >= workers  # each worker pulled, at least to hear that none was left
    assert figures.all_connected > 0


def test_fifty_workers_report_twenty_thousand_tasks_each_exactly_once(scale, tmp_path):
    figures = scale.run_scale(workers=50, tasks=20_000, processes=2, directory=str(tmp_path),
                              timeout=TIMEOUT_SECONDS)
    _assert_correct(figures, 50, 20_000)


def test_workers_behind_the_relay_report_every_task_exactly_once(scale, tmp_path):
    figures = scale.run_scale(workers=50, tasks=5_000, processes=2, use_relay=True,
                              directory=str(tmp_path), timeout=TIMEOUT_SECONDS)
    _assert_correct(figures, 50, 5_000)
    assert figures.relay
