"""Run the quickstart's examples on this machine, no cluster needed.

Each example runs its tasks as local processes (the ``local`` scheduler),
through the same job file, HTTP server and database a cluster run uses.
Pass a head node's name to run them through GridEngine instead.
"""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for name in ("simple", "namespaces", "errors"):
    print(f"--- examples/{name}.py")
    runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
