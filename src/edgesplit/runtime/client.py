"""The device side: run a plan's head, encode what crosses the cut, send it to a tail server, adapt to the link.

``Client(plan, url, token)`` rebuilds the plan's routes (the same ones, numbered the same, as the server's), checks
on first use that the server serves the same model (name, graph fingerprint, routes), and answers ``infer(x)``
with a :class:`Result`. Around that:

* Bandwidth: every request's upload is timed; the sample is ``bits / (elapsed − server time − RTT floor)``,
  where the RTT floor is the fastest of a few tiny ``/healthz`` round trips. Samples are smoothed (an EWMA of the
  logarithm, so that a drop from 40 to 1 Mbit/s is followed as fast as one from 4 to 0.1). A transfer too short
  to time (under ``min_transfer_ms``) only says the link is at least that fast.
* Switching: the switch table's plan for the estimate is adopted only once the estimate is outside every range of
  the current plan by the hysteresis margin (20%: a plan valid below 4 Mbit/s is kept up to 4.8), so a link that
  sits at a threshold does not flap. Below the lowest split range the client runs everything locally.
* Probing: where nothing is measured (all on device, or transfers too short to time), one real request every
  ``probe_every_s`` goes on the next route up, so that the client notices the link getting faster.
* Failures: each request has one id for all its attempts (the server answers an id at most once), a timeout,
  and bounded retries with backoff. A 4xx other than 429 is a configuration error and raises. When every attempt
  fails and ``fallback`` is on, the whole model runs locally; the server is then asked ``/readyz`` every
  ``probe_every_s`` and used again as soon as it answers. Every input gets exactly one result.

Nothing here unpickles anything: responses are wire frames (``wire.py``) holding codec frames.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from torch.utils import _pytree as pytree

from ..codecs import CodecError, unpack
from ..errors import EdgesplitError
from ..plan.schema import PlanReport, load_plan
from .deployment import Deployment, Route, load_deployment
from .wire import MEDIA_TYPE, Request, Response, Status, WireError, check_model_id, new_request_id

log = logging.getLogger("edgesplit.client")

TOKEN_ENV = "EDGESPLIT_TOKEN"
_RETRY_STATUS = {429, 503}
_HEALTH_SAMPLES = 3


class ClientError(EdgesplitError):
    """A client that cannot do what it was asked: see the subclasses."""


class ServerUnreachableError(ClientError):
    """The server did not answer (connection refused, timeouts, 5xx) and falling back to the device is off."""


class ServerRejectedError(ClientError):
    """The server refused a request for a reason retrying cannot fix (a 4xx: wrong token, a bad frame)."""


class ServerMismatchError(ClientError):
    """The server serves another model, another graph, or other routes than this client's plan."""


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


@dataclass
class Switch:
    """A change of plan made because the bandwidth estimate crossed a threshold of the switch table."""

    request: int  # index of the first request that ran on the new plan
    from_label: str
    to_label: str
    mbps: float


@dataclass
class ClientStats:
    requests: int = 0
    server_results: int = 0
    device_results: int = 0
    fallbacks: int = 0  # results computed locally because the server did not answer
    outages: int = 0  # times the client gave up on the server and went to the device
    recoveries: int = 0  # times it came back
    retries: int = 0  # attempts after the first
    probes: int = 0  # requests sent only to measure the link
    bytes_sent: int = 0
    switches: list[Switch] = field(default_factory=list)


# ---- bandwidth -------------------------------------------------------------------------------------------------

