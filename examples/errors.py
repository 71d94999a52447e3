"""A task that raises gives None in map's result; get_errors has its traceback.

Run as ``python errors.py [HOST]``.
"""

import sys

import sheepdog

conf = {"host": sys.argv[1]} if len(sys.argv) > 1 else {"scheduler": "local"}


def inverse(x):
    return 1 / x


print(sheepdog.map(inverse, [(1,), (0,), (4,)], conf))  # [1.0, None, 0.25]
request_id = sheepdog.map_async(inverse, [(0,)], conf)
sheepdog.get_results(request_id, "./sheepdog.sqlite")
for args, error in sheepdog.get_errors(request_id, "./sheepdog.sqlite"):
    print(f"f{args} failed:\n{error}")
