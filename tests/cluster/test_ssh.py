"""ProxyJump through OpenSSH's sshd: a real second hop to the head node.

The test cluster's head node runs sshd on its loopback and on 169.254.77.2
(``ci/nat-up.sh``). From inside the cluster's namespace, a jump through the
loopback sshd reaches the other; from the caller's namespace behind NAT,
where the head node's loopback is out of reach, a jump through 169.254.77.2
reaches the loopback sshd, which only the hop can.
"""

import json
import os
import subprocess
import sys
import textwrap

import paramiko
import pytest

import sheepdog
from sheepdog.remote import ssh

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster_address(cluster):
    address = os.environ.get("SHEEPDOG_CLUSTER_ADDRESS")
    if not address:
        pytest.skip("no second sshd: SHEEPDOG_CLUSTER_ADDRESS unset (run ci/nat-up.sh)")
    return address


def jump_config(path, cluster, jump_host, target_host):
    """An ssh_config in which ``behind-jump`` is ``target_host``, reached through ``jump_host``."""
    entry = f"    User {cluster['user']}\n    IdentityFile {cluster['key']}\n"
    path.write_text(f"Host jump\n    HostName {jump_host}\n{entry}"
                    f"Host behind-jump\n    HostName {target_host}\n{entry}    ProxyJump jump\n")
    return str(path)


def test_proxy_jump_through_the_loopback_sshd_reaches_the_other_and_runs_a_map(
        cluster, cluster_address, dbfile, tmp_path):
    config = jump_config(tmp_path / "ssh_config", cluster, "127.0.0.1", cluster_address)
    conf = {"host": "behind-jump", "ssh_config": config,
            "ssh_known_hosts": cluster["known_hosts"], "dbfile": dbfile}
    target = ssh.destination_for(sheepdog.Config(**conf))
    assert (target.hostname, target.proxy_jump) == (cluster_address, "jump")
    connection = ssh.get(target)
    server_side = connection.run("echo $SSH_CONNECTION").stdout.split()[2:]
    assert server_side == [cluster_address, "22"]
    assert isinstance(connection.client().get_transport().sock, paramiko.Channel)  # a hop
    assert sheepdog.map(divmod, [(7, 2), (9, 4)], conf, verbose=False) == [(3, 1), (2, 1)]


CALLER = textwrap.dedent("""
    import json, socket, sys
    from sheepdog.remote import ssh

    config, known_hosts = sys.argv[1:3]
    try:
        socket.create_connection(("127.0.0.1", 22), timeout=3).close()
        direct = "reached"
    except OSError as error:
        direct = type(error).__name__
    target = ssh.destination("behind-jump", known_hosts=known_hosts, ssh_config=config)
    result = ssh.get(target).run("hostname; echo $SSH_CONNECTION")
    print(json.dumps({"direct": direct, "status": result.status, "stdout": result.stdout}))
""")


def test_proxy_jump_from_behind_nat_reaches_the_head_nodes_loopback_only_through_the_hop(
        cluster, cluster_address, tmp_path):
    as_caller = os.environ.get("SHEEPDOG_AS_CALLER")
    if not as_caller:
        pytest.skip("no caller namespace: SHEEPDOG_AS_CALLER unset (run ci/nat-up.sh)")
    config = jump_config(tmp_path / "ssh_config", cluster, cluster_address, "127.0.0.1")
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    completed = subprocess.run(
        [as_caller, sys.executable, str(script), config, cluster["known_hosts"]],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(sheepdog.__file__))})
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.splitlines()[-1])
    assert outcome["direct"] != "reached"  # the caller has no route to the head's loopback
    hostname, *connection = outcome["stdout"].split()
    assert outcome["status"] == 0 and connection[2:] == ["127.0.0.1", "22"]
    assert hostname != "laptop"
