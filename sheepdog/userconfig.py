"""Settings a person sets once: the per-user config file and ``SHEEPDOG_*`` variables.

A user who always submits to the same head node should not have to repeat
``{"host": "fear", "ge_opts": [...]}`` in every script. This module knows
where such settings are kept and how they are written: it finds the file
(``$XDG_CONFIG_HOME/sheepdog/config.toml``, else ``~/.config/sheepdog/
config.toml``, or the file ``SHEEPDOG_CONFIG_FILE`` names), reads its
``[default]`` table and its ``[profiles.NAME]`` tables with the line of each
key (so that an error can point at it), and reads the ``SHEEPDOG_<KEY>``
environment variables, turning their text into the type the key needs.

Which keys exist, their types, their defaults and the order in which the
layers win are ``config.py``'s business: it hands the key types in, and
checks every :class:`Setting` it gets back.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, packaged for older Pythons
    import tomli as tomllib

#: Names another config file than the per-user one (tests use it too).
CONFIG_FILE_VARIABLE = "SHEEPDOG_CONFIG_FILE"
#: Names the profile to use when the config dict does not.
PROFILE_VARIABLE = "SHEEPDOG_PROFILE"
#: ``SHEEPDOG_HOST`` sets ``host``, and so on for every config key.
ENVIRONMENT_PREFIX = "SHEEPDOG_"

#: The largest config file read (a settings file is a few hundred bytes).
MAX_FILE_BYTES = 1 << 20

DEFAULT_TABLE = "default"
PROFILES_TABLE = "profiles"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_TABLE_LINE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY_LINE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")
_KEY_PART = re.compile(r"""\s*("([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*""")


class UserConfigError(ValueError):
    """The config file or a ``SHEEPDOG_*`` variable is wrong; the message says where."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One value for one config key, and where it was set."""

    key: str
    value: Any
    #: As ``sheepdog config`` shows it: ``file [profiles.fear]``, ``env SHEEPDOG_HOST``.
    source: str
    #: Where an error about it points: ``<file>, line 3``; empty for the config dict.
    location: str = ""
    #: Where it was set, in words for a warning: ``environment variable SHEEPDOG_TLS``,
    #: ``[profiles.fear] in the config file <file>, line 3``.
    origin: str = "the config dict"
    #: The ``SHEEPDOG_<KEY>`` variable that set it, if one did.
    variable: Optional[str] = None


