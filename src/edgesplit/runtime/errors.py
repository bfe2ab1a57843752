"""What a split-inference client raises: one base class, and one subclass per way the server can fail it.

Each is an :class:`~edgesplit.errors.EdgesplitError`, so the CLI prints it as one line. Falling back to the device
hides only an unreachable server; the others are configuration errors and always raise.
"""

from __future__ import annotations

from edgesplit.errors import EdgesplitError

__all__ = ["ClientError", "ServerMismatchError", "ServerRejectedError", "ServerUnreachableError",
           "ServerUntrustedError"]


class ClientError(EdgesplitError):
    """A client that cannot do what it was asked: see the subclasses."""


class ServerUnreachableError(ClientError):
    """The server did not answer (connection refused, timeouts, 5xx) and falling back to the device is off."""


class ServerRejectedError(ClientError):
    """The server refused a request for a reason retrying cannot fix (a 4xx: wrong token, a bad frame)."""


class ServerUntrustedError(ClientError):
    """The server's TLS certificate does not verify against the CA file (or the system's roots)."""


class ServerMismatchError(ClientError):
    """The server serves another model, another graph, or other routes than this client's plan."""
