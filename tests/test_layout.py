"""The package's shape: no import circles, the worker side apart, a light ``import sheepdog``.

The import graph is read from the source (every ``import`` statement,
module-level, inside functions and under ``TYPE_CHECKING`` alike), so that a
circle cannot hide behind a late import.
"""

import ast
import subprocess
import sys
from pathlib import Path

import sheepdog

PACKAGE = Path(sheepdog.__file__).resolve().parent
#: Packages whose modules are embedded in job files and run on bare workers.
WORKER_SIDE = ("sheepdog.wire", "sheepdog.worker")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("sheepdog",) + path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, by absolute name; sheepdog's own resolved to modules."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in MODULES else source)
    return found


def own_imports(name: str) -> set[str]:
    return {target for target in imports_of(name) if target in MODULES and target != name}


def find_circle() -> list[str]:
    """One import circle among sheepdog's modules, or [] when there is none."""
    graph = {name: sorted(own_imports(name)) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        path.append(name)
        for target in graph[name]:
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                circle = visit(target)
                if circle:
                    return circle
        path.pop()
        state[name] = 2
        return []

    for name in sorted(graph):
        if name not in state:
            circle = visit(name)
            if circle:
                return circle
    return []


def test_the_package_has_no_import_circle():
    assert find_circle() == []


def test_the_circle_finder_sees_a_late_import(monkeypatch):
    """The finder itself: a function-level import back up the graph is a circle."""
    real = own_imports

    def with_a_late_import(name):
        extra = {"sheepdog.api"} if name == "sheepdog.config" else set()
        return real(name) | extra

    monkeypatch.setattr(sys.modules[__name__], "own_imports", with_a_late_import)
    circle = find_circle()
    assert circle and circle[0] == circle[-1] and "sheepdog.config" in circle


def test_caller_code_never_imports_the_worker_side_package():
    offenders = {name: sorted(t for t in own_imports(name) if t.startswith("sheepdog.worker"))
                 for name in MODULES if not name.startswith("sheepdog.worker")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_worker_side_modules_import_only_the_standard_library_cloudpickle_and_each_other():
    allowed = set(sys.stdlib_module_names) | {"cloudpickle"}
    for name in MODULES:
        if not name.startswith(WORKER_SIDE):
            continue
        for target in imports_of(name):
            if target.startswith("sheepdog."):
                assert target.startswith(WORKER_SIDE), (name, target)
                assert not (name.startswith("sheepdog.wire") and target.startswith(
                    "sheepdog.worker")), (name, target)  # both sides import wire, not worker
            else:
                assert target.split(".")[0] in allowed, (name, target)


def heavy_modules_after(code):
    probe = (f"import sys; {code}; print(' '.join(sorted(name for name in "
             "('flask', 'werkzeug', 'paramiko', 'cryptography', 'tornado') "
             "if name in sys.modules)))")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.split()


def test_import_sheepdog_and_its_public_names_load_no_web_framework_and_no_ssh():
    assert heavy_modules_after("import sheepdog") == []
    assert heavy_modules_after("import sheepdog; [getattr(sheepdog, name) "
                               "for name in sheepdog.__all__]") == []


def test_a_local_map_without_the_dashboard_loads_no_flask_and_no_ssh(tmp_path):
    code = (f"import sheepdog; assert sheepdog.map(abs, [(-1,)], {{'scheduler': 'local', "
            f"'dashboard': False, 'dbfile': {str(tmp_path / 'db.sqlite')!r}}}) == [1]")
    # the callback server and its TLS certificate, and no more
    assert heavy_modules_after(code) == ["cryptography", "tornado"]


def test_the_old_serialisation_name_reaches_the_module_in_use():
    """The documented override, ``import sheepdog.serialisation`` then set an attribute."""
    probe = ("import sheepdog.serialisation; sheepdog.serialisation.pickle_protocol = 2; "
             "from sheepdog.wire import serialisation; print(serialisation.pickle_protocol)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.split() == ["2"]
