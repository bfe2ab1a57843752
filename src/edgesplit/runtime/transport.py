"""How the client's frames travel: HTTP/1.1 on one kept-alive socket, or one WebSocket, both on blocking sockets.

Both do only what the client needs, in the caller's thread, with TCP_NODELAY and each message in one write: one
request in flight, bodies in memory. :class:`KeepAliveTransport` is an httpx transport (``httpx.Client(transport=
...)``); :class:`WebSocketStream` speaks websockets' sans-I/O protocol (websockets comes with uvicorn[standard]
and is imported on first use, as only ``--stream`` needs it).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections import deque

import httpx

__all__ = ["KeepAliveTransport", "WebSocketStream"]


class KeepAliveTransport(httpx.BaseTransport):
    """HTTP/1.1 on one kept-alive socket: each request's head and body in one write, the answer parsed in a few lines.

    httpx's default transport (httpcore + h11) costs about half a millisecond more per request on loopback and
    writes a request's head and body separately (two wake-ups of the server). This one does what the client needs:
    requests with their bodies in memory, answers with Content-Length or chunked bodies. A kept-alive socket the
    server has closed meanwhile is reopened once (only when nothing of the answer has come). Errors are httpx's
    (ConnectError, ConnectTimeout, ReadTimeout, WriteTimeout, ReadError, RemoteProtocolError), with their cause.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self._sock = self._reader = None
        self._where: tuple[str, int] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        body = request.read()
        lines = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items() if name != "accept-encoding"]
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return self.round_trip(message, url, request.extensions.get("timeout", {}), request)

    def post(self, url: httpx.URL, head: bytes, body: bytes, timeouts: dict) -> httpx.Response:
        """POST ``body`` to ``url`` without an httpx.Client around it (which costs 0.2–0.5 ms a request): ``head``
        is the request line and headers up to ``Content-Length: `` (see ``post_head``); errors as for httpx."""
        return self.round_trip(b"%s%d\r\n\r\n%s" % (head, len(body), body), url, timeouts, None)

    @staticmethod
    def post_head(url: httpx.URL, headers: dict[str, str]) -> bytes:
        """The fixed part of a POST to ``url`` with ``headers``, for ``post``: everything but the body's length."""
        lines = [f"POST {url.raw_path.decode('ascii')} HTTP/1.1", f"Host: {url.netloc.decode('ascii')}",
                 *(f"{name}: {value}" for name, value in headers.items()), "Content-Length: "]
        return "\r\n".join(lines).encode("latin-1")

    def round_trip(self, message: bytes, url: httpx.URL, timeouts: dict,
                   request: httpx.Request | None) -> httpx.Response:
        """Send one whole request ``message`` (head and body) to ``url``'s server and read its answer."""
        where = (url.host, url.port or (443 if url.scheme == "https" else 80))
        for attempt in (0, 1):
            reused = self._sock is not None and self._where == where
            if not reused:
                self.close()
                self._connect(where, url.scheme == "https", timeouts.get("connect"))
            try:
                self._sock.settimeout(timeouts.get("write"))
                self._sock.sendall(message)
            except TimeoutError as error:
                self.close()
                raise httpx.WriteTimeout(f"sending timed out ({error})", request=request) from error
            except OSError as error:
                self.close()
                if reused and not attempt:
                    continue  # the server had closed the idle socket
                raise httpx.WriteError(str(error), request=request) from error
            try:
                self._sock.settimeout(timeouts.get("read"))
                status_line = self._reader.readline(65537)
                if not status_line and reused and not attempt:
                    self.close()
                    continue  # closed while idle: nothing was answered, send again on a new socket
                return self._response(status_line, request)
            except TimeoutError as error:
                self.close()
                raise httpx.ReadTimeout(f"no answer within the timeout ({error})", request=request) from error
            except OSError as error:
                self.close()
                raise httpx.ReadError(str(error), request=request) from error
        raise httpx.RemoteProtocolError("the server closed the connection twice", request=request)

    def _connect(self, where: tuple[str, int], secure: bool, timeout: float | None) -> None:
        try:
            sock = socket.create_connection(where, timeout=timeout)
        except TimeoutError as error:
            raise httpx.ConnectTimeout(f"connect timed out ({error})") from error
        except OSError as error:
            raise httpx.ConnectError(str(error)) from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            try:
                sock = (self.ssl_context or ssl.create_default_context()).wrap_socket(sock, server_hostname=where[0])
            except (OSError, ssl.SSLError) as error:
                sock.close()
                raise httpx.ConnectError(str(error)) from error
        self._sock, self._reader, self._where = sock, sock.makefile("rb"), where

    def _response(self, status_line: bytes, request: httpx.Request) -> httpx.Response:
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self.close()
            raise httpx.RemoteProtocolError(f"not an HTTP/1.1 answer: {status_line[:80]!r}", request=request)
        headers: list[tuple[bytes, bytes]] = []
        while True:
            line = self._reader.readline(65537)
            if line in (b"\r\n", b"\n"):
                break
            if not line or len(headers) > 100:
                self.close()
                raise httpx.RemoteProtocolError("the answer's headers did not end", request=request)
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        fields = dict(headers)
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while size := int(self._reader.readline(1024).split(b";")[0] or b"0", 16):
                chunks.append(self._reader.read(size))
                self._reader.readline(1024)
            while self._reader.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            content = b"".join(chunks)
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])
            content = self._reader.read(length)
            if len(content) != length:
                self.close()
                raise httpx.RemoteProtocolError("the server closed the connection mid-answer", request=request)
        else:  # the body runs until the server closes
            content = self._reader.read()
            fields[b"connection"] = b"close"
        if fields.get(b"connection", b"").lower() == b"close" or parts[0] == b"HTTP/1.0":
            self.close()
        return httpx.Response(int(parts[1]), headers=headers, content=content, request=request,
                              extensions={"http_version": parts[0]})

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._reader.close()
                self._sock.close()
        self._sock = self._reader = None


