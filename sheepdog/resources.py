"""Resources by name: ``cores``, ``memory``, ``walltime``, ``gpus``, ``queue``, ``account``.

The config's resource keys are parsed here, once, into a frozen, hashable
:class:`Resources`, so that every backend translates the same values (see
docs/resources.rst) and two requests that ask for the same resources compare
equal, whichever way each wrote them (``"90m"`` and ``"1:30:00"``).

Units are strict, so that a size means one thing everywhere: ``K``, ``M``,
``G`` and ``T`` are powers of 1024 (``G`` = GiB), as Slurm's ``--mem`` and
GridEngine's upper-case ``h_vmem`` read them; ``"8G"``, ``"1.5G"``, ``"512M"``
and ``"8GiB"`` are accepted, while ``"8GB"`` and ``"8g"`` (which GridEngine
reads as powers of 1000) are refused with a message rather than guessed at.
This module imports nothing of sheepdog's, so that the config can use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Union

#: The config keys that name a resource; ``Executor.options`` takes these.
RESOURCE_KEYS = ("cores", "memory", "walltime", "gpus", "queue", "account")

#: Memory units, in bytes: powers of 1024, as Slurm and GridEngine read upper-case units.
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)([KMGT])(?:iB)?")
_CLOCK = re.compile(r"(\d+):([0-5]\d):([0-5]\d)")
_SPANS = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class InvalidResource(ValueError):
    """A resource key's value cannot be read; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each worker asks of its scheduler; None where the scheduler's default holds.

    Equal requests compare (and hash) equal: sizes are bytes and times are
    seconds, whatever units the config used.
    """

    #: CPU cores per worker.
    cores: Optional[int] = None
    #: Bytes of memory per worker (all its cores together).
    memory: Optional[int] = None
    #: Seconds a worker may run.
    walltime: Optional[int] = None
    #: GPUs per worker.
    gpus: Optional[int] = None
    #: The GridEngine queue or Slurm partition.
    queue: Optional[str] = None
    #: The GridEngine project or Slurm account.
    account: Optional[str] = None


def parse_memory(text: str, key: str = "memory") -> int:
    """``"8G"``, ``"1.5G"``, ``"512M"`` or ``"8GiB"`` in bytes (K, M, G, T: powers of 1024)."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise InvalidResource(key, (
            f"config key {key!r} is {text!r}; write a number and one of the units K, M, G, T "
            f"(powers of 1024, as Slurm and GridEngine read them), such as '8G', '1.5G' or "
            f"'512M'"))
    size = math.ceil(float(match.group(1)) * _UNITS[match.group(2)])
    if size < 1:
        raise InvalidResource(key, f"config key {key!r} is {text!r}; it must be more than 0")
    return size


def format_memory(size: int) -> str:
    """Bytes as the scheduler-ready size with the largest unit that holds it whole
    (``8G``, ``1536M``), rounded up to a whole ``K``."""
    for unit in ("T", "G", "M"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{math.ceil(size / _UNITS['K'])}K"


def parse_walltime(value: Union[str, int, float], key: str = "walltime") -> int:
    """``"2:00:00"``, ``"90m"``, ``"1h30m"``, ``"1d"`` or seconds (a number, or its text)
    as whole seconds, rounded up."""
    seconds: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        clock = _CLOCK.fullmatch(text)
        spans = _SPANS.fullmatch(text)
        if clock:
            hours, minutes, secs = (int(part) for part in clock.groups())
            seconds = hours * 3600 + minutes * 60 + secs
        elif re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and spans:
            days, hours, minutes, secs = (int(part or 0) for part in spans.groups())
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidResource(key, (
            f"config key {key!r} is {value!r}; write H:MM:SS ('2:00:00'), a span such as "
            f"'90m' or '1h30m' (d, h, m, s), or a positive number of seconds"))
    return math.ceil(seconds)


def format_walltime(seconds: float) -> str:
    """Seconds as ``H:MM:SS``, which GridEngine's ``h_rt`` and Slurm's ``--time`` both read."""
    whole = math.ceil(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _count(config: Any, key: str) -> Optional[int]:
    value = getattr(config, key)
    if value is not None and value < 1:
        raise InvalidResource(key, f"config key {key!r} must be at least 1, not {value}")
    return value


def _name(config: Any, key: str) -> Optional[str]:
    value = getattr(config, key)
    if value is not None and (not value.strip() or any(c.isspace() for c in value)):
        raise InvalidResource(key, f"config key {key!r} is {value!r}; give a name without "
                                   f"spaces, or leave it unset")
    return value


def resources_of(config: Any) -> Resources:
    """The :class:`Resources` that a :class:`~sheepdog.config.Config` asks for.

    Raises :class:`InvalidResource`, naming the key, for a value that cannot
    be read; the config calls this while it checks its values.
    """
    for key in ("pe_name", "gpu_resource"):
        _name(config, key)
    return Resources(
        cores=_count(config, "cores"),
        memory=None if config.memory is None else parse_memory(config.memory),
        walltime=None if config.walltime is None else parse_walltime(config.walltime),
        gpus=_count(config, "gpus"),
        queue=_name(config, "queue"),
        account=_name(config, "account"),
    )