def config_file_path() -> Path:
    """The per-user config file, which need not exist.

    ``SHEEPDOG_CONFIG_FILE`` wins; else the XDG base directory rules:
    ``$XDG_CONFIG_HOME`` when it is an absolute path, else ``~/.config``.
    """
    explicit = os.environ.get(CONFIG_FILE_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "sheepdog" / "config.toml"


def _dotted(name: str) -> tuple[str, ...]:
    """``profiles."my host"`` -> ``("profiles", "my host")``, as TOML reads a dotted name."""
    parts = []
    for match in _KEY_PART.finditer(name):
        quoted_double, quoted_single, bare = match.group(2, 3, 4)
        parts.append(next(part for part in (quoted_double, quoted_single, bare)
                          if part is not None))
    return tuple(parts)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of each key, by its full dotted path: ``("profiles", "fear", "host") -> 4``.

    A scan of the lines good enough to point at a key in an error; the values
    themselves come from ``tomllib``.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _TABLE_LINE.match(line)
        if header:
            table = _dotted(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            lines.setdefault(table + _dotted(key.group(1)), number)
    return lines


@dataclasses.dataclass(frozen=True)
class UserFile:
    """The settings of one config file: ``[default]`` and each ``[profiles.NAME]``."""

    path: Path
    exists: bool
    #: Table name (``default`` or ``profiles.NAME``) -> its settings, in the file's order.
    tables: dict[str, list[Setting]]

    @property
    def profiles(self) -> list[str]:
        prefix = PROFILES_TABLE + "."
        return [name[len(prefix):] for name in self.tables if name.startswith(prefix)]

    def settings(self, profile: Optional[str], asked_by: str = "") -> list[Setting]:
        """The ``[default]`` settings, then those of ``profile``, which must exist."""
        chosen = list(self.tables.get(DEFAULT_TABLE, []))
        if profile is None:
            return chosen
        if profile not in self.profiles:
            by = f" ({asked_by})" if asked_by else ""
            if not self.exists:
                raise UserConfigError(
                    f"profile {profile!r}{by} needs a config file, and there is none at "
                    f"{self.path}: create it with a [{PROFILES_TABLE}.{profile}] table")
            close = difflib.get_close_matches(profile, self.profiles, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(self.profiles) or "none"
            raise UserConfigError(f"profile {profile!r}{by} is not in {self.path}{hint}; "
                                  f"its profiles are: {known}")
        return chosen + self.tables[f"{PROFILES_TABLE}.{profile}"]


def read_file(path: Optional[Path] = None) -> UserFile:
    """Read the config file (the per-user one by default); a missing file has no settings.

    Raises :class:`UserConfigError`, naming the file and the line, for a file
    that is not TOML or whose tables are not ``[default]`` and ``[profiles.NAME]``.
    """
    path = config_file_path() if path is None else path
    try:
        text = _read_text(path)
    except FileNotFoundError:
        return UserFile(path, False, {})
    except (OSError, UnicodeDecodeError) as error:
        raise UserConfigError(f"cannot read the sheepdog config file {path}: {error}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserConfigError(f"{path} is not valid TOML: {error}") from None
    lines = _key_lines(text)

    def where(*dotted: str) -> str:
        line = lines.get(dotted)
        return f"{path}, line {line}" if line else str(path)

    tables: dict[str, list[Setting]] = {}
    for name, table in document.items():
        if name == DEFAULT_TABLE and isinstance(table, dict):
            tables[name] = _table_settings(table, (name,), where)
        elif name == PROFILES_TABLE and isinstance(table, dict):
            for profile, settings in table.items():
                if not isinstance(settings, dict):
                    raise UserConfigError(
                        f"{where(name, profile)}: key {profile!r} sits directly under "
                        f"[{PROFILES_TABLE}]; settings belong to a profile: write "
                        f"[{PROFILES_TABLE}.NAME] above them")
                tables[f"{name}.{profile}"] = _table_settings(settings, (name, profile), where)
        elif isinstance(table, dict):
            close = difflib.get_close_matches(name, (DEFAULT_TABLE, PROFILES_TABLE), n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise UserConfigError(f"{where(name)}: unknown table [{name}]{hint}; a sheepdog "
                                  f"config file holds [{DEFAULT_TABLE}] and "
                                  f"[{PROFILES_TABLE}.NAME] tables")
        else:
            raise UserConfigError(f"{where(name)}: key {name!r} is outside any table; put it "
                                  f"under [{DEFAULT_TABLE}] or [{PROFILES_TABLE}.NAME]")
    return UserFile(path, True, tables)


def _read_text(path: Path) -> str:
    """The text of the regular file ``path``, of at most :data:`MAX_FILE_BYTES`.

    Anything else is refused before it is read: ``/dev/zero`` would be read
    without end, and a FIFO would block (it is opened without blocking, then
    refused by its type).
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise UserConfigError(f"the sheepdog config file {path} is not a regular file; "
                                  f"sheepdog reads its settings from a TOML file")
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(descriptor, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(descriptor)
    if len(data) > MAX_FILE_BYTES:
        raise UserConfigError(f"the sheepdog config file {path} is larger than "
                              f"{MAX_FILE_BYTES} bytes, the most sheepdog reads: a config "
                              f"file holds a few settings")
    return data.decode("utf-8")


def _table_settings(table: Mapping[str, Any], dotted: tuple[str, ...], where: Any
                    ) -> list[Setting]:
    name = "[" + ".".join(dotted) + "]"
    return [Setting(key, value, f"file {name}", where(*dotted, key),
                    f"{name} in the config file {where(*dotted, key)}")
            for key, value in table.items()]


def from_text(text: str, allowed: tuple[type, ...]) -> Any:
    """The value that ``text`` (from an environment variable) stands for.

    ``allowed`` are the key's types (``config._TYPES``): an empty text is
    None where None is allowed; booleans are 1/true/yes/on or
    0/false/no/off, and a key that is text or a boolean (``dashboard``: an
    address, or true/false) takes either; lists are written as arrays, ``["-l h_rt=1:00:00", "-q
    long"]``, since one option may hold spaces. Raises ValueError saying what
    was expected.
    """
    stripped = text.strip()
    if type(None) in allowed and not stripped:
        return None
    if bool in allowed:
        if stripped.lower() in _TRUE + _FALSE:
            return stripped.lower() in _TRUE
        if str in allowed:  # ``dashboard``: an address, or true/false
            return stripped
        raise ValueError(f"expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}")
    if list in allowed:
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if not isinstance(value, list):
            raise ValueError('expected an array of options, such as ["-l h_rt=1:00:00", "-q long"]')
        return value
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(stripped)
            except ValueError:
                pass
    if str in allowed:  # ``walltime``: seconds, or text such as "2:00:00"
        return text
    raise ValueError("expected a number" if float in allowed else "expected a whole number")


def environment_settings(types: Mapping[str, tuple[type, ...]]) -> list[Setting]:
    """A setting for each ``SHEEPDOG_<KEY>`` variable set, converted by the key's types."""
    settings = []
    for key, allowed in types.items():
        variable = ENVIRONMENT_PREFIX + key.upper()
        if variable not in os.environ:
            continue
        try:
            value = from_text(os.environ[variable], allowed)
        except ValueError as error:
            raise UserConfigError(f"environment variable {variable} (config key {key!r}) is "
                                  f"{os.environ[variable]!r}: {error}") from None
        settings.append(Setting(key, value, f"env {variable}", f"environment variable {variable}",
                                f"environment variable {variable}", variable))
    return settings


#: ``SHEEPDOG_*`` variables that are no config key: sheepdog's own, and those of its
#: tests and of the scripts that bring up the test clusters (``ci/``).
OTHER_VARIABLES = frozenset({
    CONFIG_FILE_VARIABLE, PROFILE_VARIABLE, "SHEEPDOG_TASK_ID", "SHEEPDOG_CALLER_PID",
    "SHEEPDOG_REQUIRE_CLUSTER",
    "SHEEPDOG_DASHBOARD_SCREENSHOT", "SHEEPDOG_ATTACK_SECONDS", "SHEEPDOG_WRITE_GOLDEN",
    "SHEEPDOG_REGENERATE_GOLDEN", "SHEEPDOG_NETNS", "SHEEPDOG_AS_CALLER",
    "SHEEPDOG_CALLER_ADDRESS", "SHEEPDOG_CALLER_NAME", "SHEEPDOG_CALLER_NETNS",
    "SHEEPDOG_CLUSTER_ADDRESS", "SHEEPDOG_SLURM", "SHEEPDOG_SLURM_ACCOUNTING",
    "SHEEPDOG_SLURM_CLUSTER", "SHEEPDOG_SLURM_KILL_WAIT", "SHEEPDOG_SLURM_PARTITION",
})
OTHER_PREFIXES = ("SHEEPDOG_TEST_", "SHEEPDOG_DURABILITY_", "SHEEPDOG_NODE")


def unknown_variables(keys: Iterable[str]) -> list[str]:
    """A message for each ``SHEEPDOG_*`` variable set that names no config key (``keys``)
    and is none of :data:`OTHER_VARIABLES`: a typo, which would otherwise change nothing."""
    known = {ENVIRONMENT_PREFIX + key.upper() for key in keys}
    messages = []
    for variable in sorted(os.environ):
        if (not variable.startswith(ENVIRONMENT_PREFIX) or variable in known
                or variable in OTHER_VARIABLES or variable.startswith(OTHER_PREFIXES)):
            continue
        close = difflib.get_close_matches(variable, sorted(known | {CONFIG_FILE_VARIABLE,
                                                                    PROFILE_VARIABLE}), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        messages.append(f"environment variable {variable} is no sheepdog setting{hint}; it is "
                        f"ignored")
    return messages


def chosen_profile(from_config: Optional[str]) -> tuple[Optional[str], str]:
    """The profile to use and who chose it: the config dict's ``profile``, else the variable."""
    if from_config is not None:
        return from_config, "the config's 'profile'"
    from_environment = os.environ.get(PROFILE_VARIABLE) or None
    return from_environment, (f"environment variable {PROFILE_VARIABLE}"
                              if from_environment else "")
