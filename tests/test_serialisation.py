import dataclasses
import json
import os
import pickle
import subprocess
import sys
import threading
import types

import pytest

from sheepdog.wire import serialisation
from sheepdog.wire.serialisation import (
    SerialisationError,
    dumps,
    dumps_argument,
    dumps_function,
    load_or_describe,
    loads,
    loads_function,
    module_is_installed,
)

from .support.fresh_interpreter import call_in_fresh_interpreter
from .support.main_script import SCRIPT, run_as_main

OFFSET = 100


def helper(x):
    return x + OFFSET


def uses_helper(x):
    return helper(x) * 2


@dataclasses.dataclass
class Tally:
    count: int

    def add(self, n):
        return Tally(self.count + helper(n) - OFFSET)


def test_function_in_main_module_ships_by_value_and_library_function_by_name():
    assert b"_make_function" in dumps(lambda: 1)
    assert b"_make_function" in dumps(helper)  # this test module is not installed
    assert b"_make_function" not in dumps(json.dumps) and b"json" in dumps(json.dumps)


def test_modules_installed_anywhere_travel_by_name():
    import numpy

    assert module_is_installed("json") and module_is_installed("sys")
    assert module_is_installed("numpy.linalg")  # site-packages
    assert module_is_installed("sheepdog.api")  # pip install -e
    assert module_is_installed(numpy.__name__)
    assert not module_is_installed("__main__")
    assert not module_is_installed(__name__)  # beside the editable project, but not part of it
    assert not module_is_installed("a_module_never_imported")


@pytest.fixture
def debian_system_python(monkeypatch):
    """The directories a Debian or Ubuntu system Python reports, whatever this machine is:
    its stdlib, /usr/local's dist-packages (sysconfig's purelib), the distro's packages in
    /usr/lib/python3/dist-packages (only ``site.getsitepackages`` names them) and the user
    site; no editable install. The caches of what counts as installed are emptied before
    and after."""
    paths = {"stdlib": "/usr/lib/python3.11", "platstdlib": "/usr/lib/python3.11",
             "purelib": "/usr/local/lib/python3.11/dist-packages",
             "platlib": "/usr/local/lib/python3.11/dist-packages",
             "include": "/usr/include/python3.11", "scripts": "/usr/local/bin"}
    monkeypatch.setattr(serialisation.sysconfig, "get_paths", lambda *args, **kwargs: paths)
    monkeypatch.setattr(serialisation.site, "getsitepackages", lambda *args: [
        "/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3/dist-packages",
        "/usr/lib/python3.11/dist-packages"])
    monkeypatch.setattr(serialisation.site, "getusersitepackages",
                        lambda: "/home/user/.local/lib/python3.11/site-packages")
    monkeypatch.setattr(serialisation, "_editable_packages", lambda: {})
    caches = (serialisation._library_directories, serialisation._file_is_installed)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def test_which_directories_count_as_installed_does_not_depend_on_the_machine(
        monkeypatch, debian_system_python):
    """What tests/test_numpy_versions.py needs from a real system Python, pinned here: a
    distro package in /usr/lib/python3/dist-packages travels by name, as does anything in
    the stdlib, the site directories and the user site; a sibling directory whose name only
    starts like one of them, and the user's own folders, do not."""
    files = {
        "/usr/lib/python3/dist-packages/distro_numpy/linalg.py": True,
        "/usr/local/lib/python3.11/dist-packages/pip_installed.py": True,
        "/usr/lib/python3.11/dist-packages/versioned_distro.py": True,
        "/usr/lib/python3.11/a_stdlib_module.py": True,
        "/home/user/.local/lib/python3.11/site-packages/pip_user.py": True,
        "/usr/lib/python3/dist-packages-old/sibling.py": False,
        "/usr/lib/python3/beside_dist_packages.py": False,
        "/home/user/project/analysis.py": False,
    }
    for number, (filename, installed) in enumerate(files.items()):
        module = types.ModuleType(f"pinned_layout_module_{number}")
        module.__file__ = filename
        monkeypatch.setitem(sys.modules, module.__name__, module)
        assert module_is_installed(module.__name__) is installed, filename

    distro = types.ModuleType("pinned_distro_package")
    distro.__file__ = "/usr/lib/python3/dist-packages/pinned_distro_package/__init__.py"
    exec("def distro_function(x):\n    return x\n", vars(distro))
    monkeypatch.setitem(sys.modules, distro.__name__, distro)
    payload = dumps(distro.distro_function)
    assert b"_make_function" not in payload and b"pinned_distro_package" in payload


def test_modules_in_the_user_site_travel_by_name(monkeypatch):
    import site

    module = types.ModuleType("installed_with_pip_user")
    module.__file__ = os.path.join(site.getusersitepackages(), "installed_with_pip_user.py")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert module_is_installed(module.__name__)


def test_cloudpickle_travels_by_name_wherever_the_caller_has_it(monkeypatch):
    """Every job file embeds it; shipping its own rebuilding functions by value would never end."""
    import cloudpickle

    vendored = "/home/user/vendored/cloudpickle/cloudpickle.py"
    monkeypatch.setattr(cloudpickle.cloudpickle, "__file__", vendored)
    assert loads(dumps(lambda: 1))() == 1


def test_instances_of_main_classes_travel_both_ways_and_come_back_as_the_callers_classes(
        tmp_path):
    main = run_as_main(SCRIPT)
    point, colour, slotted, twice = call_in_fresh_interpreter(
        tmp_path, main["transform"], (main["Point"](3, 4), main["Colour"].RED, main["Slotted"](1)))
    assert type(point) is main["Point"] and point == main["Point"](15.0, 1)
    assert colour is main["Colour"].GREEN
    assert type(slotted) is main["Slotted"] and slotted.value == 2
    assert twice == 2


def test_instances_of_main_classes_load_in_a_process_that_never_defined_them():
    """As get_results and get_errors do from a later session."""
    main = run_as_main(SCRIPT)
    payload = dumps((main["Point"](1, 2), main["Colour"].GREEN, main["Slotted"]))
    program = "import sys; from sheepdog.wire.serialisation import loads; print(loads(sys.stdin.buffer.read()))"
    output = subprocess.run([sys.executable, "-c", program], input=payload, capture_output=True,
                            check=True).stdout.decode()
    assert output == "(Point(x=1, y=2), <Colour.GREEN: 2>, <class '__main__.Slotted'>)\n"


def test_lambdas_closures_and_recursion_run_where_nothing_is_installed(tmp_path):
    def make(scale):
        def fact(n, step=lambda k: k - 1):
            return 1 if n <= 1 else scale * n * fact(step(n))

        return fact

    assert call_in_fresh_interpreter(tmp_path, make(1), (5,)) == 120


def test_classes_of_modules_not_installed_travel_by_value(tmp_path):
    assert b"_make_skeleton_class" in dumps(Tally(1))
    tally = call_in_fresh_interpreter(tmp_path, Tally.add, (Tally(1), 2))
    assert type(tally) is Tally and tally == Tally(3)


def test_namespace_never_enters_an_imported_module():
    shipped = loads_function(dumps_function(json.dumps, {"OFFSET": 1}))
    assert shipped is json.dumps and "OFFSET" not in vars(json)


def test_a_payload_that_loads_is_returned():
    assert load_or_describe(dumps({"a": [1, 2]})) == (True, {"a": [1, 2]})


@pytest.mark.parametrize("payload, reason", [
    (b"cno_such_module\nThing\n.", "ModuleNotFoundError: No module named 'no_such_module'"),
    (b"c__main__\nModel\n.", "AttributeError: Can't get attribute 'Model' on <module"),
    (dumps(list(range(1000)))[:-10], "UnpicklingError: pickle data was truncated"),
    (dumps(pickle.PickleBuffer(bytearray(100_000)))[:-10], "ValueError: truncated sheepdog payload"),
    (b"", "EOFError: Ran out of input"),
])
def test_a_payload_that_cannot_be_loaded_is_described_in_one_line(payload, reason):
    loaded, description = load_or_describe(payload)
    assert not loaded and description.startswith(reason) and "\n" not in description


def test_globals_the_function_uses_are_captured_automatically(tmp_path):
    assert call_in_fresh_interpreter(tmp_path, uses_helper, (1,)) == 202


def test_namespace_entries_override_captured_globals(tmp_path):
    assert call_in_fresh_interpreter(tmp_path, uses_helper, (1,), ns={"OFFSET": 1}) == 4


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


def test_global_import_idiom_is_shared_between_shipped_functions(tmp_path):
    main = run_as_main(
        "def g(x):\n    return m.sqrt(x)\n"
        "def f(x):\n    import math as m\n    global m\n    return g(x)\n", "<stdin>")
    assert call_in_fresh_interpreter(tmp_path, main["f"], (16,)) == 4.0
    assert call_in_fresh_interpreter(tmp_path, main["f"], (16,), ns={"g": main["g"]}) == 4.0


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


@pytest.mark.parametrize("arguments", [
    (), (1,), (1, 2.5, "x", b"y", None, True), ("s", "s"), (2**100, -5), ("é" * 70_000,),
    (b"z" * (200 << 10),),
])
def test_plain_arguments_are_the_same_bytes_as_through_sheepdogs_pickler(arguments):
    """Their shortcut through the standard pickler must not change a task's payload:
    the cache's key is made from it, and an earlier result found by the old bytes."""
    shortcut = b"".join(dumps_argument(0, arguments))
    assert shortcut == b"".join(serialisation.dumps_parts(arguments))
    assert loads(shortcut) == arguments


@pytest.mark.filterwarnings("error:numpy.core:DeprecationWarning")
def test_a_pickle_naming_numpy_1s_core_loads_from_bytes_without_numpy_2s_warning():
    """Plain bytes take a faster path than sheepdog's unpickler: not when they name numpy."""
    numpy = pytest.importorskip("numpy")
    ones = loads(b"cnumpy.core.numeric\nones\n(I3\ntR.")  # protocol 0: numpy.core.numeric.ones(3)
    assert numpy.array_equal(ones, numpy.ones(3))


def test_arguments_round_trip_including_functions():
    value = loads(dumps((1, "two", [3.0], lambda y: y + 1)))
    assert value[:3] == (1, "two", [3.0]) and value[3](1) == 2


def test_protocol_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setattr(serialisation, "pickle_protocol", 2)
    assert dumps(1)[:2] == b"\x80\x02"
    main = run_as_main(SCRIPT)
    assert call_in_fresh_interpreter(tmp_path, main["Point"].norm, (main["Point"](3, 4),)) == 15.0


def test_function_defined_without_source_file_ships():
    """A function typed into ``python -`` (stdin) has no source; its code still ships."""
    program = (
        "import sys; sys.path.insert(0, %r)\n"
        "from sheepdog.wire.serialisation import dumps_function\n"
        "def f(a, b):\n    return a * b\n"
        "sys.stdout.buffer.write(dumps_function(f))\n"
    ) % (str(__import__("pathlib").Path(serialisation.__file__).parents[1]),)
    blob = subprocess.run(
        [sys.executable, "-"], input=program.encode(), capture_output=True, check=True
    ).stdout
    assert loads_function(blob)(6, 7) == 42


def test_shipped_function_gets_builtins():
    shipped = loads_function(dumps_function(lambda xs: len(xs)))
    assert isinstance(shipped, types.FunctionType) and shipped([1, 2]) == 2


def test_compiled_module_of_the_users_is_refused_naming_it(monkeypatch, tmp_path):
    compiled = types.ModuleType("users_fastmath")
    compiled.__file__ = str(tmp_path / "users_fastmath.cpython-311-x86_64-linux-gnu.so")
    monkeypatch.setitem(sys.modules, "users_fastmath", compiled)

    def f(x):
        return users_fastmath.add(x)  # noqa: F821 - the global below

    f.__globals__["users_fastmath"] = compiled
    try:
        with pytest.raises(SerialisationError, match="the module 'users_fastmath' .*compiled"):
            dumps_function(f)
    finally:
        del f.__globals__["users_fastmath"]


def test_own_module_imported_inside_a_function_travels(tmp_path, monkeypatch):
    (tmp_path / "own_module_inside.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "own_module_inside", __import__("own_module_inside"))
    (tmp_path / "run").mkdir()

    def f(x):
        import own_module_inside
        return own_module_inside.twice(x)

    assert call_in_fresh_interpreter(tmp_path / "run", f, (21,)) == 42


def test_versions_of_packages_reached_by_name_travel_with_the_function():
    import numpy

    _function, versions = serialisation.loads_function_and_versions(
        dumps_function(lambda: numpy.zeros(1)))
    assert versions["numpy"] == numpy.__version__
    assert versions["python"] == sys.version.split()[0] and "json" not in versions


def test_version_differences_name_major_or_minor_changes_only():
    from sheepdog.wire.modules import version_differences

    caller = {"python": "3.11.4", "numpy": "2.1.0", "pandas": "2.2.1"}
    assert version_differences(caller, {"python": "3.11.9", "numpy": "1.26.4",
                                        "pandas": "2.2.3"}) == [
        "numpy 2.1.0 in the caller, 1.26.4 on the worker"]
    assert version_differences(caller, dict(caller)) == []


def test_module_made_in_the_caller_without_a_file_travels_by_value(monkeypatch, tmp_path):
    made = types.ModuleType("made_in_the_caller")
    made.scale = 3
    monkeypatch.setitem(sys.modules, "made_in_the_caller", made)
    assert not module_is_installed("made_in_the_caller")
    assert module_is_installed("sys") and module_is_installed("_frozen_importlib")

    def f(x):
        return made.scale * x

    assert call_in_fresh_interpreter(tmp_path, f, (2,)) == 6


def test_what_a_module_of_yours_holds_that_cannot_travel_is_left_out_naming_it(
        tmp_path, monkeypatch, caplog):
    (tmp_path / "own_module_with_lock.py").write_text(
        "import threading\nLOCK = threading.Lock()\nFACTOR = 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "own_module_with_lock", __import__("own_module_with_lock"))
    (tmp_path / "run").mkdir()

    def f(x):
        import own_module_with_lock
        return own_module_with_lock.FACTOR * x

    with caplog.at_level("WARNING", logger="sheepdog.wire.serialisation"):
        assert call_in_fresh_interpreter(tmp_path / "run", f, (2,)) == 10
    assert caplog.messages == [
        "left out of the modules that travel, since they cannot be pickled: "
        "own_module_with_lock.LOCK; a task that uses one fails on the worker"]


def test_a_result_holding_a_module_of_yours_does_not_enter_sys_modules(tmp_path, monkeypatch):
    (tmp_path / "own_module_in_result.py").write_text("def one():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__("own_module_in_result")
    payload = dumps(module)
    monkeypatch.delitem(sys.modules, "own_module_in_result")
    loaded = loads(payload)
    assert loaded.one() == 1 and "own_module_in_result" not in sys.modules
    shipped = loads_function(dumps_function(lambda: module.one()))
    assert shipped() == 1 and sys.modules["own_module_in_result"] is not module
    monkeypatch.delitem(sys.modules, "own_module_in_result")
