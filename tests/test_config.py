import logging
import sys

import pytest

from sheepdog import Executor
from sheepdog.backends.gridengine import parse_memory
from sheepdog.caller.session import Session
from sheepdog.config import (DEFAULT_GE_OPTS, VALID_KEYS, lowerings, resolve,
                             resolve_with_origins, security_warnings)


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


def test_the_defaults_lower_no_security():
    assert lowerings(resolve({"host": "fear"})) == [] == lowerings(resolve({"scheduler": "local"}))


@pytest.mark.parametrize("conf, expected", [
    ({"scheduler": "local", "tls": False},
     "'tls' is False (set by the config dict): workers call back over plain HTTP: anyone"),
    ({"host": "fear", "tls": False},
     "'tls' is False (set by the config dict) and 'bind' is '0.0.0.0' (set by the default): "
     "workers call back over plain HTTP, to a server that listens beyond this machine"),
    ({"scheduler": "local", "tls": False, "bind": "10.0.0.5"},
     "'bind' is '10.0.0.5' (set by the config dict): workers call back over plain HTTP, to a"),
    ({"scheduler": "local", "key_in_job_file": True},
     "'key_in_job_file' is True (set by the config dict): the request's key goes into the job "
     "file, which the scheduler shows to every user of the cluster"),
    ({"scheduler": "local", "dashboard": "0.0.0.0:8765"},
     "'dashboard' is '0.0.0.0:8765' (set by the config dict): the dashboard listens beyond "
     "this machine, over plain HTTP"),
])
def test_each_setting_that_lowers_security_is_warned_naming_where_it_was_set(conf, expected):
    (warning,) = security_warnings(*resolve_with_origins(conf))
    assert expected in warning


def test_a_setting_from_the_config_file_is_warned_with_its_path_line_and_profile(
        tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text('[default]\nscheduler = "local"\n\n[profiles.trusted]\nkey_in_job_file = true\n')
    monkeypatch.setenv("SHEEPDOG_CONFIG_FILE", str(path))
    (warning,) = security_warnings(*resolve_with_origins({"profile": "trusted"}))
    assert warning.startswith(f"'key_in_job_file' is True (set by [profiles.trusted] in the "
                              f"config file {path}, line 5): the request's key goes into")


def test_every_submission_warns_that_tls_is_off_naming_the_config_dict(local_conf, caplog):
    with Session() as session, caplog.at_level(logging.WARNING, logger="sheepdog"):
        requests = [session.submit(abs, [(-1,)], {**local_conf, "tls": False}) for _ in range(2)]
        for request in requests:
            request.wait(timeout=60)
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING and "plain HTTP" in record.getMessage()]
    assert warnings == [f"request {request.id}: 'tls' is False (set by the config dict): workers "
                        f"call back over plain HTTP: anyone on the network between them and "
                        f"this machine can read the tasks and their results, and hand the "
                        f"workers code to run as you" for request in requests]


def test_the_executor_warns_at_each_submission_naming_the_config_file(local_conf, tmp_path,
                                                                      monkeypatch, caplog):
    path = tmp_path / "config.toml"
    path.write_text("[default]\ntls = false\n")
    monkeypatch.setenv("SHEEPDOG_CONFIG_FILE", str(path))
    with caplog.at_level(logging.WARNING, logger="sheepdog"), Executor(local_conf) as executor:
        assert executor.submit(abs, -2).result(timeout=60) == 2
    assert [record.getMessage() for record in caplog.records if "plain HTTP" in
            record.getMessage()] == [f"request 1: 'tls' is False (set by [default] in the config "
                                     f"file {path}, line 2): workers call back over plain HTTP: "
                                     f"anyone on the network between them and this machine can "
                                     f"read the tasks and their results, and hand the workers "
                                     f"code to run as you"]
