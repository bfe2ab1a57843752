"""The tail server as a Ray Serve application: replicas, autoscaling and Serve's batching (extra ``edgesplit[ray]``).

Each replica serves the FastAPI server's own app (``server.create_app``: POST /v1/infer with binary frames,
GET /v1/models, /healthz, /readyz, bearer tokens), so the HTTP API is the same byte for byte. Under it runs a
``ServeEngine``: the engine's frame checks, request-id dedup and error answers, with its per-route queues replaced
by ``@serve.batch``; a Serve batch holding several routes runs one forward pass per route. Every replica rebuilds
the plan's model from plain data (the plan's JSON, a weights path): no model object crosses a process boundary.

``run(plan)`` is what `edgesplit serve --ray` runs. Ray is imported only when a server starts, so this module
imports without the extra and ``run`` says how to install it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgesplit.plan.schema import PlanReport, load_plan
from edgesplit.runtime.deployment import Deployment, Route, load_deployment
from edgesplit.runtime.engine import Engine, Observer, ServerLimits, run_batch
from edgesplit.runtime.server import (DEFAULT_CLIENT_CONCURRENCY, LOG_LEVELS, ServerError, check_exposure, configure_logging,
                     create_app, decode_limits, request_limit)
from edgesplit.runtime.wire import Request, Response, Status, check_model_id

__all__ = ["RayServeApp", "ServeEngine", "application", "run"]

INSTALL_HINT = "install the extra: pip install 'edgesplit[ray]'"
APP_NAME = "edgesplit"
DEPLOYMENT_NAME = "EdgesplitTail"


# ---- inside a replica -------------------------------------------------------------------------------------------


@dataclass
class _TailJob:
    """One checked request waiting in a Serve batch: its route, its decoded tensors, its top-k."""

    route: Route
    tensors: list[torch.Tensor]
    top_k: int

    @property
    def rows(self) -> int:
        return self.tensors[0].shape[0]


class ServeEngine(Engine):
    """The engine with Ray Serve's batching in place of its own queues (checks, dedup and answers are Engine's).

    ``limits.max_batch`` caps the inputs (rows) of one Serve batch, as it caps one forward pass in Engine; a
    request with more rows than that counts as a full batch and runs alone. ``limits.max_wait_ms`` is how long
    the first request of a batch waits for others. Unlike Engine, Serve closes the next batch after that wait
    even while a forward pass still runs (the batch then waits for the pass), so under load batches stay small
    unless the wait is near the time of a forward pass. A request alone in the replica takes Engine's fast path
    instead (no Serve batch; a tiny tail runs on the event loop), as in `edgesplit serve`. Must be built inside a
    Serve replica.
    """

    def __init__(self, deployments: list[Deployment], limits: ServerLimits = ServerLimits(),
                 observer: Observer | None = None) -> None:
        from ray import serve

        super().__init__(deployments, limits, observer)
        cap = limits.max_batch
        self._tail = serve.batch(max_batch_size=cap, batch_wait_timeout_s=limits.max_wait_ms / 1e3,
                                 batch_size_fn=lambda jobs: sum(min(job.rows, cap) for job in jobs))(self._forward)

    async def _answer(self, request: Request, route: Route, started: float) -> Response:
        # Engine.handle has parsed the frame and found the route; _answer_once wraps this in dedup and turns
        # exceptions into error responses. The engine's checks and decoding, then Serve's batch.
        tensors = await self.decoded(request, route)
        if await self._lone():  # Engine's fast path: a lone request skips Serve's batch queue
            return await self._pass_alone(request, route, tensors)
        outcome = await self._tail(_TailJob(route, tensors, request.top_k))
        if isinstance(outcome, BaseException):
            raise outcome
        payload, shared = outcome
        return Response(request.request_id, Status.OK, payload, 0.0, shared)

    async def _forward(self, jobs: list[_TailJob]) -> list[tuple[bytes, int] | Exception]:
        """One Serve batch: one forward pass per route in it; each job's (payload, requests in its pass) or error."""
        loop = asyncio.get_running_loop()
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(id(job.route), []).append(index)
        outcomes: list[tuple[bytes, int] | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            started = time.perf_counter()
            self._passes += 1
            try:  # one pass at a time on the engine's compute thread, off the replica's event loop
                payloads = await loop.run_in_executor(self._compute, run_batch, group[0].route,
                                                      [j.tensors for j in group], [j.top_k for j in group])
            except Exception as error:  # noqa: BLE001 - each request of this pass answers 500; the others go on
                for i in indices:
                    outcomes[i] = error
                continue
            finally:
                self._passes -= 1
            self.observer.batch(group[0].route, len(group), sum(j.rows for j in group),
                                time.perf_counter() - started)
            for i, payload in zip(indices, payloads):
                outcomes[i] = (payload, len(group))
        return outcomes


def _load(spec: dict) -> Deployment:
    """A deployment from plain data: the plan's JSON text, a weights path or None, the plan's folder, a model id,
    and the model factory the user named (`--model`) or None."""
    plan = PlanReport.model_validate_json(spec["plan"])
    return load_deployment(plan, weights=spec["weights"], model_id=spec["model_id"], plan_dir=Path(spec["plan_dir"]),
                           model=spec.get("model"))


class TailReplica:
    """One Serve replica: rebuilds the plans' models and serves ``server.create_app`` over a ``ServeEngine``.

    Its init args are plain data, which Ray pickles to every replica: plan specs (see ``_load``), the token, the
    settings (``max_request_bytes``, ``max_batch``, ``max_wait_ms``, ``client_concurrency``, ``log_level``), and
    the driver's working folder, against which relative paths inside the plans are resolved.
    """

    def __init__(self, plans: list[dict], token: str | None, settings: dict, cwd: str | None = None) -> None:
        if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
            os.chdir(cwd)  # a replica started elsewhere than the driver's folder (a `ray start` cluster)
        if settings.get("log_level"):
            configure_logging(settings["log_level"])  # edgesplit's JSON request lines, as `edgesplit serve` writes
        deployments = [_load(spec) for spec in plans]
        limits = ServerLimits(max_request_bytes=settings["max_request_bytes"]
                              or request_limit(deployments, ServerLimits.max_rows),
                              decode=decode_limits(deployments, ServerLimits.max_rows),
                              max_batch=settings["max_batch"], max_wait_ms=settings["max_wait_ms"])
        self.engine = ServeEngine(deployments, limits)
        self.token, self.client_concurrency = token, settings["client_concurrency"]

    def __serve_build_asgi_app__(self) -> Any:  # Serve calls this once, after __init__, and runs its lifespan
        return create_app(self.engine, self.token, client_concurrency=self.client_concurrency)


# ---- the driver -------------------------------------------------------------------------------------------------


@dataclass
class RayServeApp:
    """A running Serve application: its URL, the handle to its deployment, and how to stop it."""

    url: str
    handle: Any  # ray.serve.handle.DeploymentHandle
    name: str
    model_ids: list[str]
    ray_started: str | None = None  # "instance": run started a private Ray; "connection": it joined RAY_ADDRESS

    def shutdown(self) -> None:
        """Stop the app. A private Ray instance ``run`` started goes with it, Serve included; on a shared cluster
        only this app is deleted (other apps and Serve itself stay), then ``run``'s connection is closed."""
        import ray
        from ray import serve

        if self.ray_started == "instance":
            serve.shutdown()
        else:
            serve.delete(self.name)
        if self.ray_started is not None:
            ray.shutdown()


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise ServerError(f"serving with Ray needs Ray Serve, which is not installed or incomplete ({error}); "
                          f"{INSTALL_HINT}") from error
    return ray, serve


def _plan_specs(plan_paths: str | Path | Sequence[str | Path], weights: str | Path | None,
                model_id: str | None, model: str | None = None) -> tuple[list[dict], list[str]]:
    """The replicas' init data for each plan, each loaded here first: a plan that cannot load fails in seconds,
    with its own message, instead of in every replica after Serve has started."""
    paths = [Path(plan_paths)] if isinstance(plan_paths, (str, Path)) else [Path(p) for p in plan_paths]
    if not paths:
        raise ServerError("no plan to serve; pass a plan JSON written by `edgesplit plan ... --json plan.json`")
    if len(paths) > 1 and (weights is not None or model_id is not None):
        raise ServerError("a weights file and a model id apply to one plan; serve several plans with their own")
    specs, model_ids = [], []
    for path in paths:
        spec = {"plan": load_plan(path).model_dump_json(), "weights": None if weights is None else str(weights),
                "model_id": model_id, "plan_dir": str(path.resolve().parent), "model": model}
        model_ids.append(_load(spec).model_id)
        specs.append(spec)
    if len(set(model_ids)) != len(model_ids):
        raise ServerError(f"two plans serve the same model id ({', '.join(model_ids)}); serve one plan per model")
    return specs, model_ids


def application(plans: list[dict], *, token: str | None = None, replicas: int = 1, max_replicas: int | None = None,
                max_batch: int = 32, max_wait_ms: float = 2.0, max_request_mb: float | None = None,
                client_concurrency: int = DEFAULT_CLIENT_CONCURRENCY, log_level: str | None = "info",
                num_cpus: float = 1.0) -> Any:
    """The bound Serve application (``serve.run`` it): ``replicas`` fixed, or autoscaled up to ``max_replicas``.

    ``plans`` are specs as ``run`` makes them (plain data); the other options are ``run``'s.
    """
    _, serve = _import_ray()
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        # Serve's default (5) would cap a replica's batches at 5 requests: leave room for one batch running
        # and the next filling.
        "max_ongoing_requests": max(2 * max_batch, client_concurrency, 8),
        "ray_actor_options": {"num_cpus": num_cpus},
        # edgesplit's request log (log_level) says more per request than Serve's access log.
        "logging_config": {"enable_access_log": False},
    }
    if max_replicas is not None and max_replicas > replicas:
        # Scale out when a replica holds half a batch on average; batching absorbs bursts below that.
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": max(2, max_batch // 2)}
    else:
        options["num_replicas"] = replicas
    settings = {"max_request_bytes": int(max_request_mb * 2**20) if max_request_mb else None, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "client_concurrency": client_concurrency, "log_level": log_level}
    deployment = serve.deployment(**options)(serve.ingress()(TailReplica))
    return deployment.bind(plans, token, settings, os.getcwd())


