"""The tail server: FastAPI over the engine — binary frames over HTTP and WebSocket, tokens, limits, metrics, logs.

``create_app(engine, token)`` is the ASGI app; ``ServerThread`` runs it with uvicorn on a background thread
(tests, benchmarks, the demo); ``serve(...)`` is what `edgesplit serve` runs in the foreground, until SIGTERM or
SIGINT, after which it stops accepting, answers what is in flight and exits 0.

Before the app: a connection cap and a header deadline (``guard.guarded_protocol``), then the Host and Origin
checks (``guard.BrowserGuard``). Every request is then checked in this order, each refusal answered before the
body is read: the bearer token (401), the declared size (413), the client's requests in flight (429); the body is
then read with a running cap (413) and a deadline (408), so a body without Content-Length is never buffered past
the limit and a slow one never holds its slot for long. A client is its peer address (never a name it sends).
Metrics go to a Prometheus registry of the app's own; each request is one JSON line on the ``edgesplit.server``
logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request as HttpRequest, Security, WebSocket
from fastapi.responses import JSONResponse, Response as HttpResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect

from edgesplit.codecs import DecodeLimits
from edgesplit.errors import EdgesplitError
from edgesplit.plan.schema import is_chain_plan, load_plan
from edgesplit.runtime.auth import bearer_matches, token_from
from edgesplit.runtime.deployment import Deployment, Route, load_deployment
from edgesplit.runtime.engine import Engine, Observer, RequestRecord, ServerLimits, peek_request_id
from edgesplit.runtime.guard import BrowserGuard, allowed_hosts, guarded_protocol, is_loopback
from edgesplit.runtime.wire import MEDIA_TYPE, Response, Status, check_model_id

__all__ = ["DEFAULT_CLIENT_CONCURRENCY", "LOG_LEVELS", "Guards", "JsonFormatter", "ServerError", "ServerThread",
           "check_exposure", "check_tls", "configure_logging", "create_app", "decode_limits", "request_limit",
           "serve"]

DEFAULT_CLIENT_CONCURRENCY = 16
LOG_LEVELS = ("debug", "info", "warning", "error")
log = logging.getLogger("edgesplit.server")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ERROR = {"application/json": {"schema": {"type": "object", "properties": {
    "error": {"type": "string"}, "request_id": {"type": "string"}}, "required": ["error"]}}}
_INFER_DOC = {
    "requestBody": {"required": True, "description": "a request frame (docs/protocol.md)",
                    "content": {MEDIA_TYPE: _BINARY}},
}
_INFER_RESPONSES = {
    200: {"description": "a response frame (docs/protocol.md)", "content": {MEDIA_TYPE: _BINARY}},
    **{code: {"description": what, "content": _ERROR} for code, what in (
        (400, "a malformed frame, a wrong shape, width or dtype for the route"),
        (401, "a missing or wrong bearer token"), (404, "an unknown model or route"),
        (403, "a Host that is not the server's, or a web page's Origin that is not allowed"),
        (408, "the body did not arrive within the server's deadline"),
        (409, "a request id already used for another request"),
        (413, "a body over the server's request limit, or a payload over its decode limits"),
        (429, "the client has as many requests in flight as the server allows"),
        (500, "the tail failed (a bug, never the request's fault)"))},
}


class ServerError(EdgesplitError):
    """A server that cannot start as asked (no token on a public address, a port in use, an unreadable token)."""


@dataclass(frozen=True)
class Guards:
    """What keeps a hostile network from exhausting the server or a web page from using it (docs/threat-model.md)."""

    max_connections: int = 256  # open connections (HTTP and WebSocket); beyond: 503 and closed
    header_timeout_s: float = 10.0  # a request's headers, from connect or the previous answer; beyond: 408, closed
    body_timeout_s: float = 30.0  # a request's whole body once its headers arrived; beyond: 408
    stream_idle_s: float = 300.0  # a WebSocket with no complete message for this long is closed (1001)
    allow_origins: tuple[str, ...] = ()  # web pages (scheme://host[:port]) allowed to call the server
    allow_hosts: tuple[str, ...] = ()  # extra Host names (DNS names of the server) besides its address


# ---- metrics and logs ---------------------------------------------------------------------------------------------


class ServerMetrics(Observer):
    """Prometheus metrics in a registry of their own (so several apps in one process do not clash)."""

    def __init__(self, deployments: Iterable[Deployment]) -> None:
        self._models = {id(route): d.model_id for d in deployments for route in d.routes}
        self.registry = registry = CollectorRegistry(auto_describe=True)
        by_route = ["model", "route"]
        self.requests = Counter("edgesplit_requests", "Requests answered, by HTTP status (refusals included)",
                                [*by_route, "status"], registry=registry)
        self.errors = Counter("edgesplit_errors", "Requests answered with an error status",
                              [*by_route, "status"], registry=registry)
        self.seconds = Histogram("edgesplit_request_seconds", "From a request's arrival to its answer",
                                 by_route, registry=registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("edgesplit_batch_size", "Requests per forward pass of a tail", by_route,
                                    registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_rows = Histogram("edgesplit_batch_rows", "Inputs (rows) per forward pass of a tail", by_route,
                                    registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.forward_seconds = Histogram("edgesplit_forward_seconds", "Time of one forward pass of a tail", by_route,
                                         registry=registry,
                                         buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))
        self.bytes_in = Counter("edgesplit_bytes_in", "Request bytes received", by_route, registry=registry)
        self.bytes_out = Counter("edgesplit_bytes_out", "Response bytes sent", by_route, registry=registry)
        self.in_flight = Gauge("edgesplit_in_flight", "Requests being answered now", registry=registry)
        self._series: dict[tuple, tuple] = {}

    def batch(self, route: Route, requests: int, rows: int, seconds: float) -> None:
        series = self._series.get(id(route))
        if series is None:
            labels = (self._models.get(id(route), "-"), route.label)
            series = self._series[id(route)] = (self.batch_size.labels(*labels), self.batch_rows.labels(*labels),
                                                self.forward_seconds.labels(*labels))
        series[0].observe(requests)
        series[1].observe(rows)
        series[2].observe(seconds)

    def request(self, record: RequestRecord) -> None:
        # Labels only ever hold served models and routes: a request cannot add series by naming others.
        key = (record.model_id, record.route, record.status)
        series = self._series.get(key)
        if series is None:  # looked up once per (model, route, status): .labels() costs more than the update
            labels, code = key[:2], str(record.status.http)
            series = self._series[key] = (
                self.requests.labels(*labels, code),
                self.errors.labels(*labels, code) if record.status != Status.OK else None,
                self.seconds.labels(*labels), self.bytes_in.labels(*labels), self.bytes_out.labels(*labels))
        requests, errors, seconds, bytes_in, bytes_out = series
        requests.inc()
        if errors is not None:
            errors.inc()
        seconds.observe(record.seconds)
        bytes_in.inc(record.bytes_in)
        bytes_out.inc(record.bytes_out)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestLog(Observer):
    """One JSON line per request on ``edgesplit.server`` (silent until a handler is configured, as `serve` does)."""

    def request(self, record: RequestRecord) -> None:
        level = logging.ERROR if record.status == Status.INTERNAL else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(level, "request", extra={"fields": {
            "request_id": record.request_id, "model": record.model_id, "route": record.route,
            "status": record.status.http, "outcome": record.status.name.lower(), "ms": round(record.seconds * 1e3, 3),
            "bytes_in": record.bytes_in, "bytes_out": record.bytes_out, "batch_size": record.batch_size,
            "client": record.client}})


class _Observers(Observer):
    """Several observers as one: the engine's own, then the server's metrics and log."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def batch(self, route: Route, requests: int, rows: int, seconds: float) -> None:
        for observer in self.observers:
            observer.batch(route, requests, rows, seconds)

    def response(self, route_label: str, status: Status, seconds: float, bytes_in: int, bytes_out: int) -> None:
        for observer in self.observers:
            observer.response(route_label, status, seconds, bytes_in, bytes_out)

    def request(self, record: RequestRecord) -> None:
        for observer in self.observers:
            observer.request(record)


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object per line: time, level, logger, event, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        data.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str = "info", stream=None) -> logging.Handler:  # noqa: ANN001 - any text stream
    """JSON lines on stderr for edgesplit's and uvicorn's loggers at ``level``; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("edgesplit", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    return handler


# ---- limits ---------------------------------------------------------------------------------------------------------


class ClientLimiter:
    """At most ``limit`` requests in flight per client; HTTP refuses beyond it, a stream waits for a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future]] = {}

    def in_flight(self, client: str) -> int:
        return self._counts.get(client, 0)

    def try_acquire(self, client: str) -> bool:
        if self._counts.get(client, 0) >= self.limit:
            return False
        self._counts[client] = self._counts.get(client, 0) + 1
        return True

    async def acquire(self, client: str) -> None:
        while not self.try_acquire(client):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(client, deque()).append(waiter)
            try:
                await waiter
            finally:
                queue = self._waiters.get(client)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(waiter)
                    if not queue:
                        del self._waiters[client]

    def release(self, client: str) -> None:
        left = self._counts.get(client, 0) - 1
        if left > 0:
            self._counts[client] = left
        else:
            self._counts.pop(client, None)  # forgotten when idle: many clients do not grow the table
        for waiter in self._waiters.get(client, ()):
            if not waiter.done():
                waiter.set_result(None)
                break


