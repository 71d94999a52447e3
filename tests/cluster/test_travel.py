"""The user's own modules travel to GridEngine's workers, and their versions are compared.

The workers run Debian's stock ``/usr/bin/python3`` with its numpy 1.x; the
caller runs the project's venv with numpy 2.x. The project below lives in the
test's own private folder, which the workers' user cannot even read, so it can
only arrive by value.
"""

import sys
import textwrap

import pytest

import sheepdog

from .test_gridengine import last_request

pytestmark = pytest.mark.cluster

np = pytest.importorskip("numpy")

PROJECT = {
    "mylib.py": """
        def parse(text):
            return int(text) * 2
        """,
    "pkg/__init__.py": "",
    "pkg/sub.py": """
        from .helpers import twice


        def describe(x):
            return f"{twice(x)}!"
        """,
    "pkg/helpers.py": """
        def twice(x):
            return 2 * x
        """,
}


@pytest.fixture
def project(tmp_path):
    """The project on this process's path, and gone from it afterwards."""
    for name, text in PROJECT.items():
        path = tmp_path / "project" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    sys.path.insert(0, str(tmp_path / "project"))
    yield
    sys.path.remove(str(tmp_path / "project"))
    for name in ("mylib", "pkg", "pkg.sub", "pkg.helpers"):
        sys.modules.pop(name, None)


def test_own_modules_travel_to_gridengine_however_they_are_imported(cluster_conf, project):
    import mylib
    import pkg.sub

    def uses_both(x):
        return mylib.parse(str(x)), pkg.sub.describe(x)

    assert sheepdog.map(uses_both, [(1,), (2,)], cluster_conf) == [(2, "2!"), (4, "4!")]


def numpy_total(values):
    return int(np.sum(values))


def test_the_workers_other_numpy_is_warned_about_once_per_host_naming_both_versions(
        cluster_conf, caplog):
    with caplog.at_level("WARNING", logger="sheepdog"):
        assert sheepdog.map(numpy_total, [([1, 2],), ([3],), ([4],)], cluster_conf,
                            verbose=False) == [3, 3, 4]
    warnings = [message for message in caplog.messages
                if "has other versions than the caller" in message]
    hosts = [message.split("the worker on ")[1].split()[0] for message in warnings]
    assert warnings and len(hosts) == len(set(hosts)), caplog.messages  # vm and node1
    for warning in warnings:
        assert f"numpy {np.__version__} in the caller" in warning
        assert " 1." in warning.split("in the caller,")[1]  # Debian's numpy 1.x


def test_version_mismatch_error_refuses_to_run_on_the_workers_other_numpy(cluster_conf):
    conf = {**cluster_conf, "version_mismatch": "error"}
    assert sheepdog.map(numpy_total, [([1, 2],)], conf, verbose=False) == [None]
    ((_arguments, error),) = sheepdog.get_errors(last_request(cluster_conf),
                                                 cluster_conf["dbfile"])
    assert "'version_mismatch' is 'error', so its tasks do not run here" in error
    assert f"numpy {np.__version__} in the caller" in error

