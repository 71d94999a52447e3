"""Turn functions, namespaces and arguments into bytes that the other side can load.

This module runs on both sides: in the caller, and embedded verbatim into the
job file on workers that have nothing but a stock Python. It therefore imports
only the standard library and cloudpickle, whose source the job file embeds
beside this module's (see ``jobscript.py``), and nothing from the rest of the
package.

What the other side can import by name travels by name: modules built into
the interpreter, the standard library, and packages installed in any of the
interpreter's site directories (site-packages, Debian's dist-packages, the
user site, a conda env) or in editable mode. Functions and classes from
anywhere else (``__main__``, a REPL, IPython or Jupyter, the user's own
scripts and the modules lying next to them) travel by value, as cloudpickle
ships them: code, referenced globals, class dictionaries. cloudpickle alone
would send by name whatever the caller has imported; sheepdog sends the user's
own modules by value too, because workers do not have them.

Functions shipped by value keep sharing their globals as they did in the
caller, so the quickstart's ``import numpy as np; global np`` idiom makes
``np`` visible to the other shipped functions of the same script, and the
request's ``ns`` entries are injected into the function's globals.

Code objects only load into the same Python minor version that made them; the
worker checks this before loading anything (see ``worker/loop.py``).
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import logging
import os
import pickle
import site
import struct
import sys
import sysconfig
import types
from typing import Any, Mapping, Optional, Sequence

import cloudpickle

from . import modules
from .protocol import ALIGNMENT, Buffer

log = logging.getLogger(__name__)

#: Pickle protocol for every payload; override to talk to older workers.
pickle_protocol = pickle.HIGHEST_PROTOCOL

#: Buffers this large (numpy arrays, bytearrays) travel out of band: beside the
#: pickle instead of copied into it, so neither side makes a copy of them.
out_of_band_bytes = 64 << 10

#: Starts a payload with out-of-band buffers; a plain pickle starts with b"\x80".
_OUT_OF_BAND_MAGIC = b"SDB1"
_COUNT = struct.Struct("!IQ")  # number of buffers, length of the pickle
_LENGTH = struct.Struct("!Q")

#: numpy 2 renamed its ``numpy.core`` package ``numpy._core``, and pickles name
#: the package their numpy had: numpy 1.x cannot import the new name, and
#: numpy 2 warns about the old one.
_NUMPY_CORE_NAMES = ("numpy.core", "numpy._core")


class SerialisationError(TypeError):
    """An object given to sheepdog cannot be turned into bytes."""


@functools.lru_cache(maxsize=1)
def _library_directories() -> tuple[str, ...]:
    """The directories of the standard library and of installed packages, each
    ending in a separator so that a prefix test cannot match a sibling."""
    paths = sysconfig.get_paths()
    directories = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")
                   if key in paths}
    directories.update(site.getsitepackages())  # dist-packages on Debian and Ubuntu
    directories.add(site.getusersitepackages())
    return tuple(os.path.join(os.path.realpath(directory), "") for directory in directories)


@functools.lru_cache(maxsize=1)
def _editable_packages() -> dict[str, str]:
    """Top-level package names installed in editable mode (``pip install -e``),
    each with the project directory where its source lives."""
    # Imported here: they cost a worker 40 ms at start-up, and it seldom needs them.
    import importlib.metadata
    import urllib.parse
    import urllib.request

    packages = {}
    for distribution in importlib.metadata.distributions():
        direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
        if not direct_url.get("dir_info", {}).get("editable"):
            continue
        directory = urllib.request.url2pathname(urllib.parse.urlsplit(direct_url["url"]).path)
        # setuptools lists the packages; other backends name the package after the project.
        names = (distribution.read_text("top_level.txt") or "").split() or [
            (distribution.metadata["Name"] or "").lower().replace("-", "_")]
        for name in names:
            packages[name] = os.path.join(os.path.realpath(directory), "")
    return packages


def module_is_installed(module_name: Optional[str]) -> bool:
    """Whether the other side can import ``module_name`` by name, as the caller did.

    True for modules built into the interpreter, in the standard library, in a
    site directory or installed in editable mode, and for cloudpickle and
    ``sheepdog.wire``, which every job file embeds (their functions rebuild
    what travels by value); false for ``__main__`` and for the user's own
    modules, a package without ``__init__.py`` among them.
    """
    if module_name in (None, "__main__", "__mp_main__"):
        return False
    if (module_name.partition(".")[0] == "cloudpickle" or module_name in _EMBEDDED_PACKAGES
            or module_name.startswith(_EMBEDDED)):
        return True
    module = sys.modules.get(module_name)
    if module is None:
        return False
    top = module_name.partition(".")[0]
    filename = getattr(module, "__file__", None)
    if filename is None:
        return _fileless_module_is_installed(module_name, module)
    return _file_is_installed(top, filename)


def _fileless_module_is_installed(module_name: str, module: types.ModuleType) -> bool:
    """Whether a module without a file is importable by name elsewhere: one built in or
    frozen, a package without ``__init__.py`` in a library directory, a submodule made by
    an installed package (``six.moves``); not a module the user made in the caller."""
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    if module_name in sys.builtin_module_names or origin in ("built-in", "frozen"):
        return True
    top = module_name.partition(".")[0]
    if spec is not None and origin is None and getattr(module, "__path__", None):
        return any(_file_is_installed(top, os.path.join(directory, ""))  # a namespace package
                   for directory in module.__path__)
    return top != module_name and module_is_installed(top)


#: What every job file embeds, under these names (see ``caller/jobscript.py``).
_EMBEDDED = ("sheepdog.wire.", "sheepdog.worker.")
_EMBEDDED_PACKAGES = ("sheepdog", "sheepdog.wire", "sheepdog.worker")


@functools.lru_cache(maxsize=4096)
def _file_is_installed(package: str, filename: str) -> bool:
    """Whether ``filename``, a module of the top-level ``package``, is installed."""
    filename = os.path.realpath(filename)
    if filename.startswith(_library_directories()):
        return True
    project = _editable_packages().get(package)
    return project is not None and filename.startswith(project)


# cloudpickle ships no type hints, so to mypy its Pickler is Any, which --strict
# does not let a class subclass.
class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, which also ships by value the user's own modules: those
    imported in the caller but not installed, with their functions and classes.

    A module of the user's that the payload reaches (a global, an attribute of
    one, a module a shipped function imports when it runs) travels by value
    (see ``modules.py``); one compiled and not installed cannot, and is refused,
    named. With ``ship_sources`` (a request's function) the code that travels
    brings its file's lines, for the worker's tracebacks. The top-level
    packages reached by name are noted in ``by_name``, for the versions that
    :func:`dumps_function` ships.

    cloudpickle does not export its by-value reducers; the version range of
    cloudpickle in ``pyproject.toml`` pins the ones used here, and the tests
    cover them.
    """

    def __init__(self, file: io.BytesIO, protocol: int, buffer_callback: Any = None,
                 ship_sources: bool = False, forgiving: bool = False) -> None:
        super().__init__(file, protocol, buffer_callback=buffer_callback)
        self.ship_sources = ship_sources
        self.stubs: dict[str, modules.ModuleStub] = {}
        self.by_name: set[str] = set()
        #: Leave out of a module the attributes that cannot travel, naming them in ``left_out``.
        self.forgiving = forgiving
        self.left_out: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            return self._reduce_code(obj)
        if isinstance(obj, types.ModuleType):
            return self._reduce_module(obj)
        if obj is _VERSIONS:
            return dict, (sorted(modules.package_versions(self.by_name).items()),)
        if isinstance(obj, types.FunctionType) and not module_is_installed(obj.__module__):
            return self._reduce_user_function(obj)
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
            self._by_name(getattr(obj, "__module__", None))
        if not isinstance(obj, type):
            return super().reducer_override(obj)
        if module_is_installed(obj.__module__):
            self._by_name(obj.__module__)
            reduced = super().reducer_override(obj)  # by name, unless it cannot be found there
        else:
            _refuse_compiled(obj.__module__)
            reduced = cloudpickle.cloudpickle._dynamic_class_reduce(obj)
        if reduced is not NotImplemented and "__slots__" in vars(obj):
            _keep_slots(obj, reduced)
        return reduced

    def _reduce_user_function(self, function: types.FunctionType) -> Any:
        """By value, sharing the rebuilt module's globals, with the modules it imports."""
        module = sys.modules.get(function.__module__ or "")
        if (module is not None and vars(module) is function.__globals__
                and function.__module__ not in _MAIN_NAMES):
            self.globals_ref.setdefault(id(function.__globals__),
                                        modules.ModuleNamespace(self._stub(module)))
        reduced = self._dynamic_function_reduce(function)
        package = function.__globals__.get("__package__")
        imported = set(modules.imported_names(function.__code__, package))
        for name in sorted(imported):
            if module_is_installed(name):
                self._by_name(name)
            elif name not in _MAIN_NAMES and name in sys.modules:
                # cloudpickle's holder of the modules a function needs loaded first
                reduced[2][1]["_cloudpickle_submodules"].append(sys.modules[name])
        return reduced

    def _reduce_module(self, module: types.ModuleType) -> Any:
        name = module.__name__
        if name in _MAIN_NAMES or module_is_installed(name):
            self._by_name(name)
            return super().reducer_override(module)  # by name (cloudpickle's)
        _refuse_compiled(name)
        state = modules.module_state(module)
        if self.forgiving:
            for attribute, value in list(state.items()):
                if not _travels(value):
                    del state[attribute]
                    self.left_out.append(f"{name}.{attribute}")
        return (modules.same_module, (self._stub(module),), state, None, None,
                modules.fill_module)

    def _stub(self, module: types.ModuleType) -> modules.ModuleStub:
        return self.stubs.setdefault(module.__name__, modules.ModuleStub(module.__name__))

    def _reduce_code(self, code: types.CodeType) -> Any:
        reduced = _code_reduce_keeping_its_file(code)
        lines = modules.source_lines(code.co_filename) if self.ship_sources else None
        if lines is None:
            return reduced
        return modules.code_with_lines, (*reduced, code.co_filename, lines)

    def _by_name(self, module_name: Optional[str]) -> None:
        """Note the top-level package of ``module_name``, reached by name, unless it is
        part of Python or of what every job file embeds."""
        top = (module_name or "").partition(".")[0]
        if top and top not in _NOT_VERSIONED and top not in _standard_library():
            self.by_name.add(top)


