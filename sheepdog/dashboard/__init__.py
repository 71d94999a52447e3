"""The live dashboard: a page and a JSON API over one database, for the caller alone."""

from .app import DashboardServer, run_dashboard

__all__ = ["DashboardServer", "run_dashboard"]