def decode_limits(deployments: Iterable[Deployment], max_rows: int) -> DecodeLimits:
    """What a payload may decode to: the largest route's tensors for ``max_rows`` inputs, at 8 bytes a value.

    The codec refuses any frame that declares more before allocating it, so a hostile payload costs at most this.
    """
    largest = 0
    for deployment in deployments:
        for route in deployment.routes:
            values = sum(math.prod(shape[1:]) for shape in route.sent_shapes)
            largest = max(largest, values * max_rows * 8)
    return DecodeLimits(max_decoded_bytes=max(largest, 1 << 20))


def request_limit(deployments: Iterable[Deployment], max_rows: int) -> int:
    """The largest request body any route can validly need for ``max_rows`` inputs: 4 bytes a value sent (float32;
    every codec a plan uses — fp16, int8, int4+zstd, int2+ans, bottleneck codes, PNG/JPEG input — sends at most
    that, entropy coders included) plus 64 KiB for frame headers. A body over it is refused unread."""
    largest = 0
    for deployment in deployments:
        for route in deployment.routes:
            largest = max(largest, sum(math.prod(shape[1:]) for shape in route.sent_shapes))
    return largest * max_rows * 4 + (64 << 10)


# ---- the app --------------------------------------------------------------------------------------------------------


def create_app(engine: Engine, token: str | None, *,
               client_concurrency: int = DEFAULT_CLIENT_CONCURRENCY, guards: Guards = Guards(),
               hosts: frozenset[str] | None = None) -> FastAPI:
    """The ASGI app: POST /v1/infer and WebSocket /v1/stream (frames), /v1/models, /metrics, /healthz, /readyz.

    The engine's observer is wrapped so that its events also reach this app's metrics and request log. ``hosts``
    are the Host names it answers (None: any; see ``guard.allowed_hosts``), ``guards.allow_origins`` the web pages.
    """
    metrics, request_log = ServerMetrics(engine.models.values()), RequestLog()
    own = engine.observer.observers[0] if isinstance(engine.observer, _Observers) else engine.observer
    engine.observer = observer = _Observers(own, metrics, request_log)
    limiter = ClientLimiter(client_concurrency)
    max_bytes = engine.limits.max_request_bytes
    bearer = HTTPBearer(auto_error=False, description="the server's token (`edgesplit serve --token-file`)")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await engine.warm_up()
        app.state.ready = True
        yield
        app.state.ready = False
        if not await engine.drain():
            log.warning("shutdown: requests still in flight after the drain timeout")
        await engine.close()

    app = _App(title="edgesplit tail server", version="1", lifespan=lifespan,
                  description="Runs the tails of split models. Request and response bodies are binary frames "
                              f"({MEDIA_TYPE}, docs/protocol.md). WebSocket /v1/stream takes one request frame "
                              "per binary message and answers each with a response frame, in any order (match "
                              "them by request id). Send `Authorization: Bearer <token>` to /v1/* and /metrics.")
    app.state.ready = False
    app.state.metrics, app.state.limiter = metrics, limiter
    if guards.allow_origins:  # pages allowed with --allow-origin get CORS answers (preflights included)
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(guards.allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(BrowserGuard, hosts=hosts, origins=guards.allow_origins)

    def token_error(authorization: str) -> str | None:
        if token is None or bearer_matches(authorization, token):
            return None
        return (f"{'wrong' if authorization else 'missing'} bearer token; send 'Authorization: Bearer <token>' "
                "with the server's token")

    def refuse(status: Status, message: str, client: str | None, started: float, bytes_in: int = 0,
               headers: dict[str, str] | None = None) -> HttpResponse:
        body = json.dumps({"error": message}).encode()
        observer.request(RequestRecord("-", "-", "-", status, time.perf_counter() - started, bytes_in, len(body),
                                       client=client))
        return HttpResponse(body, status_code=status.http, media_type="application/json", headers=headers)

    def client_of(connection: HttpRequest | WebSocket) -> str:
        """Who a request counts against: its peer address (a header the client picks would let it be anyone)."""
        return connection.client.host if connection.client else "-"

    # POST /v1/infer is a plain ASGI endpoint: FastAPI's request, dependency and response objects cost more than
    # the engine's own work per request. It is documented in the OpenAPI schema below all the same.
    infer = _InferEndpoint(engine, token_error, observer, metrics, limiter, max_bytes, guards.body_timeout_s)
    app.router.add_route("/v1/infer", infer, methods=["POST"], include_in_schema=False)
    if not guards.allow_origins:  # no CORS answers to add: the Host/Origin check, then the endpoint, nothing else
        app.infer_fast_path = (BrowserGuard(None, hosts=hosts), infer)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema["paths"]["/v1/infer"] = {"post": {
                "summary": "Run a tail on one request frame", "operationId": "infer_v1_infer_post",
                "security": [{"HTTPBearer": []}], **_INFER_DOC,
                "responses": {str(code): doc for code, doc in _INFER_RESPONSES.items()}}}
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["HTTPBearer"] = {
                "type": "http", "scheme": "bearer", "description": "the server's token (`edgesplit serve --token-file`)"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    # WebSocket /v1/stream is a plain ASGI endpoint too (starlette's WebSocket wrappers and a timer per message
    # cost more per frame than the engine's bookkeeping); like /v1/infer it is taken before the middleware stack.
    stream = _StreamEndpoint(engine, token_error, observer, metrics, limiter, max_bytes, guards.stream_idle_s)
    app.router.add_websocket_route("/v1/stream", stream)
    app.stream_fast_path = (BrowserGuard(None, hosts=hosts, origins=guards.allow_origins), stream)

    @app.get("/v1/models", summary="The models, their routes (cut, codec, width) and switch tables")
    async def models(request: HttpRequest, _: HTTPAuthorizationCredentials | None = Security(bearer)) -> JSONResponse:
        if (problem := token_error(request.headers.get("authorization", ""))) is not None:
            return refuse(Status.UNAUTHORIZED, problem, client_of(request), time.perf_counter(),
                          headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse({"models": [d.describe() for d in engine.models.values()]})

    @app.get("/metrics", summary="Prometheus metrics", response_class=HttpResponse,
             responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
    async def prometheus(request: HttpRequest,
                         _: HTTPAuthorizationCredentials | None = Security(bearer)) -> HttpResponse:
        if (problem := token_error(request.headers.get("authorization", ""))) is not None:
            return refuse(Status.UNAUTHORIZED, problem, client_of(request), time.perf_counter(),
                          headers={"WWW-Authenticate": "Bearer"})
        return HttpResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: every tail loaded and accepting requests")
    async def readyz() -> JSONResponse:
        ready = bool(app.state.ready)
        if ready and hasattr(engine, "ready"):  # a relay is ready when its next hop is (relay.RelayEngine)
            ready = await engine.ready()
        return JSONResponse({"ready": ready, "models": sorted(engine.models)}, status_code=200 if ready else 503)

    return app


class _App(FastAPI):
    """FastAPI, with POST /v1/infer taken before its middleware stack and router when ``infer_fast_path`` is set
    (the Host/Origin guard, then the endpoint): they cost 0.1–0.2 ms a request, as much as decoding the frame; the
    same for WebSocket /v1/stream (``stream_fast_path``). Everything else (other paths and methods, lifespan) goes
    the usual way."""

    infer_fast_path: tuple[BrowserGuard, _InferEndpoint] | None = None
    stream_fast_path: tuple[BrowserGuard, _StreamEndpoint] | None = None

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        kind = scope["type"]
        if kind == "http":
            fast = self.infer_fast_path
            if fast is not None and scope["path"] == "/v1/infer" and scope["method"] == "POST" \
                    and not scope.get("root_path"):
                guard, endpoint = fast
                if not await guard.refused(scope, send):
                    await endpoint(scope, receive, send)
                return
        elif kind == "websocket":  # CORS never applies to WebSockets: the Host/Origin check, then the endpoint
            fast = self.stream_fast_path
            if fast is not None and scope["path"] == "/v1/stream" and not scope.get("root_path"):
                guard, endpoint = fast
                if not await guard.refused(scope, send):
                    await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _StreamEndpoint:
    """WebSocket /v1/stream: a continuous stream (video) of binary request frames in, response frames out, several
    in flight. The bearer token is checked after the handshake (close 1008); a text message or one over the size
    cap is answered with an error frame; the client's requests in flight are capped (the stream then waits for a
    slot: TCP slows the sender down); a stream with no complete message for ``idle_s`` is closed (1001)."""

    def __init__(self, engine: Engine, token_error, observer: Observer, metrics: ServerMetrics,  # noqa: ANN001
                 limiter: ClientLimiter, max_bytes: int, idle_s: float) -> None:
        self.engine, self.token_error, self.observer, self.metrics = engine, token_error, observer, metrics
        self.limiter, self.max_bytes, self.idle_s = limiter, max_bytes, idle_s

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        started = time.perf_counter()
        client = scope["client"][0] if scope.get("client") else "-"
        authorization = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        if (problem := self.token_error(authorization)) is not None:
            self.observer.request(RequestRecord("-", "-", "-", Status.UNAUTHORIZED, time.perf_counter() - started,
                                                0, 0, client=client))
            with contextlib.suppress(RuntimeError, OSError):
                await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})  # policy violation
            return
        engine, limiter, metrics, observer, max_bytes = self.engine, self.limiter, self.metrics, self.observer, \
            self.max_bytes
        send_lock, tasks = asyncio.Lock(), set()

        async def reply(response: Response) -> None:
            with contextlib.suppress(RuntimeError, OSError):  # the client has gone: nobody to answer
                async with send_lock:
                    await send({"type": "websocket.send", "bytes": response.to_bytes()})

        async def answer(frame: bytes) -> None:
            metrics.in_flight.inc()
            try:
                await reply(await engine.handle(frame, client))
            finally:
                metrics.in_flight.dec()
                limiter.release(client)

        def refused(status: Status, frame: bytes, message: str) -> Response:
            observer.request(RequestRecord("-", "-", "-", status, 0.0, len(frame), 32 + len(message), client=client))
            return Response.error(peek_request_id(frame), status, message)

        # One idle timer per stream, not one per message: it checks when the current wait for a message began,
        # and only a wait of ``idle_s`` or more (not answers being computed) ends the stream.
        loop, me, waiting = asyncio.get_running_loop(), asyncio.current_task(), [None, False]  # since, timed out

        def watch() -> None:
            since = waiting[0]
            if since is not None and loop.time() - since >= self.idle_s:
                waiting[1] = True
                me.cancel()
                return
            timer[0] = loop.call_later(self.idle_s - (loop.time() - since if since is not None else 0.0), watch)

        timer = [loop.call_later(self.idle_s, watch)]
        try:
            while True:
                waiting[0] = loop.time()
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if not waiting[1]:
                        raise  # the server is stopping
                    me.uncancel()
                    with contextlib.suppress(RuntimeError, OSError):
                        await send({"type": "websocket.close", "code": 1001,
                                    "reason": f"no complete message for {self.idle_s:g} s"})
                    break
                waiting[0] = None
                if message["type"] != "websocket.receive":
                    break  # websocket.disconnect
                frame = message.get("bytes")
                if frame is None:
                    text = (message.get("text") or "").encode()
                    await reply(refused(Status.BAD_REQUEST, text, "send request frames as binary messages"))
                    continue
                if len(frame) > max_bytes:
                    await reply(refused(Status.TOO_LARGE, frame, f"message of {len(frame):,} bytes is over this "
                                                                 f"server's limit of {max_bytes:,}"))
                    continue
                await limiter.acquire(client)  # a stream waits for a slot: TCP slows the sender down
                task = asyncio.create_task(answer(frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            timer[0].cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)


class _InferEndpoint:
    """POST /v1/infer: the token (401), the declared size (413), the client's requests in flight (429), the body
    read with a running cap (413) and a deadline (408), then the engine; the answer is a response frame (200) or
    JSON ``{"error", "request_id"}`` with the status's HTTP code."""

    def __init__(self, engine: Engine, token_error, observer: Observer, metrics: ServerMetrics,  # noqa: ANN001
                 limiter: ClientLimiter, max_bytes: int, body_timeout_s: float) -> None:
        self.engine, self.token_error, self.observer, self.metrics = engine, token_error, observer, metrics
        self.limiter, self.max_bytes, self.body_timeout_s = limiter, max_bytes, body_timeout_s

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        started = time.perf_counter()
        client = scope["client"][0] if scope.get("client") else "-"
        authorization = declared = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            if (problem := self.token_error(authorization)) is not None:
                return await self._refuse(send, Status.UNAUTHORIZED, problem, client, started,
                                          [(b"www-authenticate", b"Bearer")])
            if declared and (not declared.isdigit() or int(declared) > self.max_bytes):
                return await self._refuse(send, Status.TOO_LARGE, f"request body of {declared} bytes is over this "
                                          f"server's limit of {self.max_bytes:,}; send smaller batches", client, started)
            if not self.limiter.try_acquire(client):
                return await self._refuse(send, Status.BUSY, f"client {client} already has {self.limiter.limit} "
                                          "requests in flight, this server's limit per client; wait for answers "
                                          "before sending more", client, started, [(b"retry-after", b"1")])
            try:
                try:
                    body = await _within(self.body_timeout_s, self._body(receive))
                except asyncio.TimeoutError:
                    return await self._refuse(send, Status.TIMEOUT, "the request body did not arrive within "
                                              f"{self.body_timeout_s:g} s; check the link, or send smaller batches",
                                              client, started)
                except ClientDisconnect:
                    self.observer.request(RequestRecord("-", "-", "-", Status.BAD_REQUEST,
                                                        time.perf_counter() - started, 0, 0, client=client))
                    return None  # nobody to answer
                if body is None:
                    return await self._refuse(send, Status.TOO_LARGE, "request body is over this server's limit of "
                                              f"{self.max_bytes:,} bytes; send smaller batches", client, started,
                                              bytes_in=self.max_bytes)
                response = await self.engine.handle(body, client)
            finally:
                self.limiter.release(client)
            if response.status != Status.OK:
                return await _reply(send, response.status.http, json.dumps(
                    {"error": response.message, "request_id": response.request_id.hex()}).encode())
            return await _reply(send, 200, response.to_bytes(), _FRAME_TYPE)
        finally:
            in_flight.dec()

    async def _body(self, receive) -> bytes | None:  # noqa: ANN001
        """The body as it arrives; None as soon as it passes the cap (the rest is never read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, send, status: Status, message: str, client: str, started: float,  # noqa: ANN001
                      headers: list[tuple[bytes, bytes]] = (), bytes_in: int = 0) -> None:
        body = json.dumps({"error": message}).encode()
        self.observer.request(RequestRecord("-", "-", "-", status, time.perf_counter() - started, bytes_in,
                                            len(body), client=client))
        await _reply(send, status.http, body, headers=headers)


_FRAME_TYPE = MEDIA_TYPE.encode()


async def _reply(send, status: int, body: bytes, content_type: bytes = b"application/json",  # noqa: ANN001
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _within(seconds: float, awaitable):  # noqa: ANN001, ANN202
    """``awaitable``'s result, or asyncio.TimeoutError after ``seconds`` (without a task of its own on 3.11+)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


# ---- tokens and exposure ----------------------------------------------------------------------------------------------


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve without a token anywhere but loopback."""
    if token is None and not is_loopback(host):
        raise ServerError(f"refusing to serve on {host} without a token: anyone who reaches it could use the server; "
                          "pass --token-file FILE (or set EDGESPLIT_TOKEN), or bind to 127.0.0.1")


# ---- running it -------------------------------------------------------------------------------------------------------


def _uvicorn_config(engine: Engine, token: str | None, client_concurrency: int, log_level: str, host: str,
                    guards: Guards = Guards(), tls: tuple[Path, Path] | None = None, **options):  # noqa: ANN202
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    app = create_app(engine, token, client_concurrency=client_concurrency, guards=guards,
                     hosts=allowed_hosts(host, guards.allow_hosts))
    if tls is not None:
        options.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
    return uvicorn.Config(app, host=host, log_level=log_level, lifespan="on", timeout_graceful_shutdown=30,
                          access_log=False, ws_max_size=engine.limits.max_request_bytes, ws_per_message_deflate=False,
                          http=guarded_protocol(HttpToolsProtocol, guards.max_connections, guards.header_timeout_s),
                          **options)


def check_tls(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """The certificate and key files, checked to load together; None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ServerError("TLS needs both --tls-cert (the certificate chain, PEM) and --tls-key (its private key, PEM)")
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except FileNotFoundError as error:
        raise ServerError(f"cannot read {error.filename}; check --tls-cert and --tls-key") from error
    except (ssl.SSLError, OSError) as error:
        raise ServerError(f"--tls-cert {cert} and --tls-key {key} do not load as a PEM certificate and its key "
                          f"({getattr(error, 'reason', None) or error}); check the files") from error
    return Path(cert), Path(key)


class ServerThread:
    """A real uvicorn server on a background thread (127.0.0.1, a free port unless given); a context manager."""

    def __init__(self, engine: Engine, token: str | None = None, host: str = "127.0.0.1", port: int = 0, *,
                 client_concurrency: int = DEFAULT_CLIENT_CONCURRENCY, guards: Guards = Guards(),
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        import uvicorn

        check_exposure(host, token)
        self.engine, self.token = engine, token
        self.tls = check_tls(tls_cert, tls_key)
        self.server = uvicorn.Server(_uvicorn_config(engine, token, client_concurrency, "warning", host, guards,
                                                     self.tls, port=port))
        self._thread = threading.Thread(target=self.server.run, name="edgesplit-server", daemon=True)

    @property
    def app(self) -> FastAPI:
        return self.server.config.app

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServerError("the server did not start; is the port in use?")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_class():  # noqa: ANN202 - uvicorn is imported only when serving
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn that ends with exit status 0 after a graceful shutdown on SIGTERM/SIGINT (it re-raises them)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame) -> None:  # noqa: ANN001
            if not self.should_exit:
                log.info("shutting down: no new connections; answering the requests in flight",
                         extra={"fields": {"signal": signal.Signals(sig).name}})
            self.config.app.state.ready = False
            super().handle_exit(sig, frame)

    return _Server


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ServerError(f"cannot resolve --host {host} ({error.strerror}); pass an address such as 127.0.0.1") \
            from error
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ServerError(f"cannot listen on {host}:{port} ({error.strerror}); is another server using the port? "
                          "pass another --port (0 picks a free one)") from error
    return sock


def serve(plan_path: Path, *, host: str = "127.0.0.1", port: int = 8000, token_file: Path | None = None,
          weights: Path | None = None, model_id: str | None = None, max_batch: int = 32, max_wait_ms: float = 2.0,
          max_request_mb: float | None = None, client_concurrency: int = DEFAULT_CLIENT_CONCURRENCY,
          guards: Guards = Guards(), tls_cert: Path | None = None, tls_key: Path | None = None,
          log_level: str = "info", console=None, model: str | None = None,  # noqa: ANN001 - a Console
          tier: int | None = None, next_url: str | None = None, next_token_file: Path | None = None,
          next_timeout_s: float = 10.0) -> None:
    """Serve every tail of ``plan_path``'s switch table until SIGTERM/SIGINT; user errors raise EdgesplitError.

    ``model`` is the ``module:factory`` the plan's model_ref must name when it names one (`--model`). A chain plan
    serves one tier: ``tier`` K ≥ 1, with ``next_url`` (the tier K + 1 server) below the last (``relay.load_relay``)."""
    from rich.console import Console

    from edgesplit.runtime.relay import load_relay  # a chain plan's tiers

    console = console or Console()
    if log_level.lower() not in LOG_LEVELS:
        raise ServerError(f"--log-level {log_level} is not one of {', '.join(LOG_LEVELS)}")
    if max_batch < 1 or max_wait_ms < 0 or (max_request_mb is not None and max_request_mb <= 0) \
            or client_concurrency < 1 or guards.max_connections < 1:
        raise ServerError("--max-batch, --client-concurrency and --max-connections must be at least 1, --max-wait-ms "
                          "at least 0, --max-request-mb above 0")
    token, token_source = token_from(token_file)
    check_exposure(host, token)
    tls = check_tls(tls_cert, tls_key)
    if model_id is not None:
        check_model_id(model_id)
    relay = None
    if tier is not None or next_url is not None or is_chain_plan(plan_path):
        relay = load_relay(plan_path, tier, next_url=next_url, next_token_file=next_token_file,
                           next_timeout_s=next_timeout_s, next_concurrency=client_concurrency, weights=weights,
                           model_id=model_id, model=model)
        deployment = relay.deployment
    else:
        plan = load_plan(plan_path)
        deployment = load_deployment(plan, weights=weights, model_id=model_id, plan_dir=Path(plan_path).parent,
                                     model=model)
    limits = ServerLimits(max_request_bytes=int(max_request_mb * 2**20) if max_request_mb is not None
                          else request_limit([deployment], ServerLimits.max_rows),
                          decode=decode_limits([deployment], ServerLimits.max_rows),
                          max_batch=max_batch, max_wait_ms=max_wait_ms)
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    engine = relay.engine(limits) if relay is not None else Engine([deployment], limits)
    server = _server_class()(_uvicorn_config(engine, token, client_concurrency, log_level.lower(), host, guards, tls,
                                             log_config=None))
    configure_logging(log_level)
    url = f"{'https' if tls else 'http'}://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
    console.print((relay.summary if relay is not None else startup_summary)(
        deployment, url, token_source if token else None, limits, client_concurrency, guards))
    log.info("serving", extra={"fields": {"url": url, "model": deployment.model_id, "routes": len(deployment.routes),
                                          "auth": token is not None}})
    if token is None:
        log.warning("authentication is off (no --token-file or $EDGESPLIT_TOKEN); loopback clients only")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    log.info("stopped", extra={"fields": {"url": url}})


def startup_summary(deployment: Deployment, url: str, token_source: str | None, limits: ServerLimits,
                    client_concurrency: int, guards: Guards = Guards()):  # noqa: ANN201 - a rich renderable
    """One screen: the model, each route (label, cut, codec, width, bytes per inference), the URL, auth, limits."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    plan = deployment.plan
    table = Table(title=escape(f"edgesplit serve — {plan.model} (model id {deployment.model_id}, "
                               f"graph {plan.fingerprint})"),
                  title_justify="left")
    for column in ("route", "label", "cut", "codec", "width", "sends", "bytes/inference", "Mbit/s"):
        table.add_column(column, justify="right" if column in ("route", "bytes/inference") else "left")
    for route in deployment.routes:
        cut = route.split.cut
        where = str(cut.index) if cut.index >= 0 else f"{len(cut.head or ())} head nodes"
        codecs = sorted({route.picture.spec} if route.picture else {c.spec for c in route.codecs})
        ranges = ", ".join(f"{low:g}–{high:g}" for low, high in route.ranges) or "chosen"
        table.add_row(str(route.route_id), escape(route.label), escape(where), escape(" ".join(codecs)),
                      f"{route.width:g}" if route.width is not None else "—",
                      " ".join("×".join(map(str, shape[1:])) for shape in route.sent_shapes),
                      f"{_bytes_per_inference(deployment, route):,}", ranges)
    lines = [table,
             Text.assemble(("listening ", "bold"), url, "  (POST /v1/infer, WebSocket /v1/stream, GET /v1/models, "
                           "/metrics, /healthz, /readyz, /docs)")]
    if token_source is None:
        lines.append(Text("warning: authentication is OFF (no --token-file or $EDGESPLIT_TOKEN); this is allowed on "
                          "loopback only — anyone on this machine can use the server", style="bold yellow"))
    else:
        lines.append(Text.assemble(("auth ", "bold"), f"on: bearer token from {token_source}"))
    if url.startswith("http://") and not is_loopback(urlsplit(url).hostname or ""):
        lines.append(Text("note: this is plain HTTP; the token and the features cross the network in clear — pass "
                          "--tls-cert and --tls-key (clients then use https:// and --ca-file)", style="yellow"))
    lines.append(Text.assemble(("limits ", "bold"), f"batch ≤ {limits.max_batch} inputs, wait ≤ {limits.max_wait_ms:g} "
                               f"ms, request ≤ {limits.max_request_bytes / 2**20:.3g} MiB, decode ≤ "
                               f"{limits.decode.max_decoded_bytes / 2**20:.3g} MiB, {client_concurrency} in flight "
                               f"per client, {guards.max_connections} connections, headers within "
                               f"{guards.header_timeout_s:g} s, bodies within {guards.body_timeout_s:g} s; "
                               "SIGTERM/Ctrl-C finishes in-flight requests, then exits"))
    if guards.allow_origins:
        lines.append(Text.assemble(("web pages allowed ", "bold"), ", ".join(guards.allow_origins)))
    return Group(*lines)


def _bytes_per_inference(deployment: Deployment, route: Route) -> int:
    """The plan's predicted uplink bytes for this route's entry, else the bytes of one random input's payload."""
    plan = deployment.plan
    for entry in (plan.chosen, plan.all_server, *plan.ranked):
        if entry.label == route.label:
            return entry.costs.uplink_bytes
    return len(route.encode(route.device_side(deployment.example(seed=0))))