#: Stands for the versions of the packages a request's function reaches by name.
_VERSIONS = object()
_MAIN_NAMES = ("__main__", "__mp_main__")
_NOT_VERSIONED = ("sheepdog", "cloudpickle", "builtins", "__main__", "__mp_main__")


@functools.lru_cache(maxsize=1)
def _standard_library() -> frozenset[str]:
    names = getattr(sys, "stdlib_module_names", ())  # Python 3.10 and later
    return frozenset(names) | frozenset(sys.builtin_module_names)


def _travels(value: Any) -> bool:
    """Whether ``value`` can be pickled (as a module's attribute; to leave out those that
    cannot)."""
    try:
        _Pickler(io.BytesIO(), pickle_protocol, forgiving=True).dump(value)
    except Exception:  # noqa: BLE001 - any failure: it cannot travel
        return False
    return True


def _refuse_compiled(module_name: Optional[str]) -> None:
    """Raise :class:`SerialisationError` for a compiled extension of the user's own."""
    module = sys.modules.get(module_name or "")
    filename = modules.compiled_module_file(module) if module is not None else None
    if filename is not None and not module_is_installed(module_name):
        raise SerialisationError(
            f"the module {module_name!r} ({filename}) is a compiled extension that is not "
            f"installed, so the workers cannot import it and sheepdog cannot send it: "
            f"install it into the workers' Python (the 'shell' in the config), or keep it "
            f"out of the function")


