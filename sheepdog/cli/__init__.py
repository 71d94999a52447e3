"""The ``sheepdog`` command: look at, collect, cancel and serve requests in a database."""

from .commands import main

__all__ = ["main"]
