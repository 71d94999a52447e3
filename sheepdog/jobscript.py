"""Render the job file: one self-contained Python script per request.

The file starts with a shebang and the scheduler's header lines, embeds the
source of the installed cloudpickle and of sheepdog's worker-side modules
(:data:`EMBEDDED_MODULES`: protocol, serialisation, client, output, runner,
worker), so the worker needs nothing but a stock Python, and ends with the
call that runs one array task. Schedulers show job files to every user of the
cluster (GridEngine keeps a world-readable copy in its spool), so the file
holds no credential: only the path of the private file that holds the
request's key, unless the user opted in to ``key_in_job_file``.
"""

from __future__ import annotations

import pprint
from pathlib import Path
from typing import Any, Iterable, Mapping

import cloudpickle

_PACKAGE_DIR = Path(__file__).resolve().parent
#: sheepdog's own modules that the worker runs, in load order.
EMBEDDED_MODULES = ("protocol", "serialisation", "client", "output", "runner", "worker")

_BOOTSTRAP = '''
import sys
import types


def _package(name):
    """An empty package, the parent of embedded modules."""
    package = types.ModuleType(name)
    package.__path__ = []
    sys.modules[name] = package
    return package


def _embed(name, source):
    """Run an embedded module's source under its real name, so that pickles find it."""
    parent, _, child = name.rpartition(".")
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__package__ = name if hasattr(module, "__path__") else parent
    sys.modules[name] = module
    if parent:
        setattr(sys.modules[parent], child, module)
    exec(compile(source, "<" + name + ">", "exec"), module.__dict__)


_package("sheepdog")
_package("cloudpickle")
'''


def embedded_source(name: str) -> str:
    """The source text of one of sheepdog's embedded modules."""
    return (_PACKAGE_DIR / f"{name}.py").read_text(encoding="utf-8")


def embedded_sources() -> dict[str, str]:
    """Every module that the job file embeds, by its real name, in load order.

    First the installed cloudpickle, which rebuilds on the worker the functions
    and classes that travelled by value (its package code last, since it
    imports its module), then sheepdog's own.
    """
    cloudpickle_dir = Path(cloudpickle.__file__).resolve().parent
    sources = {
        "cloudpickle.cloudpickle": (cloudpickle_dir / "cloudpickle.py").read_text(encoding="utf-8"),
        "cloudpickle": (cloudpickle_dir / "__init__.py").read_text(encoding="utf-8"),
    }
    sources.update((f"sheepdog.{name}", embedded_source(name)) for name in EMBEDDED_MODULES)
    return sources


def render(shell: str, header: Iterable[str], settings: Mapping[str, Any]) -> str:
    """The job file text; ``header`` holds the scheduler's lines, such as ``#$ -t 1-10``."""
    lines = [f"#!{shell}"]
    lines += list(header)
    lines.append(f'"""Sheepdog job file for request {settings["request_id"]}: '
                 'runs f(*args) for the arguments of one array task."""')
    lines.append(_BOOTSTRAP)
    for name, source in embedded_sources().items():
        lines.append(f"_embed({name!r}, {source!r})")
    lines.append("")
    lines.append(f"SETTINGS = {pprint.pformat(dict(settings), width=88, sort_dicts=True)}")
    lines.append("")
    lines.append('if __name__ == "__main__":')
    lines.append("    from sheepdog import serialisation, worker")
    lines.append("")
    lines.append("    sys.exit(worker.run(SETTINGS, serialisation))")
    return "\n".join(lines) + "\n"