class BandwidthEstimator:
    """A smoothed uplink estimate in Mbit/s: an EWMA of log(bandwidth) over per-request samples.

    ``prior_mbps`` is where it starts (the plan's link); the first measured sample replaces it. Probes (rare,
    and the only news about another regime) are mixed in with weight at least 0.5.

    A frame too small to time at the current estimate (it should cross faster than ``min_transfer_s``) that
    takes longer is more often a scheduling hiccup than a slower link: such slow samples count once ``patience``
    of them come in a row (and from then on, while the run lasts); a fast one in between clears them. Without this, a few hiccups among
    hundreds of untimeable kilobyte frames read as a slow link (the only samples ever "measured" are the slow ones).
    """

    patience = 3

    def __init__(self, prior_mbps: float | None = None, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha {alpha} is outside (0, 1]")
        self.alpha = alpha
        self._log = math.log(prior_mbps) if prior_mbps and prior_mbps > 0 else None
        self.measured = False  # False while the estimate is still the prior
        self.censored = False  # the last sample was too short to time: only a lower bound
        self.samples = 0
        self.suspect = 0  # slow samples in a row from frames too small to time at the estimate

    @property
    def mbps(self) -> float | None:
        return math.exp(self._log) if self._log is not None else None

    def add(self, bits: float, transfer_s: float, min_transfer_s: float, probe: bool = False) -> float | None:
        """Mix in one transfer of ``bits`` that took ``transfer_s`` beyond the RTT; returns the new estimate."""
        self.samples += 1
        alpha = max(self.alpha, 0.5) if probe else self.alpha
        if transfer_s < min_transfer_s:
            self.censored, self.suspect = True, 0
            bound = bits / min_transfer_s / 1e6  # at least this fast
            if self._log is None or math.log(bound) > self._log:
                self._mix(bound, alpha)
            return self.mbps
        untimeable = self.mbps is not None and bits / (self.mbps * 1e6) < min_transfer_s
        self.suspect = self.suspect + 1 if untimeable else 0
        if 0 < self.suspect < self.patience:
            return self.mbps  # held: a hiccup until it repeats (then every slow one in the run counts)
        self.censored = False
        self._mix(bits / transfer_s / 1e6, alpha)
        self.measured = True
        return self.mbps

    def add_upper_bound(self, bits: float, seconds: float) -> float | None:
        """A transfer that had not finished after ``seconds`` (a timeout): the link is at most this fast."""
        bound = math.log(max(bits / max(seconds, 1e-6) / 1e6, 1e-6))
        if self._log is None or bound < self._log:  # a hard bound, not a noisy sample: taken as it is
            self._log, self.measured, self.censored = bound, True, False
        return self.mbps

    def _mix(self, mbps: float, alpha: float) -> None:
        sample = math.log(max(mbps, 1e-6))
        if self._log is None or not self.measured:
            self._log = sample
        else:
            self._log += alpha * (sample - self._log)


class SwitchPolicy:
    """The switch table with hysteresis: which plan to run for a bandwidth estimate, given the one running."""

    def __init__(self, deployment: Deployment, hysteresis: float = 0.2) -> None:
        if hysteresis < 0:
            raise ValueError(f"hysteresis {hysteresis} is negative")
        self.deployment, self.hysteresis = deployment, hysteresis
        rows = sorted(deployment.plan.switch_table, key=lambda r: r.low_mbps)
        self.rows = rows
        self.all_device_label = deployment.plan.all_device.label
        # Outside the table, its first and last rows apply (as Deployment.label_at says).
        self.ranges: dict[str, list[tuple[float, float]]] = {}
        for i, row in enumerate(rows):
            low = 0.0 if i == 0 else row.low_mbps
            high = math.inf if i == len(rows) - 1 else row.high_mbps
            self.ranges.setdefault(row.label, []).append((low, high))

    def label_at(self, mbps: float) -> str:
        return self.deployment.label_at(mbps) if self.rows else self.deployment.plan.chosen.label

    def holds(self, label: str, mbps: float) -> bool:
        """Whether ``label`` is still right at ``mbps``: one of its ranges is within the hysteresis margin."""
        if not self.rows:
            return True
        low, high = mbps / (1 + self.hysteresis), mbps * (1 + self.hysteresis)
        return any(lo <= high and low < hi for lo, hi in self.ranges.get(label, []))

    def next(self, label: str, mbps: float) -> str:
        """The plan to run at ``mbps`` when ``label`` runs now."""
        return label if self.holds(label, mbps) else self.label_at(mbps)

    def above(self, label: str) -> str | None:
        """The plan of the range just above ``label``'s highest one that runs over the network, if any."""
        tops = [hi for lo, hi in self.ranges.get(label, [])]
        if not tops:
            return None
        top = max(tops)
        for row in self.rows:
            if row.low_mbps >= top and row.label != label and self.deployment.route_for_label(row.label) is not None:
                return row.label
        return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---- the client ---------------------------------------------------------------------------------------------------

class Client:
    """Split inference against an edgesplit tail server (`edgesplit serve`); a context manager.

    ``plan`` is a plan (PlanReport), the path of its JSON, or a Deployment already built from one. ``weights``
    overrides the weights file the plan names, ``model_id`` the id the server knows it by (default: from the
    plan's model name, as `edgesplit serve` names it); relative paths in the plan are also looked up in ``plan_dir`` (the
    plan file's folder by default). ``transport`` replaces httpx's (tests throttle uploads with one).
    ``initial_mbps`` is the uplink to assume before anything is measured (default: the plan's link). ``route``
    pins one plan of the switch table by its label (no switching, no probes; the estimate is still kept).
    ``onnx_dir`` exports every route's head to ONNX there, checks it against PyTorch, and runs it with onnxruntime.
    ``stream`` sends the frames over one WebSocket (``/v1/stream``) instead of one HTTP POST each: less overhead
    per request, the same retries, fallback and answers.
    """

    def __init__(self, plan: PlanReport | Deployment | str | Path, url: str, token: str | None = None, *,
                 weights: str | Path | None = None, timeout_s: float = 5.0, retries: int = 2,
                 backoff_s: float = 0.1, fallback: bool = True, probe_every_s: float = 2.0,
                 transport: httpx.BaseTransport | None = None, initial_mbps: float | None = None,
                 hysteresis: float = 0.2, alpha: float = 0.3, min_transfer_ms: float = 2.0,
                 rtt_refresh_s: float = 30.0, top_k: int = 0, route: str | None = None,
                 model_id: str | None = None, plan_dir: str | Path | None = None,
                 onnx_dir: str | Path | None = None, stream: bool = False) -> None:
        if retries < 0 or timeout_s <= 0 or probe_every_s <= 0 or hysteresis < 0 or not 0 < alpha <= 1:
            raise ClientError("retries and hysteresis must be ≥ 0, timeout_s and probe_every_s positive, alpha in "
                              "(0, 1]")
        self.deployment = _deployment(plan, weights, plan_dir, model_id)
        self.stream, self._socket = stream, None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        if onnx_dir is not None:  # the device runs its heads with onnxruntime, as a Raspberry Pi would
            from .onnx_head import use_onnx_heads
            use_onnx_heads(self.deployment, onnx_dir)
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(f"server URL '{url}' is not http(s)://HOST:PORT; give it as e.g. http://10.0.0.2:8000")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.fallback, self.probe_every_s, self.top_k = fallback, probe_every_s, top_k
        self.min_transfer_s, self.rtt_refresh_s = min_transfer_ms / 1e3, rtt_refresh_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s),
                                  transport=transport)
        self.policy = SwitchPolicy(self.deployment, hysteresis)
        prior = initial_mbps if initial_mbps is not None else self.deployment.plan.link.uplink_mbps
        self.estimator = BandwidthEstimator(prior, alpha)
        self.label = self.policy.label_at(prior)
        self.pinned = route is not None  # one route always: no switching, no probes
        if route is not None:
            labels = [r.label for r in self.deployment.routes] + [self.policy.all_device_label]
            if route not in labels:
                raise ClientError(f"this plan has no route '{route}'; its routes are: "
                                  f"{', '.join(repr(label) for label in labels)}")
            self.label = route
        self.stats = ClientStats()
        self.rtt_floor_s: float | None = None
        self._rtts: list[float] = []
        self._rtt_at = -math.inf
        self._connected = False  # the server's models were checked
        self._warm = False  # the first request after connecting pays one-time costs: not a bandwidth sample
        self._down = False  # the server did not answer: running locally, asking /readyz now and then
        self._ready_probe_at = -math.inf
        self._probe_at = -math.inf
        self._lock = threading.Lock()
        self._closed = False

    # ---- public -------------------------------------------------------------------------------------------------

    @property
    def mbps(self) -> float | None:
        """The current uplink estimate (Mbit/s); the prior until something was measured."""
        return self.estimator.mbps

    @property
    def server_up(self) -> bool:
        return not self._down

    def connect(self) -> Client:
        """Check the server serves this plan and measure the RTT floor (done by the first ``infer`` anyway)."""
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
        self._maybe_refresh_rtt(now)
        route, mode = self._pick(now)
        if route is None:
            return self._local(inputs, started, "all-device")
        tensors = route.device_side(*inputs)
        request_id = new_request_id()
        frame = Request(request_id, self.deployment.model_id, route.route_id, route.encode(tensors), route.width,
                        self.top_k).to_bytes()
        sent = self._send(frame, request_id, index)
        if sent is None:  # every attempt failed; fallback is on
            self.stats.fallbacks += 1
            return self._local(inputs, started, "fallback", request_id.hex())
        response, elapsed, attempts = sent
        if self._warm:
            self._measure(len(frame), elapsed, response.server_ms / 1e3, index, mode == "probe")
        elif mode == "probe":
            self._probe_at = -math.inf  # a warm-up measured nothing: probe again on the next request
        self._warm = True
        try:
            outputs = unpack(response.payload)
        except CodecError as error:
            raise ClientError(f"the server's answer to request {request_id.hex()} does not decode ({error}); "
                              "is the server the same edgesplit release?") from None
        return Result(outputs, route.label, "server", mode, request_id.hex(), len(frame),
                      (time.perf_counter() - started) * 1e3, response.server_ms, attempts, self.estimator.mbps)

    def _local(self, inputs: tuple[torch.Tensor, ...], started: float, mode: str, request_id: str = "") -> Result:
        outputs = self.run_locally(*inputs)
        label = self.policy.all_device_label
        return Result(outputs, label, "device", mode, request_id or new_request_id().hex(), 0,
                      (time.perf_counter() - started) * 1e3, 0.0, 0, self.estimator.mbps)

    def _pick(self, now: float) -> tuple[Route | None, str]:
        """The route for this request and why: the table's plan, or a probe of the next route up."""
        route = self.deployment.route_for_label(self.label)
        if self.pinned:
            return route, "route"
        measuring = route is not None and not self.estimator.censored
        if not measuring and now - self._probe_at >= self.probe_every_s:
            up = self.policy.above(self.label)
            if up is not None:
                self._probe_at = now
                self.stats.probes += 1
                return self.deployment.route_for_label(up), "probe"
        return route, "route"

    def _measure(self, frame_bytes: int, elapsed_s: float, server_s: float, index: int, probe: bool) -> None:
        floor = self.rtt_floor_s or 0.0
        beyond = elapsed_s - server_s
        if beyond < floor:  # faster than the floor: the floor was a slow moment
            self.rtt_floor_s = floor = max(beyond, 0.0)
        min_transfer = max(self.min_transfer_s, 0.25 * floor)
        self.estimator.add(frame_bytes * 8, beyond - floor, min_transfer, probe)
        self._decide(index)

    def _slow(self, bits: int, seconds: float, index: int) -> None:
        """An attempt that timed out: its bits took longer than ``seconds``, so lower routes may be needed."""
        self.estimator.add_upper_bound(bits, seconds)
        self._decide(index)

    def _decide(self, index: int) -> None:
        if self.pinned:
            return
        target = self.policy.next(self.label, self.estimator.mbps)
        if target != self.label:
            self.stats.switches.append(Switch(index + 1, self.label, target, self.estimator.mbps))
            log.info("switching from %s to %s at %.3g Mbit/s", self.label, target, self.estimator.mbps)
            self.label = target

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
                    self._drop_socket()
                    last = f"{type(error).__name__}: {error}"
                    continue
                if response.status == Status.OK:
                    return response, time.perf_counter() - began, attempt + 1
                if response.status in (Status.BUSY, Status.UNAVAILABLE, Status.INTERNAL):
                    last = f"{response.status.name}: {response.message}"
                    continue
                raise ServerRejectedError(f"the server at {self.url} refused request {request_id.hex()} "
                                          f"({response.status.name}): {response.message}"
                                          f"{_hint(response.status.http)}")
            try:
                reply = self._http.post("/v1/infer", content=frame, headers={"Content-Type": MEDIA_TYPE})
            except httpx.TransportError as error:  # refused, reset, timed out: the request may or may not have run
                last = _describe(error)
                if isinstance(error, (httpx.WriteTimeout, httpx.ReadTimeout)):  # the link is at most this fast
                    self._slow(len(frame) * 8, time.perf_counter() - began, index)
                continue
            elapsed = time.perf_counter() - began
            if reply.status_code == 200:
                try:
                    response = Response.from_bytes(reply.content)
                except WireError as error:
                    raise ClientError(f"{self.url} answered with something that is not an edgesplit response "
                                      f"({error}); check the URL") from None
                if response.request_id != request_id:
                    raise ClientError(f"the server answered request {request_id.hex()} with the answer to "
                                      f"{response.request_id.hex()}; is a proxy mixing up responses?")
                return response, elapsed, attempt + 1
            message = _error_message(reply)
            if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
                last = f"HTTP {reply.status_code}: {message}"
                continue
            raise ServerRejectedError(f"the server at {self.url} refused request {request_id.hex()} "
                                      f"(HTTP {reply.status_code}): {message}{_hint(reply.status_code)}")
        return self._give_up(f"request {request_id.hex()} got no answer after {attempts} attempt(s) "
                             f"(last: {last})")

    def _exchange(self, frame: bytes, request_id: bytes) -> Response:
        """One frame over the WebSocket and its answer (answers to earlier, timed-out tries are skipped)."""
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        try:
            if self._socket is None:
                url = "ws" + self.url.removeprefix("http") + "/v1/stream"
                stack = ExitStack()
                self._socket = stack.enter_context(connect(url, additional_headers=self._headers, max_size=None,
                                                           open_timeout=self.timeout_s, compression=None))
                self._socket_stack = stack
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
                raise ServerRejectedError(f"the server at {self.url} refused the stream (HTTP {code}){_hint(401)}") \
                    from None
            raise ConnectionError(f"the stream's handshake got HTTP {code}") from None
        except WireError as error:
            raise ClientError(f"{self.url}/v1/stream answered with something that is not an edgesplit response "
                              f"({error}); check the URL") from None
        except WebSocketException as error:
            raise ConnectionError(str(error) or type(error).__name__) from None

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket_stack.close()
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
            self._refresh_rtt(_HEALTH_SAMPLES)
        except (httpx.TransportError, _Unavailable) as error:
            self._give_up(_describe(error) if isinstance(error, httpx.TransportError) else str(error))

    def _check_models(self) -> None:
        """The server serves this deployment's model id, graph and routes; raises ServerMismatchError if not."""
        reply = self._http.get("/v1/models")
        if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
            raise _Unavailable(f"GET /v1/models answered HTTP {reply.status_code}")
        if reply.status_code != 200:
            raise ServerRejectedError(f"the server at {self.url} refused GET /v1/models (HTTP "
                                      f"{reply.status_code}): {_error_message(reply)}{_hint(reply.status_code)}")
        try:
            served = {m["model_id"]: m for m in reply.json()["models"]}
        except (ValueError, KeyError, TypeError):
            raise ServerMismatchError(f"{self.url}/v1/models is not an edgesplit server's model list; "
                                      "check the URL") from None
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

    def _refresh_rtt(self, samples: int = 1) -> None:
        for _ in range(samples):
            began = time.perf_counter()
            reply = self._http.get("/healthz")
            took = time.perf_counter() - began
            if reply.status_code != 200:
                raise _Unavailable(f"GET /healthz answered HTTP {reply.status_code}")
            self._rtts = (self._rtts + [took])[-5:]
        self.rtt_floor_s = min(self._rtts)
        self._rtt_at = time.monotonic()

    def _maybe_refresh_rtt(self, now: float) -> None:
        if now - self._rtt_at >= self.rtt_refresh_s:
            try:
                self._refresh_rtt()
            except (httpx.TransportError, _Unavailable):
                self._rtt_at = now  # the request itself will find out

    def _maybe_recover(self, now: float) -> None:
        """Ask /readyz (at most every probe_every_s); on an answer, check the models and use the server again."""
        if now - self._ready_probe_at < self.probe_every_s:
            return
        self._ready_probe_at = now
        try:
            reply = self._http.get("/readyz", timeout=min(self.timeout_s, 2.0))
            if reply.status_code != 200:
                return
            self._connected = False
            self._check_models()
            self._rtts, self._warm = [], False
            self._refresh_rtt(_HEALTH_SAMPLES)
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
        return x.float() if x.dtype != torch.float32 and x.is_floating_point() else x

    def _shape_outputs(self, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        """What a server returns for these output leaves: all of them, or the top-k of the first."""
        if not self.top_k:
            return [leaf.float() if leaf.is_floating_point() else leaf for leaf in leaves]
        values, indices = leaves[0].float().topk(min(self.top_k, leaves[0].shape[-1]), dim=-1)
        return [values, indices]


class _Unavailable(Exception):
    """The server answered, but is not ready (5xx on a status call)."""


def _deployment(plan: PlanReport | Deployment | str | Path, weights: str | Path | None,
                plan_dir: str | Path | None, model_id: str | None) -> Deployment:
    if isinstance(plan, Deployment):
        return plan
    if isinstance(plan, (str, Path)):
        plan_dir = plan_dir or Path(plan).parent
        plan = load_plan(plan)
    if model_id is not None:
        check_model_id(model_id)
    return load_deployment(plan, weights=weights, model_id=model_id, plan_dir=Path(plan_dir) if plan_dir else None)


def _describe(error: httpx.TransportError) -> str:
    kind = {httpx.ConnectError: "connection refused or no route", httpx.ConnectTimeout: "connect timed out",
            httpx.ReadTimeout: "no answer within the timeout", httpx.WriteTimeout: "sending timed out",
            httpx.PoolTimeout: "no free connection"}.get(type(error))
    text = " ".join(str(error).split())
    return f"{kind or type(error).__name__}" + (f" ({text})" if text and kind is None else "")


def _hint(status: int) -> str:
    return {401: " (the client takes it as token=..., `edgesplit infer` from --token-file or $EDGESPLIT_TOKEN)",
            404: " (is this the URL of an edgesplit server?)"}.get(status, "")


def _error_message(reply: httpx.Response) -> str:
    try:
        body = reply.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    return " ".join(reply.text.split())[:200] or reply.reason_phrase


def read_token(path: Path | None) -> str | None:
    """The bearer token from a file (its first line), else $EDGESPLIT_TOKEN, else None."""
    if path is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        lines = path.read_text().strip().splitlines()
    except OSError as error:
        raise ClientError(f"cannot read the token file {path} ({error.strerror}); check the path") from None
    if not lines or not lines[0].strip():
        raise ClientError(f"the token file {path} is empty; put the server's token on its first line")
    return lines[0].strip()


# ---- `edgesplit infer`: inputs, a run, its summary ----------------------------------------------------------------

@dataclass
class Inputs:
    """Images shaped for a plan's model, with labels where the source has them."""

    images: torch.Tensor  # N×C×H×W float32 in [0, 1]
    labels: torch.Tensor | None
    names: list[str]  # file names, or "SPEC#i"
    source: str


def load_inputs(input_shape: Sequence[int], *, images: Path | None = None, data: str | None = None,
                limit: int | None = None) -> Inputs:
    """The images to send: a folder of PNG/JPEG files (class subfolders give labels) or a data set's test split.

    Without either, the bundled digits for a 1×8×8 model. Images are resized to the model's H×W and converted
    to its channels (gray or RGB).
    """
    from ..errors import DataError

    shape = [int(s) for s in input_shape]
    if len(shape) != 4:
        raise ClientError(f"this plan's model takes {shape} inputs; `edgesplit infer` sends images (N×C×H×W)")
    channels, height, width = shape[1:]
    if images is not None and data is not None:
        raise ClientError("give --images DIR or --data SPEC, not both")
    if images is None and data is None:
        if shape[1:] != [1, 8, 8]:
            raise ClientError(f"this plan's model takes {channels}×{height}×{width} images; give them with "
                              "--images DIR or --data SPEC (digits | mnist:DIR | fashion-mnist:DIR)")
        data = "digits"
    if channels not in (1, 3):
        raise ClientError(f"this plan's model takes {channels}-channel inputs; images are gray or RGB, so "
                          "send its inputs through the Python API (edgesplit.Client) instead")
    if images is not None:
        return _folder_inputs(Path(images), channels, height, width, limit)
    from ..data import load_dataset

    try:
        dataset = load_dataset(data, image_size=height if height == width else None, limit=limit)
    except DataError as error:
        raise ClientError(str(error)) from None
    pictures = dataset.test_images[:limit]
    if tuple(pictures.shape[2:]) != (height, width):
        raise ClientError(f"data set '{data}' has {pictures.shape[2]}×{pictures.shape[3]} images and this plan's "
                          f"model takes {height}×{width}; use --images with a folder of pictures")
    pictures = _match_channels(pictures, channels)
    return Inputs(pictures.contiguous(), dataset.test_labels[:limit].clone(),
                  [f"{data}#{i}" for i in range(len(pictures))], f"{data} (test split)")


def _folder_inputs(folder: Path, channels: int, height: int, width: int, limit: int | None) -> Inputs:
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..data import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise ClientError(f"--images {folder} is not a folder; give a folder of PNG/JPEG images")

    def files_in(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir()
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))

    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: list[tuple[Path, int | None]] = [(f, None) for f in files_in(folder)]
    if not found and classes:  # FOLDER/CLASS/IMAGE: labels are the class folders' sorted order
        found = [(f, i) for i, c in enumerate(classes) for f in files_in(c)]
    if not found:
        raise ClientError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                          "put PNG or JPEG files in it")
    found = found[:limit]
    arrays = []
    for path, _ in found:
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
                image = image.resize((width, height), Image.Resampling.BILINEAR)
                array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ClientError(f"cannot read image {path} ({reason}); replace or remove it") from None
        arrays.append(array.reshape(height, width, channels).permute(2, 0, 1).float() / 255)
    labels = [label for _, label in found]
    return Inputs(torch.stack(arrays).contiguous(),
                  torch.tensor(labels) if all(label is not None for label in labels) else None,
                  [str(path.relative_to(folder)) for path, _ in found], str(folder))


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return images.mean(1, keepdim=True)
    return images.expand(-1, channels, -1, -1) if images.shape[1] == 1 else images[:, :channels]


def run_inference(client: Client, inputs: Inputs, *, batch: int = 1, check: bool = True,
                  progress: bool = True) -> dict:
    """Send every input (``batch`` per request) through ``client``; the summary and per-request records."""
    from ..progress import progress_bar

    count = len(inputs.images)
    records: list[dict] = []
    predictions: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    client.connect()
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("infer", total=count)
        for first in range(0, count, batch):
            chunk = inputs.images[first:first + batch]
            result = client.infer(chunk)
            predicted = _predictions(result, client.top_k)
            if predicted is not None:
                predictions.append(predicted)
            outputs.append(result.logits)
            mbps = result.mbps
            records.append({
                "index": first, "images": len(chunk), "request_id": result.request_id, "route": result.label,
                "where": result.where, "mode": result.mode, "ms": round(result.latency_ms, 3),
                "server_ms": round(result.server_ms, 3), "bytes": result.bytes_sent, "attempts": result.attempts,
                "mbps": None if mbps is None else round(mbps, 4),
                "predictions": None if predicted is None else predicted.tolist(),
                "labels": None if inputs.labels is None else inputs.labels[first:first + batch].tolist(),
                "names": inputs.names[first:first + batch]})
            status = f"{result.label} · {mbps:.3g} Mbit/s" if mbps is not None else result.label
            bar.update(task, advance=len(chunk), status=status + (" · fallback" if result.mode == "fallback" else ""))
    seconds = time.perf_counter() - started
    stats = client.stats
    latencies = [r["ms"] for r in records]
    summary = {
        "kind": "edgesplit.infer", "version": 1, "model": client.deployment.plan.model,
        "model_id": client.deployment.model_id, "server": client.url, "source": inputs.source,
        "images": count, "requests": len(records), "batch": batch, "seconds": round(seconds, 4),
        "throughput_ips": round(count / seconds, 3) if seconds > 0 else None,
        "latency_ms": {"p50": _rounded(percentile(latencies, 50)), "p95": _rounded(percentile(latencies, 95)),
                       "p99": _rounded(percentile(latencies, 99)),
                       "mean": _rounded(sum(latencies) / len(latencies)) if latencies else None,
                       "max": _rounded(max(latencies, default=None))},
        "bytes_sent": stats.bytes_sent, "bytes_per_image": round(stats.bytes_sent / count, 1) if count else 0,
        "switch_count": len(stats.switches),
        "switches": [{"request": s.request, "from": s.from_label, "to": s.to_label, "mbps": round(s.mbps, 4)}
                     for s in stats.switches],
        "routes": _counts(r["route"] for r in records),
        "server_results": stats.server_results, "device_results": stats.device_results,
        "fallbacks": stats.fallbacks, "outages": stats.outages, "recoveries": stats.recoveries,
        "retries": stats.retries, "probes": stats.probes,
        "final_route": client.label, "final_mbps": _rounded(client.mbps, 4),
        "final_mbps_is_lower_bound": client.estimator.censored,
        "rtt_floor_ms": _rounded(client.rtt_floor_s * 1e3 if client.rtt_floor_s is not None else None),
        "accuracy": None, "agreement": None, "max_abs_diff": None,
    }
    if predictions and inputs.labels is not None:
        summary["accuracy"] = round(float((torch.cat(predictions) == inputs.labels[:count]).float().mean()), 4)
    if check and count:
        local = [client.run_locally(inputs.images[i:i + 64]) for i in range(0, count, 64)]
        first = torch.cat([o[0] for o in local])
        summary["max_abs_diff"] = float((torch.cat(outputs).float() - first.float()).abs().max())
        if predictions:
            mine = torch.cat([o[1][:, 0] for o in local]) if client.top_k else first.argmax(-1)
            summary["agreement"] = round(float((torch.cat(predictions) == mine).float().mean()), 4)
    return {"summary": summary, "records": records}


