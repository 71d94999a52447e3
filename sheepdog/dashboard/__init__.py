"""The live dashboard: a page and a JSON API over one database, for the caller alone.

``app.py`` is the Flask app; ``server.py`` serves it (and imports Flask only then).
"""

from .server import DashboardServer, run_dashboard

__all__ = ["DashboardServer", "run_dashboard"]
