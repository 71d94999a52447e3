"""A script's classes and function, defined in ``__main__`` as a notebook cell defines them."""

#: Classes of the kinds users define in scripts and notebooks, and a function using them.
SCRIPT = """
import dataclasses
import enum
import math

SCALE = 3


@dataclasses.dataclass
class Point:
    x: float
    y: float

    def norm(self):
        return math.hypot(self.x, self.y) * SCALE


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


class Slotted:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Outer:
    class Inner:
        def twice(self, x):
            return 2 * x


def transform(point, colour, slotted):
    return (Point(point.norm(), colour.value), Colour(colour.value + 1),
            Slotted(slotted.value + 1), Outer.Inner().twice(slotted.value))
"""


def run_as_main(source, filename="<ipython-input-1-0123456789ab>"):
    """Run ``source`` as ``__main__``, as a notebook cell runs, and return its namespace."""
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace
