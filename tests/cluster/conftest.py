"""Fixtures for end-to-end tests against the real GridEngine + sshd of ci/gridengine-up.sh.

The tests run when the environment written by that script is loaded (source
/var/lib/sheepdog-test/env) and the process runs inside its network namespace
(ip netns exec sheepdog ...). Otherwise they skip, unless
SHEEPDOG_REQUIRE_CLUSTER is set (1, true or yes), when tests/conftest.py makes
a skip, or any cluster test left out of the run, a failure: CI must not pass
by skipping them.
"""

import os
import socket

import pytest

REQUIRED = ("SHEEPDOG_TEST_HOST", "SHEEPDOG_TEST_USER", "SHEEPDOG_TEST_KEY",
            "SHEEPDOG_TEST_KNOWN_HOSTS")


def _cluster_problem():
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        return f"no test cluster: {', '.join(missing)} unset (run ci/gridengine-up.sh)"
    try:
        socket.create_connection((os.environ["SHEEPDOG_TEST_HOST"], 22), timeout=3).close()
    except OSError as error:
        return f"no sshd on {os.environ['SHEEPDOG_TEST_HOST']}:22 ({error}); run the tests " \
               f"under 'ip netns exec $SHEEPDOG_NETNS'"
    return None


@pytest.fixture(scope="session")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    return {
        "host": os.environ["SHEEPDOG_TEST_HOST"],
        "user": os.environ["SHEEPDOG_TEST_USER"],
        "key": os.environ["SHEEPDOG_TEST_KEY"],
        "known_hosts": os.environ["SHEEPDOG_TEST_KNOWN_HOSTS"],
        "home": os.path.expanduser(f"~{os.environ['SHEEPDOG_TEST_USER']}"),
    }


@pytest.fixture
def cluster_conf(cluster, dbfile):
    """A config that reaches the test cluster the way a user's would."""
    return {
        "host": cluster["host"],
        "ssh_user": cluster["user"],
        "ssh_keyfile": cluster["key"],
        "ssh_known_hosts": cluster["known_hosts"],
        "dbfile": dbfile,
    }
