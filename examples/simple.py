"""The quickstart's synchronous map: add pairs of numbers on the cluster.

Run as ``python simple.py`` to use local processes, or ``python simple.py HOST``
to submit to the GridEngine head node HOST.
"""

import sys

import sheepdog

conf = {"host": sys.argv[1]} if len(sys.argv) > 1 else {"scheduler": "local"}


def f(a, b):
    return a + b


args = [(1, 1), (1, 2), (2, 2)]
print(sheepdog.map(f, args, conf))  # [2, 3, 4]
