"""What the server refuses before the app sees a request: too many connections, slow headers, foreign pages.

- ``guarded_protocol(...)`` is uvicorn's HTTP protocol with a connection cap (a connection beyond it is answered
  503 and closed at once) and a header deadline (a connection must finish each request's headers within
  ``header_timeout_s`` of opening or of its previous answer, else 408 and closed: slowloris sockets do not stay).
- ``BrowserGuard`` is ASGI middleware: a request whose ``Host`` is not one of the server's own names is refused
  (DNS rebinding), and so is one that carries a browser ``Origin`` other than the server's own or one given with
  ``--allow-origin`` (cross-site requests and WebSockets from any web page). Programs (the edgesplit client,
  curl, httpx) send no Origin and are not affected.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable

__all__ = ["BrowserGuard", "allowed_hosts", "guarded_protocol", "is_loopback", "split_host"]


def split_host(value: str) -> tuple[str, str]:
    """``host[:port]`` or ``[v6]:port`` as (host in lower case, without brackets; port or '')."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in ("", "*")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host names a server bound to ``bound`` answers: loopback names, the bound address, ``extra``.

    None (any Host) for a wildcard address (0.0.0.0, ::) with no ``extra``: its names cannot be known, and such a
    server needs a token anyway (a page that rebinds DNS to it has no token).
    """
    extra = {split_host(h)[0] for h in extra}
    host = split_host(bound)[0] if bound.startswith("[") else bound.lower()
    if _is_wildcard(host) and not extra:
        return None
    names = {"localhost", "127.0.0.1", "::1", *extra}
    if not _is_wildcard(host):
        names.add(host)
    return frozenset(names)


class BrowserGuard:
    """ASGI middleware refusing foreign ``Host`` and ``Origin`` headers (403), for HTTP and WebSocket alike."""

    def __init__(self, app, hosts: frozenset[str] | None = None, origins: Iterable[str] = ()) -> None:  # noqa: ANN001
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] in ("http", "websocket") and await self.refused(scope, send):
            return
        await self.app(scope, receive, send)

    async def refused(self, scope, send) -> bool:  # noqa: ANN001
        """Whether the request is refused (and answered 403) for its Host or Origin; an app's own fast paths call
        this where they bypass the middleware stack."""
        problem = self.problem(scope)
        if problem is None:
            return False
        await self._refuse(scope, send, problem)
        return True

    def problem(self, scope) -> str | None:  # noqa: ANN001
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if self.hosts is not None:
            name = split_host(host or "")[0]
            if name not in self.hosts and not is_loopback(name) and not name.endswith(".localhost"):
                # a rebound DNS name is never a loopback one
                return (f"Host '{(host or '')[:80]}' is not this server's; connect by its address, or start it with "
                        "--allow-host NAME")
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
            if origin.rstrip("/").lower() != f"{scheme}://{(host or '').lower()}":
                return (f"requests from web pages at {origin[:80]} are not allowed; start the server with "
                        f"--allow-origin {origin[:80]} to allow that page")
        return None

    @staticmethod
    async def _refuse(scope, send, message: str) -> None:  # noqa: ANN001
        if scope["type"] == "websocket":  # before accept: uvicorn answers the handshake with 403
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def guarded_protocol(base: type, max_connections: int, header_timeout_s: float) -> type:
    """``base`` (uvicorn's httptools protocol) with a connection cap and a header deadline."""

    class GuardedProtocol(base):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._answer_and_close(503, f"this server already holds {max_connections} connections, its limit; "
                                            "try again later")
                return
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers (or the idle keep-alive close) within the deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            self._answer_and_close(408, f"the request's headers did not arrive within {header_timeout_s:g} s")

        def _answer_and_close(self, status: int, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol
