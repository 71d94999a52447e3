"""Turn functions, namespaces and arguments into bytes that a worker can load.

This module runs on both sides: in the caller, and embedded verbatim into the
job file on workers that have nothing but a stock Python. It therefore imports
only the standard library and nothing from the rest of the package.

Functions that a worker cannot import (those defined in ``__main__``, a REPL,
IPython or Jupyter, lambdas, closures, and functions from modules outside the
standard library and site-packages) are shipped by value: their code object is
marshalled and the globals they refer to are captured. Every function shipped
by value in one payload shares a single globals dictionary on the worker, as
the functions of one module would, so the quickstart's ``import numpy as np;
global np`` idiom makes ``np`` visible to the other shipped functions.

Code objects only load into the same Python minor version that made them; the
worker checks this before loading anything (see ``worker.py``).
"""

import builtins
import functools
import importlib
import io
import marshal
import pickle
import struct
import sys
import sysconfig
import types

#: Pickle protocol for every payload; override to talk to older workers.
pickle_protocol = pickle.HIGHEST_PROTOCOL
#: marshal format version for shipped code objects.
marshal_version = marshal.version

#: Buffers this large (numpy arrays, bytearrays) travel out of band: beside the
#: pickle instead of copied into it, so neither side makes a copy of them.
out_of_band_bytes = 64 << 10

_EMPTY_CELL = "<sheepdog: empty cell>"
#: Starts a payload with out-of-band buffers; a plain pickle starts with b"\x80".
_OUT_OF_BAND_MAGIC = b"SDB1"
_COUNT = struct.Struct("!IQ")  # number of buffers, length of the pickle
_LENGTH = struct.Struct("!Q")
#: Buffers start at multiples of this within a payload, so arrays load aligned.
ALIGNMENT = 16


class SerialisationError(TypeError):
    """An object given to sheepdog cannot be turned into bytes."""


@functools.lru_cache(maxsize=1)
def _library_roots():
    paths = sysconfig.get_paths()
    return tuple(
        paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths
    )


def _module_is_importable_on_worker(module_name):
    """Guess whether a worker can import ``module_name`` by name.

    Built-in modules and those installed in the standard library or
    site-packages are assumed to exist on the worker too; the user's own
    scripts and modules lying next to them are not.
    """
    if module_name in (None, "__main__", "__mp_main__"):
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    filename = getattr(module, "__file__", None)
    if filename is None:
        return True  # built into the interpreter
    return filename.startswith(_library_roots())


def _reachable_by_reference(function):
    """True when pickle can store ``function`` as ``module.qualname``."""
    module = sys.modules.get(function.__module__ or "")
    target = module
    for part in function.__qualname__.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is function


def ships_by_value(function):
    """True when ``function`` must travel as code rather than as a name."""
    if function.__module__ == __name__:
        return False  # the loaders below, embedded in every job file
    return not (
        _module_is_importable_on_worker(function.__module__)
        and _reachable_by_reference(function)
    )


