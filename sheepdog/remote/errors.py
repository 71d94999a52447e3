"""The error of reaching the head node, apart from paramiko.

``sheepdog.SSHError`` is part of the public face, which must not import
paramiko (a local map never needs it): so the error lives here, and
``ssh.py`` raises it.
"""


class SSHError(RuntimeError):
    """The head node cannot be reached or refused us; the message says what to fix."""
