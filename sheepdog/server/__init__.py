"""The HTTPS endpoint that workers call back: what each call means, and its host.

``callbacks.py`` is the framework-free protocol core; ``tornado_handler.py``
serves it on Tornado, within the limits of ``connections.py``; ``host.py``
(:class:`Server`) runs that in a thread of the caller's process, through
``thread.py``, which the dashboard's server uses too. Importing this package
imports no web framework: Tornado is imported when a server starts.
"""

from .host import Server

__all__ = ["Server"]
