"""The key of a computation: what a task computes, by value, as a digest stable across processes.

Two tasks are the same computation when they run the same function on the
same arguments with the same namespace. "The same function" means the same
*value*, not the same name: its code and constants, the values of its
closure cells and of the globals it reads, the code of every function and
class of the user's own that it reaches (in ``__main__`` and in the user's
modules, which travel by value, see ``wire/serialisation.py``), and, for
what it reaches by name in installed packages, the versions of those
packages. So editing the body, a helper in another of the user's modules or
a global constant changes the key, as does upgrading a library it uses;
running the unchanged script again in a new process does not.

The digest is built from a pickle of the parts, made with a pickler whose
``persistent_id`` stands in for every function, class, code object and
module with a digest of its own (computed here, recursively), and for every
set with the sorted digests of its items: nothing in it depends on memory
addresses, on the hash randomisation of strings, on file paths or line
numbers, or on the ids cloudpickle draws for the classes it ships.

What the key cannot see (files the function reads, randomness, the time,
the environment) is documented in ``docs/remembering.rst``. This runs in the
caller only; workers never need it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import pickle
import sys
import types
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from ..wire import modules
from ..wire.serialisation import module_is_installed, referenced_global_names

#: Changes when the way keys are made changes, so that older keys are not mistaken.
KEY_FORMAT = b"sheepdog-computation-1"
#: The pickle protocol of the parts hashed: fixed, so that a key does not change with it.
_PROTOCOL = 5
#: The attributes of a code object that say what it computes (not where it was written).
_CODE_ATTRIBUTES = ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals",
                    "co_flags", "co_code", "co_names", "co_varnames", "co_freevars",
                    "co_cellvars", "co_exceptiontable")
#: What a class's dictionary holds that is not its behaviour.
_CLASS_ENTRIES_IGNORED = ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__")


class FingerprintError(TypeError):
    """The key of a computation cannot be made (a global that cannot be pickled, say)."""


def function_key(function: Any, namespace: Optional[Mapping[str, Any]] = None) -> bytes:
    """The digest of ``function`` by value and of ``namespace``: the key of every task of
    a request, before its arguments (see :func:`task_keys`)."""
    fingerprinter = _Fingerprinter()
    entries = sorted((str(name), value) for name, value in dict(namespace or {}).items())
    try:
        digest = fingerprinter.digest(
            (KEY_FORMAT, sys.implementation.name, sys.version_info[:2], function, entries))
        versions = sorted((top, _top_version(top)) for top in fingerprinter.packages)
        return hashlib.sha256(digest + repr(versions).encode()).digest()
    except FingerprintError:
        raise
    except Exception as error:
        raise FingerprintError(f"{type(error).__name__}: {error}") from error


def task_keys(function_digest: bytes, argument_payloads: Iterable[Any]) -> list[bytes]:
    """The key of each task: the function's digest with the task's pickled arguments (the
    parts that ``serialisation.dumps_call`` made, which are stored as they are)."""
    keys = []
    sha256 = hashlib.sha256
    for payload in argument_payloads:
        if type(payload) is list and len(payload) == 1:
            payload = payload[0]
        if type(payload) is bytes:  # the common case, kept fast; the same digest
            keys.append(sha256(function_digest + payload).digest())
            continue
        digest = sha256(function_digest)
        for part in ([payload] if isinstance(payload, (bytes, bytearray, memoryview))
                     else payload):
            digest.update(part)
        keys.append(digest.digest())
    return keys


class _Fingerprinter:
    """Digests of objects, each made once per key (objects are kept alive meanwhile, so
    that their ids are not reused)."""

    def __init__(self) -> None:
        self._digests: dict[int, str] = {}
        self._kept: list[Any] = []
        self._making: dict[int, str] = {}  # objects whose digest is being made: a cycle
        self._installed: dict[str, bool] = {}
        #: The installed packages (top-level names) met by name: their versions enter the key.
        self.packages: set[str] = set()

    def installed(self, module_name: Optional[str]) -> bool:
        """Whether ``module_name`` travels by name; if so, its package's version counts."""
        name = module_name or ""
        if name not in self._installed:
            self._installed[name] = module_is_installed(module_name)
        if self._installed[name]:
            top = name.partition(".")[0]
            if top not in _standard_library():
                self.packages.add(top)
        return self._installed[name]

    def digest(self, value: Any) -> bytes:
        """The SHA-256 of ``value`` pickled with :class:`_Pickler`."""
        stream = io.BytesIO()
        _Pickler(stream, self).dump(value)
        return hashlib.sha256(stream.getvalue()).digest()

    def stand_in(self, value: Any) -> Optional[str]:
        """The text that stands for ``value`` in a pickle, or None to pickle it as it is.

        An object of an installed package's type (a numpy array or ufunc) pickles as it
        is, and the package's version is noted.
        """
        self.installed(type(value).__module__)
        if isinstance(value, (types.FunctionType, type, types.ModuleType, types.CodeType,
                              types.BuiltinFunctionType, set, frozenset)):
            return self._memo(value, self._identify)
        if isinstance(value, (staticmethod, classmethod)):
            return self._memo(value, lambda held: "wrapped:" + self._hex(held.__func__))
        if isinstance(value, property):
            return self._memo(value, lambda held: "property:" + self._hex(
                (held.fget, held.fset, held.fdel)))
        return None

    def _memo(self, value: Any, identify: Any) -> str:
        key = id(value)
        if key in self._digests:
            return self._digests[key]
        if key in self._making:  # a function that calls itself, a class that names itself
            return "cycle:" + self._making[key]
        self._making[key] = str(getattr(value, "__qualname__", type(value).__qualname__))
        try:
            text = identify(value)
        finally:
            del self._making[key]
        self._digests[key] = text
        self._kept.append(value)
        return text

    def _hex(self, value: Any) -> str:
        return self.digest(value).hex()

    def _identify(self, value: Any) -> str:
        if isinstance(value, (set, frozenset)):
            return f"{type(value).__name__}:" + self._hex(sorted(self._hex(item)
                                                                   for item in value))
        if isinstance(value, types.CodeType):
            return "code:" + self._hex(_code_parts(value))
        if isinstance(value, types.ModuleType):
            return self._module(value, None)
        named = _by_name(value, self.installed)
        if named is not None:
            return named
        if isinstance(value, types.FunctionType):
            return "function:" + self._hex(self._function_parts(value))
        if isinstance(value, type):
            return "class:" + self._hex(self._class_parts(value))
        raise FingerprintError(f"{value!r} has no name to be found by, and no code to read")

    def _function_parts(self, function: types.FunctionType) -> tuple[Any, ...]:
        """What a function shipped by value computes with: code, defaults, closure, the
        globals its code reads, and the modules it imports as it runs."""
        code = function.__code__
        cells: list[tuple[Any, ...]] = []
        for cell in function.__closure__ or ():
            try:
                cells.append(("cell", cell.cell_contents))
            except ValueError:
                cells.append(("empty cell",))
        names = referenced_global_names(code)
        found = [(name, self._global(function.__globals__[name], names))
                 for name in sorted(names) if name in function.__globals__]
        package = function.__globals__.get("__package__")
        imported = sorted(set(modules.imported_names(code, package)))
        return (code, function.__defaults__, sorted((function.__kwdefaults__ or {}).items()),
                cells, found, [self._module(sys.modules[name], None) for name in imported
                               if name in sys.modules])

    def _global(self, value: Any, names: set[str]) -> Any:
        """A global as it enters the key: a module of the user's by the attributes that the
        code names (an attribute elsewhere in it does not change this function)."""
        if isinstance(value, types.ModuleType) and not self.installed(value.__name__):
            return self._module(value, names)
        return value

    def _module(self, module: types.ModuleType, names: Optional[set[str]]) -> str:
        """A module: installed ones by name and version, the user's own by value (only the
        attributes in ``names``, if given)."""
        if self.installed(module.__name__):
            return f"module:{module.__name__}"
        state = modules.module_state(module)
        chosen = sorted(name for name in state if names is None or name in names)
        parts = []
        for name in chosen:
            nested = state[name]
            if names is not None:
                nested = self._global(nested, names)
            parts.append((name, _entry(self, nested)))
        return "user-module:" + self._hex((module.__name__, parts))

    def _class_parts(self, cls: type) -> tuple[Any, ...]:
        entries = [(name, _entry(self, value)) for name, value in sorted(vars(cls).items())
                   if name not in _CLASS_ENTRIES_IGNORED]
        return (cls.__name__, cls.__bases__, type(cls), entries)