def referenced_global_names(code):
    """Names that ``code`` (and the code nested inside it) may look up as globals."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= referenced_global_names(constant)
    return names


def _make_function(code_bytes, shared_globals, name, n_cells):
    """Worker side: build an empty function; ``_set_function_state`` fills it."""
    shared_globals.setdefault("__builtins__", builtins)
    code = marshal.loads(code_bytes)
    closure = None if n_cells is None else tuple(types.CellType() for _ in range(n_cells))
    return types.FunctionType(code, shared_globals, name, None, closure)


def _set_function_state(function, state):
    function.__globals__.update(state["globals"])
    function.__defaults__ = state["defaults"]
    function.__kwdefaults__ = state["kwdefaults"]
    function.__qualname__ = state["qualname"]
    function.__module__ = state["module"]
    function.__doc__ = state["doc"]
    function.__dict__.update(state["dict"])
    for cell, value in zip(function.__closure__ or (), state["closure"]):
        if value != _EMPTY_CELL:
            cell.cell_contents = value
    return function


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY_CELL


class _Pickler(pickle.Pickler):
    """A pickler that ships unimportable functions by value and modules by name."""

    def __init__(self, file, buffer_callback=None):
        super().__init__(file, protocol=pickle_protocol, buffer_callback=buffer_callback)
        self.shared_globals = {}

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType) and ships_by_value(obj):
            return self._reduce_function(obj)
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented

    def _reduce_function(self, function):
        closure = function.__closure__
        known = function.__globals__
        state = {
            "globals": {
                name: known[name]
                for name in sorted(referenced_global_names(function.__code__))
                if name in known
            },
            "defaults": function.__defaults__,
            "kwdefaults": function.__kwdefaults__,
            "qualname": function.__qualname__,
            "module": function.__module__,
            "doc": function.__doc__,
            "dict": function.__dict__,
            "closure": tuple(_cell_value(cell) for cell in closure or ()),
        }
        arguments = (
            marshal.dumps(function.__code__, marshal_version),
            self.shared_globals,
            function.__name__,
            None if closure is None else len(closure),
        )
        return _make_function, arguments, state, None, None, _set_function_state


def _padding(length):
    """Zero bytes that bring ``length`` up to a multiple of :data:`ALIGNMENT`."""
    return b"\0" * (-length % ALIGNMENT)


def dumps_parts(obj):
    """Serialise ``obj`` to a list of bytes-like parts; the payload is their concatenation.

    Large contiguous buffers (with pickle protocol 5 or later) are not copied:
    the parts include memoryviews of them, after a header that says where each
    starts. Small objects give a single part, a plain pickle.
    """
    buffers = []

    def keep_out_of_band(buffer):
        raw = buffer.raw()
        if raw.nbytes < out_of_band_bytes:
            return True  # small: pickled in band
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    _Pickler(stream, keep_out_of_band if pickle_protocol >= 5 else None).dump(obj)
    pickled = stream.getvalue()
    if not buffers:
        return [pickled]
    header = b"".join([_OUT_OF_BAND_MAGIC, _COUNT.pack(len(buffers), len(pickled))]
                      + [_LENGTH.pack(buffer.nbytes) for buffer in buffers])
    parts = [header, pickled]
    offset = len(header) + len(pickled)
    for buffer in buffers:
        parts += [_padding(offset), buffer]
        offset += len(parts[-2]) + buffer.nbytes
    return parts


def dumps(obj):
    """Serialise one object (an argument, a result) to bytes."""
    return b"".join(dumps_parts(obj))


def loads(data):
    """Load a payload made by :func:`dumps_parts` from any bytes-like object.

    Out-of-band buffers are loaded in place, as views of ``data``: an array
    received into a bytearray is not copied again. Read-only data is copied
    once first, so that arrays come back writable, as they were sent.
    """
    view = memoryview(data).cast("B")
    if view[:len(_OUT_OF_BAND_MAGIC)] != _OUT_OF_BAND_MAGIC:
        return pickle.loads(view)
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
    return pickle.loads(pickled, buffers=buffers)


def dumps_function(function, namespace=None):
    """Serialise ``function`` together with ``namespace``, once per request.

    ``namespace`` entries are injected into the globals of the function on the
    worker, overriding the globals captured automatically.
    """
    namespace = dict(namespace or {})
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    try:
        pickler.dump((pickler.shared_globals, function, namespace))
    except Exception as error:
        raise SerialisationError(_explain_function_failure(function, namespace, error)) from error
    return buffer.getvalue()


def loads_function(data):
    """Worker side: the inverse of :func:`dumps_function`; returns the function."""
    shared_globals, function, namespace = pickle.loads(data)
    shared_globals.update(namespace)
    return function


def dumps_argument(position, arguments):
    """Serialise one tuple of arguments to parts (see :func:`dumps_parts`), naming
    its position if it cannot be."""
    try:
        return dumps_parts(tuple(arguments))
    except Exception as error:
        raise SerialisationError(
            f"argument {position} ({_short_repr(arguments)}) cannot be serialised: "
            f"{type(error).__name__}: {error}"
        ) from error


def _explain_function_failure(function, namespace, error):
    """Find which global or namespace entry made ``dumps_function`` fail."""
    suspects = dict(namespace)
    if isinstance(function, types.FunctionType):
        cells = zip(function.__code__.co_freevars, function.__closure__ or ())
        suspects.update((name, _cell_value(cell)) for name, cell in cells)
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


def _function_name(function):
    return getattr(function, "__qualname__", repr(function))


def _short_repr(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
