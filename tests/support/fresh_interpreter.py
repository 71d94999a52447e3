"""Call a function in a fresh interpreter that has only what a job file embeds.

The interpreter loads the code of a rendered job file, as a worker does, then
loads the function and arguments that the caller serialised, calls it, and
serialises the result back. Neither sheepdog nor cloudpickle nor the test
modules may be importable there (by default it runs with ``-I -S``), so
anything that did not travel by value fails as it would on a cluster.
"""

import struct
import subprocess
import sys

from sheepdog.caller import jobscript
from sheepdog.wire.settings import WorkerSettings
from sheepdog.wire.serialisation import dumps, dumps_function, loads

_PROGRAM = """
import importlib.util, runpy, struct, sys
assert not importlib.util.find_spec("sheepdog") and not importlib.util.find_spec("cloudpickle")
runpy.run_path(sys.argv[1])
from sheepdog.wire import serialisation
data = sys.stdin.buffer.read()
(size,) = struct.unpack_from("!Q", data)
function = serialisation.loads_function(data[8:8 + size])
result = function(*serialisation.loads(data[8 + size:]))
sys.stdout.buffer.write(serialisation.dumps(result))
"""


def call_in_fresh_interpreter(directory, function, args=(), ns=None,
                              python=(sys.executable, "-I", "-S")):
    """``function(*args)`` run in ``python``, with ``directory`` as its working directory."""
    job = directory / "job.py"
    text = jobscript.render(python[0], [], WorkerSettings(request_id=0))
    job.write_text(text.replace('if __name__ == "__main__":', "if False:"))
    function_blob = dumps_function(function, ns)
    completed = subprocess.run(
        [*python, "-c", _PROGRAM, str(job)],
        input=struct.pack("!Q", len(function_blob)) + function_blob + dumps(tuple(args)),
        capture_output=True, cwd=directory, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    return loads(completed.stdout)
