"""What a split-inference client raises: one base class, and one subclass per way the server can fail it.

Each is an :class:`~edgesplit.errors.EdgesplitError`, so the CLI prints it as one line. Falling back to the device
hides only an unreachable server; the others are configuration errors and always raise. Beside them, the words the
clients (the torch client, the device client, a relay's next hop) use for what went wrong on the way, and their TLS
context. Torch-free.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from edgesplit.errors import EdgesplitError

__all__ = ["ClientError", "ServerMismatchError", "ServerRejectedError", "ServerUnreachableError",
           "ServerUntrustedError", "describe_transport_error", "error_message", "status_hint", "tls_context"]


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


def tls_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """A verifying TLS client context: the CA file's certificates, else the system's trusted roots."""
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError as error:
        raise ClientError(f"--ca-file {path} does not exist; give the PEM file of the CA that signed the "
                          "server's certificate") from error
    except (ssl.SSLError, OSError) as error:
        raise ClientError(f"--ca-file {path} is not a PEM certificate file ({error}); give the CA's certificate "
                          "in PEM") from error


def describe_transport_error(error: httpx.TransportError) -> str:
    """A failed attempt in a few words: "connection refused or no route", "no answer within the timeout", …"""
    kind = {httpx.ConnectError: "connection refused or no route", httpx.ConnectTimeout: "connect timed out",
            httpx.ReadTimeout: "no answer within the timeout", httpx.WriteTimeout: "sending timed out",
            httpx.PoolTimeout: "no free connection"}.get(type(error))
    text = " ".join(str(error).split())
    return f"{kind or type(error).__name__}" + (f" ({text})" if text and kind is None else "")


def status_hint(status: int, token_from: str = "the client takes it as token=..., `edgesplit infer` from "
                "--token-file or $EDGESPLIT_TOKEN") -> str:
    """What to do about an HTTP status the server refused with (empty where there is nothing to say)."""
    return {401: f" ({token_from})", 404: " (is this the URL of an edgesplit server?)"}.get(status, "")


def error_message(reply: httpx.Response) -> str:
    """The server's one-line reason in an error reply (its JSON ``error``), else the start of the body."""
    try:
        body = reply.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    return " ".join(reply.text.split())[:200] or reply.reason_phrase
