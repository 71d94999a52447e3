import subprocess
import sys
import threading
import types

import pytest

from sheepdog import serialisation
from sheepdog.serialisation import (
    SerialisationError,
    dumps,
    dumps_argument,
    dumps_function,
    loads,
    loads_function,
    ships_by_value,
)

OFFSET = 100


def helper(x):
    return x + OFFSET


def uses_helper(x):
    return helper(x) * 2


def test_function_in_main_module_ships_by_value_and_library_function_by_name():
    import json

    assert ships_by_value(lambda: 1)
    assert not ships_by_value(json.dumps)


def test_globals_the_function_uses_are_captured_automatically():
    shipped = loads_function(dumps_function(uses_helper))
    assert shipped(1) == 202


def test_namespace_entries_override_captured_globals():
    shipped = loads_function(dumps_function(uses_helper, {"OFFSET": 1}))
    assert shipped(1) == 4


def test_closure_and_defaults_travel():
    def make(scale):
        def scaled(x, shift=1, *, extra=10):
            return x * scale + shift + extra

        return scaled

    shipped = loads_function(dumps_function(make(3)))
    assert shipped(2) == 17
    assert shipped(2, 0, extra=0) == 6


def test_recursive_function_refers_to_itself():
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    assert loads_function(dumps_function(fact))(5) == 120


def test_global_import_idiom_is_shared_between_shipped_functions():
    source = (
        "def g(x):\n    return m.sqrt(x)\n"
        "def f(x):\n    import math as m\n    global m\n    return g(x)\n"
    )
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<stdin>", "exec"), namespace)
    shipped = loads_function(dumps_function(namespace["f"], {"g": namespace["g"]}))
    assert shipped(16) == 4.0


def test_modules_travel_by_name():
    import math

    def f(x):
        return math.floor(x)

    assert loads_function(dumps_function(f))(2.5) == 2


def test_unpicklable_global_is_named():
    lock = threading.Lock()

    def f():
        return lock

    with pytest.raises(SerialisationError, match="'lock'"):
        dumps_function(f)


def test_unpicklable_argument_is_named_by_position():
    def numbers():
        yield 1

    with pytest.raises(SerialisationError, match="argument 3"):
        dumps_argument(3, (numbers(),))


def test_arguments_round_trip_including_functions():
    value = loads(dumps((1, "two", [3.0], lambda y: y + 1)))
    assert value[:3] == (1, "two", [3.0]) and value[3](1) == 2


def test_protocol_is_overridable(monkeypatch):
    monkeypatch.setattr(serialisation, "pickle_protocol", 2)
    assert dumps(1)[:2] == b"\x80\x02"


def test_function_defined_without_source_file_ships():
    """A function typed into ``python -`` (stdin) has no source; its code still ships."""
    program = (
        "import sys; sys.path.insert(0, %r)\n"
        "from sheepdog.serialisation import dumps_function\n"
        "def f(a, b):\n    return a * b\n"
        "sys.stdout.buffer.write(dumps_function(f))\n"
    ) % (str(__import__("pathlib").Path(serialisation.__file__).parents[1]),)
    blob = subprocess.run(
        [sys.executable, "-"], input=program.encode(), capture_output=True, check=True
    ).stdout
    assert loads_function(blob)(6, 7) == 42


def test_embedded_modules_import_only_the_standard_library():
    import ast
    from pathlib import Path

    package = Path(serialisation.__file__).parent
    for name in ("serialisation.py", "protocol.py", "worker.py"):
        tree = ast.parse((package / name).read_text())
        # The one sibling they may import is the protocol, embedded beside them.
        relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
        assert all(node.module in (None, "protocol") and node.level == 1 for node in relative)
        assert all(alias.name == "protocol" for node in relative if node.module is None
                   for alias in node.names)
        absolute = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
        }
        assert absolute <= set(sys.stdlib_module_names), (name, absolute)


def test_shipped_function_gets_builtins():
    shipped = loads_function(dumps_function(lambda xs: len(xs)))
    assert isinstance(shipped, types.FunctionType) and shipped([1, 2]) == 2
