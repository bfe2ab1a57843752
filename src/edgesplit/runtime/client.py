"""The device side: run a plan's head, encode what crosses the cut, send it to a tail server, adapt to the link.

``Client(plan, url, token)`` rebuilds the plan's routes (the same ones, numbered the same, as the server's), checks
on first use that the server serves the same model (name, graph fingerprint, routes), and answers ``infer(x)``
with a :class:`Result`. Around that:

* Adapting: every answered request is a bandwidth sample, and the switch table's plan for the estimate runs
  (``adapt.py``: the estimator, the hysteresis). A switch to a slower plan that rests on one frame size waits for
  one request of another size and is made only if its time grows with its bytes as the estimate says.
* Probing: where nothing is measured (all on device, or transfers too short to time), one real request every
  ``probe_every_s`` goes on the next route up, so that the client notices the link getting faster.
* Failures: each request has one id for all its attempts (the server answers an id at most once), a timeout,
  and bounded retries with backoff. A 4xx other than 429 is a configuration error and raises. When every attempt
  fails and ``fallback`` is on, the whole model runs locally; the server is then asked ``/readyz`` every
  ``probe_every_s`` and used again as soon as it answers. Every input gets exactly one result.
* Transport: HTTP/1.1 on one kept-alive socket or one WebSocket (``transport.py``).

Nothing here unpickles anything: responses are wire frames (``wire.py``) holding codec frames.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from torch.utils import _pytree as pytree

from edgesplit.codecs import CodecError, unpack
from edgesplit.plan.schema import ChainPlanReport, PlanReport, is_chain_plan, load_plan
from edgesplit.runtime.adapt import Adapter, Adapting, ClientStats, Switch, SwitchPolicy
from edgesplit.runtime.deployment import Deployment, Route, load_deployment
from edgesplit.runtime.errors import (ClientError, ServerMismatchError, ServerRejectedError, ServerUnreachableError,
                                      ServerUntrustedError, describe_transport_error, error_message, status_hint,
                                      tls_context)
from edgesplit.runtime.onnx_head import use_onnx_heads
from edgesplit.runtime.transport import KeepAliveTransport, WebSocketStream
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, WireError, check_model_id, new_request_id

__all__ = ["Client", "ClientStats", "Result", "Switch"]

log = logging.getLogger("edgesplit.client")

_RETRY_STATUS = {429, 503}


# ---- results -----------------------------------------------------------------------------------------------------

@dataclass
class Result:
    """One input's answer, wherever it was computed."""

    outputs: list[torch.Tensor]  # the model's output leaves; with top_k: [values, indices]
    label: str  # the plan that ran: a route's label, or the all-device label
    where: str  # "server" or "device"
    mode: str  # "route" (the switch table's plan), "probe", "all-device" (the table says so), "fallback"
    request_id: str  # hex; one id for all attempts of a request
    bytes_sent: int  # request frame bytes that crossed the uplink (0 on the device)
    latency_ms: float  # head, encoding, every attempt, decoding
    server_ms: float = 0.0  # what the server reported for the successful attempt
    attempts: int = 0  # HTTP attempts made (0 when nothing was sent)
    mbps: float | None = None  # the uplink estimate after this request

    @property
    def logits(self) -> torch.Tensor:
        """The first output (the logits of a classifier; the top-k values with ``top_k``)."""
        return self.outputs[0]


# ---- the client ---------------------------------------------------------------------------------------------------