def _code_reduce_keeping_its_file(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with its real file name.

    cloudpickle names the file of all code it ships ``<dynamic-code>``; keeping
    the real one lets a traceback of a task name the user's own file and
    line, and a debugger (the ``inline`` scheduler) show its source.
    """
    rebuild, arguments = cloudpickle.cloudpickle._code_reduce(code)
    arguments = tuple(code.co_filename if argument == _CLOUDPICKLE_FILE_NAME else argument
                      for argument in arguments)
    return rebuild, arguments


#: The file name cloudpickle gives the code it ships (no identifier or constant tuple
#: among a code object's other reduced arguments can equal it).
_CLOUDPICKLE_FILE_NAME = "<dynamic-code>"


def _keep_slots(cls: type, reduced: tuple[Any, ...]) -> None:
    """Make a class shipped by value get its slots when it is rebuilt.

    cloudpickle creates the class first and sets ``__slots__`` afterwards, as
    a plain attribute, so the rebuilt class has no slots: its instances get a
    ``__dict__``, and the caller could not load them back into the real class.
    Passing ``__slots__`` to the class's creation creates the slots.
    """
    rebuild, arguments = reduced[:2]
    if rebuild is cloudpickle.cloudpickle._make_skeleton_class:
        _metaclass, _name, _bases, class_namespace, _tracker_id, _extra = arguments
        class_namespace["__slots__"] = vars(cls)["__slots__"]


class _Unpickler(pickle.Unpickler):
    """An unpickler that loads numpy objects pickled by either numpy 1.x or 2.x."""

    def find_class(self, module_name: str, name: str) -> Any:
        for core in _NUMPY_CORE_NAMES:
            if module_name == core or module_name.startswith(core + "."):
                module_name = _numpy_core_name() + module_name[len(core):]
                break
        return super().find_class(module_name, name)


@functools.lru_cache(maxsize=1)
def _numpy_core_name() -> str:
    """The name of the core package of the numpy installed here."""
    numpy = importlib.import_module("numpy")
    return "numpy._core" if int(numpy.__version__.split(".")[0]) >= 2 else "numpy.core"


def _padding(length: int) -> bytes:
    """Zero bytes that bring ``length`` up to a multiple of :data:`ALIGNMENT`."""
    return b"\0" * (-length % ALIGNMENT)


def dumps_parts(obj: Any, ship_sources: bool = False, forgiving: bool = False
                ) -> list[Buffer]:
    """Serialise ``obj`` to a list of bytes-like parts; the payload is their concatenation.

    Large contiguous buffers (with pickle protocol 5 or later) are not copied:
    the parts include memoryviews of them, after a header that says where each
    starts. Small objects give a single part, a plain pickle. With
    ``ship_sources``, the code that travels by value brings its source lines;
    ``forgiving``, see :func:`dumps_function`.
    """
    if type(obj) in _PLAIN_TYPES:  # most results: the same bytes, without a cloudpickler
        return [pickle.dumps(obj, pickle_protocol)]
    buffers: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < out_of_band_bytes:
            return True  # small: pickled in band
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    pickler = _Pickler(stream, pickle_protocol,
                       keep_out_of_band if pickle_protocol >= 5 else None, ship_sources, forgiving)
    pickler.dump(obj)
    if pickler.left_out:
        log.warning("left out of the modules that travel, since they cannot be pickled: %s; "
                    "a task that uses one fails on the worker", ", ".join(pickler.left_out))
    pickled = stream.getvalue()
    if not buffers:
        return [pickled]
    header = b"".join([_OUT_OF_BAND_MAGIC, _COUNT.pack(len(buffers), len(pickled))]
                      + [_LENGTH.pack(buffer.nbytes) for buffer in buffers])
    parts: list[Buffer] = [header, pickled]
    offset = len(header) + len(pickled)
    for buffer in buffers:
        parts += [_padding(offset), buffer]
        offset += len(parts[-2]) + buffer.nbytes
    return parts


def dumps(obj: Any) -> bytes:
    """Serialise one object (an argument, a result) to bytes."""
    return b"".join(dumps_parts(obj))


def loads(data: Buffer) -> Any:
    """Load a payload made by :func:`dumps_parts` from any bytes-like object.

    Out-of-band buffers are loaded in place, as views of ``data``: an array
    received into a bytearray is not copied again. Read-only data is copied
    once first, so that arrays come back writable, as they were sent.
    """
    if (isinstance(data, bytes) and not data.startswith(_OUT_OF_BAND_MAGIC)
            and b"numpy" not in data):  # nothing for _Unpickler to rename: the fast path
        return pickle.loads(data)
    view = memoryview(data).cast("B")
    if view[:len(_OUT_OF_BAND_MAGIC)] != _OUT_OF_BAND_MAGIC:
        return _Unpickler(io.BytesIO(view)).load()
    if view.readonly:
        view = memoryview(bytearray(view))
    offset = len(_OUT_OF_BAND_MAGIC)
    count, pickle_length = _COUNT.unpack_from(view, offset)
    offset += _COUNT.size
    lengths = [_LENGTH.unpack_from(view, offset + i * _LENGTH.size)[0] for i in range(count)]
    offset += count * _LENGTH.size
    pickled = view[offset:offset + pickle_length]
    offset += pickle_length
    buffers = []
    for length in lengths:
        offset += -offset % ALIGNMENT
        if offset + length > len(view):
            raise ValueError("truncated sheepdog payload")
        buffers.append(view[offset:offset + length])
        offset += length
    return _Unpickler(io.BytesIO(pickled), buffers=buffers).load()


def load_or_describe(payload: Buffer) -> tuple[bool, Any]:
    """``(True, object)`` for a payload that loads, ``(False, reason)`` for one that
    does not, without raising.

    A stored payload may name a module or class that this process lacks (a
    class from another script's ``__main__``, a package not installed here),
    or be cut short; the caller then reports which payload failed and why
    instead of losing every other result to one exception. The reason is one
    line that names the exception.
    """
    try:
        return True, loads(payload)
    except Exception as error:  # noqa: BLE001 - any failure of a stored payload is reported
        message = " ".join(str(error).split())
        return False, f"{type(error).__name__}: {message}" if message else type(error).__name__


def load_many(payloads: Sequence[Optional[Buffer]]) -> tuple[list[Any], dict[int, str]]:
    """The objects of many payloads in order (None for a None payload), and, by position,
    why each payload that did not load did not (its object is None), as
    :func:`load_or_describe` says it.

    For many small payloads (the results of a million tasks) it is about five times
    faster than a :func:`loads` each: when no payload carries buffers out of band or
    may name numpy (whose module names :class:`_Unpickler` mends), which one search of
    their concatenation tells, each is loaded by the C unpickler alone (and each that
    loads, once).
    """
    values: list[Any] = []
    reasons: dict[int, str] = {}
    try:
        joined = b"".join(filter(None, payloads))
    except TypeError:  # not all bytes-like
        joined = _OUT_OF_BAND_MAGIC
    fast = _OUT_OF_BAND_MAGIC not in joined and b"numpy" not in joined
    for position, payload in enumerate(payloads):
        if payload is None:
            values.append(None)
            continue
        if fast:
            try:
                values.append(pickle.loads(payload))
                continue
            except Exception:  # noqa: BLE001 - described below, by the careful path
                pass
        loaded, value = load_or_describe(payload)
        if not loaded:
            reasons[position] = value
        values.append(value if loaded else None)
    return values, reasons


def dumps_function(function: Any, namespace: Optional[Mapping[str, Any]] = None) -> bytes:
    """Serialise ``function`` together with ``namespace``, once per request.

    ``namespace`` entries are injected into the globals of the function on the
    worker, overriding the globals captured automatically. An attribute of a
    module of the user's that cannot be pickled (a lock, an open file) is left
    out of it, with a warning that names it. Beside them travel
    the source lines of the code that travels by value, and the versions of
    Python and of the packages that travel by name (see
    :func:`loads_function_and_versions`).
    """
    namespace = dict(namespace or {})
    payload = (function, namespace, _VERSIONS)
    try:
        return b"".join(dumps_parts(payload, ship_sources=True))
    except SerialisationError:
        raise
    except Exception as error:
        try:  # without the attributes of the user's modules that cannot travel (a lock, say)
            return b"".join(dumps_parts(payload, ship_sources=True, forgiving=True))
        except SerialisationError:
            raise
        except Exception:
            pass
        raise SerialisationError(_explain_function_failure(function, namespace, error)) from error


def loads_function(data: Buffer) -> Any:
    """Worker side: the inverse of :func:`dumps_function`; returns the function."""
    return loads_function_and_versions(data)[0]


def loads_function_and_versions(data: Buffer) -> tuple[Any, dict[str, str]]:
    """Worker side: the function of :func:`dumps_function`, and the versions of Python
    and of the packages the function reaches by name, as the caller has them.

    The namespace goes into the globals of a function that travelled by value
    (a module of the user's rebuilt here included), never into those of a module
    imported by name.
    """
    with modules.registering():
        loaded = loads(data)
    function, namespace = loaded[:2]
    versions = dict(loaded[2]) if len(loaded) > 2 else {}
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    function_globals = getattr(function, "__globals__", None)
    imported = module is not None and not modules.was_rebuilt(module)
    if function_globals is not None and not (imported and function_globals is vars(module)):
        function_globals.update(namespace)
    return function, versions


#: The types whose values sheepdog's pickler pickles as the standard one does (it has
#: nothing to ship by value and no buffer to keep out of band): a tuple of them is
#: pickled by the standard pickler, which is about 15 times as fast for a small one.
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})


def dumps_argument(position: int, arguments: Sequence[Any]) -> list[Buffer]:
    """Serialise one tuple of arguments to parts (see :func:`dumps_parts`), naming
    its position if it cannot be."""
    if _PLAIN_TYPES.issuperset(map(type, arguments)):
        return [pickle.dumps(tuple(arguments), pickle_protocol)]
    try:
        return dumps_parts(tuple(arguments))
    except Exception as error:
        raise SerialisationError(
            f"argument {position} ({_short_repr(arguments)}) cannot be serialised: "
            f"{type(error).__name__}: {error}"
        ) from error


def dumps_call(position: int, arguments: Sequence[Any], keywords: Mapping[str, Any]
               ) -> list[Buffer]:
    """Serialise one call's positional and keyword arguments (see :func:`call_arguments`).

    Without keywords this is :func:`dumps_argument`. With them the payload is
    the dict ``{"args": arguments, "kwargs": keywords}``: a task's positional
    arguments always travel as a tuple, so the two cannot be mistaken.
    """
    if not keywords:
        return dumps_argument(position, arguments)
    try:
        return dumps_parts({"args": tuple(arguments), "kwargs": dict(keywords)})
    except Exception as error:
        raise SerialisationError(
            f"argument {position} ({_short_repr((tuple(arguments), dict(keywords)))}) cannot "
            f"be serialised: {type(error).__name__}: {error}"
        ) from error


def call_arguments(loaded: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of a loaded task payload: a tuple of positional arguments, or
    the dict that :func:`dumps_call` made for a call with keyword arguments."""
    if isinstance(loaded, dict):
        return tuple(loaded["args"]), dict(loaded["kwargs"])
    return tuple(loaded), {}


def referenced_global_names(code: types.CodeType) -> set[str]:
    """Names that ``code`` (and the code nested inside it) may look up as globals."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= referenced_global_names(constant)
    return names


def _explain_function_failure(function: Any, namespace: Mapping[str, Any],
                              error: Exception) -> str:
    """Find which global or namespace entry made ``dumps_function`` fail."""
    suspects = dict(namespace)
    if isinstance(function, types.FunctionType):
        for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
            try:
                suspects.setdefault(name, cell.cell_contents)
            except ValueError:
                pass  # an empty cell cannot be the culprit
        suspects.update(
            (name, function.__globals__[name])
            for name in referenced_global_names(function.__code__)
            if name in function.__globals__ and name not in suspects
        )
    for name, value in sorted(suspects.items()):
        try:
            dumps(value)
        except Exception as culprit:
            return (
                f"the variable {name!r} used by {_function_name(function)} cannot be "
                f"serialised ({type(culprit).__name__}: {culprit}); pass a "
                f"serialisable value in ns or create it inside the function"
            )
    return f"{_function_name(function)} cannot be serialised: {type(error).__name__}: {error}"


def _function_name(function: Any) -> str:
    return getattr(function, "__qualname__", repr(function))


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
