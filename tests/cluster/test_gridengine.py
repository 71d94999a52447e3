"""End to end through SSH, qsub and HTTP callbacks on a real GridEngine."""

import os
import stat
import time

import pytest

import sheepdog
from sheepdog import SubmissionError
from sheepdog.remote import ssh
from sheepdog.remote.ssh import SSHError

pytestmark = pytest.mark.cluster


def last_request(conf):
    import sqlite3

    with sqlite3.connect(conf["dbfile"]) as raw:
        return raw.execute("SELECT max(id) FROM requests").fetchone()[0]


def test_namespace_entries_override_the_globals_of_the_function(cluster_conf):
    namespace = {"__name__": "__main__"}
    exec("constant = 12\ndef f(a):\n    return a + constant\n", namespace)
    assert sheepdog.map(namespace["f"], [(1,)], cluster_conf, ns={"constant": 100}) == [101]


def test_quickstart_numpy_import_idiom(cluster_conf):
    def g(x):
        return np.mean(x)  # noqa: F821 - made global by f on the worker

    def f(x):
        import numpy as np

        global np
        return g(x)

    assert [float(r) for r in sheepdog.map(f, [([1, 2, 3],), ([10, 20],)], cluster_conf)] == [2.0, 15.0]


def test_errors_come_back_with_their_traceback(cluster_conf):
    def f(x):
        if x == 2:
            raise ValueError(f"bad value {x}")
        return x

    assert sheepdog.map(f, [(1,), (2,), (3,)], cluster_conf) == [1, None, 3]
    errors = sheepdog.get_errors(last_request(cluster_conf), cluster_conf["dbfile"])
    assert len(errors) == 1 and errors[0][0] == (2,)
    assert "ValueError: bad value 2" in errors[0][1] and "Traceback" in errors[0][1]


def test_map_async_then_poll_get_results(cluster_conf):
    request_id = sheepdog.map_async(pow, [(3, n) for n in range(6)], cluster_conf)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        results = sheepdog.get_results(request_id, cluster_conf["dbfile"], block=False)
        if all(result is not None for _args, result in results):
            break
        time.sleep(0.5)
    assert results == [((3, n), 3**n) for n in range(6)]


def test_output_error_and_working_directory_options_are_respected(cluster, cluster_conf):
    out_dir = os.path.join(cluster["home"], "sheepdog-out")
    work_dir = os.path.join(cluster["home"], "sheepdog-work")
    for path in (out_dir, work_dir):
        os.makedirs(path, exist_ok=True)
        os.chown(path, *(os.stat(cluster["home"])[4:6]))

    def f(marker):
        import os
        import sys

        print(f"stdout {marker}")
        print(f"stderr {marker}", file=sys.stderr)
        return os.getcwd()

    conf = {**cluster_conf, "ge_opts": ["-wd $HOME/sheepdog-work", "-o $HOME/sheepdog-out/",
                                        "-e $HOME/sheepdog-out/"]}
    marker = f"marker-{time.time()}"
    assert sheepdog.map(f, [(marker,)], conf) == [work_dir]
    written = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(written) < 2:
        for name in os.listdir(out_dir):
            text = open(os.path.join(out_dir, name)).read()
            if marker in text:
                written[name.split(".")[-2][0]] = text
        time.sleep(0.2)
    assert f"stdout {marker}" in written["o"] and f"stderr {marker}" in written["e"]


def test_ssh_config_alias_with_proxy_command(cluster, cluster_conf, tmp_path):
    config_file = tmp_path / "ssh_config"
    config_file.write_text(
        "Host cluster-via-bastion\n"
        f"    HostName {cluster['host']}\n"
        f"    User {cluster['user']}\n"
        f"    IdentityFile {cluster['key']}\n"
        f"    ProxyCommand ssh -i {cluster['key']} -o UserKnownHostsFile={cluster['known_hosts']} "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes -W %h:%p {cluster['user']}@{cluster['host']}\n"
    )
    conf = {"host": "cluster-via-bastion", "ssh_config": str(config_file),
            "ssh_known_hosts": cluster["known_hosts"], "dbfile": cluster_conf["dbfile"]}
    target = ssh.destination_for(sheepdog.Config(**conf))
    assert target.proxy_command and target.user == cluster["user"]
    assert sheepdog.map(divmod, [(7, 2)], conf) == [(3, 1)]


def test_unknown_host_key_is_refused_with_a_way_to_add_it(cluster_conf, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    conf = {**cluster_conf, "ssh_known_hosts": str(empty), "ssh_port": 22}
    started = time.monotonic()
    with pytest.raises(SSHError, match="not in known_hosts.*ssh-keyscan"):
        sheepdog.map_async(abs, [(1,)], {**conf, "host": "localhost"})
    assert time.monotonic() - started < 30


def test_wrong_key_is_refused_clearly(cluster_conf, tmp_path):
    import paramiko

    wrong = tmp_path / "wrong_key"
    paramiko.Ed25519Key  # the type we generate below with ssh-keygen
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {wrong}")
    conf = {**cluster_conf, "ssh_keyfile": str(wrong), "host": "127.0.0.1"}
    with pytest.raises(SSHError, match="refused our keys"):
        sheepdog.map_async(abs, [(1,)], conf)


def test_qsub_refusal_raises_at_once_with_qsub_text(cluster_conf):
    started = time.monotonic()
    with pytest.raises(SubmissionError, match="qsub refused the job.*no_such_resource"):
        sheepdog.map_async(abs, [(1,)], {**cluster_conf, "ge_opts": ["-l no_such_resource=1"]})
    assert time.monotonic() - started < 30
    errors = sheepdog.get_errors(last_request(cluster_conf), cluster_conf["dbfile"])
    assert "never submitted" in errors[0][1]


def test_two_maps_in_one_session_reuse_one_ssh_connection(cluster_conf):
    assert sheepdog.map(abs, [(-1,)], cluster_conf) == [1]
    connection = ssh.get(ssh.destination_for(sheepdog.Config(**cluster_conf)))
    client = connection.client()
    assert sheepdog.map(abs, [(-2,)], cluster_conf) == [2]
    assert connection.client() is client


def test_job_directory_is_private_and_keeps_no_job_or_key_file(cluster, cluster_conf):
    directory = os.path.join(cluster["home"], ".sheepdog")

    def job_and_key_files():  # other runs may share the directory: compare before and after
        return {name for name in os.listdir(directory) if name.endswith((".py", ".key"))}

    before = job_and_key_files() if os.path.isdir(directory) else set()
    assert sheepdog.map(abs, [(-5,)], cluster_conf) == [5]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    # qsub keeps its own copy of the job file; the key file goes when the request ends, or,
    # for a request of a warm pool (workers of its job may still start and read it), when
    # the pool ends: here, with the session that made it.
    sheepdog.api.default_session().close()
    assert job_and_key_files() - before == set()


