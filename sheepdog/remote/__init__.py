"""Reaching the head node: SSH, the shells that run commands, the tunnel and its relay."""
