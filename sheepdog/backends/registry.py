"""Which scheduler backends exist, by name: the built-in ones and those of plugins.

Backends are found by name (``config["scheduler"]``): the built-in ones, and
any that another package registers under the entry point group
``sheepdog.backends`` (``name = "package.module:BackendClass"``). The
registry knows names and where their classes live, nothing else, so that
``config`` can check a scheduler's name without importing any backend.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

#: The built-in backends, by name.
BUILT_IN = {
    "gridengine": "sheepdog.backends.gridengine:GridEngineBackend",
    "slurm": "sheepdog.backends.slurm:SlurmBackend",
    "local": "sheepdog.backends.local:LocalBackend",
    "inline": "sheepdog.backends.inline:InlineBackend",
}
ENTRY_POINT_GROUP = "sheepdog.backends"


@functools.cache
def registered() -> dict[str, str]:
    """Every backend that can be named: built-in ones, then those of entry points.

    Read once per process: installed packages do not change while it runs.
    """
    found = dict(BUILT_IN)
    from importlib.metadata import entry_points  # costs ~20 ms: read only when asked

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def backend_class(name: str) -> Any:
    """The class of the backend registered as ``name``, imported now."""
    target = registered().get(name)
    if target is None:
        raise ValueError(f"no scheduler backend named {name!r}; choose one of "
                         f"{', '.join(registered())}")
    module, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module), class_name)
