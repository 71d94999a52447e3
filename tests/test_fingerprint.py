"""The key of a computation: the same in every process for an unchanged script, and changed
by an edit of what the function computes (its body, a helper in another of the user's
modules, a global constant it reads) or of a library version it uses.

Each key is made by a script run in a new interpreter (new hash seed, new addresses,
new cloudpickle class ids), so that equal keys prove stability across processes.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sheepdog.caller import fingerprint

ROOT = Path(__file__).resolve().parent.parent

HELPERS = """
import math
SCALE = 3

def helper(x):
    return x * SCALE + math.floor(0.5)

def unused(x):
    return x

class Thing:
    factor = 2

    def go(self, y):
        return helper(y) * self.factor
"""

SCRIPT = """
import sys
import numpy as np
import helpers
from helpers import Thing
from sheepdog.caller.fingerprint import function_key, task_keys
from sheepdog.wire.serialisation import dumps_argument

WORDS = {"alpha", "beta", "gamma", "delta"}
OFFSET = 10

def f(x):
    if str(x) in WORDS:
        return 0
    return helpers.helper(x) + Thing().go(x) + np.sqrt(x) + OFFSET

key = function_key(f, {"weights": (1, 2, 3)})
print(key.hex())
print(task_keys(key, [dumps_argument(0, (1,))])[0].hex())
"""


def key_of(tmp_path, script=SCRIPT, helpers=HELPERS):
    """The function key and the key of the task ``f(1)``, made in a new interpreter."""
    (tmp_path / "helpers.py").write_text(textwrap.dedent(helpers).lstrip())
    (tmp_path / "script.py").write_text(textwrap.dedent(script).lstrip())
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "random"}
    completed = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=environment,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return tuple(completed.stdout.split())


def test_unchanged_script_has_the_same_key_in_every_process(tmp_path):
    assert key_of(tmp_path) == key_of(tmp_path) == key_of(tmp_path)


@pytest.mark.parametrize("edit", [
    ("script", "return helpers.helper(x) + Thing()", "return helpers.helper(x) - Thing()"),
    ("script", "OFFSET = 10", "OFFSET = 11"),
    ("script", '"delta"}', '"epsilon"}'),
    ("helpers", "return x * SCALE", "return x * SCALE * 1"),
    ("helpers", "SCALE = 3", "SCALE = 4"),
    ("helpers", "factor = 2", "factor = 5"),
    ("script", '{"weights": (1, 2, 3)}', '{"weights": (1, 2, 4)}'),
], ids=["body", "global-constant", "global-set", "helper-in-another-module",
        "constant-of-another-module", "class-attribute", "namespace"])
def test_an_edit_of_what_is_computed_changes_the_key(tmp_path, edit):
    before = key_of(tmp_path)
    which, old, new = edit
    script, helpers = SCRIPT, HELPERS
    if which == "script":
        assert old in script
        script = script.replace(old, new)
    else:
        assert old in helpers
        helpers = helpers.replace(old, new)
    after = key_of(tmp_path, script, helpers)
    assert after[0] != before[0] and after[1] != before[1]


@pytest.mark.parametrize("edit", [
    ("helpers", "def unused(x):\n    return x", "def unused(x):\n    return -x"),
    ("script", "import sys\n", "import sys\n\n\n# a comment, and the lines move\n"),
    ("script", "def f(x):", "def g(x):\n    return 1\n\ndef f(x):"),
], ids=["unused-helper", "comment-and-lines", "another-function"])
def test_an_edit_of_what_is_not_computed_keeps_the_key(tmp_path, edit):
    before = key_of(tmp_path)
    which, old, new = edit
    script, helpers = SCRIPT, HELPERS
    if which == "script":
        script = script.replace(old, new)
    else:
        helpers = helpers.replace(old, new)
    assert key_of(tmp_path, script, helpers) == before


def test_the_arguments_are_part_of_the_task_key(tmp_path):
    function_key = fingerprint.function_key(len)
    one, two, one_again = fingerprint.task_keys(function_key, [b"one", [b"t", b"wo"], b"one"])
    assert one == one_again != two


def uses_numpy(x):
    return np.sqrt(x)


def test_a_library_version_changes_the_key(monkeypatch):
    before = fingerprint.function_key(uses_numpy)
    real = fingerprint._top_version
    monkeypatch.setattr(fingerprint, "_top_version",
                        lambda top: "numpy 0.0.1" if top == "numpy" else real(top))
    assert fingerprint.function_key(uses_numpy) != before


def test_the_versions_of_installed_libraries_reached_by_value_count_too():
    array = np.arange(3)
    fingerprinter = fingerprint._Fingerprinter()
    fingerprinter.digest(lambda: array.sum())
    assert "numpy" in fingerprinter.packages


def recursive(n):
    return 1 if n <= 1 else n * recursive(n - 1)


def test_a_function_that_calls_itself_has_a_key():
    assert fingerprint.function_key(recursive) == fingerprint.function_key(recursive)


def test_a_closure_cell_is_part_of_the_key():
    def make(k):
        return lambda x: x + k
    assert fingerprint.function_key(make(1)) != fingerprint.function_key(make(2))
    assert fingerprint.function_key(make(1)) == fingerprint.function_key(make(1))


def test_a_global_that_cannot_be_pickled_is_a_clear_error():
    import threading
    lock = threading.Lock()

    def locked():
        return lock

    with pytest.raises(fingerprint.FingerprintError, match="lock"):
        fingerprint.function_key(locked)
