"""numpy objects cross both ways between the caller's numpy 2.x and the numpy 1.x
of the workers' stock /usr/bin/python3 (Debian's python3-numpy, in dist-packages)."""

import pytest

import sheepdog

from ..support.numpy_cases import describe, numpy_cases

#: numpy 2 warns when a pickle names numpy 1's ``numpy.core``: that must not happen.
pytestmark = [pytest.mark.cluster, pytest.mark.filterwarnings("error:numpy.core:DeprecationWarning")]

np = pytest.importorskip("numpy")


@pytest.fixture
def conf(cluster_conf):
    return {**cluster_conf, "callback": "direct"}


def make_case(name):
    import numpy

    return numpy.__version__, numpy_cases()[name]


def describe_and_echo(value):
    return describe(value), value


def test_numpy_objects_made_by_the_workers_numpy_load_in_the_callers(conf):
    names = list(numpy_cases())
    results = sheepdog.map(make_case, [(name,) for name in names], conf)
    assert None not in results
    worker_numpy = {version for version, _case in results}
    assert len(worker_numpy) == 1 and worker_numpy.pop()[:2] != np.__version__[:2], (
        "the premise of this test is that the workers' numpy is another major version")
    expected = numpy_cases()
    for name, (_version, case) in zip(names, results):
        assert describe(case) == describe(expected[name]), name


def test_numpy_objects_made_by_the_callers_numpy_load_in_the_workers_and_come_back(conf):
    cases = numpy_cases()
    results = sheepdog.map(describe_and_echo, [(case,) for case in cases.values()], conf)
    assert None not in results
    for name, (described_there, echoed) in zip(cases, results):
        assert described_there == describe(cases[name]), name
        assert describe(echoed) == describe(cases[name]), name
