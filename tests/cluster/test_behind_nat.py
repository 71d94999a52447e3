"""A caller the cluster cannot reach, and tasks on an execution host of their own.

The caller runs in network namespace ``sdcaller`` under the host name
``laptop`` (``ci/as-caller.sh``): it can SSH into the head node, but the
cluster's firewall drops every connection from the cluster back to it, as
NAT would. Its tasks run on ``node1``, where the head node's loopback (and so a
reverse forward that sshd bound there) is out of reach, as on a real cluster.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sheepdog.storage import Storage

from .test_faults import JOB_GONE_SECONDS, run_as_test_user, wait_until

pytestmark = pytest.mark.cluster

CALLER = textwrap.dedent('''
    import json, socket, sys, time
    import sheepdog

    def where(x):
        import socket
        return socket.gethostname(), x * 2

    conf = json.loads(sys.argv[1])
    started = time.monotonic()
    try:
        results = sheepdog.map(where, [(x,) for x in range(1, 9)], conf, verbose=False)
        outcome = {"results": results}
    except sheepdog.CallbackError as error:
        outcome = {"error": str(error)}
    outcome["seconds"] = time.monotonic() - started
    outcome["caller"] = socket.gethostname()
    print(json.dumps(outcome))
''')


@pytest.fixture
def nat(cluster):
    names = ("SHEEPDOG_AS_CALLER", "SHEEPDOG_CLUSTER_ADDRESS", "SHEEPDOG_NODE1")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.skip(f"no NAT topology: {', '.join(missing)} unset (run ci/nat-up.sh)")
    return {name: os.environ[name] for name in names}


def run_as_caller(nat, cluster, tmp_path, **conf):
    """Run CALLER as the laptop behind NAT; what it printed, as a dict."""
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    conf = {
        "host": nat["SHEEPDOG_CLUSTER_ADDRESS"],
        "ssh_user": cluster["user"],
        "ssh_keyfile": cluster["key"],
        "ssh_known_hosts": cluster["known_hosts"],
        "dbfile": str(tmp_path / "sheepdog.sqlite"),
        "ge_opts": ["-wd $HOME/.sheepdog/", "-o $HOME/.sheepdog/", "-e $HOME/.sheepdog/",
                    f"-l hostname={nat['SHEEPDOG_NODE1']}"],
        **conf,
    }
    completed = subprocess.run(
        [nat["SHEEPDOG_AS_CALLER"], sys.executable, str(script), json.dumps(conf)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


def test_default_config_returns_results_through_the_tunnel_from_behind_nat(nat, cluster, tmp_path):
    outcome = run_as_caller(nat, cluster, tmp_path)
    assert outcome["caller"] == "laptop"
    assert outcome.get("results") == [[nat["SHEEPDOG_NODE1"], 2 * x] for x in range(1, 9)], outcome


def test_direct_callbacks_from_behind_nat_fail_fast_with_the_fix(
        nat, cluster, cluster_conf, tmp_path):
    outcome = run_as_caller(nat, cluster, tmp_path, callback="direct", connect_timeout=20)
    error = outcome.get("error", "")
    assert "none has called back on https://laptop:" in error, outcome
    assert "{'callback': 'tunnel'}" in error
    assert "cannot connect" in error or "timed out" in error  # the worker's stderr, read over SSH
    assert outcome["seconds"] < 120
    # The request gave up: its job no longer holds slots on the cluster.
    (job,) = Storage(str(tmp_path / "sheepdog.sqlite"), read_only=True).jobs(1)
    wait_until(lambda: job.job_id not in run_as_test_user(cluster_conf, "qstat").stdout,
               JOB_GONE_SECONDS)
