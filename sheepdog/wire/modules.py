"""The user's own modules as they travel: rebuilt by value on the other side, with their source.

``serialisation`` decides what travels how; this module holds what the
other side runs to rebuild it, and what the pickler asks about a module:

- A module of the user's own (imported in the caller, not installed) travels
  by value. The other side rebuilds it as a module of the same name
  (:func:`new_module`), whose dictionary is also the globals of the module's
  functions that travelled, so that they share their globals as they did at
  home. Loading a request's function puts it into ``sys.modules``, so that
  ``import mylib`` inside the function finds it there; a process that has a
  module of that name of its own keeps its own, and a result or an argument
  never puts one there.
- The code that travels by value brings the lines of its source file
  (:func:`code_with_lines`), so that a traceback formatted on the worker
  shows them, as Python shows them at home.
- :func:`imported_names` reads the modules a code object imports when it runs.
- :func:`compiled_module_file` tells a compiled extension, which cannot travel.
- :func:`package_versions`, :func:`version_differences` and
  :class:`VersionReport` compare the versions of Python and of the packages
  that travel by name, between the caller and a worker.

Embedded in the job file: the standard library only.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import dis
import importlib.machinery
import importlib.util
import json
import linecache
import os
import sys
import threading
import types
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

#: What a module's dictionary holds that is this process's own: not sent.
MODULE_ENTRIES_KEPT_HOME = ("__builtins__", "__loader__", "__spec__", "__cached__")

#: The modules this process rebuilt from a payload, which a later payload may replace.
_rebuilt: weakref.WeakSet[types.ModuleType] = weakref.WeakSet()


class ModuleStub:
    """Stands, while pickling, for a module of the user's that travels by value: it
    unpickles as the new, still empty module (see :func:`new_module`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Callable[[str], types.ModuleType], tuple[str]]:
        return new_module, (self.name,)


class ModuleNamespace(dict[str, Any]):
    """The globals of a user module's functions that travel: it unpickles as the rebuilt
    module's own dictionary, holding what was put into it here."""

    def __init__(self, stub: ModuleStub) -> None:
        super().__init__()
        self.stub = stub

    def __reduce__(self) -> Any:
        return module_dictionary, (self.stub,), None, None, iter(list(self.items()))


#: Whether the payload being loaded is a request's function, whose modules go into
#: ``sys.modules`` (see :func:`registering`); a result's or an argument's never do.
_registering = threading.local()


@contextlib.contextmanager
def registering() -> Iterator[None]:
    """Put the modules rebuilt meanwhile (in this thread) into ``sys.modules``."""
    _registering.on = True
    try:
        yield
    finally:
        _registering.on = False


def new_module(name: str) -> types.ModuleType:
    """An empty module named ``name``; in ``sys.modules`` while :func:`registering`, unless
    this process has its own."""
    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = builtins.__dict__
    present = sys.modules.get(name)
    if getattr(_registering, "on", False) and (present is None or present in _rebuilt):
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent and sys.modules.get(parent) in _rebuilt:
            setattr(sys.modules[parent], child, module)
    _rebuilt.add(module)
    return module


def was_rebuilt(module: types.ModuleType) -> bool:
    """Whether ``module`` was rebuilt here from a payload."""
    return module in _rebuilt


def module_dictionary(module: types.ModuleType) -> dict[str, Any]:
    return module.__dict__


def same_module(module: types.ModuleType) -> types.ModuleType:
    return module


def fill_module(module: types.ModuleType, state: Mapping[str, Any]) -> None:
    """Set the module's attributes that travelled (the state setter of its reduction)."""
    module.__dict__.update(state)


def module_state(module: types.ModuleType) -> dict[str, Any]:
    """What of a module's dictionary travels with it."""
    return {name: value for name, value in vars(module).items()
            if name not in MODULE_ENTRIES_KEPT_HOME}


def code_with_lines(rebuild: Callable[..., types.CodeType], arguments: tuple[Any, ...],
                    filename: str, lines: list[str]) -> types.CodeType:
    """Rebuild a code object, and let ``linecache`` find the lines of its file here.

    A file that exists here keeps its own lines: the caller loading a result,
    or a worker that shares the caller's file system.
    """
    if filename not in linecache.cache and not os.path.exists(filename):
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return rebuild(*arguments)


def source_lines(filename: str) -> Optional[list[str]]:
    """The lines of ``filename`` as ``linecache`` holds them (one list, shared), or None."""
    lines = linecache.getlines(filename)
    return lines or None


def imported_names(code: types.CodeType, package: Optional[str]) -> Iterator[str]:
    """The absolute names of the modules ``code`` (and the code inside it) imports, each
    with its parents; relative imports resolved against ``package``."""
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from imported_names(constant, package)
    constants: list[Any] = []
    for instruction in dis.get_instructions(code):
        if instruction.opname == "LOAD_CONST":
            constants.append(instruction.argval)
            continue
        if instruction.opname == "IMPORT_NAME" and len(constants) >= 2:
            level, fromlist = constants[-2], constants[-1]
            try:
                name = importlib.util.resolve_name("." * (level or 0) + instruction.argval,
                                                   package)
            except (ImportError, ValueError, TypeError):
                name = ""
            if name:
                parts = name.split(".")
                yield from (".".join(parts[:end]) for end in range(1, len(parts) + 1))
                for item in fromlist or ():
                    yield f"{name}.{item}"
        constants = []


def compiled_module_file(module: types.ModuleType) -> Optional[str]:
    """The file of ``module`` if it is a compiled extension, else None."""
    filename = getattr(module, "__file__", None)
    if isinstance(filename, str) and filename.endswith(
            tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return filename
    return None


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """The version of each package of ``names`` imported here that says its version,
    with ``python`` for the interpreter."""
    versions = {"python": sys.version.split()[0]}
    for name in names:
        version = getattr(sys.modules.get(name), "__version__", None)
        if isinstance(version, str):
            versions[name] = version
    return versions


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def version_differences(caller: Mapping[str, str], worker: Mapping[str, str]
                        ) -> list[str]:
    """``name caller-version here, worker-version there`` for each package (and Python)
    whose major or minor version differs; a package the worker lacks is left to the import
    that fails."""
    return [f"{name} {version} in the caller, {worker[name]} on the worker"
            for name, version in sorted(caller.items())
            if name in worker and _major_minor(version) != _major_minor(worker[name])]


@dataclasses.dataclass(frozen=True)
class VersionReport:
    """What a worker tells the caller with its first report: where it runs, and the
    versions of Python and of the packages the function reaches by name, the caller's
    (as the function payload carries them) beside its own."""

    host: str
    python: str  #: the worker's interpreter (``sys.executable``)
    caller: dict[str, str]
    worker: dict[str, str]

    def differences(self) -> list[str]:
        return version_differences(self.caller, self.worker)

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VersionReport:
        """The report in ``data``; ValueError if it is not one."""
        values = json.loads(data)
        if not isinstance(values, dict) or set(values) != {"host", "python", "caller", "worker"}:
            raise ValueError("not a version report")
        host, python, caller, worker = (values[name] for name in
                                        ("host", "python", "caller", "worker"))
        if not (isinstance(host, str) and isinstance(python, str)
                and all(_text_mapping(versions) for versions in (caller, worker))):
            raise ValueError("not a version report")
        return cls(host, python, dict(caller), dict(worker))


def _text_mapping(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items())