class Client(Adapting):
    """Split inference against an edgesplit tail server (`edgesplit serve`); a context manager.

    ``plan`` is a plan (PlanReport), the path of its JSON, or a Deployment already built from one. ``weights``
    overrides the weights file the plan names, ``model_id`` the id the server knows it by (default: from the
    plan's model name, as `edgesplit serve` names it); relative paths in the plan are also looked up in ``plan_dir`` (the
    plan file's folder by default). ``transport`` replaces httpx's (tests throttle uploads with one).
    ``initial_mbps`` is the uplink to assume before anything is measured (default: the plan's link). ``route``
    pins one plan of the switch table by its label (no switching, no probes; the estimate is still kept).
    ``onnx_dir`` exports every route's head to ONNX there, checks it against PyTorch, and runs it with onnxruntime.
    ``stream`` sends the frames over one WebSocket (``/v1/stream``) instead of one HTTP POST each: less overhead
    per request, the same retries, fallback and answers. Over ``https://`` (and so ``wss://``) the server's
    certificate is checked against ``ca_file`` (PEM; default: the system's trusted roots); one that does not verify
    raises :class:`ServerUntrustedError` rather than falling back to the device.

    A chain plan (`edgesplit plan --topology`) has its own client, :class:`~edgesplit.runtime.chain_client.ChainClient`
    (stage 0 here, ``url`` the tier 1 server), which takes the same options.
    """

    def __init__(self, plan: PlanReport | Deployment | str | Path, url: str, token: str | None = None, *,
                 weights: str | Path | None = None, timeout_s: float = 5.0, retries: int = 2,
                 backoff_s: float = 0.1, fallback: bool = True, probe_every_s: float = 2.0,
                 transport: httpx.BaseTransport | None = None, initial_mbps: float | None = None,
                 hysteresis: float = 0.2, min_transfer_ms: float = 2.0, top_k: int = 0, route: str | None = None,
                 model_id: str | None = None, plan_dir: str | Path | None = None, model: str | None = None,
                 onnx_dir: str | Path | None = None, stream: bool = False,
                 ca_file: str | Path | None = None) -> None:
        if retries < 0 or timeout_s <= 0 or probe_every_s <= 0 or hysteresis < 0 or min_transfer_ms <= 0:
            raise ClientError("retries and hysteresis must be ≥ 0, timeout_s, probe_every_s and min_transfer_ms "
                              "positive")
        self.deployment = _deployment(plan, weights, plan_dir, model_id, model)
        self.stream, self._socket = stream, None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        if onnx_dir is not None:  # the device runs its heads with onnxruntime, as a Raspberry Pi would
            use_onnx_heads(self.deployment, onnx_dir)
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(f"server URL '{url}' is not http(s)://HOST:PORT; give it as e.g. http://10.0.0.2:8000")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.fallback, self.probe_every_s, self.top_k = fallback, probe_every_s, top_k
        # one verifying TLS context for the HTTP client and the WebSocket
        self.ssl_context = tls_context(ca_file) if self.url.startswith("https://") else None
        if ca_file is not None and self.ssl_context is None:
            raise ClientError(f"--ca-file is for https:// servers and {url} is plain http; use https:// (the server "
                              "runs with --tls-cert and --tls-key) or leave --ca-file out")
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=httpx.Timeout(timeout_s),
                                  transport=transport or KeepAliveTransport(self.ssl_context),
                                  verify=self.ssl_context or True)
        # Frames go straight to our own transport (httpx.Client's request machinery costs 0.2–0.5 ms a request);
        # a transport given by the caller gets them through httpx as usual.
        self._keepalive = self._http._transport if transport is None and not self._http._mounts else None  # no proxy
        self._infer_url = httpx.URL(self.url + "/v1/infer")
        self._infer_head = KeepAliveTransport.post_head(self._infer_url, {**self._headers, "Content-Type": MEDIA_TYPE})
        self._timeouts = httpx.Timeout(timeout_s).as_dict()
        prior = initial_mbps if initial_mbps is not None else self.deployment.plan.link.uplink_mbps
        policy = self._switch_policy(hysteresis)
        if route is not None:
            labels = [r.label for r in self.deployment.routes] + [policy.all_device_label]
            if route not in labels:
                raise ClientError(f"this plan has no route '{route}'; its routes are: "
                                  f"{', '.join(repr(label) for label in labels)}")
        self.stats = ClientStats()
        self.adapter = Adapter(policy, self.stats, prior_mbps=prior, min_transfer_s=min_transfer_ms / 1e3,
                               probe_every_s=probe_every_s, route=route)
        self._connected = False  # the server's models were checked
        self._warm = False  # the first request after connecting pays one-time costs: not a bandwidth sample
        self._down = False  # the server did not answer: running locally, asking /readyz now and then
        self._ready_probe_at = -math.inf
        self._lock = threading.Lock()
        self._closed = False

    # ---- public -------------------------------------------------------------------------------------------------

    rtt_floor_s = Adapting.fixed_cost_s  # the name of earlier releases

    @property
    def server_up(self) -> bool:
        return not self._down

    def connect(self) -> Client:
        """Check the server serves this plan and time a few requests (done by the first ``infer`` anyway)."""
        with self._lock:
            self._ensure_connected(time.monotonic())
        return self

    def infer(self, *inputs: torch.Tensor) -> Result:
        """One request: the model's outputs for ``inputs`` (a batch N×…, or one example without the batch dim)."""
        with self._lock:
            if self._closed:
                raise ClientError("this client is closed; make a new one")
            inputs = tuple(self._batched(x) for x in inputs)
            index = self.stats.requests
            self.stats.requests += 1
            result = self._infer(inputs, index)
            if result.where == "server":
                self.stats.server_results += 1
                self.stats.bytes_sent += result.bytes_sent
            else:
                self.stats.device_results += 1
            return result

    def infer_many(self, inputs: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> Iterator[Result]:
        """``infer`` on each item (a tensor, or a tuple of the model's inputs), one result each, in order."""
        for item in inputs:
            yield self.infer(*item) if isinstance(item, tuple) else self.infer(item)

    def run_locally(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The full model's outputs on this machine (what a fallback returns)."""
        with torch.no_grad():
            output = self.deployment.model(*(self._batched(x) for x in inputs))
        return self._shape_outputs([leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)])

    def close(self) -> None:
        self._closed = True
        self._drop_socket()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _switch_policy(self, hysteresis: float) -> SwitchPolicy:
        """Which plan runs at which bandwidth: the switch table's (a chain client pins its one placement)."""
        return SwitchPolicy(self.deployment, hysteresis)

    # ---- one request --------------------------------------------------------------------------------------------

    def _infer(self, inputs: tuple[torch.Tensor, ...], index: int) -> Result:
        started = time.perf_counter()
        now = time.monotonic()
        self._ensure_connected(now)
        if self._down:
            self._maybe_recover(now)
        if self._down:
            self.stats.fallbacks += 1
            return self._local(inputs, started, "fallback")
        label, mode = self.adapter.pick(now)
        route = self.deployment.route_for_label(label)
        if route is None:
            return self._local(inputs, started, "all-device")
        tensors = route.device_side(*inputs)
        request_id = new_request_id()
        frame = Request(request_id, self.deployment.model_id, route.route_id, route.encode(tensors), route.width,
                        self.top_k).to_bytes()
        if inputs[0].shape[0] == 1:
            self.adapter.sizes[route.label] = len(frame)
        sent = self._send(frame, request_id, index)
        if sent is None:  # every attempt failed; fallback is on
            self.stats.fallbacks += 1
            return self._local(inputs, started, "fallback", request_id.hex())
        response, elapsed, attempts = sent
        if self._warm:
            self.adapter.answered(route.label, len(frame), elapsed, response.server_ms / 1e3, index,
                                  request_s=time.perf_counter() - started if inputs[0].shape[0] == 1 else None)
        elif mode == "probe":
            self.adapter.unmeasured(mode)  # a warm-up measured nothing: probe again on the next request
        self._warm = True
        try:
            outputs = unpack(response.payload)
        except CodecError as error:
            raise ClientError(f"the server's answer to request {request_id.hex()} does not decode ({error}); "
                              "is the server the same edgesplit release?") from error
        return Result(outputs, route.label, "server", mode, request_id.hex(), len(frame),
                      (time.perf_counter() - started) * 1e3, response.server_ms, attempts, self.estimator.mbps)

    def _local(self, inputs: tuple[torch.Tensor, ...], started: float, mode: str, request_id: str = "") -> Result:
        outputs = self.run_locally(*inputs)
        label = self.policy.all_device_label
        return Result(outputs, label, "device", mode, request_id or new_request_id().hex(), 0,
                      (time.perf_counter() - started) * 1e3, 0.0, 0, self.estimator.mbps)

    # ---- HTTP -----------------------------------------------------------------------------------------------

    def _send(self, frame: bytes, request_id: bytes, index: int) -> tuple[Response, float, int] | None:
        """POST the frame until it is answered: (response, seconds of the answered attempt, attempts), or None
        when every attempt failed and fallback is on."""
        last = ""
        attempts = 1 + self.retries
        for attempt in range(attempts):
            if attempt:
                self.stats.retries += 1
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 2.0))
            began = time.perf_counter()
            if self.stream:
                try:
                    response = self._exchange(frame, request_id)
                except (OSError, TimeoutError, ConnectionError) as error:  # the socket is gone or silent: reconnect
                    self._untrusted(error)
                    self._drop_socket()
                    last = f"{type(error).__name__}: {error}"
                    continue
                if response.status == Status.OK:
                    return response, time.perf_counter() - began, attempt + 1
                if response.status in (Status.BUSY, Status.UNAVAILABLE, Status.INTERNAL, Status.BAD_GATEWAY):
                    last = f"{response.status.name}: {response.message}"
                    continue
                raise ServerRejectedError(f"the server at {self.url} refused request {request_id.hex()} "
                                          f"({response.status.name}): {response.message}"
                                          f"{status_hint(response.status.http)}")
            try:
                reply = self._post(frame)
            except httpx.TransportError as error:  # refused, reset, timed out: the request may or may not have run
                self._untrusted(error)
                last = describe_transport_error(error)
                if isinstance(error, (httpx.WriteTimeout, httpx.ReadTimeout)):  # the link is at most this fast
                    self.adapter.timed_out(len(frame) * 8, time.perf_counter() - began, index)
                continue
            elapsed = time.perf_counter() - began
            if reply.status_code == 200:
                try:
                    response = Response.from_bytes(reply.content)
                except WireError as error:
                    raise ClientError(f"{self.url} answered with something that is not an edgesplit response "
                                      f"({error}); check the URL") from error
                if response.request_id != request_id:
                    raise ClientError(f"the server answered request {request_id.hex()} with the answer to "
                                      f"{response.request_id.hex()}; is a proxy mixing up responses?")
                return response, elapsed, attempt + 1
            message = error_message(reply)
            if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
                last = f"HTTP {reply.status_code}: {message}"
                continue
            raise ServerRejectedError(f"the server at {self.url} refused request {request_id.hex()} "
                                      f"(HTTP {reply.status_code}): {message}{status_hint(reply.status_code)}")
        return self._give_up(f"request {request_id.hex()} got no answer after {attempts} attempt(s) "
                             f"(last: {last})")

    def _post(self, frame: bytes) -> httpx.Response:
        """POST /v1/infer with ``frame``: on our own keep-alive transport directly, else through httpx."""
        if self._keepalive is not None:
            return self._keepalive.post(self._infer_url, self._infer_head, frame, self._timeouts)
        return self._http.post("/v1/infer", content=frame, headers={"Content-Type": MEDIA_TYPE})

    def _exchange(self, frame: bytes, request_id: bytes) -> Response:
        """One frame over the WebSocket and its answer (answers to earlier, timed-out tries are skipped)."""
        from websockets.exceptions import InvalidStatus, WebSocketException

        try:
            if self._socket is None:
                url = "ws" + self.url.removeprefix("http") + "/v1/stream"
                self._socket = WebSocketStream(url, self._headers, self.timeout_s, getattr(self, "ssl_context", None))
            self._socket.send(frame)
            deadline = time.monotonic() + self.timeout_s
            while True:
                data = self._socket.recv(timeout=max(deadline - time.monotonic(), 0.0))
                response = Response.from_bytes(data) if isinstance(data, bytes) else None
                if response is None:
                    raise ClientError(f"{self.url}/v1/stream sent text, not a response frame; check the URL")
                if response.request_id == request_id:
                    return response
        except InvalidStatus as error:
            code = error.response.status_code
            if code in (401, 403):
                raise ServerRejectedError(f"the server at {self.url} refused the stream (HTTP {code}){status_hint(401)}") \
                    from error
            raise ConnectionError(f"the stream's handshake got HTTP {code}") from error
        except WireError as error:
            raise ClientError(f"{self.url}/v1/stream answered with something that is not an edgesplit response "
                              f"({error}); check the URL") from error
        except WebSocketException as error:
            raise ConnectionError(str(error) or type(error).__name__) from error

    def _untrusted(self, error: BaseException | None) -> None:
        """Raise ServerUntrustedError if ``error`` is a certificate that did not verify: a configuration error,
        which falling back to the device would hide."""
        seen = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
                reason = getattr(error, "verify_message", None) or "it does not verify"
                raise ServerUntrustedError(f"the server's certificate is not trusted ({reason}); pass --ca-file "
                                           "with the CA (or self-signed certificate) that signed it") from error
            error = error.__cause__ or error.__context__

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _give_up(self, why: str) -> None:
        if not self.fallback:
            raise ServerUnreachableError(f"the server at {self.url} is unreachable: {why}; check that it runs "
                                         "and the URL, or allow falling back to the device")
        log.warning("server at %s unreachable (%s); running on the device", self.url, why)
        self._down = True
        self._ready_probe_at = time.monotonic()
        self.stats.outages += 1
        return None

    def _ensure_connected(self, now: float) -> None:
        if self._connected or self._down:
            return
        try:
            self._check_models()
            self._warm_up_heads()
            self._check_health()
            self._calibrate()
        except (httpx.TransportError, _Unavailable) as error:
            self._untrusted(error)
            self._give_up(describe_transport_error(error) if isinstance(error, httpx.TransportError) else str(error))

    def _check_models(self) -> None:
        """The server serves this deployment's model id, graph and routes; raises ServerMismatchError if not."""
        reply = self._http.get("/v1/models")
        if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
            raise _Unavailable(f"GET /v1/models answered HTTP {reply.status_code}")
        if reply.status_code != 200:
            raise ServerRejectedError(f"the server at {self.url} refused GET /v1/models (HTTP "
                                      f"{reply.status_code}): {error_message(reply)}{status_hint(reply.status_code)}")
        try:
            served = {m["model_id"]: m for m in reply.json()["models"]}
        except (ValueError, KeyError, TypeError) as error:
            raise ServerMismatchError(f"{self.url}/v1/models is not an edgesplit server's model list; "
                                      "check the URL") from error
        mine, plan = self.deployment.model_id, self.deployment.plan
        theirs = served.get(mine)
        if theirs is None:
            raise ServerMismatchError(f"the server at {self.url} does not serve model '{mine}' (it serves: "
                                      f"{', '.join(sorted(served)) or 'nothing'}); serve this plan there")
        if theirs.get("fingerprint") != plan.fingerprint:
            raise ServerMismatchError(f"the server's '{mine}' is graph {theirs.get('fingerprint')}, this plan's is "
                                      f"{plan.fingerprint}; serve the same plan (and weights) on both ends")
        routes = {r.get("route_id"): r for r in theirs.get("routes", [])}
        for route in self.deployment.routes:
            ours, other = route.describe(), routes.get(route.route_id)
            keys = ("label", "codecs", "width", "sends")
            if other is None or any(other.get(k) != ours[k] for k in keys):
                got = "nothing" if other is None else f"'{other.get('label')}' {other.get('codecs')}"
                raise ServerMismatchError(f"route {route.route_id} is '{route.label}' {ours['codecs']} here and "
                                          f"{got} on the server; serve the same plan on both ends")
        self._connected = True

    def _warm_up_heads(self) -> None:
        """Run every head, its encoder and the whole model once, untimed: a first forward pass costs many times a
        later one, and timed inside the first requests it would read as a slow link (the server warms its tails)."""
        examples = self.deployment.traced.example_inputs
        with torch.no_grad():
            self.deployment.model(*examples)
            for route in self.deployment.routes:
                route.encode(route.device_side(*examples))

    def _check_health(self) -> None:
        reply = self._http.get("/healthz")
        if reply.status_code != 200:
            raise _Unavailable(f"GET /healthz answered HTTP {reply.status_code}")

    def _calibrate(self) -> None:
        """Timed requests of two sizes on connect, so that the first estimate already tells the fixed cost of a
        request from its transfer time: the smallest route's frame and the largest that crosses in 50 ms at the
        assumed uplink (or, when every route sends about the same, the smallest route's frame for 4 inputs). They
        are ordinary requests for the plan's example input, answered as any other; each size is sent twice, after
        one untimed request (a fresh connection's first costs more). Best effort: what fails is left to the
        requests. A pinned client does not switch and sends none."""
        if self.pinned or not self.deployment.routes:
            return
        prior = self.estimator.mbps or self.deployment.plan.link.uplink_mbps
        budget_bytes = 0.05 * prior * 1e6 / 8
        generator = torch.Generator().manual_seed(0)  # inputs like real ones (an example input may be all zeros)
        one = tuple(torch.rand(x.shape, generator=generator).to(x.dtype) if x.is_floating_point() else x
                    for x in self.deployment.traced.example_inputs)
        sized = sorted(((len(self._frame(route, one)[1]), route) for route in self.deployment.routes),
                       key=lambda item: item[0])
        self.adapter.sizes.update({route.label: size for size, route in sized})
        small, smallest = sized[0]
        bigger = [route for size, route in sized if 2 * small <= size <= budget_bytes]
        four = tuple(torch.cat([x] * 4) for x in one)
        other = (bigger[-1], one) if bigger else (smallest, four) if 4 * small <= budget_bytes else None
        plan = [(smallest, one, False)] + [(smallest, one, True), *([(*other, True)] if other else [])] * 2
        for route, inputs, timed in plan:
            request_id, frame = self._frame(route, inputs)
            seconds = self._timed(frame, request_id)
            self.stats.calibrations += 1
            if seconds is None:
                break
            if timed:
                self.estimator.add(len(frame) * 8, seconds)
        self._warm = True

    def _frame(self, route: Route, inputs: tuple[torch.Tensor, ...]) -> tuple[bytes, bytes]:
        """(a fresh request id, the request frame) for ``inputs`` on ``route``."""
        request_id = new_request_id()
        with torch.no_grad():
            payload = route.encode(route.device_side(*inputs))
        return request_id, Request(request_id, self.deployment.model_id, route.route_id, payload, route.width,
                                   self.top_k).to_bytes()

    def _timed(self, frame: bytes, request_id: bytes) -> float | None:
        """One attempt, no retries: the seconds it took beyond the server's own time, or None if it failed."""
        began = time.perf_counter()
        try:
            if self.stream:
                response = self._exchange(frame, request_id)
            else:
                reply = self._post(frame)
                if reply.status_code != 200:
                    return None
                response = Response.from_bytes(reply.content)
        except (httpx.TransportError, OSError, TimeoutError, ConnectionError, WireError) as error:
            if self.stream:
                self._drop_socket()
            if isinstance(error, (httpx.WriteTimeout, httpx.ReadTimeout, TimeoutError)):  # at most this fast
                self.estimator.add_upper_bound(len(frame) * 8, time.perf_counter() - began)
            return None
        elapsed = time.perf_counter() - began
        if response.status != Status.OK or response.request_id != request_id:
            return None
        return max(elapsed - response.server_ms / 1e3, 0.0)

    def _maybe_recover(self, now: float) -> None:
        """Ask /readyz (at most every probe_every_s); on an answer, check the models and use the server again."""
        if now - self._ready_probe_at < self.probe_every_s:
            return
        self._ready_probe_at = now
        try:
            reply = self._http.get("/readyz", timeout=min(self.timeout_s, 2.0))
            if reply.status_code != 200:
                return
            self._connected, self._warm = False, False
            self._check_models()
            self._calibrate()
        except (httpx.TransportError, _Unavailable):
            return
        log.info("server at %s answers again", self.url)
        self._down = False
        self.stats.recoveries += 1

    # ---- tensors ------------------------------------------------------------------------------------------------

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ClientError(f"inputs are tensors, not {type(x).__name__}")
        shape = list(self.deployment.plan.input_shape)
        if x.dim() == len(shape) - 1:
            x = x.unsqueeze(0)
        if x.dim() != len(shape) or list(x.shape[1:]) != shape[1:]:
            raise ClientError(f"input of shape {list(x.shape)} does not fit this plan's model, which takes "
                              f"{['N', *shape[1:]]}; resize the input")
        if not self.deployment.input_dtype.is_floating_point:
            return self._token_ids(x)
        return x.float() if x.dtype != torch.float32 and x.is_floating_point() else x

    def _token_ids(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the int64 token ids the model takes; a ClientError for floats or ids outside its vocabulary."""
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ClientError(f"this plan's model takes integer token ids, not {str(x.dtype).removeprefix('torch.')} "
                              "values; send the ids from its tokenizer (an integer tensor)")
        vocab = self.deployment.vocab_size
        if vocab is not None and x.numel() and not (0 <= int(x.min()) and int(x.max()) < vocab):
            raise ClientError(f"token ids run from {int(x.min())} to {int(x.max())}, and this plan's model has a "
                              f"vocabulary of {vocab} (ids 0..{vocab - 1}); send ids from its tokenizer")
        return x.to(self.deployment.input_dtype)

    def _shape_outputs(self, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        """What a server returns for these output leaves: all of them, or the top-k of the first."""
        if not self.top_k:
            return [leaf.float() if leaf.is_floating_point() else leaf for leaf in leaves]
        values, indices = leaves[0].float().topk(min(self.top_k, leaves[0].shape[-1]), dim=-1)
        return [values, indices]


class _Unavailable(Exception):
    """The server answered, but is not ready (5xx on a status call)."""


def _deployment(plan: PlanReport | Deployment | str | Path, weights: str | Path | None,
                plan_dir: str | Path | None, model_id: str | None, model: str | None = None) -> Deployment:
    """The deployment ``plan`` names; a plan naming a ``module:factory`` needs ``model`` to name it (the caller's
    choice: a plan never chooses code to run)."""
    if isinstance(plan, Deployment):
        return plan
    if isinstance(plan, (str, Path)):
        if is_chain_plan(plan):
            raise ClientError(f"{plan} is a chain plan (`edgesplit plan --topology`); its device side is "
                              "edgesplit.runtime.chain_client.ChainClient(plan, url, token), which `edgesplit infer` "
                              "uses")
        plan_dir = plan_dir or Path(plan).parent
        plan = load_plan(plan)
    if isinstance(plan, ChainPlanReport):
        raise ClientError("a chain plan (`edgesplit plan --topology`) is run by "
                          "edgesplit.runtime.chain_client.ChainClient, with the same options")
    if model_id is not None:
        check_model_id(model_id)
    return load_deployment(plan, weights=weights, model_id=model_id, plan_dir=Path(plan_dir) if plan_dir else None,
                           model=model)
