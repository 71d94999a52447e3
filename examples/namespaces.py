"""The quickstart's namespace example: f uses a constant and a helper function.

Globals that f uses are shipped automatically; ``ns`` overrides them.
Run as ``python namespaces.py [HOST]``.
"""

import sys

import sheepdog

conf = {"host": sys.argv[1]} if len(sys.argv) > 1 else {"scheduler": "local"}

constant = 12


def g(x):
    return x * 2


def f(a, b):
    return a + g(b) + constant


args = [(1, 2), (2, 3), (3, 4)]
print(sheepdog.map_sync(f, args, conf))  # [17, 20, 23]
print(sheepdog.map(f, args, conf, ns={"constant": 0}))  # [5, 8, 11]