class _Pickler(pickle.Pickler):
    """Pickles the parts of a key, with digests in place of code (see the module's docstring)."""

    def __init__(self, stream: io.BytesIO, fingerprinter: _Fingerprinter) -> None:
        super().__init__(stream, _PROTOCOL)
        self._fingerprinter = fingerprinter

    def persistent_id(self, obj: Any) -> Optional[str]:
        return self._fingerprinter.stand_in(obj)


def _entry(fingerprinter: _Fingerprinter, value: Any) -> str:
    """The digest of an attribute of a module or class, or the name of its type if it
    cannot be pickled (a lock in a module, a slot's descriptor): such a value is the same
    in every run, as far as the key can tell."""
    try:
        return fingerprinter.digest(value).hex()
    except Exception:  # noqa: BLE001 - any value that does not pickle
        return f"<unpicklable {type(value).__module__}.{type(value).__qualname__}>"


def _code_parts(code: types.CodeType) -> tuple[Any, ...]:
    """What a code object computes: not its file, name or line numbers."""
    return (tuple(getattr(code, name, None) for name in _CODE_ATTRIBUTES), code.co_consts)


def _by_name(value: Any, installed: Callable[[Optional[str]], bool]) -> Optional[str]:
    """``by-name:module.qualname`` for a function or class that the workers import by name
    from an ``installed`` module, else None (it travels by value)."""
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if isinstance(value, types.BuiltinFunctionType) and module_name is None:
        self_ = getattr(value, "__self__", None)  # a method of a built-in object
        return f"builtin:{type(self_).__module__}.{type(self_).__qualname__}.{qualname}"
    if not installed(module_name) or not isinstance(qualname, str):
        if isinstance(value, types.BuiltinFunctionType):
            return f"builtin:{module_name}.{qualname}"
        return None
    found: Any = sys.modules.get(module_name or "")
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not value and not isinstance(value, types.BuiltinFunctionType):
        return None  # made inside an installed module's function: shipped by value
    return f"by-name:{module_name}.{qualname}"


@functools.lru_cache(maxsize=None)
def _top_version(top: str) -> str:
    """The installed version of the distribution that holds the top-level package ``top``."""
    for distribution in _distributions_of(top):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    version = getattr(sys.modules.get(top), "__version__", None)
    return str(version) if version is not None else "unknown"


def _distributions_of(top: str) -> Sequence[str]:
    """The distributions that may hold the top-level package ``top``: the one named after
    it first (cheap), then those that say they provide it."""
    return [top, *_packages_distributions().get(top, ())]


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=1)
def _standard_library() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)
