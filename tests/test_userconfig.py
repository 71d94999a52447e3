"""Settings a person sets once: the config file's [default] and profiles, SHEEPDOG_*
variables, and the order in which they, the defaults and the config dict win."""

import os
import textwrap

import pytest

import sheepdog
from sheepdog.config import restore, resolve, resolve_with_sources
from sheepdog.userconfig import MAX_FILE_BYTES, UserConfigError, config_file_path

FEAR = """\
[default]
scheduler = "local"
ssh_dir = ".sheepdog-default"
retries = 1

[profiles.fear]
host = "fear"
scheduler = "gridengine"
ge_opts = ["-l ubuntu=1", "-l lr=0"]
retries = 2

[profiles.laptop]
workers = 2
"""


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    """Writes the config file that SHEEPDOG_CONFIG_FILE names; returns its path."""
    path = tmp_path / "config.toml"
    monkeypatch.setenv("SHEEPDOG_CONFIG_FILE", str(path))

    def write(text):
        path.write_text(textwrap.dedent(text))
        return path

    return write


def test_each_layer_wins_over_the_one_below_and_says_so(user_file, monkeypatch):
    user_file(FEAR)
    monkeypatch.setenv("SHEEPDOG_PROFILE", "fear")
    monkeypatch.setenv("SHEEPDOG_RETRIES", "3")
    monkeypatch.setenv("SHEEPDOG_SSH_PORT", "2222")
    config, sources = resolve_with_sources({"ssh_port": 2200})
    assert (config.ssh_dir, sources["ssh_dir"]) == (".sheepdog-default", "file [default]")
    assert (config.host, sources["host"]) == ("fear", "file [profiles.fear]")
    assert config.scheduler == "gridengine" and config.ge_opts == ("-l ubuntu=1", "-l lr=0")
    assert (config.retries, sources["retries"]) == (3, "env SHEEPDOG_RETRIES")
    assert (config.ssh_port, sources["ssh_port"]) == (2200, "argument")
    assert (config.dbfile, sources["dbfile"]) == ("./sheepdog.sqlite", "default")


def test_the_dicts_profile_wins_over_the_variable(user_file, monkeypatch):
    user_file(FEAR)
    monkeypatch.setenv("SHEEPDOG_PROFILE", "fear")
    config = resolve({"profile": "laptop"})
    assert (config.scheduler, config.host, config.workers) == ("local", None, 2)


def test_without_a_profile_only_the_default_table_applies(user_file):
    user_file(FEAR)
    config, sources = resolve_with_sources({})
    assert (config.scheduler, config.host, config.retries) == ("local", None, 1)
    assert sources["scheduler"] == "file [default]"


def test_an_unknown_profile_is_named_with_the_profiles_there_are(user_file):
    path = user_file(FEAR)
    with pytest.raises(ValueError, match=rf"profile 'faer' \(the config's 'profile'\) is not "
                                         rf"in {path} \(did you mean 'fear'\?\); its profiles "
                                         rf"are: fear, laptop"):
        resolve({"profile": "faer"})


def test_a_profile_without_a_config_file_says_where_to_create_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHEEPDOG_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("SHEEPDOG_PROFILE", "fear")
    with pytest.raises(UserConfigError, match=r"profile 'fear' \(environment variable "
                                              r"SHEEPDOG_PROFILE\) needs a config file.*"
                                              r"none\.toml: create it with a \[profiles\.fear\]"):
        resolve({})


@pytest.mark.parametrize("variable, text, key, value", [
    ("SHEEPDOG_PORT", "8123", "port", 8123),
    ("SHEEPDOG_PORT", "", "port", None),
    ("SHEEPDOG_LOST_AFTER", "90.5", "lost_after", 90.5),
    ("SHEEPDOG_RETRY_SECONDS", "30", "retry_seconds", 30),
    ("SHEEPDOG_TLS", "yes", "tls", True),
    ("SHEEPDOG_RETRY_FAILED", "On", "retry_failed", True),
    ("SHEEPDOG_GE_OPTS", '["-l h_rt=1:00:00", "-q long"]', "ge_opts",
     ("-l h_rt=1:00:00", "-q long")),
    ("SHEEPDOG_DBFILE", "results.sqlite", "dbfile", "results.sqlite"),
])
def test_variables_are_converted_by_the_keys_type(monkeypatch, variable, text, key, value):
    monkeypatch.setenv(variable, text)
    config, sources = resolve_with_sources({})
    assert getattr(config, key) == value and sources[key] == f"env {variable}"


@pytest.mark.parametrize("variable, text, expected", [
    ("SHEEPDOG_PORT", "eighty", "a whole number"),
    ("SHEEPDOG_TLS", "maybe", "one of 1/true/yes/on or 0/false/no/off"),
    ("SHEEPDOG_GE_OPTS", "-l h_rt=1:00:00", "an array of options"),
    ("SHEEPDOG_LOST_AFTER", "soon", "a number"),
])
def test_a_variable_that_does_not_convert_is_named(monkeypatch, variable, text, expected):
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=rf"environment variable {variable} \(config key "
                                         rf"'[a-z_]+'\) is '{text}': expected {expected}"):
        resolve({})


