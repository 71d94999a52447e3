"""The quickstart's import idiom: f imports numpy and makes it global for g.

The workers need numpy installed; nothing else is installed on them.
Run as ``python numpy_mean.py [HOST]``.
"""

import sys

import sheepdog

conf = {"host": sys.argv[1]} if len(sys.argv) > 1 else {"scheduler": "local"}


def g(x):
    return np.mean(x)  # noqa: F821 - f makes np global on the worker


def f(x):
    import numpy as np

    global np
    return g(x)


print([float(mean) for mean in sheepdog.map(f, [([1, 2, 3],), ([4, 6],)], conf)])  # [2.0, 5.0]
