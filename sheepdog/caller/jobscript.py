"""Render the job file: one self-contained Python script per request.

The file starts with a shebang and the scheduler's header lines, embeds the
source of the installed cloudpickle and of every module of sheepdog's
``wire`` and ``worker`` packages (found by walking those folders, so a new
module there travels without a list to keep), and ends with the call that
runs one array task. The embedded modules are loaded through an import hook
under their real names, so pickles and relative imports find them, and the
worker needs nothing but a stock Python.

The modules also travel compiled, as this Python compiled them: compiling
them took a third of a worker's Python start, and a pool's first job starts
several workers at once on nodes whose cores other jobs share (figures in
the changelog). A worker whose Python reads other bytecode (its magic number
differs) compiles the sources instead, and so can still say that its Python
is the wrong one.

Schedulers show job files to every user of the cluster (GridEngine keeps a
world-readable copy in its spool), so the file holds no credential: only the
path of the private file that holds the request's key, unless the user opted
in to ``key_in_job_file``.
"""

from __future__ import annotations

import binascii
import functools
import importlib.util
import logging
import marshal
import pprint
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from ..backends.base import create
from ..config import Config, resolve
from ..resources import format_memory, format_walltime
from ..wire.settings import WorkerSettings

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: The packages whose every module runs on the workers.
EMBEDDED_PACKAGES = ("wire", "worker")

_BOOTSTRAP = '''
import importlib.abc
import importlib.util
import sys


class _Embedded(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the modules embedded below by their real names, before anything installed."""

    def __init__(self, sources, compiled):
        self.sources = sources  # name -> (is a package, source text)
        self.compiled = compiled  # name -> code object, if this Python can run the caller's

    def find_spec(self, name, path=None, target=None):
        if name not in self.sources:
            return None
        is_package = self.sources[name][0]
        return importlib.util.spec_from_loader(name, self, is_package=is_package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        code = self.compiled.get(name)
        if code is None:
            code = compile(self.sources[name][1], "<" + name + ">", "exec")
        exec(code, module.__dict__)


def _compiled(magic, blob):
    """The modules as the caller compiled them, if this Python runs that bytecode (the same
    magic number); else none, and each is compiled from its source."""
    if importlib.util.MAGIC_NUMBER != magic or not blob:  # "": the caller could not compile
        return {}
    try:
        import binascii, marshal, zlib
        return marshal.loads(zlib.decompress(binascii.a2b_base64(blob)))
    except Exception as error:  # no zlib here, or a damaged copy: the sources still work
        print("sheepdog: compiling the embedded sources (" + repr(error) + ")", file=sys.stderr)
        return {}


_SOURCES = {}
'''

_START = '''
sys.meta_path.insert(0, _Embedded(_SOURCES, _compiled(_MAGIC, _COMPILED)))

if __name__ == "__main__":
    from sheepdog.worker.loop import run

    sys.exit(run(SETTINGS))
'''


@functools.lru_cache(maxsize=1)
def embedded_sources() -> dict[str, tuple[bool, str]]:
    """Every module that the job file embeds: its real name, whether it is a package,
    and its source. Read once per process, as the caller's own ``wire`` is
    imported once: a job file then never carries code its caller does not speak.

    First the installed cloudpickle, which rebuilds on the worker the functions
    and classes that travelled by value, then sheepdog's own ``wire`` and
    ``worker`` packages, module by module.
    """
    import cloudpickle  # the caller's own copy travels; imported only to render

    cloudpickle_dir = Path(cloudpickle.__file__).resolve().parent
    sources = {
        "cloudpickle": (True, _read(cloudpickle_dir / "__init__.py")),
        "cloudpickle.cloudpickle": (False, _read(cloudpickle_dir / "cloudpickle.py")),
        "sheepdog": (True, '"""The parts of sheepdog that run on a worker."""\n'),
    }
    for package in EMBEDDED_PACKAGES:
        folder = _PACKAGE_DIR / package
        sources[f"sheepdog.{package}"] = (True, _read(folder / "__init__.py"))
        for path in sorted(folder.glob("*.py")):
            if path.name != "__init__.py":
                sources[f"sheepdog.{package}.{path.stem}"] = (False, _read(path))
    return sources


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def compiled_modules(sources: Optional[Mapping[str, tuple[bool, str]]] = None) -> str:
    """The embedded modules (``sources``, by default as :func:`embedded_sources` reads
    them) compiled by this Python, as the job file carries them: a marshalled dict of code
    objects by module name, compressed, in base64; "" if they could not be compiled here.

    Compiled once per process for the same sources: a submission asks for it
    while it waits on the cluster's answers (``request.py``).
    """
    sources = embedded_sources() if sources is None else sources
    return _compile(tuple((name, source) for name, (_is_package, source) in sources.items()))


@functools.lru_cache(maxsize=2)
def _compile(sources: tuple[tuple[str, str], ...]) -> str:
    try:
        # As the worker compiles a source: no future imports of this module, no -O.
        codes = {name: compile(source, f"<{name}>", "exec", dont_inherit=True, optimize=0)
                 for name, source in sources}
    except Exception as error:  # noqa: B902 - such as a SyntaxWarning under -W error
        # Only a speed-up: the workers compile the sources, as they would without it.
        log.debug("the job files carry the embedded modules as sources only: %r", error)
        return ""
    return binascii.b2a_base64(zlib.compress(marshal.dumps(codes)), newline=False).decode("ascii")


def render(shell: str, header: Iterable[str], settings: WorkerSettings) -> str:
    """The job file text; ``header`` holds the scheduler's lines, such as ``#$ -t 1-10``."""
    lines = [f"#!{shell}"]
    lines += list(header)
    lines.append(f'"""Sheepdog job file for request {settings.request_id}: '
                 'runs f(*args) for the arguments of one array task."""')
    lines.append(_BOOTSTRAP)
    for name, (is_package, source) in embedded_sources().items():
        lines.append(f"_SOURCES[{name!r}] = ({is_package!r}, {source!r})")
    lines.append(f"_MAGIC = {importlib.util.MAGIC_NUMBER!r}")
    lines.append(f"_COMPILED = {compiled_modules()!r}")
    lines.append("")
    lines.append(f"SETTINGS = {pprint.pformat(settings.to_dict(), width=88, sort_dicts=True)}")
    lines.append(_START)
    return "\n".join(lines)


def job_script(config: Union[Config, Mapping[str, Any], None] = None, tasks: int = 1) -> str:
    """The start of the job file that a submission with ``config`` would use: the shebang,
    the scheduler's header (its options: resources, queue, your own), and the limits each
    worker keeps itself. Nothing is submitted, and the cluster is not asked anything.

    The config is checked as a submission would check it, so an error shows
    here first. ``tasks`` is the size of the array (a submission picks it from
    the tasks pending and the cluster's slots). ``sheepdog script`` prints it.
    """
    resolved = config if isinstance(config, Config) else resolve(config)
    backend = create(resolved)
    backend.check()
    lines = [f"#!{resolved.shell}", *backend.header(tasks)]
    lines += [f"# sheepdog: {note}" for note in backend.notes()]
    memory: Optional[int] = backend.memory_limit()
    walltime: Optional[float] = backend.walltime_seconds()
    if memory is not None:
        lines.append(f"# sheepdog: each worker's address space is limited to "
                     f"{format_memory(memory)}")
    if walltime is not None:
        lines.append(f"# sheepdog: each worker may run for {format_walltime(walltime)}")
    return "\n".join(lines) + "\n"