def run(plan_path: str | Path | Sequence[str | Path], *, host: str = "127.0.0.1", port: int = 8000,
        token: str | None = None, weights: str | Path | None = None, model_id: str | None = None,
        replicas: int = 1, max_replicas: int | None = None, max_batch: int = 32, max_wait_ms: float = 2.0,
        max_request_mb: float | None = None, client_concurrency: int = DEFAULT_CLIENT_CONCURRENCY,
        log_level: str | None = "info", num_cpus: float = 1.0, name: str = APP_NAME,
        blocking: bool = True, model: str | None = None) -> RayServeApp:
    """Serve the plan(s) with Ray Serve on ``host:port`` (0: a free port); what `edgesplit serve --ray` runs.

    The options not about Ray are `edgesplit serve`'s (``server.serve``), with ``token`` already read (see
    ``server.token_from``); ``log_level`` None leaves the replicas' logging alone. Starts a local Ray instance
    of its own unless this process is connected to Ray already (``ray.init`` first) or RAY_ADDRESS names a
    cluster to join (a cluster from `ray start` is joined only through RAY_ADDRESS, never by surprise).
    ``replicas`` replicas of ``num_cpus`` CPUs each; with ``max_replicas`` above it, Serve autoscales between
    the two. Blocking, it serves until Ctrl-C and then stops what it started; otherwise it returns at once and
    ``.shutdown()`` stops it.
    """
    check_exposure(host, token)
    if replicas < 1 or (max_replicas is not None and max_replicas < replicas) or num_cpus <= 0:
        raise ServerError(f"{replicas} replicas (max {max_replicas}) of {num_cpus} CPUs: use at least 1 replica, a "
                          "maximum no smaller, and a positive CPU share")
    if max_batch < 1 or max_wait_ms < 0 or (max_request_mb is not None and max_request_mb <= 0) \
            or client_concurrency < 1:
        raise ServerError("--max-batch and --client-concurrency must be at least 1, --max-wait-ms at least 0, "
                          "--max-request-mb above 0")
    if log_level is not None and log_level.lower() not in LOG_LEVELS:
        raise ServerError(f"--log-level {log_level} is not one of {', '.join(LOG_LEVELS)}")
    if model_id is not None:
        check_model_id(model_id)
    ray, serve = _import_ray()
    specs, model_ids = _plan_specs(plan_path, weights, model_id, model)
    port = port or _free_port(host)
    ray_started = None
    if not ray.is_initialized():
        ray_started = "connection" if os.environ.get("RAY_ADDRESS") else "instance"
        if ray_started == "instance":
            _check_port(host, port)
    previous = None
    try:
        if ray_started is not None:
            ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
        if blocking and threading.current_thread() is threading.main_thread():
            # SIGTERM stops it as Ctrl-C does, from here on (Ray's handler exits through its native one, aborting).
            previous = signal.signal(signal.SIGTERM, _interrupt)
        # Serve reads HTTP options once per cluster: where Serve runs already, its host and port stay.
        serve.start(http_options={"host": host, "port": port})
        handle = serve.run(application(specs, token=token, replicas=replicas, max_replicas=max_replicas,
                                       max_batch=max_batch, max_wait_ms=max_wait_ms, max_request_mb=max_request_mb,
                                       client_concurrency=client_concurrency,
                                       log_level=log_level and log_level.lower(), num_cpus=num_cpus),
                           name=name, route_prefix="/")
    except BaseException as error:  # Ctrl-C while starting included: stop the Ray instance this call started
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if ray_started is not None:
            ray.shutdown()
        if isinstance(error, Exception):
            raise ServerError(f"Ray Serve did not start the tail server: {error}") from error
        raise
    shown = f"[{host}]" if ":" in host else host
    app = RayServeApp(f"http://{shown}:{port}", handle, name, model_ids, ray_started)
    scaling = f"{replicas}..{max_replicas} replicas" if max_replicas and max_replicas > replicas else \
        f"{replicas} replica{'s' * (replicas > 1)}"
    print(f"edgesplit tail server on Ray Serve at {app.url} ({', '.join(model_ids)}; {scaling} of {num_cpus:g} CPU each; "
          f"batches of up to {max_batch} inputs, {max_wait_ms:g} ms wait; auth {'on' if token else 'OFF'})"
          f"{'; Ctrl-C stops it' if blocking else ''}", flush=True)
    if not blocking:
        return app
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the Ray Serve app", flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        app.shutdown()
    return app


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    """Refuse a port in use before starting Ray: Serve's proxy would otherwise retry binding it in the background."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(f"cannot serve on {host}:{port} ({error.strerror}); is the port in use? pick another "
                              "with --port") from error
