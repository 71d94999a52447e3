"""numpy objects cross between the caller's numpy and the system Python's.

The system interpreter (/usr/bin/python3 with Debian's numpy 1.x in
dist-packages) plays the worker, loading only what a job file embeds; the
caller runs numpy 2.x. tests/cluster/test_numpy_versions.py does the same
through GridEngine.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from .support.fresh_interpreter import call_in_fresh_interpreter
from .support.numpy_cases import describe, numpy_cases

np = pytest.importorskip("numpy")

#: numpy 2 warns when a pickle names numpy 1's ``numpy.core``: that must not happen.
pytestmark = pytest.mark.filterwarnings("error:numpy.core:DeprecationWarning")

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _system_numpy():
    """The system Python's numpy version, or why that Python cannot play the worker."""
    if not SYSTEM_PYTHON.exists():
        return None, f"no {SYSTEM_PYTHON}"
    probe = "import sys, numpy; print(sys.version_info[:2] == %r, numpy.__version__)" % (
        tuple(sys.version_info[:2]),)
    completed = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", probe], capture_output=True, text=True)
    if completed.returncode:
        return None, f"{SYSTEM_PYTHON} has no numpy"
    same_python, version = completed.stdout.split()
    if same_python != "True":
        return None, f"{SYSTEM_PYTHON} is another Python minor version than this one"
    if version.split(".")[0] == np.__version__.split(".")[0]:
        return None, f"{SYSTEM_PYTHON} has numpy {version}, the same major version as here"
    return version, None


@pytest.fixture(scope="module")
def system_python():
    version, problem = _system_numpy()
    if problem:
        pytest.skip(problem)
    return (str(SYSTEM_PYTHON), "-I")


def test_numpy_objects_made_by_the_callers_numpy_load_in_the_system_numpy(tmp_path, system_python):
    cases = numpy_cases()
    described = call_in_fresh_interpreter(tmp_path, describe, (cases,), python=system_python)
    assert described == describe(cases)


def test_numpy_objects_made_by_the_system_numpy_load_in_the_callers(tmp_path, system_python):
    made = call_in_fresh_interpreter(tmp_path, numpy_cases, python=system_python)
    assert describe(made) == describe(numpy_cases())


def test_numpy_objects_go_to_the_system_numpy_and_back_unchanged(tmp_path, system_python):
    cases = numpy_cases()
    echoed = call_in_fresh_interpreter(tmp_path, lambda value: value, (cases,), python=system_python)
    assert describe(echoed) == describe(cases)
    assert echoed["over 64 KB"].flags.writeable


def test_the_system_numpy_in_dist_packages_travels_by_name(tmp_path, system_python):
    """Debian's numpy lives in dist-packages: its functions must not be shipped by value."""

    def pickled_array():
        import numpy

        from sheepdog.wire.serialisation import dumps

        return dumps(numpy.ones(10, dtype=numpy.uint8))

    payload = call_in_fresh_interpreter(tmp_path, pickled_array, python=system_python)
    assert b"_make_function" not in payload and len(payload) < 1000
