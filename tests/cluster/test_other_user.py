"""Another user of the machine and the cluster cannot act as sheepdog's workers.

A real second Unix account runs ``attacker.py`` while a request's tasks run:
it reads all that the scheduler and the machine show it about running jobs,
and tries every token it finds as a credential on every route. Nothing may be
accepted, nothing it sent may ever run, and ``map`` returns the real results.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import sheepdog
from sheepdog.wire import protocol
from sheepdog.storage import Storage

pytestmark = pytest.mark.cluster

ATTACKER = Path(__file__).with_name("attacker.py")


@pytest.fixture
def other_user():
    name = os.environ.get("SHEEPDOG_TEST_OTHER_USER")
    if not name:
        pytest.skip("no second test user: SHEEPDOG_TEST_OTHER_USER unset (run ci/gridengine-up.sh)")
    return name


def slow_square(x):
    import time

    time.sleep(12)
    return x * x


def wait_running(storage, request_id, count, seconds=90):
    deadline = time.monotonic() + seconds
    while storage.progress(request_id).running < count:
        assert time.monotonic() < deadline, storage.progress(request_id)
        time.sleep(0.2)


@pytest.fixture
def attack(other_user):
    """Run attacker.py as ``other_user``: (its report, the file its pickles would make)."""
    kit = Path(tempfile.mkdtemp(prefix="sheepdog-attack-kit-"))
    shutil.copy(ATTACKER, kit / "attacker.py")
    (kit / "protocol.py").write_text(Path(protocol.__file__).read_text())
    for path in (kit, *kit.iterdir()):
        os.chmod(path, 0o755)

    def run(request_id, urls=()):
        marker = Path(f"/tmp/sheepdog-forged-{uuid.uuid4().hex}")
        completed = subprocess.run(
            ["runuser", "-u", other_user, "--", "/usr/bin/python3", str(kit / "attacker.py"),
             str(request_id), str(marker), *urls],
            capture_output=True, text=True, timeout=600, cwd="/",
        )
        assert completed.returncode == 0, completed.stderr
        report = json.loads(completed.stdout.splitlines()[-1])
        print(f"the attacker left out {report['skipped']['files']} files and "
              f"{report['skipped']['tokens']} of {report['tokens']} tokens (its bounds)")
        return report, marker

    yield run
    shutil.rmtree(kit)


def test_another_cluster_user_cannot_post_results_or_run_code_as_the_caller(
        cluster_conf, attack):
    storage = Storage(cluster_conf["dbfile"])
    request_id = sheepdog.map_async(slow_square, [(x,) for x in range(1, 4)],
                                    {**cluster_conf, "callback": "direct"})
    wait_running(storage, request_id, 3)
    report, marker = attack(request_id)
    results = sheepdog.get_results(request_id, cluster_conf["dbfile"], timeout=120)

    assert any("/job_scripts/" in path for path in report["read"]), report["read"]
    assert "qstat -j *" in report["read"]
    assert report["urls"], "the attacker should have found the callback URL in the spool"
    assert report["tokens"] > 0 and sum(report["statuses"].values()) > 100
    # Every candidate was tried: nothing in what it read (chaff, such as a long base64
    # run) spent its bounds before it came to the real ones.
    assert report["skipped"] == {"files": 0, "tokens": 0}, report["skipped"]
    assert report["accepted"] == []
    assert [result for _args, result in results] == [1, 4, 9]
    assert not marker.exists()


def test_another_local_user_cannot_post_results_to_a_local_request(
        local_conf, attack):
    from sheepdog import api

    storage = Storage(local_conf["dbfile"])
    request_id = sheepdog.map_async(slow_square, [(x,) for x in range(1, 4)],
                                    {**local_conf, "workers": 3})
    wait_running(storage, request_id, 3)
    url = api.default_session().request(request_id, storage.dbfile).urls[0]  # the attacker found it
    report, marker = attack(request_id, [url])
    results = sheepdog.get_results(request_id, local_conf["dbfile"], timeout=120)

    assert any(path.startswith("/proc/") for path in report["read"])
    private = [path for path in report["read"]
               if path.startswith("/tmp/sheepdog-") and "attack-kit" not in path]
    assert not private, "the local job's temporary files must be private"
    assert report["skipped"] == {"files": 0, "tokens": 0}, report["skipped"]
    assert report["accepted"] == []
    assert [result for _args, result in results] == [1, 4, 9]
    assert not marker.exists()


def very_slow_square(x):
    import time

    time.sleep(120)  # cancelled long before: the attack must not race the real result
    return x * x


def test_with_the_key_in_the_job_file_another_user_can_act_as_the_workers(cluster_conf, attack):
    """What key_in_job_file warns of, shown by the same attack: it is why the key is kept
    out of the job file by default (and it shows that the attack itself has teeth)."""
    storage = Storage(cluster_conf["dbfile"])
    request_id = sheepdog.map_async(very_slow_square, [(x,) for x in range(1, 4)],
                                    {**cluster_conf, "callback": "direct", "key_in_job_file": True})
    wait_running(storage, request_id, 3)
    report, marker = attack(request_id)
    try:
        sheepdog.cancel(request_id, cluster_conf["dbfile"])
        assert report["accepted"], report["statuses"]
        results = sheepdog.get_results(request_id, cluster_conf["dbfile"], block=False)
        assert results[0][1] == 0  # os.system's status: the forged pickle ran in this process
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)
