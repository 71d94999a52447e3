"""Resolve the user's config dict into a checked, complete :class:`Config`.

Every key is validated before anything is stored or submitted: an unknown key
or a value of the wrong type raises at once, naming the key and what is valid.
Defaults follow the original Sheepdog, modernised where a modern system
differs (``/usr/bin/python3`` rather than ``/usr/bin/python``).

Below the dict come the settings a person sets once (``userconfig.py``): the
config file's ``[default]`` and profiles, and ``SHEEPDOG_<KEY>`` variables.
They are checked like the dict, and their errors say where they were set. A
stored request is rebuilt with :func:`restore`, which reads neither again.

Some settings lower security (:func:`lowerings`): plain HTTP, a plain-HTTP
server beyond loopback, the key in the job file, a dashboard beyond loopback.
Each submission warns about them, naming where they were set
(:func:`security_warnings`), and no ``SHEEPDOG_<KEY>`` variable may make them:
a variable in a shared module file or a job wrapper applies to every map, unseen.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import math
import os
import socket
import sys
from typing import Any, Mapping, Optional, Sequence, Union, cast

from . import userconfig
from .backends.registry import registered
from .resources import InvalidResource, resources_of

log = logging.getLogger(__name__)

#: How workers reach the caller's server: see docs/channel.rst.
CALLBACKS = ("auto", "direct", "tunnel")

#: The source of a value that nobody set, and of one the config dict set.
DEFAULT, ARGUMENT = "default", "argument"

#: Where the live dashboard listens unless the ``dashboard`` key says otherwise.
DEFAULT_DASHBOARD = "127.0.0.1:0"

DEFAULT_GE_OPTS = ("-wd $HOME/.sheepdog/", "-o $HOME/.sheepdog/", "-e $HOME/.sheepdog/")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of one map call, after defaults were filled in."""

    scheduler: str = "gridengine"
    host: Optional[str] = None
    ssh_port: Optional[int] = None
    ssh_user: Optional[str] = None
    ssh_keyfile: Optional[str] = None
    ssh_known_hosts: Optional[str] = None
    ssh_config: Optional[str] = None
    ssh_dir: str = ".sheepdog"
    dbfile: str = "./sheepdog.sqlite"
    port: Optional[int] = None
    bind: Optional[str] = None
    localhost: Optional[str] = None
    shell: Optional[str] = None
    ge_opts: tuple[str, ...] = DEFAULT_GE_OPTS
    slurm_opts: tuple[str, ...] = ()
    workers: Optional[int] = None
    chunksize: Optional[int] = None
    max_running: Optional[int] = None
    retry_seconds: float = 180.0
    retries: int = 0
    retry_failed: bool = False
    heartbeat_seconds: float = 10.0
    lost_after: float = 60.0
    tls: bool = True
    max_body_bytes: int = 1 << 30
    callback: str = "auto"
    connect_timeout: float = 60.0
    key_in_job_file: bool = False
    #: "HOST:PORT" of the live dashboard (see docs/dashboard.rst); False: none.
    dashboard: Union[str, bool] = DEFAULT_DASHBOARD
    #: When a worker's versions of Python or of a package the function uses by name
    #: differ from the caller's in their major or minor part: "warn", "error" (the
    #: worker's tasks fail, saying so) or "ignore".
    version_mismatch: str = "warn"
    #: Seconds a worker of a warm pool waits for more work before it leaves; 0: no pool,
    #: each request's workers leave when it has no task left (see docs/pools.rst).
    linger: float = 60.0
    #: Resources of each worker, by name (see docs/resources.rst and ``resources.py``).
    cores: Optional[int] = None
    memory: Optional[str] = None
    walltime: Union[str, int, float, None] = None
    gpus: Optional[int] = None
    queue: Optional[str] = None
    account: Optional[str] = None
    #: GridEngine's parallel environment for ``cores``, and its complex for ``gpus``.
    pe_name: str = "smp"
    gpu_resource: Optional[str] = None
    #: Whether a task reuses the result of an earlier success of the same computation
    #: (see docs/remembering.rst): False, True, or "refresh" (compute again, and remember
    #: the new result).
    cache: Union[bool, str] = False


#: The longest ``linger``: idle workers hold a shared cluster's slots.
MAX_LINGER = 86400.0

#: The ``cache`` value that computes again and remembers the new results.
CACHE_REFRESH = "refresh"

#: What ``version_mismatch`` may say.
VERSION_MISMATCH = ("warn", "error", "ignore")

