"""The tail server: FastAPI over the engine — binary frames in and out, bearer tokens, health, readiness.

``create_app(engine, token)`` is the ASGI app; ``ServerThread`` runs it with uvicorn on a background thread
(tests, benchmarks, the demo); ``serve(...)`` is what `edgesplit serve` runs in the foreground.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, Response as HttpResponse

from ..errors import EdgesplitError
from .engine import Engine
from .wire import MEDIA_TYPE, Status

TOKEN_ENV = "EDGESPLIT_TOKEN"


class ServerError(EdgesplitError):
    """A server that cannot start as asked (no token on a public address, a port in use, an unreadable token)."""


def create_app(engine: Engine, token: str | None) -> FastAPI:
    """The HTTP app: POST /v1/infer (frames), GET /v1/models, /healthz, /readyz."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        app.state.ready = True
        yield
        app.state.ready = False
        await engine.drain()
        await engine.close()

    app = FastAPI(title="edgesplit tail server", version="1", lifespan=lifespan,
                  description="Runs the tail of split models. Request and response bodies are binary frames "
                              "(docs/protocol.md).")
    app.state.ready = False

    def refused(request: HttpRequest) -> JSONResponse | None:
        if token is None:
            return None
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            what = "missing" if not given else "wrong"
            return JSONResponse({"error": f"{what} bearer token; send 'Authorization: Bearer <token>' with the "
                                          "server's token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.post("/v1/infer", summary="Run a tail on one request frame",
              responses={200: {"content": {MEDIA_TYPE: {}}, "description": "a response frame"}})
    async def infer(request: HttpRequest) -> HttpResponse:
        if (denied := refused(request)) is not None:
            return denied
        body = await request.body()
        response = await engine.handle(body)
        if response.status != Status.OK:
            return JSONResponse({"error": response.message, "request_id": response.request_id.hex()},
                                status_code=response.status.http)
        return HttpResponse(response.to_bytes(), media_type=MEDIA_TYPE)

    @app.get("/v1/models", summary="The models, their routes (cut, codec, width) and switch tables")
    async def models(request: HttpRequest) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        return JSONResponse({"models": [d.describe() for d in engine.models.values()]})

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: every tail loaded and accepting requests")
    async def readyz() -> JSONResponse:
        ready = bool(app.state.ready)
        return JSONResponse({"ready": ready, "models": sorted(engine.models)}, status_code=200 if ready else 503)

    return app


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve without a token anywhere but loopback."""
    if token is not None:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ServerError(f"refusing to serve on {host} without a token: anyone who reaches it could use the server; "
                          "pass --token-file FILE (or set EDGESPLIT_TOKEN), or bind to 127.0.0.1")


def read_token(path: Path | None) -> str | None:
    """The bearer token from a file (first line, stripped); None when no file is given."""
    if path is None:
        return None
    try:
        token = path.read_text().strip().splitlines()[0].strip() if path.read_text().strip() else ""
    except OSError as error:
        raise ServerError(f"cannot read the token file {path} ({error.strerror}); check the path") from None
    if len(token) < 16:
        raise ServerError(f"the token in {path} is {len(token)} characters; use at least 16 random characters "
                          "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > token`)")
    return token


class ServerThread:
    """A real uvicorn server on a background thread (127.0.0.1, a free port unless given); a context manager."""

    def __init__(self, engine: Engine, token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        check_exposure(host, token)
        self.engine, self.token = engine, token
        config = uvicorn.Config(create_app(engine, token), host=host, port=port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="edgesplit-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

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