def _predictions(result: Result, top_k: int) -> torch.Tensor | None:
    """The predicted class of each row, when the output is a batch of class scores."""
    if top_k:
        return result.outputs[1][:, 0] if len(result.outputs) > 1 and result.outputs[1].dim() == 2 else None
    return result.logits.argmax(-1) if result.logits.dim() == 2 else None


def _counts(labels: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def summary_table(summary: dict):  # noqa: ANN201 - rich is imported here only
    """The run at a glance: images, throughput, latency percentiles, bytes, switches, fallbacks, accuracy."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{summary['model']} via {summary['server']}: {summary['images']} images from "
                               f"{summary['source']}"), show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    latency = summary["latency_ms"]
    table.add_row("images / requests", f"{summary['images']} / {summary['requests']} (batch {summary['batch']})")
    table.add_row("throughput", f"{summary['throughput_ips'] or 0:.1f} images/s over {summary['seconds']:.2f} s")
    table.add_row("latency p50 / p95 / p99", "n/a" if latency["p50"] is None else
                  f"{latency['p50']:.1f} / {latency['p95']:.1f} / {latency['p99']:.1f} ms")
    table.add_row("bytes sent", f"{summary['bytes_sent']:,} ({summary['bytes_per_image']:,.0f} per image)")
    table.add_row("routes", escape(", ".join(f"{label} ×{n}" for label, n in summary["routes"].items())))
    switches = escape("; ".join(f"#{s['request']} {s['from']} → {s['to']} at {s['mbps']:.3g} Mbit/s"
                                for s in summary["switches"]))
    table.add_row("switches", f"{summary['switch_count']}" + (f": {switches}" if switches else ""))
    table.add_row("fallbacks", f"{summary['fallbacks']} result(s) on the device, {summary['outages']} outage(s), "
                               f"{summary['recoveries']} recovery(ies), {summary['retries']} retry(ies)")
    mbps = summary["final_mbps"]
    at_least = "≥ " if summary.get("final_mbps_is_lower_bound") else ""  # transfers too short to time
    table.add_row("uplink estimate", "n/a" if mbps is None else f"{at_least}{mbps:.3g} Mbit/s (RTT floor "
                  f"{summary['rtt_floor_ms'] if summary['rtt_floor_ms'] is not None else 'n/a'} ms)")
    if summary["accuracy"] is not None:
        table.add_row("accuracy", f"{summary['accuracy']:.2%}")
    if summary["agreement"] is not None:
        table.add_row("agreement with the model run here", f"{summary['agreement']:.2%} (max abs diff "
                      f"{summary['max_abs_diff']:.2e})")
    return table