#: Accepted types of each key (None stands for "may be None").
_TYPES: dict[str, tuple[type, ...]] = {
    "scheduler": (str,),
    "host": (str, type(None)),
    "ssh_port": (int, type(None)),
    "ssh_user": (str, type(None)),
    "ssh_keyfile": (str, type(None)),
    "ssh_known_hosts": (str, type(None)),
    "ssh_config": (str, type(None)),
    "ssh_dir": (str,),
    "dbfile": (str, os.PathLike),
    "port": (int, type(None)),
    "bind": (str, type(None)),
    "localhost": (str, type(None)),
    "shell": (str, type(None)),
    "ge_opts": (list, tuple),
    "slurm_opts": (list, tuple),
    "workers": (int, type(None)),
    "chunksize": (int, type(None)),
    "max_running": (int, type(None)),
    "retry_seconds": (int, float),
    "retries": (int,),
    "retry_failed": (bool,),
    "heartbeat_seconds": (int, float),
    "lost_after": (int, float),
    "tls": (bool,),
    "max_body_bytes": (int,),
    "callback": (str,),
    "connect_timeout": (int, float),
    "key_in_job_file": (bool,),
    "dashboard": (str, bool),
    "version_mismatch": (str,),
    "linger": (int, float),
    "cores": (int, type(None)),
    "memory": (str, type(None)),
    "walltime": (str, int, float, type(None)),
    "gpus": (int, type(None)),
    "queue": (str, type(None)),
    "account": (str, type(None)),
    "pe_name": (str,),
    "gpu_resource": (str, type(None)),
    "cache": (bool, str),
}

VALID_KEYS = tuple(field.name for field in dataclasses.fields(Config))
#: Keys that hold one scheduler's own options; each backend says which is its own.
OPTIONS_KEYS = tuple(key for key in VALID_KEYS if key.endswith("_opts"))


class InvalidValue(ValueError):
    """A key's value is out of range; ``key`` says which, for a message that points at it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _check_setting(key: str, value: Any) -> None:
    if key not in _TYPES:
        close = difflib.get_close_matches(str(key), VALID_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown config key {key!r}{hint}; valid keys are: {', '.join(VALID_KEYS)}"
        )
    allowed = _TYPES[key]
    wrong_bool = isinstance(value, bool) and bool not in allowed
    wrong_int = allowed == (bool,) and not isinstance(value, bool)
    if not isinstance(value, allowed) or wrong_bool or wrong_int:
        names = " or ".join("None" if kind is type(None) else kind.__name__ for kind in allowed)
        raise TypeError(f"config key {key!r} must be {names}, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key {key!r} must be a finite number, not {value}")
    if key in OPTIONS_KEYS and not all(isinstance(item, str) for item in cast("list[Any]", value)):
        raise TypeError(f"config key {key!r} must be a list of strings, one option each")


def _check_values(config: Config) -> None:
    if config.scheduler not in registered():
        raise InvalidValue("scheduler", f"config key 'scheduler' is {config.scheduler!r}; "
                                        f"choose one of {', '.join(registered())}")
    if config.version_mismatch not in VERSION_MISMATCH:
        raise InvalidValue("version_mismatch", f"config key 'version_mismatch' is "
                           f"{config.version_mismatch!r}; choose one of "
                           f"{', '.join(VERSION_MISMATCH)}")
    if isinstance(config.cache, str) and config.cache != CACHE_REFRESH:
        raise InvalidValue("cache", f"config key 'cache' is {config.cache!r}; choose true "
                                    f"(reuse remembered results), false (the default) or "
                                    f"{CACHE_REFRESH!r} (compute again and remember)")
    if config.callback not in CALLBACKS:
        raise InvalidValue("callback", f"config key 'callback' is {config.callback!r}; "
                                       f"choose one of {', '.join(CALLBACKS)}")
    if config.callback == "tunnel" and config.scheduler == "local":
        raise InvalidValue("callback", "config key 'callback' cannot be 'tunnel' with the local "
                                       "scheduler: its tasks run on this machine and reach the "
                                       "server directly")
    if config.connect_timeout <= 0:
        raise InvalidValue("connect_timeout", "config key 'connect_timeout' must be positive")
    if config.port is not None and not 0 <= config.port <= 65535:
        raise InvalidValue("port", f"config key 'port' must be between 0 and 65535, "
                                   f"not {config.port}")
    for key in ("workers", "chunksize", "max_running"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise InvalidValue(key, f"config key {key!r} must be at least 1, not {value}")
    if not 0 <= config.linger <= MAX_LINGER:
        raise InvalidValue("linger", f"config key 'linger' must be between 0 and {MAX_LINGER:g} "
                                     f"seconds (a day), not {config.linger}")
    for key in ("retry_seconds", "retries"):
        if getattr(config, key) < 0:
            raise InvalidValue(key, f"config key {key!r} must not be negative")
    if config.heartbeat_seconds <= 0 or config.lost_after < 2 * config.heartbeat_seconds:
        raise InvalidValue(
            "lost_after", f"config key 'lost_after' ({config.lost_after}) must be at least twice "
            f"'heartbeat_seconds' ({config.heartbeat_seconds}), which must be positive"
        )
    for key in ("ssh_config", "ssh_keyfile", "ssh_known_hosts"):
        path = getattr(config, key)
        if path is not None and not os.path.exists(os.path.expanduser(path)):
            raise InvalidValue(key, f"config key {key!r} names {path!r}, which does not exist")
    if config.max_body_bytes < 1:
        raise InvalidValue("max_body_bytes", "config key 'max_body_bytes' must be positive")
    if isinstance(config.dashboard, str):
        try:
            parse_address(config.dashboard)
        except ValueError as error:  # an InvalidValue, to say where it was set
            raise InvalidValue("dashboard", str(error)) from None
    try:
        resources_of(config)
    except InvalidResource as error:
        raise InvalidValue(error.key, str(error)) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine's loopback: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may stand for any address
        return False


@dataclasses.dataclass(frozen=True)
class Lowering:
    """A setting that lowers security: the keys that make it, and what it costs."""

    keys: tuple[str, ...]
    cost: str


def lowerings(config: Config) -> list[Lowering]:
    """The settings of a resolved ``config`` that lower security; none by default."""
    found = []
    if not config.tls:
        beyond = not is_loopback(config.bind or "0.0.0.0")
        found.append(Lowering(
            ("tls", "bind") if beyond else ("tls",),
            "workers call back over plain HTTP"
            + (", to a server that listens beyond this machine" if beyond else "")
            + ": anyone on the network between them and this machine can read the tasks and "
              "their results, and hand the workers code to run as you"))
    if config.key_in_job_file:
        found.append(Lowering(
            ("key_in_job_file",),
            "the request's key goes into the job file, which the scheduler shows to every "
            "user of the cluster: any of them can then post results as your workers, and make "
            "this process load them. Use it only on a cluster whose users you trust"))
    if isinstance(config.dashboard, str) and not is_loopback(parse_address(config.dashboard)[0]):
        found.append(Lowering(
            ("dashboard",),
            "the dashboard listens beyond this machine, over plain HTTP: anyone who sees its "
            "link can read every task's arguments, errors and output"))
    return found


def security_warnings(config: Config, origins: Optional[Mapping[str, str]] = None) -> list[str]:
    """A warning for each setting of ``config`` that lowers security.

    ``origins`` (from :func:`resolve_with_origins`) says where each value was
    set; each warning names that place.
    """
    warnings = []
    for lowering in lowerings(config):
        settings = " and ".join(
            f"{key!r} is {getattr(config, key)!r}"
            + (f" (set by {origins[key]})" if origins and key in origins else "")
            for key in lowering.keys)
        warnings.append(f"{settings}: {lowering.cost}")
    return warnings


def parse_address(address: str, name: str = "config key 'dashboard'") -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:0"`` for IPv6) as (host, port); port 0 picks a free one.

    ``name`` says where the address came from, for the error.
    """
    host, separator, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{name} is {address!r}; write HOST:PORT, such as "
                         f"'127.0.0.1:0' (port 0 picks a free port)")
    return host, int(port)