class WebSocketStream:
    """A WebSocket on a plain blocking socket, spoken with websockets' sans-I/O protocol in the caller's thread.

    websockets' own sync client reads on a background thread, so every answer crossed a thread hand-off before
    ``recv`` returned; here the caller reads the socket itself. TCP_NODELAY, no compression, no size cap (the
    response frame says its size and ``Response.from_bytes`` checks it). Raises OSError/TimeoutError when the
    socket fails or stays silent, ``websockets`` exceptions for a refused handshake or a protocol error.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, ssl_context=None) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        deadline = time.monotonic() + timeout_s
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                context = ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=uri.host)
            self.sock, self.protocol, self._frames = sock, ClientProtocol(uri, max_size=None), deque()
            self._parts: list[bytes] = []
            request = self.protocol.connect()
            for name, value in headers.items():
                request.headers[name] = value
            self.protocol.send_request(request)
            self._flush()
            while self.protocol.handshake_exc is None and self.protocol.state.name == "CONNECTING":
                self._read(deadline)
            if self.protocol.handshake_exc is not None:
                raise self.protocol.handshake_exc
        except BaseException:
            sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        self._flush()

    def recv(self, timeout: float) -> bytes | str:
        """The next whole message (bytes, or str for a text message)."""
        from websockets.frames import Opcode

        deadline = time.monotonic() + timeout
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self._text = frame.opcode is Opcode.TEXT
                    self._parts = [frame.data]
                elif frame.opcode is Opcode.CONT:
                    self._parts.append(frame.data)
                else:  # ping (the protocol has queued the pong), pong, close
                    if frame.opcode is Opcode.CLOSE:
                        raise ConnectionError("the server closed the stream")
                    continue
                if frame.fin:
                    data = b"".join(self._parts)
                    self._parts = []
                    return data.decode() if self._text else data
            self._read(deadline)

    def _read(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer on the stream within the timeout")
        self.sock.settimeout(left)
        data = self.sock.recv(1 << 20)
        if not data:
            self.protocol.receive_eof()
            raise ConnectionError("the server closed the connection")
        from websockets.frames import Frame

        self.protocol.receive_data(data)
        self._frames.extend(e for e in self.protocol.events_received() if isinstance(e, Frame))
        self._flush()  # pongs and close replies
        if self.protocol.state.name == "CLOSED":
            raise ConnectionError("the stream is closed")

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def close(self) -> None:
        from websockets.exceptions import WebSocketException

        with contextlib.suppress(OSError, WebSocketException):  # the socket may be gone already
            self.protocol.send_close()
            self._flush()
        self.sock.close()
