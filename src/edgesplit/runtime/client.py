"""The device side: run a plan's head, encode what crosses the cut, send it to a tail server, adapt to the link.

``Client(plan, url, token)`` rebuilds the plan's routes (the same ones, numbered the same, as the server's), checks
on first use that the server serves the same model (name, graph fingerprint, routes), and answers ``infer(x)``
with a :class:`Result`. Around that:

* Bandwidth: a request's time beyond what the server reports is a fixed cost (round trip, both stacks) plus its
  bits ÷ the bandwidth. Both come from the requests (:class:`BandwidthEstimator`): a Theil–Sen line over recent
  requests of two sizes (routes differ, probes, timed requests of two sizes on connect) gives the fixed cost; the
  estimate is the median of the last five requests' transfer times; a transfer within ``min_transfer_ms`` of the
  fixed cost only says the link is at least that fast. A switch to a slower plan that rests on one frame size
  waits for one request of another size and is made only if its time grows with its bytes as the estimate says.
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

import contextlib
import logging
import math
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from torch.utils import _pytree as pytree

from edgesplit.codecs import CodecError, unpack
from edgesplit.errors import EdgesplitError
from edgesplit.plan.schema import PlanReport, load_plan
from edgesplit.runtime.deployment import Deployment, Route, load_deployment
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, WireError, check_model_id, new_request_id

log = logging.getLogger("edgesplit.client")

TOKEN_ENV = "EDGESPLIT_TOKEN"
_RETRY_STATUS = {429, 503}


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
    probes: int = 0  # requests sent on the next route up to see whether the link got faster
    calibrations: int = 0  # requests sent on connect only to time two frame sizes
    bytes_sent: int = 0
    switches: list[Switch] = field(default_factory=list)


# ---- bandwidth -------------------------------------------------------------------------------------------------

class BandwidthEstimator:
    """The uplink in Mbit/s, from the requests themselves: a request's time beyond what the server reports is a fixed
    cost (round trip, HTTP or WebSocket framing, both stacks) plus its bits ÷ the bandwidth.

    * The fixed cost is the intercept of a Theil–Sen line (the median of pairwise slopes) of time on bits over the
      last ``recent`` requests, whenever they hold two frame sizes (routes differ, a probe, the calibration on
      connect). A fit whose requests do not lie near one line (the link changed among them) is not used. With one
      frame size the slope cannot be told from the intercept, so the fixed cost learned before stands; when most
      recent requests are faster than it, it falls to their median.
    * Each request's transfer time is its time minus the fixed cost. One within ``tolerance_s`` of it (the larger of
      ``min_transfer_s`` and a quarter of the fixed cost) is *censored*: it only says the link is at least bits ÷
      tolerance fast, never that it is slow.
    * The estimate is the median of the last ``recent`` requests, censored ones counting as faster than any measured
      one: a hiccup (or two in five) moves nothing, a real change is followed after three requests. When most are
      censored the estimate is a lower bound: it rises to it but never falls on it, and a measured request above it
      (a probe of a bigger route) is taken.

    ``prior_mbps`` is the estimate until something is measured.
    """

    def __init__(self, prior_mbps: float | None = None, *, min_transfer_s: float = 0.002, recent: int = 5) -> None:
        if min_transfer_s <= 0 or recent < 1:
            raise ValueError("min_transfer_s must be positive and recent ≥ 1")
        self.min_transfer_s = min_transfer_s
        self._mbps = prior_mbps if prior_mbps and prior_mbps > 0 else None
        self._prior = self._mbps
        self._recent: deque[tuple[float, float, bool]] = deque(maxlen=recent)  # bits, seconds, timed out
        self.fixed_s: float | None = None  # the learned fixed cost per request
        self.measured = False  # False while the estimate is still the prior
        self.censored = False  # the estimate is a lower bound: recent transfers were too short to time
        self.samples = 0

    @property
    def mbps(self) -> float | None:
        return self._mbps

    @property
    def tolerance_s(self) -> float:
        return max(self.min_transfer_s, 0.25 * (self.fixed_s or 0.0))

    @property
    def one_size(self) -> bool:
        """Whether the recent requests all had about one size (then the link and the fixed cost are not told apart
        by them: the fixed cost is the one learned before)."""
        sizes = [bits for bits, _, _ in self._recent]
        return not sizes or max(sizes) < _DISTINCT * min(sizes)

    def add(self, bits: float, seconds: float, probe: bool = False) -> float | None:
        """One answered request of ``bits`` that took ``seconds`` beyond the server's time; returns the estimate.
        (``probe`` is accepted for callers that mark probes; a probe is a request like any other.)"""
        self.samples += 1
        self._recent.append((bits, seconds, False))
        self._fit()
        return self._estimate()

    @property
    def typical_bits(self) -> float:
        """The median size of the recent requests."""
        sizes = sorted(bits for bits, _, _ in self._recent)
        return sizes[(len(sizes) - 1) // 2] if sizes else 0.0

    def forget(self) -> None:
        """Drop the recent requests but the last (they raised a suspicion that another size did not bear out)."""
        while len(self._recent) > 1:
            self._recent.popleft()
        self._estimate()

    def add_upper_bound(self, bits: float, seconds: float) -> float | None:
        """A transfer that had not finished after ``seconds`` (a timeout): the link is at most this fast."""
        self.samples += 1
        self._recent.append((bits, seconds, True))
        return self._estimate()

    def _fit(self) -> None:
        recent = [(bits, seconds) for bits, seconds, late in self._recent if not late]
        line = theil_sen(recent)
        if line is not None:  # the latest requests hold two sizes: the fixed cost, if they lie near one line
            fixed, slope = line
            misfit = sorted(abs(t - fixed - slope * b) for b, t in recent)[(len(recent) - 1) // 2]
            if fixed > -self.tolerance_s and misfit <= self.tolerance_s:  # else the link changed among them
                self.fixed_s = max(fixed, 0.0)
                return
        if self.fixed_s is None:  # one size and nothing learned: what the prior's transfer time leaves
            bits, seconds = min(recent, key=lambda s: s[1])
            self.fixed_s = max(seconds - (bits / (self._prior * 1e6) if self._prior else 0.0), 0.0)
        recent = sorted(t for _, t, late in self._recent if not late)
        if recent and self.fixed_s is not None and recent[(len(recent) - 1) // 2] < self.fixed_s:
            self.fixed_s = recent[(len(recent) - 1) // 2]  # most requests are faster than the fixed cost: it fell

    def _estimate(self) -> float | None:
        fixed, tolerance = self.fixed_s or 0.0, self.tolerance_s
        measured, bounds, uppers = [], [], []
        for bits, seconds, late in self._recent:
            transfer = seconds - fixed
            if late:
                measured.append(bits / max(transfer, tolerance) / 1e6)  # at most this fast
                uppers.append(measured[-1])
            elif transfer <= tolerance:
                bounds.append(bits / tolerance / 1e6)  # at least this fast
            else:
                measured.append(bits / transfer / 1e6)
        if 2 * len(measured) > len(measured) + len(bounds):  # most were timed: their median, censored ones above
            ordered = sorted(measured) + [math.inf] * len(bounds)
            self._mbps = ordered[(len(ordered) - 1) // 2]
            self.measured, self.censored = True, False
            return self._mbps
        bound = sorted(bounds)[(len(bounds) - 1) // 2]
        above = sorted(m for m in measured if m >= bound)  # consistent with the bounds: a probe of a bigger route
        faster = above[(len(above) - 1) // 2] if above else 0.0
        self._mbps = max(self._mbps or 0.0, bound, faster)
        self.censored = not above or faster < self._mbps
        if uppers:  # a recent timeout caps it: no probing of what just stalled
            self._mbps, self.censored = min(self._mbps, min(uppers)), False
        self.measured = self.measured or bool(above)
        return self._mbps


_DISTINCT = 1.25  # frames this many times larger count as another size


def theil_sen(samples: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope ≥ 0) of the Theil–Sen line of y on x, over pairs whose x differ by ``_DISTINCT``×; None
    when fewer than two such pairs exist (one size only: the slope cannot be told)."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(samples) for x2, y2 in samples[i + 1:]
              if max(x1, x2) >= _DISTINCT * min(x1, x2)]
    if len(slopes) < 2:
        return None
    slopes.sort()
    slope = max(slopes[(len(slopes) - 1) // 2], 0.0)
    offsets = sorted(y - slope * x for x, y in samples)
    return offsets[(len(offsets) - 1) // 2], slope


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

    def lower(self, label: str, than: str) -> bool:
        """Whether ``label`` is a plan for slower links than ``than`` (its ranges end lower)."""
        def top(name: str) -> float:
            return max((high for _, high in self.ranges.get(name, [])), default=0.0)
        return top(label) < top(than)

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
    per request, the same retries, fallback and answers. Over ``https://`` (and so ``wss://``) the server's
    certificate is checked against ``ca_file`` (PEM; default: the system's trusted roots); one that does not verify
    raises :class:`ServerUntrustedError` rather than falling back to the device.
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
            from edgesplit.runtime.onnx_head import use_onnx_heads
            use_onnx_heads(self.deployment, onnx_dir)
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(f"server URL '{url}' is not http(s)://HOST:PORT; give it as e.g. http://10.0.0.2:8000")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.fallback, self.probe_every_s, self.top_k = fallback, probe_every_s, top_k
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # one verifying TLS context for the HTTP client and the WebSocket
        self.ssl_context = _ssl_context(ca_file) if self.url.startswith("https://") else None
        if ca_file is not None and self.ssl_context is None:
            raise ClientError(f"--ca-file is for https:// servers and {url} is plain http; use https:// (the server "
                              "runs with --tls-cert and --tls-key) or leave --ca-file out")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s),
                                  transport=transport or _KeepAlive(self.ssl_context),
                                  verify=self.ssl_context or True)
        self.policy = SwitchPolicy(self.deployment, hysteresis)
        prior = initial_mbps if initial_mbps is not None else self.deployment.plan.link.uplink_mbps
        self.estimator = BandwidthEstimator(prior, min_transfer_s=min_transfer_ms / 1e3)
        self.label = self.policy.label_at(prior)
        self.pinned = route is not None  # one route always: no switching, no probes
        if route is not None:
            labels = [r.label for r in self.deployment.routes] + [self.policy.all_device_label]
            if route not in labels:
                raise ClientError(f"this plan has no route '{route}'; its routes are: "
                                  f"{', '.join(repr(label) for label in labels)}")
            self.label = route
        self.stats = ClientStats()
        self._connected = False  # the server's models were checked
        self._warm = False  # the first request after connecting pays one-time costs: not a bandwidth sample
        self._down = False  # the server did not answer: running locally, asking /readyz now and then
        self._ready_probe_at = -math.inf
        self._probe_at = -math.inf
        self._sizes: dict[str, int] = {}  # request bytes of each route, for one input
        self._check: str | None = None  # the route of the next request: another frame size before a switch
        self._checking = False  # this request is that check
        self._suspect: tuple[str, float, float, float] | None = None  # target, Mbit/s, fixed cost, bits
        self._lock = threading.Lock()
        self._closed = False

    # ---- public -------------------------------------------------------------------------------------------------

    @property
    def mbps(self) -> float | None:
        """The current uplink estimate (Mbit/s); the prior until something was measured."""
        return self.estimator.mbps

    @property
    def fixed_cost_s(self) -> float | None:
        """What a request costs beyond its transfer and the server's time (round trip, both stacks), as learned."""
        return self.estimator.fixed_s

    rtt_floor_s = fixed_cost_s  # the name of earlier releases

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
        route, mode = self._pick(now)
        if route is None:
            return self._local(inputs, started, "all-device")
        tensors = route.device_side(*inputs)
        request_id = new_request_id()
        frame = Request(request_id, self.deployment.model_id, route.route_id, route.encode(tensors), route.width,
                        self.top_k).to_bytes()
        if inputs[0].shape[0] == 1:
            self._sizes[route.label] = len(frame)
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
        self._checking = False
        if self._check is not None:  # a switch waits for this request of another size
            check, self._check, self._checking = self._check, None, True
            self.stats.probes += 1
            return self.deployment.route_for_label(check), "probe"
        measuring = route is not None and not self.estimator.censored
        if not measuring and now - self._probe_at >= self.probe_every_s:
            up = self.policy.above(self.label)
            if up is not None:
                self._probe_at = now
                self.stats.probes += 1
                return self.deployment.route_for_label(up), "probe"
        return route, "route"

    def _measure(self, frame_bytes: int, elapsed_s: float, server_s: float, index: int, probe: bool) -> None:
        seconds = max(elapsed_s - server_s, 0.0)
        self.estimator.add(frame_bytes * 8, seconds, probe)
        if self._checking and self._suspect is not None:
            self._checking = False
            self._confirm(frame_bytes * 8, seconds, index)
        else:
            self._decide(index)

    def _check_route(self, target: str) -> str | None:
        """A route whose frames differ in size from the recent requests' (the target's if it does, else the
        smallest that does) and cross in 0.1 s at the estimate; None if there is none."""
        recent = [bits / 8 for bits, _, _ in self.estimator._recent]
        if not recent:
            return None
        size = sorted(recent)[(len(recent) - 1) // 2]
        mbps = self.estimator.mbps or self.deployment.plan.link.uplink_mbps
        candidates = sorted((bytes_, label) for label, bytes_ in self._sizes.items()
                            if max(bytes_, size) >= _DISTINCT * min(bytes_, size)
                            and bytes_ * 8 / (mbps * 1e6) <= 0.1)
        labels = [label for _, label in candidates]
        return target if target in labels else labels[0] if labels else None

    def _slow(self, bits: int, seconds: float, index: int) -> None:
        """An attempt that timed out: its bits took longer than ``seconds``, so lower routes may be needed."""
        self.estimator.add_upper_bound(bits, seconds)
        self._decide(index)

    def _decide(self, index: int) -> None:
        if self.pinned:
            return
        estimator = self.estimator
        target = self.policy.next(self.label, estimator.mbps)
        if target == self.label or self._check is not None:
            return
        if self.policy.lower(target, self.label):
            if estimator.censored:
                return  # "at least this fast" never says that a slower plan is needed
            if estimator.one_size:
                # One frame size cannot tell a slower link from a slower request (a busy machine, a scheduling
                # hiccup): the next request goes on a route of another size (the target's, where it has one), and
                # the switch is made only if its transfer time bears the same bandwidth out.
                check = self._check_route(target)
                if check is None:  # no other size to ask: only transfers far too long for a hiccup count
                    if estimator.typical_bits / (estimator.mbps * 1e6) < 10 * estimator.tolerance_s:
                        return
                    self._switch(index, target)
                    return
                self._check = check
                self._suspect = (target, estimator.mbps, estimator.fixed_s or 0.0, estimator.typical_bits)
                return
        self._switch(index, target)

    def _confirm(self, bits: int, seconds: float, index: int) -> None:
        """The answer to a check request: switch if its transfer time bears the suspected bandwidth out, else
        forget the requests that raised the suspicion."""
        target, mbps, fixed, suspect_bits = self._suspect
        self._suspect = None
        ratio, tolerance = bits / suspect_bits, self.estimator.tolerance_s
        transfer = seconds - fixed
        if transfer > tolerance:  # timed: nearer "time grows with bytes" than "time is the same" (log midpoint)
            agrees = abs(math.log(bits / transfer / 1e6 / mbps)) < abs(math.log(ratio)) / 2
        else:  # too short to time: agrees only if the slow transfers were far too long to be a hiccup
            agrees = ratio < 1 and suspect_bits / (mbps * 1e6) >= 10 * tolerance
        if agrees:
            self._switch(index, target)
        else:
            log.info("a %d-byte request did not bear out %.3g Mbit/s: no switch to %s", bits // 8, mbps, target)
            self.estimator.forget()

    def _switch(self, index: int, target: str) -> None:
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
                    self._untrusted(error)
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
                self._untrusted(error)
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

        try:
            if self._socket is None:
                url = "ws" + self.url.removeprefix("http") + "/v1/stream"
                self._socket = _Stream(url, self._headers, self.timeout_s, getattr(self, "ssl_context", None))
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

    def _untrusted(self, error: BaseException | None) -> None:
        """Raise ServerUntrustedError if ``error`` is a certificate that did not verify: a configuration error,
        which falling back to the device would hide."""
        seen = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
                reason = getattr(error, "verify_message", None) or "it does not verify"
                raise ServerUntrustedError(f"the server's certificate is not trusted ({reason}); pass --ca-file "
                                           "with the CA (or self-signed certificate) that signed it") from None
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
        self._sizes.update({route.label: size for size, route in sized})
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
                reply = self._http.post("/v1/infer", content=frame, headers={"Content-Type": MEDIA_TYPE})
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
        return x.float() if x.dtype != torch.float32 and x.is_floating_point() else x

    def _shape_outputs(self, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        """What a server returns for these output leaves: all of them, or the top-k of the first."""
        if not self.top_k:
            return [leaf.float() if leaf.is_floating_point() else leaf for leaf in leaves]
        values, indices = leaves[0].float().topk(min(self.top_k, leaves[0].shape[-1]), dim=-1)
        return [values, indices]


class _KeepAlive(httpx.BaseTransport):
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
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        where = (url.host, url.port or (443 if url.scheme == "https" else 80))
        body = request.read()
        lines = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items() if name != "accept-encoding"]
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
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
        import socket

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


class _Stream:
    """A WebSocket on a plain blocking socket, spoken with websockets' sans-I/O protocol in the caller's thread.

    websockets' own sync client reads on a background thread, so every answer crossed a thread hand-off before
    ``recv`` returned; here the caller reads the socket itself. TCP_NODELAY, no compression, no size cap (the
    response frame says its size and ``Response.from_bytes`` checks it). Raises OSError/TimeoutError when the
    socket fails or stays silent, ``websockets`` exceptions for a refused handshake or a protocol error.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, ssl_context=None) -> None:
        import socket

        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        deadline = time.monotonic() + timeout_s
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                import ssl

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


class _Unavailable(Exception):
    """The server answered, but is not ready (5xx on a status call)."""


def _deployment(plan: PlanReport | Deployment | str | Path, weights: str | Path | None,
                plan_dir: str | Path | None, model_id: str | None, model: str | None = None) -> Deployment:
    """The deployment ``plan`` names; a plan naming a ``module:factory`` needs ``model`` to name it (the caller's
    choice: a plan never chooses code to run)."""
    if isinstance(plan, Deployment):
        return plan
    if isinstance(plan, (str, Path)):
        plan_dir = plan_dir or Path(plan).parent
        plan = load_plan(plan)
    if model_id is not None:
        check_model_id(model_id)
    return load_deployment(plan, weights=weights, model_id=model_id, plan_dir=Path(plan_dir) if plan_dir else None,
                           model=model)


def _ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """A verifying TLS client context: the CA file's certificates, else the system's trusted roots."""
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ClientError(f"--ca-file {path} does not exist; give the PEM file of the CA that signed the "
                          "server's certificate") from None
    except (ssl.SSLError, OSError) as error:
        raise ClientError(f"--ca-file {path} is not a PEM certificate file ({error}); give the CA's certificate "
                          "in PEM") from None


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
    from edgesplit.runtime.auth import TokenError, read_token_file

    try:
        return read_token_file(Path(path))  # refused when others may read it, as the server refuses it
    except TokenError as error:
        raise ClientError(str(error)) from None


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
    from edgesplit.errors import DataError

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
    from edgesplit.model.data import load_dataset

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

    from edgesplit.model.data import IMAGE_EXTENSIONS

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
    from edgesplit.progress import progress_bar

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
        "fixed_cost_ms": _rounded(client.fixed_cost_s * 1e3 if client.fixed_cost_s is not None else None),
        "rtt_floor_ms": _rounded(client.fixed_cost_s * 1e3 if client.fixed_cost_s is not None else None),  # old name
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
    fixed = summary.get("fixed_cost_ms", summary.get("rtt_floor_ms"))
    table.add_row("uplink estimate", "n/a" if mbps is None else f"{at_least}{mbps:.3g} Mbit/s (fixed cost "
                  f"{'n/a' if fixed is None else f'{fixed:.3g}'} ms per request)")
    if summary["accuracy"] is not None:
        table.add_row("accuracy", f"{summary['accuracy']:.2%}")
    if summary["agreement"] is not None:
        table.add_row("agreement with the model run here", f"{summary['agreement']:.2%} (max abs diff "
                      f"{summary['max_abs_diff']:.2e})")
    return table
