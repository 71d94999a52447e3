"""Render the job file: one self-contained Python script per request.

The file starts with a shebang and ``#$`` directives for GridEngine, embeds the
source of ``serialisation.py``, ``protocol.py`` and ``worker.py`` (so the
worker needs nothing but a stock Python), and ends with the call that runs one
array task. Schedulers show job files to every user of the cluster (GridEngine
keeps a world-readable copy in its spool), so the file holds no credential:
only the path of the private file that holds the request's key, unless the
user opted in to ``key_in_job_file``.
"""

from __future__ import annotations

import pprint
from pathlib import Path
from typing import Any, Iterable, Mapping

_PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_MODULES = ("serialisation", "protocol", "worker")

_BOOTSTRAP = '''
import sys
import types


def _embed(name, source):
    """Load an embedded sheepdog module under its real name, so pickles find it."""
    module = types.ModuleType("sheepdog." + name)
    module.__package__ = "sheepdog"
    sys.modules[module.__name__] = module
    setattr(sys.modules["sheepdog"], name, module)
    exec(compile(source, "<sheepdog." + name + ">", "exec"), module.__dict__)
    return module


sys.modules["sheepdog"] = types.ModuleType("sheepdog")
'''


def embedded_source(name: str) -> str:
    """The source text of one embedded module."""
    return (_PACKAGE_DIR / f"{name}.py").read_text(encoding="utf-8")


def render(shell: str, directives: Iterable[str], settings: Mapping[str, Any]) -> str:
    """The job file text; ``directives`` are scheduler options such as ``-t 1-10``."""
    lines = [f"#!{shell}"]
    lines += [f"#$ {directive}" for directive in directives]
    lines.append(f'"""Sheepdog job file for request {settings["request_id"]}: '
                 'runs f(*args) for the arguments of one array task."""')
    lines.append(_BOOTSTRAP)
    for name in EMBEDDED_MODULES:
        lines.append(f"_{name} = _embed({name!r}, {embedded_source(name)!r})")
    lines.append("")
    lines.append(f"SETTINGS = {pprint.pformat(dict(settings), width=88, sort_dicts=True)}")
    lines.append("")
    lines.append('if __name__ == "__main__":')
    lines.append("    sys.exit(_worker.run(SETTINGS, _serialisation))")
    return "\n".join(lines) + "\n"
