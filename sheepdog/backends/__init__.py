"""Schedulers that run job files: one small declarative module per scheduler.

``base.py`` holds the contract (:class:`~sheepdog.backends.base.Backend`) and
:func:`~sheepdog.backends.base.create`; ``registry.py`` the names;
``batch.py`` the core that batch schedulers share. The names below stay
importable from here for plugins written against ``sheepdog.backends``; they
are loaded on first use, so that the registry can be read without them.
"""

from __future__ import annotations

from typing import Any

_CONTRACT = ("Backend", "SubmissionError", "TaskEnd", "create")


def __getattr__(name: str) -> Any:
    if name in _CONTRACT:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