def resolve(conf: Optional[Mapping[str, Any]]) -> Config:
    """Check ``conf`` and fill in every default; raise ValueError/TypeError on bad input.

    The user's own settings come in below ``conf``: see :func:`resolve_with_sources`.
    """
    return resolve_with_sources(conf)[0]


def resolve_with_sources(conf: Optional[Mapping[str, Any]]) -> tuple[Config, dict[str, str]]:
    """The config, and where each of its values came from.

    Lowest to highest: the defaults of :class:`Config`; the config file's
    ``[default]``; the chosen profile (``conf["profile"]``, else
    ``SHEEPDOG_PROFILE``); the ``SHEEPDOG_<KEY>`` environment variables;
    ``conf`` itself (source ``argument``). See ``userconfig.py``.
    """
    config, winners = _resolve(conf)
    return config, {key: winners[key].source if key in winners else DEFAULT
                    for key in VALID_KEYS}


#: The keys only a scheduler reached over SSH uses.
REMOTE_KEYS = ("host", "ssh_port", "ssh_user", "ssh_keyfile", "ssh_known_hosts", "ssh_config",
               "ssh_dir")
#: The schedulers whose tasks run on this machine, which use none of them.
THIS_MACHINE = ("local", "inline")
#: The resource keys that name a cluster's things, which this machine has none of.
CLUSTER_RESOURCE_KEYS = ("queue", "account", "pe_name", "gpu_resource")
_warned: set[str] = set()


