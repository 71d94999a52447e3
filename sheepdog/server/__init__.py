"""The HTTPS endpoint that workers call back: what each call means, and its host.

``callbacks.py`` is the framework-free protocol core; ``host.py`` serves it on
Tornado in a thread of the caller's process.
"""

from .host import Server

__all__ = ["Server"]
