import sys

import pytest

from sheepdog.backends.gridengine import parse_memory
from sheepdog.config import DEFAULT_GE_OPTS, VALID_KEYS, resolve


def test_gridengine_defaults_follow_the_original():
    config = resolve({"host": "fear"})
    assert config.scheduler == "gridengine"
    assert config.ssh_port is None  # ~/.ssh/config's Port, else 22
    assert config.ssh_dir == ".sheepdog"
    assert config.dbfile == "./sheepdog.sqlite"
    assert config.port is None
    assert config.shell == "/usr/bin/python3"
    assert config.ge_opts == DEFAULT_GE_OPTS
    assert config.localhost  # this machine's name, as workers reach it


def test_local_scheduler_needs_no_host_and_uses_this_python():
    config = resolve({"scheduler": "local"})
    assert config.host is None
    assert config.shell == sys.executable
    assert config.localhost == "127.0.0.1"
    assert config.workers >= 1


def test_unknown_key_is_named_with_the_valid_keys():
    with pytest.raises(ValueError) as raised:
        resolve({"host": "fear", "ge_opt": ["-l lr=0"]})
    message = str(raised.value)
    assert "'ge_opt'" in message and "did you mean 'ge_opts'" in message
    assert all(key in message for key in VALID_KEYS)


@pytest.mark.parametrize(
    "conf, key",
    [
        ({"host": "fear", "ssh_port": "22"}, "ssh_port"),
        ({"host": "fear", "ge_opts": "-l lr=0"}, "ge_opts"),
        ({"host": "fear", "ge_opts": [1, 2]}, "ge_opts"),
        ({"host": "fear", "port": True}, "port"),
        ({"host": 3}, "host"),
    ],
)
def test_wrong_type_names_the_key(conf, key):
    with pytest.raises(TypeError, match=repr(key)):
        resolve(conf)


def test_a_cluster_scheduler_without_a_host_runs_its_commands_on_this_machine():
    """For a caller on the head node itself: no SSH."""
    from sheepdog.backends import create
    from sheepdog.remote.shells import LocalShell

    assert isinstance(create(resolve({"scheduler": "gridengine"})).shell, LocalShell)


def test_unknown_scheduler_lists_the_choices():
    with pytest.raises(ValueError, match="gridengine, slurm, local"):
        resolve({"scheduler": "pbs", "host": "x"})


def test_config_must_be_a_mapping():
    with pytest.raises(TypeError, match="dict"):
        resolve([("host", "fear")])


@pytest.mark.parametrize(
    "text, expected", [("2G", 2 * 2**30), ("500M", 500 * 2**20), ("1g", 10**9), ("1024", 1024)]
)
def test_memory_sizes_follow_gridengine_units(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("key", ["ssh_config", "ssh_keyfile", "ssh_known_hosts"])
def test_a_path_given_explicitly_must_exist(key, tmp_path):
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match=f"config key '{key}' names .*nothing-here.*does not exist"):
        resolve({"host": "headnode", key: missing})
