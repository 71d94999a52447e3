"""numpy objects that must cross between numpy 1.x and 2.x unchanged, and a plain
description of them that both versions compute alike.

The local and the cluster tests ship these functions to the other interpreter
by value, so each imports numpy itself.
"""


def numpy_cases():
    """Arrays of several dtypes and shapes, numpy scalars, and a dict of arrays."""
    import numpy as np

    return {
        "uint8": np.ones(1000, dtype=np.uint8),
        "0-d": np.array(2.5),
        "structured": np.array([(1, (2.0, 3.0)), (4, (5.0, 6.0))],
                               dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
        "over 64 KB": np.arange(100_000, dtype=np.float64),  # out of band
        "non-contiguous view": np.arange(100_000).reshape(1000, 100)[::3, 1::7],
        "fortran order": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
        "strings": np.array(["a", "bc"]),
        "datetimes": np.array(["2024-02-29", "1970-01-01"], dtype="datetime64[D]"),
        "float32 scalar": np.float32(1.5),
        "int64 scalar": np.int64(-7),
        "bool scalar": np.bool_(True),
        "complex scalar": np.complex128(1 + 2j),
        "dict of arrays": {"zeros": np.zeros((3, 2)),
                           "large": np.full(70_000, 3, dtype=np.int8),
                           "scalar": np.float64(0.25)},
    }


def describe(value):
    """(is an array, dtype, shape, bytes in C order) of ``value``, or a dict of them."""
    import numpy as np

    if isinstance(value, dict):
        return {key: describe(item) for key, item in value.items()}
    return (isinstance(value, np.ndarray), value.dtype.descr, value.shape,
            np.ascontiguousarray(value).tobytes())