def test_a_variable_out_of_range_is_named(monkeypatch):
    monkeypatch.setenv("SHEEPDOG_PORT", "70000")
    with pytest.raises(ValueError, match="^environment variable SHEEPDOG_PORT: config key "
                                         "'port' must be between 0 and 65535"):
        resolve({})


def test_an_unknown_key_in_the_file_names_the_file_the_line_and_the_key(user_file):
    path = user_file("""\
        [default]
        scheduler = "local"

        [profiles.fear]
        host = "fear"
        ge_opt = ["-l lr=0"]
        """)
    with pytest.raises(ValueError, match=rf"^{path}, line 6: unknown config key 'ge_opt' "
                                         rf"\(did you mean 'ge_opts'\?\)"):
        resolve({"profile": "fear"})


def test_a_wrong_type_in_the_file_names_the_file_the_line_and_the_key(user_file):
    path = user_file("""\
        # ports are numbers
        [default]
        port = "8080"
        """)
    with pytest.raises(TypeError, match=rf"^{path}, line 3: config key 'port' must be int"):
        resolve({})


def test_a_value_out_of_range_in_the_file_names_where_it_was_set(user_file):
    path = user_file("""\
        [default]
        heartbeat_seconds = 10
        lost_after = 5
        """)
    with pytest.raises(ValueError, match=rf"^{path}, line 3: config key 'lost_after' \(5\)"):
        resolve({})


def test_the_dict_overrides_a_value_the_file_got_wrong_only_by_being_checked_first(user_file):
    """Every layer is checked, so a broken file is found even when the dict hides it."""
    path = user_file("[default]\nport = true\n")
    with pytest.raises(TypeError, match=rf"^{path}, line 2: config key 'port'"):
        resolve({"port": 8080})


@pytest.mark.parametrize("text, expected", [
    ('[default]\nhost = "fear\n', r" is not valid TOML: .*line 2"),
    ('host = "fear"\n', r", line 1: key 'host' is outside any table; put it under \[default\]"),
    ('[defaults]\nhost = "fear"\n', r", line 1: unknown table \[defaults\] \(did you mean "
                                    r"\[default\]\?\)"),
    ('[profiles]\nhost = "fear"\n', r", line 2: key 'host' sits directly under \[profiles\]"),
])
def test_a_malformed_file_is_named_with_the_line(user_file, text, expected):
    path = user_file(text)
    with pytest.raises(UserConfigError, match=rf"^{path}{expected}"):
        resolve({})


def test_the_file_lives_under_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SHEEPDOG_CONFIG_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_file_path() == tmp_path / "xdg" / "sheepdog" / "config.toml"
    (tmp_path / "xdg" / "sheepdog").mkdir(parents=True)
    config_file_path().write_text('[default]\nssh_dir = "from-xdg"\n')
    assert resolve({}).ssh_dir == "from-xdg"


@pytest.mark.parametrize("xdg", [None, "relative/dir"])
def test_without_an_absolute_xdg_config_home_the_file_is_in_dot_config(tmp_path, monkeypatch,
                                                                       xdg):
    monkeypatch.delenv("SHEEPDOG_CONFIG_FILE")
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    assert config_file_path() == tmp_path / ".config" / "sheepdog" / "config.toml"


def test_a_stored_request_keeps_the_config_it_was_made_with(user_file, local_conf):
    user_file("[default]\nheartbeat_seconds = 5\n")
    request_id = sheepdog.map_async(abs, [(-1,)], local_conf)
    sheepdog.wait(request_id, local_conf["dbfile"])
    user_file("[default]\nheartbeat_seconds = 7\nno_such_key = 1\n")
    with sheepdog.Session() as later:
        assert later.request(request_id, local_conf["dbfile"]).config.heartbeat_seconds == 5
    assert sheepdog.get_results(request_id, local_conf["dbfile"]) == [((-1,), 1)]


def test_restore_reads_neither_the_file_nor_the_environment(user_file, monkeypatch):
    user_file("[default]\nretries = 4\n")
    monkeypatch.setenv("SHEEPDOG_HOST", "elsewhere")
    assert (restore({"scheduler": "local"}).retries, restore({}).host) == (0, None)


@pytest.mark.parametrize("kind", ["character device", "fifo", "directory"])
def test_a_config_file_that_is_not_a_regular_file_is_refused_unread(tmp_path, monkeypatch, kind):
    """/dev/zero would be read without end, and a FIFO without a writer would block."""
    path = {"character device": lambda: "/dev/zero",
            "fifo": lambda: os.mkfifo(tmp_path / "fifo") or tmp_path / "fifo",
            "directory": lambda: tmp_path}[kind]()
    monkeypatch.setenv("SHEEPDOG_CONFIG_FILE", str(path))
    with pytest.raises(UserConfigError, match=rf"^the sheepdog config file {path} is not a "
                                              rf"regular file"):
        resolve({})


