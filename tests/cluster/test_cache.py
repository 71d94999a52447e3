"""The ``cache`` config key on the real GridEngine: an unchanged script run twice, in two
processes, submits no job the second time and gives the same results."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sheepdog.storage import Storage

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import sheepdog

def cube(x):
    return x ** 3

conf = json.loads(sys.argv[1])
print(json.dumps(sheepdog.map(cube, [(x,) for x in range(6)], conf, verbose=False)))
"""


def run_script(tmp_path, conf):
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT).lstrip())
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "random"}
    completed = subprocess.run([sys.executable, "script.py", json.dumps(conf)], cwd=tmp_path,
                               env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_an_unchanged_script_run_twice_submits_no_job_the_second_time(cluster_conf, tmp_path):
    conf = {**cluster_conf, "cache": True}
    first = run_script(tmp_path, conf)
    assert run_script(tmp_path, conf) == first == [x ** 3 for x in range(6)]
    storage = Storage(cluster_conf["dbfile"])
    try:
        assert storage.request_ids() == [1, 2]
        assert storage.jobs(1) and storage.jobs(2) == []
        assert storage.progress(2).remembered == 6
    finally:
        storage.close()
