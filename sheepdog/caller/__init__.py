"""A request's life in the caller's process: sessions, requests, watching and rendering jobs."""