def unused_key_warnings(config: Config, origins: Optional[Mapping[str, str]]) -> list[str]:
    """A warning for each key set (anywhere) that the chosen scheduler does not use:
    ``host`` or ``ge_opts`` with the local scheduler, say. Each names where it was set."""
    if origins is None or config.scheduler not in THIS_MACHINE:
        return []
    return [f"config key {key!r} ({origins[key]}) is not used by the {config.scheduler} "
            f"scheduler, whose tasks run on this machine; it is ignored"
            for key in REMOTE_KEYS + OPTIONS_KEYS + CLUSTER_RESOURCE_KEYS
            if origins.get(key, "the default") != "the default"]


def resolve_with_origins(conf: Optional[Mapping[str, Any]]) -> tuple[Config, dict[str, str]]:
    """The config, and where each of its values came from, in words for a warning.

    ``the config dict``, ``environment variable SHEEPDOG_HOST``,
    ``[profiles.fear] in the config file <file>, line 3`` or ``the default``;
    :func:`security_warnings` quotes them.
    """
    config, winners = _resolve(conf)
    return config, {key: winners[key].origin if key in winners else "the default"
                    for key in VALID_KEYS}


def _resolve(conf: Optional[Mapping[str, Any]]) -> tuple[Config, dict[str, userconfig.Setting]]:
    """The config, and the setting that won for each key set anywhere."""
    if conf is None:
        conf = {}
    if not isinstance(conf, Mapping):
        raise TypeError(f"config must be a dict, not {type(conf).__name__}")
    arguments = dict(conf)
    profile = arguments.pop("profile", None)
    if profile is not None and not isinstance(profile, str):
        raise TypeError(f"config key 'profile' must be str or None, not {type(profile).__name__}")
    profile, asked_by = userconfig.chosen_profile(profile)
    for message in userconfig.unknown_variables(_TYPES):
        if message not in _warned:  # once per process
            _warned.add(message)
            log.warning("%s", message)
    settings = [
        *userconfig.read_file().settings(profile, asked_by),
        *userconfig.environment_settings(_TYPES),
        *(userconfig.Setting(key, value, ARGUMENT) for key, value in arguments.items()),
    ]
    config, winners = _build(settings)
    _refuse_lowering_by_variables(config, winners)
    return config, winners


def _refuse_lowering_by_variables(config: Config, winners: Mapping[str, userconfig.Setting]
                                  ) -> None:
    """Raise if a ``SHEEPDOG_<KEY>`` variable makes a setting that lowers security."""
    for lowering in lowerings(config):
        for key in lowering.keys:
            setting = winners.get(key)
            if setting is not None and setting.variable is not None:
                raise userconfig.UserConfigError(
                    f"environment variable {setting.variable} sets {key!r} to "
                    f"{getattr(config, key)!r}, which lowers security: {lowering.cost}. A "
                    f"variable may not do that, since one in a shared module file or a job "
                    f"wrapper would do it to every map unseen: put {key!r} in the config dict "
                    f"or the config file instead")


def restore(stored: Mapping[str, Any]) -> Config:
    """The config a request was made with, read back from its database.

    The config file and the environment are not read again: what they said
    when the request was made is in ``stored`` already, and a later change to
    them must not change an old request (its jobs run with what they were given).
    """
    return _build([userconfig.Setting(key, value, ARGUMENT) for key, value in stored.items()])[0]


def _build(settings: Sequence[userconfig.Setting]
           ) -> tuple[Config, dict[str, userconfig.Setting]]:
    """Check each setting (later ones win) and fill in the defaults."""
    values: dict[str, Any] = {}
    winners: dict[str, userconfig.Setting] = {}
    for setting in settings:
        try:
            _check_setting(setting.key, setting.value)
        except (TypeError, ValueError) as error:
            if not setting.location:
                raise
            raise type(error)(f"{setting.location}: {error}") from None
        values[setting.key] = setting.value
        winners[setting.key] = setting
    for key in OPTIONS_KEYS:
        if key in values:
            values[key] = tuple(values[key])
    if "dbfile" in values:
        values["dbfile"] = os.path.expanduser(os.fspath(values["dbfile"]))
    config = Config(**values)
    try:
        _check_values(config)
    except InvalidValue as error:
        winner = winners.get(error.key)
        if winner is None or not winner.location:
            raise
        raise InvalidValue(error.key, f"{winner.location}: {error}") from None
    local = config.scheduler == "local"
    config = dataclasses.replace(
        config,
        localhost=config.localhost or ("127.0.0.1" if local else socket.getfqdn()),
        bind=config.bind or ("127.0.0.1" if local else "0.0.0.0"),
        shell=config.shell or (sys.executable if local else "/usr/bin/python3"),
        workers=config.workers or (os.cpu_count() or 1),
        dashboard=DEFAULT_DASHBOARD if config.dashboard is True else config.dashboard,
    )
    return config, winners
