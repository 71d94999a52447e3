"""The runnable examples print what their comments promise, on the local backend."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, cwd):
    environment = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent))
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, check=True,
        cwd=cwd, env=environment, timeout=120,
    ).stdout


def test_demo_prints_the_quickstart_results_and_an_error(tmp_path):
    output = run_example("demo.py", tmp_path)
    assert "[2, 3, 4]\n" in output
    assert "[17, 20, 23]\n" in output
    assert "[1.0, None, 0.25]\n" in output and "ZeroDivisionError" in output


@pytest.mark.parametrize(
    "name, last_line",
    [("async_results.py", "[0, 1, 4, 9, 16, 25, 36, 49]"), ("numpy_mean.py", "[2.0, 5.0]")],
)
def test_example_prints_its_promised_result(tmp_path, name, last_line):
    assert run_example(name, tmp_path).splitlines()[-1] == last_line