def test_a_config_file_over_the_size_limit_is_refused_naming_the_limit(user_file):
    padding = "# " + "x" * 98 + "\n"
    path = user_file("[default]\n" + padding * (MAX_FILE_BYTES // len(padding)))
    assert resolve({}).scheduler == "gridengine"  # just under the limit: read
    user_file(path.read_text() + padding)
    with pytest.raises(UserConfigError, match=rf"^the sheepdog config file {path} is larger than "
                                              rf"1048576 bytes"):
        resolve({})


@pytest.mark.parametrize("text, value", [
    ("127.0.0.1:8765", "127.0.0.1:8765"), ("[::1]:0", "[::1]:0"), ("off", False),
    ("true", "127.0.0.1:0"),
])
def test_sheepdog_dashboard_takes_an_address_or_true_or_false(monkeypatch, text, value):
    monkeypatch.setenv("SHEEPDOG_DASHBOARD", text)
    config, sources = resolve_with_sources({"scheduler": "local"})
    assert (config.dashboard, sources["dashboard"]) == (value, "env SHEEPDOG_DASHBOARD")


def test_a_sheepdog_dashboard_that_is_no_address_is_named(monkeypatch):
    monkeypatch.setenv("SHEEPDOG_DASHBOARD", "nowhere")
    with pytest.raises(ValueError, match="^environment variable SHEEPDOG_DASHBOARD: config key "
                                         "'dashboard' is 'nowhere'; write HOST:PORT"):
        resolve({"scheduler": "local"})


@pytest.mark.parametrize("variables, file, key", [
    ({"SHEEPDOG_TLS": "0"}, "", "tls"),
    ({"SHEEPDOG_KEY_IN_JOB_FILE": "yes"}, "", "key_in_job_file"),
    ({"SHEEPDOG_DASHBOARD": "0.0.0.0:8765"}, "", "dashboard"),
    ({"SHEEPDOG_BIND": "0.0.0.0"}, "tls = false\n", "bind"),
])
def test_a_variable_that_would_lower_security_is_refused_naming_it(user_file, monkeypatch,
                                                                  variables, file, key):
    user_file(f'[default]\nscheduler = "local"\n{file}')
    for variable, text in variables.items():
        monkeypatch.setenv(variable, text)
    (variable,) = variables
    with pytest.raises(UserConfigError, match=rf"^environment variable {variable} sets '{key}' "
                                              rf"to .*, which lowers security: .* put '{key}' in "
                                              rf"the config dict or the config file instead$"):
        resolve({})


def test_the_config_dict_or_file_may_lower_security_where_a_variable_may_not(user_file,
                                                                            monkeypatch):
    user_file('[default]\nscheduler = "local"\ntls = false\n')
    monkeypatch.setenv("SHEEPDOG_BIND", "127.0.0.1")  # loopback: lowers nothing
    assert resolve({}).tls is False
    monkeypatch.setenv("SHEEPDOG_TLS", "0")  # the dict wins over the variable: it is not used
    assert resolve({"tls": True, "key_in_job_file": True}).key_in_job_file is True


def test_an_unknown_variable_is_warned_about_with_a_did_you_mean(monkeypatch, caplog):
    from sheepdog import config

    monkeypatch.setenv("SHEEPDOG_RETIRES", "3")
    monkeypatch.setattr(config, "_warned", set())
    with caplog.at_level("WARNING", logger="sheepdog.config"):
        resolve({})
        resolve({})
    assert [record.getMessage() for record in caplog.records] == [
        "environment variable SHEEPDOG_RETIRES is no sheepdog setting (did you mean "
        "SHEEPDOG_RETRIES?); it is ignored"]


@pytest.mark.parametrize("variable", ["SHEEPDOG_TASK_ID", "SHEEPDOG_REQUIRE_CLUSTER",
                                      "SHEEPDOG_TEST_USER", "SHEEPDOG_DURABILITY_ROUNDS",
                                      "SHEEPDOG_DASHBOARD_SCREENSHOT", "SHEEPDOG_ATTACK_SECONDS",
                                      "SHEEPDOG_PROFILE", "SHEEPDOG_SLURM_CLUSTER"])
def test_sheepdogs_own_and_test_variables_are_not_warned_about(monkeypatch, variable):
    from sheepdog.config import VALID_KEYS
    from sheepdog.userconfig import unknown_variables

    monkeypatch.setenv(variable, "1")
    assert unknown_variables(VALID_KEYS) == []


def test_keys_the_local_scheduler_does_not_use_are_warned_about_naming_where(user_file):
    from sheepdog.config import resolve_with_origins, unused_key_warnings

    path = user_file('[default]\nge_opts = ["-q long"]\n')
    config, origins = resolve_with_origins({"scheduler": "local", "host": "fear"})
    assert unused_key_warnings(config, origins) == [
        "config key 'host' (the config dict) is not used by the local scheduler, whose tasks "
        "run on this machine; it is ignored",
        f"config key 'ge_opts' ([default] in the config file {path}, line 2) is not used by "
        f"the local scheduler, whose tasks run on this machine; it is ignored"]
    config, origins = resolve_with_origins({"scheduler": "gridengine", "host": "fear"})
    assert unused_key_warnings(config, origins) == []
