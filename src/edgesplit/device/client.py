"""The device client without PyTorch: a bundle's heads under onnxruntime, numpy codecs, the wire protocol.

``DeviceClient(bundle, url, token)`` does what ``edgesplit.runtime.Client`` does, from a device bundle (what
`edgesplit export` writes) instead of a plan and a PyTorch model: it runs the route's head with onnxruntime (the
int8 head where the manifest says the route runs int8), the bottleneck encoder where the route has one, encodes
what crosses the cut with ``edgesplit.device.codecs`` (the same bytes as the torch codecs), and POSTs the same
request frames (``runtime/wire.py``) to ``/v1/infer``. Around that, the torch client's behaviour, with its own code
where it is torch-free:

* Adapting: the same bandwidth estimator and switch policy (``runtime/adapt.py``: the policy reads the bundle's
  switch table through :class:`BundleView`), the same check request before a switch that rests on one frame size,
  the same probes of the next route up, timed requests of two sizes on connect.
* Failures: one request id for all attempts of a request, a timeout, bounded retries with backoff; a 4xx other than
  429 raises :class:`ServerRejectedError` (a wrong token among them). When every attempt fails and ``fallback`` is
  on, the whole model runs locally (the bundle's ``model.onnx``); ``/readyz`` is asked every ``probe_every_s`` and
  the server used again as soon as it answers.
* Memory: an onnxruntime session is made for a file on its first use only (a pinned route's head on connect, the
  whole model on the first outage or all-device request), so a device holds in memory what it runs.
* On connect: the server must serve the bundle's model id, graph fingerprint and routes (label, codecs, width, what
  is sent), else :class:`ServerMismatchError`.

Not here: the WebSocket stream (``stream=True`` of the torch client) and token-id models' vocabulary checks beyond
the manifest's range. This module imports numpy, onnxruntime, httpx, pydantic and torch-free edgesplit modules only.
"""

from __future__ import annotations

import io
import logging
import math
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np

from edgesplit.device.bundle import Bundle, BundleError, RouteEntry, load_bundle
from edgesplit.device.codecs import CodecError, NumpyCodec, codec_from_json, pack, quantized_frame, unpack
from edgesplit.runtime.adapt import Adapter, Adapting, ClientStats, Switch, SwitchPolicy, row_label_at
from edgesplit.runtime.errors import (ClientError, ServerMismatchError, ServerRejectedError, ServerUnreachableError,
                                      ServerUntrustedError, describe_transport_error, error_message, status_hint,
                                      tls_context)
from edgesplit.runtime.transport import KeepAliveTransport
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, WireError, new_request_id

__all__ = ["ALL_DEVICE_LABEL", "BundleView", "DeviceClient", "DeviceResult", "DeviceRoute", "DeviceStats",
           "DeviceSwitch", "run_device_inference", "session_options"]

log = logging.getLogger("edgesplit.device")

ALL_DEVICE_LABEL = "all on device"  # the planner's label for running everything locally
_RETRY_STATUS = {429, 503}
_TOKEN_FROM = "the device client takes it from --token-file or $EDGESPLIT_TOKEN"


# ---- results -----------------------------------------------------------------------------------------------------

@dataclass
class DeviceResult:
    """One input's answer, wherever it was computed (the fields of ``edgesplit.runtime.Result``, numpy outputs)."""

    outputs: list[np.ndarray]  # the model's output leaves; with top_k: [values, indices]
    label: str
    where: str  # "server" or "device"
    mode: str  # "route", "probe", "all-device", "fallback"
    request_id: str
    bytes_sent: int
    latency_ms: float
    server_ms: float = 0.0
    attempts: int = 0
    mbps: float | None = None

    @property
    def logits(self) -> np.ndarray:
        return self.outputs[0]


DeviceSwitch = Switch  # the names of the torch client's records, under the device client's names
DeviceStats = ClientStats


# ---- the bundle as the policy and the client read it ---------------------------------------------------------------

def session_options(threads: int | None):
    """The onnxruntime options every session of the device client runs with: ``threads`` intra-op threads (one
    inter-op thread; None keeps onnxruntime's own choice), everything else onnxruntime's defaults.

    The memory options were measured (bench/README.md, "device"): without the CPU memory arena and the memory
    pattern a session's peak resident memory was no lower (ResNet-50's whole model 315 MB against 308 MB, its int8
    head 80 MB against 72 MB) and the int8 head ran 1.06–1.6× slower (two runs); not preparing weights ahead
    (``disable_prepacking``) saved nothing either. What saves memory is not loading a file at all (:class:`_Onnx` loads on first use)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a file it cannot load
        raise BundleError(f"onnxruntime cannot load {path.name} ({' '.join(str(error).split())[:200]}); export "
                          "the bundle again") from error


class _Onnx:
    """One ONNX file of the bundle under onnxruntime: arrays in (in the file's input order), arrays out.

    The session is made on the first call, not before: a device holds in memory only the files it runs (a pinned
    route's head, the whole model once the server is gone or the table says all-device). ``load()`` makes it now."""

    def __init__(self, path: Path, threads: int | None):
        self.path, self.threads = path, threads
        self._session = None
        self.inputs: list[str] = []

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self):
        if self._session is None:
            session = _session(self.path, self.threads)
            self.inputs = [i.name for i in session.get_inputs()]
            self._session = session
        return self._session

    @property
    def session(self):
        return self.load()

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        session = self.load()
        return session.run(None, dict(zip(self.inputs, arrays)))


@dataclass
class DeviceRoute:
    """One route of the bundle: its head (float or int8, as the manifest says), encoder, codecs. An int8 route
    whose manifest gives a ``quantized_output`` runs that head, which returns uint8 tensors, and sends them as
    int8 codec frames as they are (``quantized_frame``): no dequantizing, no second quantization."""

    entry: RouteEntry
    head: _Onnx | None
    encoder: _Onnx | None
    codecs: list[NumpyCodec]

    @property
    def route_id(self) -> int:
        return self.entry.route_id

    @property
    def label(self) -> str:
        return self.entry.label

    @property
    def width(self) -> float | None:
        return self.entry.width

    def device_side(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """What the device computes and sends: the head's crossing tensors, through the encoder (all-server: the
        input itself)."""
        tensors = self.head(*inputs) if self.head is not None else list(inputs)
        if self.encoder is not None:
            tensors = self.encoder(tensors[0])[:1]
        return tensors

    def encode(self, tensors: list[np.ndarray]) -> bytes:
        """The payload: ``pack`` of one codec frame per tensor, or of one PNG/JPEG per row for a picture route."""
        if self.entry.picture is not None:
            return pack([_picture(image, self.entry.picture) for image in tensors[0]])
        direct = self.entry.int8.quantized_output if self.entry.runs == "int8" and self.entry.int8 else None
        if direct is not None:  # the int8 head's uint8 tensors, framed as the int8 codec's frames as they are
            return pack([quantized_frame(t, s, z) for t, s, z in zip(tensors, direct.scales, direct.zero_points)])
        return pack([codec.encode(np.ascontiguousarray(t)) for codec, t in zip(self.codecs, tensors)])

    def describe(self) -> dict:
        """What the server's /v1/models says of this route, for the keys a client checks."""
        entry = self.entry
        return {"label": entry.label, "codecs": [entry.picture] if entry.picture else [c.spec for c in self.codecs],
                "width": entry.width, "sends": entry.sends}


def _picture(image: np.ndarray, spec: str) -> bytes:
    """One C×H×W image in [0, 1] as ``compress.pictures.encode_picture`` writes it (Pillow, PNG or JPEG q90)."""
    from PIL import Image

    pixels = np.round(np.clip(image.astype(np.float32), 0, 1) * np.float32(255)).astype(np.uint8).transpose(1, 2, 0)
    options = {"format": "PNG"} if spec == "png" else {"format": "JPEG", "quality": 90}
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, **options)
    return buffer.getvalue()


class BundleView:
    """A bundle's routes, switch table and whole model: what ``SwitchPolicy`` reads of a Deployment (``plan``'s
    switch table, all-device and chosen labels, ``label_at``, ``route_for_label``), and what the client runs."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        manifest = bundle.manifest
        self.bundle, self.manifest = bundle, manifest
        self.model_id = manifest.model_id
        heads: dict[str, _Onnx] = {}

        def onnx(record) -> _Onnx | None:
            if record is None:
                return None
            if record.name not in heads:
                heads[record.name] = _Onnx(bundle.path(record), threads)
            return heads[record.name]

        try:
            self.routes = [DeviceRoute(e, onnx(e.run_file), onnx(e.encoder), [codec_from_json(c) for c in e.codecs])
                           for e in manifest.routes]
        except (CodecError, ValueError, TypeError) as error:
            raise BundleError(f"the bundle's codec records do not read ({error}); export the bundle again") from error
        self.model = onnx(manifest.fallback)
        all_device = next((r.label for r in manifest.switch_table if r.kind == "all-device"), ALL_DEVICE_LABEL)
        self.plan = SimpleNamespace(switch_table=sorted(manifest.switch_table, key=lambda r: r.low_mbps),
                                    all_device=SimpleNamespace(label=all_device),
                                    chosen=SimpleNamespace(label=manifest.chosen),
                                    link=SimpleNamespace(uplink_mbps=manifest.uplink_mbps),
                                    input_shape=manifest.input.shape, fingerprint=manifest.fingerprint,
                                    model=manifest.model)

    def label_at(self, mbps: float) -> str:
        """The switch table's plan at ``mbps`` (its first or last row outside the table), as Deployment.label_at."""
        return row_label_at(self.manifest.switch_table, mbps)

    def route_for_label(self, label: str) -> DeviceRoute | None:
        return next((r for r in self.routes if r.label == label), None)


# ---- the client ---------------------------------------------------------------------------------------------------

class DeviceClient(Adapting):
    """Split inference from a device bundle against `edgesplit serve`; a context manager.

    ``bundle`` is a bundle folder or a loaded :class:`Bundle`. The keywords are the torch client's: ``route`` pins one
    plan of the switch table by its label; ``initial_mbps`` is the uplink assumed before anything is measured (default:
    the plan's link); ``threads`` sets onnxruntime's intra-op threads. Inputs and outputs are numpy arrays.
    """

    def __init__(self, bundle: Bundle | str | Path, url: str, token: str | None = None, *, timeout_s: float = 5.0,
                 retries: int = 2, backoff_s: float = 0.1, fallback: bool = True, probe_every_s: float = 2.0,
                 transport: httpx.BaseTransport | None = None, initial_mbps: float | None = None,
                 hysteresis: float = 0.2, min_transfer_ms: float = 2.0, top_k: int = 0, route: str | None = None,
                 ca_file: str | Path | None = None, threads: int | None = None) -> None:
        if retries < 0 or timeout_s <= 0 or probe_every_s <= 0 or hysteresis < 0 or min_transfer_ms <= 0:
            raise ClientError("retries and hysteresis must be ≥ 0, timeout_s, probe_every_s and min_transfer_ms "
                              "positive")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.deployment = BundleView(self.bundle, threads)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(f"server URL '{url}' is not http(s)://HOST:PORT; give it as e.g. http://10.0.0.2:8000")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.fallback, self.probe_every_s, self.top_k = fallback, probe_every_s, top_k
        self.ssl_context = tls_context(ca_file) if self.url.startswith("https://") else None
        if ca_file is not None and self.ssl_context is None:
            raise ClientError(f"--ca-file is for https:// servers and {url} is plain http; use https:// or leave "
                              "--ca-file out")
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=httpx.Timeout(timeout_s),
                                  transport=transport or KeepAliveTransport(self.ssl_context),
                                  verify=self.ssl_context or True)
        self._keepalive = self._http._transport if transport is None and not self._http._mounts else None
        self._infer_url = httpx.URL(self.url + "/v1/infer")
        self._infer_head = KeepAliveTransport.post_head(self._infer_url, {**self._headers, "Content-Type": MEDIA_TYPE})
        self._timeouts = httpx.Timeout(timeout_s).as_dict()
        policy = SwitchPolicy(self.deployment, hysteresis)
        prior = initial_mbps if initial_mbps is not None else self.deployment.plan.link.uplink_mbps
        if route is not None:
            labels = [r.label for r in self.deployment.routes] + [policy.all_device_label]
            if route not in labels:
                raise ClientError(f"this bundle has no route '{route}'; its routes are: "
                                  f"{', '.join(repr(label) for label in labels)}")
        self.stats = DeviceStats()
        self.adapter = Adapter(policy, self.stats, prior_mbps=prior, min_transfer_s=min_transfer_ms / 1e3,
                               probe_every_s=probe_every_s, route=route)
        self._connected = self._warm = self._down = False
        self._ready_probe_at = -math.inf
        self._lock = threading.Lock()
        self._closed = False

    # ---- public -------------------------------------------------------------------------------------------------

    @property
    def server_up(self) -> bool:
        return not self._down

    def connect(self) -> DeviceClient:
        with self._lock:
            self._ensure_connected()
        return self

    def infer(self, *inputs: np.ndarray) -> DeviceResult:
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

    def infer_many(self, inputs: Iterable[np.ndarray | tuple[np.ndarray, ...]]) -> Iterator[DeviceResult]:
        for item in inputs:
            yield self.infer(*item) if isinstance(item, tuple) else self.infer(item)

    def run_locally(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The whole model's outputs on this machine (the bundle's model.onnx; what a fallback returns)."""
        return self._shape_outputs(self.deployment.model(*(self._batched(x) for x in inputs)))

    def close(self) -> None:
        self._closed = True
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one request --------------------------------------------------------------------------------------------

    def _infer(self, inputs: tuple[np.ndarray, ...], index: int) -> DeviceResult:
        started = time.perf_counter()
        now = time.monotonic()
        self._ensure_connected()
        if self._down:
            self._maybe_recover(now)
        if self._down:
            self.stats.fallbacks += 1
            return self._local(inputs, started, "fallback")
        label, mode = self.adapter.pick(now)
        route = self.deployment.route_for_label(label)
        if route is None:
            return self._local(inputs, started, "all-device")
        request_id, frame = self._frame(route, inputs)
        if inputs[0].shape[0] == 1:
            self.adapter.sizes[route.label] = len(frame)
        sent = self._send(frame, request_id, index)
        if sent is None:
            self.stats.fallbacks += 1
            return self._local(inputs, started, "fallback", request_id.hex())
        response, elapsed, attempts = sent
        if self._warm:
            self.adapter.answered(route.label, len(frame), elapsed, response.server_ms / 1e3, index,
                                  request_s=time.perf_counter() - started if inputs[0].shape[0] == 1 else None)
        else:
            self.adapter.unmeasured(mode)
        self._warm = True
        try:
            outputs = unpack(response.payload)
        except CodecError as error:
            raise ClientError(f"the server's answer to request {request_id.hex()} does not decode ({error}); "
                              "is the server the same edgesplit release?") from error
        return DeviceResult(outputs, route.label, "server", mode, request_id.hex(), len(frame),
                            (time.perf_counter() - started) * 1e3, response.server_ms, attempts, self.estimator.mbps)

    def _local(self, inputs: tuple[np.ndarray, ...], started: float, mode: str, request_id: str = "") -> DeviceResult:
        outputs = self._shape_outputs(self.deployment.model(*inputs))
        return DeviceResult(outputs, self.policy.all_device_label, "device", mode, request_id or new_request_id().hex(),
                            0, (time.perf_counter() - started) * 1e3, 0.0, 0, self.estimator.mbps)

    def _frame(self, route: DeviceRoute, inputs: tuple[np.ndarray, ...]) -> tuple[bytes, bytes]:
        request_id = new_request_id()
        payload = route.encode(route.device_side(*inputs))
        return request_id, Request(request_id, self.deployment.model_id, route.route_id, payload, route.width,
                                   self.top_k).to_bytes()

    # ---- HTTP -----------------------------------------------------------------------------------------------

    def _send(self, frame: bytes, request_id: bytes, index: int) -> tuple[Response, float, int] | None:
        """POST the frame (one request id for every attempt) until answered; None when every attempt failed and
        fallback is on."""
        last = ""
        attempts = 1 + self.retries
        for attempt in range(attempts):
            if attempt:
                self.stats.retries += 1
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 2.0))
            began = time.perf_counter()
            try:
                reply = self._post(frame)
            except httpx.TransportError as error:
                self._untrusted(error)
                last = describe_transport_error(error)
                if isinstance(error, (httpx.WriteTimeout, httpx.ReadTimeout)):
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
                if response.status != Status.OK:
                    raise ServerRejectedError(f"the server at {self.url} refused request {request_id.hex()} "
                                              f"({response.status.name}): {response.message}")
                return response, elapsed, attempt + 1
            message = error_message(reply)
            if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
                last = f"HTTP {reply.status_code}: {message}"
                continue
            raise ServerRejectedError(f"the server at {self.url} refused request {request_id.hex()} "
                                      f"(HTTP {reply.status_code}): {message}{status_hint(reply.status_code, _TOKEN_FROM)}")
        return self._give_up(f"request {request_id.hex()} got no answer after {attempts} attempt(s) (last: {last})")

    def _post(self, frame: bytes) -> httpx.Response:
        if self._keepalive is not None:
            return self._keepalive.post(self._infer_url, self._infer_head, frame, self._timeouts)
        return self._http.post("/v1/infer", content=frame, headers={"Content-Type": MEDIA_TYPE})

    def _timed(self, frame: bytes) -> float | None:
        """One attempt, no retries: its seconds beyond the server's own time, or None if it failed."""
        began = time.perf_counter()
        try:
            reply = self._post(frame)
            if reply.status_code != 200:
                return None
            response = Response.from_bytes(reply.content)
        except (httpx.TransportError, OSError, WireError) as error:
            if isinstance(error, (httpx.WriteTimeout, httpx.ReadTimeout)):
                self.estimator.add_upper_bound(len(frame) * 8, time.perf_counter() - began)
            return None
        if response.status != Status.OK:
            return None
        return max(time.perf_counter() - began - response.server_ms / 1e3, 0.0)

    def _untrusted(self, error: BaseException | None) -> None:
        seen = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
                reason = getattr(error, "verify_message", None) or "it does not verify"
                raise ServerUntrustedError(f"the server's certificate is not trusted ({reason}); pass --ca-file "
                                           "with the CA (or self-signed certificate) that signed it") from error
            error = error.__cause__ or error.__context__

    def _give_up(self, why: str) -> None:
        if not self.fallback:
            raise ServerUnreachableError(f"the server at {self.url} is unreachable: {why}; check that it runs "
                                         "and the URL, or allow falling back to the device")
        log.warning("server at %s unreachable (%s); running on the device", self.url, why)
        self._down = True
        self._ready_probe_at = time.monotonic()
        self.stats.outages += 1

    def _ensure_connected(self) -> None:
        if self._connected or self._down:
            return
        try:
            self._check_models()
            self._warm_up()
            reply = self._http.get("/healthz")
            if reply.status_code != 200:
                raise _Unavailable(f"GET /healthz answered HTTP {reply.status_code}")
            self._calibrate()
        except (httpx.TransportError, _Unavailable) as error:
            self._untrusted(error)
            self._give_up(describe_transport_error(error) if isinstance(error, httpx.TransportError) else str(error))

    def _check_models(self) -> None:
        """The server serves this bundle's model id, graph and routes; ServerMismatchError if not."""
        reply = self._http.get("/v1/models")
        if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
            raise _Unavailable(f"GET /v1/models answered HTTP {reply.status_code}")
        if reply.status_code != 200:
            raise ServerRejectedError(f"the server at {self.url} refused GET /v1/models (HTTP "
                                      f"{reply.status_code}): {error_message(reply)}{status_hint(reply.status_code, _TOKEN_FROM)}")
        try:
            served = {m["model_id"]: m for m in reply.json()["models"]}
        except (ValueError, KeyError, TypeError) as error:
            raise ServerMismatchError(f"{self.url}/v1/models is not an edgesplit server's model list; "
                                      "check the URL") from error
        mine, manifest = self.deployment.model_id, self.deployment.manifest
        theirs = served.get(mine)
        if theirs is None:
            raise ServerMismatchError(f"the server at {self.url} does not serve model '{mine}' (it serves: "
                                      f"{', '.join(sorted(served)) or 'nothing'}); serve this bundle's plan there")
        if theirs.get("fingerprint") != manifest.fingerprint:
            raise ServerMismatchError(f"the server's '{mine}' is graph {theirs.get('fingerprint')}, this bundle's is "
                                      f"{manifest.fingerprint}; serve the plan the bundle was exported from")
        routes = {r.get("route_id"): r for r in theirs.get("routes", [])}
        for route in self.deployment.routes:
            ours, other = route.describe(), routes.get(route.route_id)
            if other is None or any(other.get(k) != v for k, v in ours.items()):
                got = "nothing" if other is None else f"'{other.get('label')}' {other.get('codecs')}"
                raise ServerMismatchError(f"route {route.route_id} is '{route.label}' {ours['codecs']} here and "
                                          f"{got} on the server; serve the plan the bundle was exported from")
        self._connected = True

    def _example(self, rows: int = 1) -> tuple[np.ndarray, ...]:
        """A random input like a real one (values across the input's range), ``rows`` of them."""
        spec = self.deployment.manifest.input
        shape = (rows, *spec.shape[1:])
        rng = np.random.default_rng(0)
        if spec.dtype == "int64":
            return (rng.integers(int(spec.low), int(spec.high) + 1, size=shape, dtype=np.int64),)
        return (rng.random(shape, dtype=np.float32),)

    def _warm_up(self) -> None:
        """Run the heads and encoders this client may send through once, untimed (a first run costs many times a
        later one): a pinned route's, else every route's. The whole model is not loaded here: its session is made on
        the first request that runs on the device (an outage, or the table's all-device plan)."""
        example = self._example()
        routes = self.deployment.routes
        if self.pinned:
            routes = [r for r in routes if r.label == self.label]
        for route in routes:
            route.encode(route.device_side(*example))

    def _calibrate(self) -> None:
        """Timed requests of two sizes on connect, as the torch client sends them (see ``Client._calibrate``)."""
        if self.pinned or not self.deployment.routes:
            return
        prior = self.estimator.mbps or self.deployment.plan.link.uplink_mbps
        budget_bytes = 0.05 * prior * 1e6 / 8
        one = self._example()
        sized = sorted(((len(self._frame(route, one)[1]), route) for route in self.deployment.routes),
                       key=lambda item: item[0])
        self.adapter.sizes.update({route.label: size for size, route in sized})
        small, smallest = sized[0]
        bigger = [route for size, route in sized if 2 * small <= size <= budget_bytes]
        four = tuple(np.concatenate([x] * 4) for x in one)
        other = (bigger[-1], one) if bigger else (smallest, four) if 4 * small <= budget_bytes else None
        plan = [(smallest, one, False)] + [(smallest, one, True), *([(*other, True)] if other else [])] * 2
        for route, inputs, timed in plan:
            _, frame = self._frame(route, inputs)
            seconds = self._timed(frame)
            self.stats.calibrations += 1
            if seconds is None:
                break
            if timed:
                self.estimator.add(len(frame) * 8, seconds)
        self._warm = True

    def _maybe_recover(self, now: float) -> None:
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

    # ---- arrays -------------------------------------------------------------------------------------------------

    def _batched(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ClientError(f"inputs are numpy arrays, not {type(x).__name__}")
        spec = self.deployment.manifest.input
        shape = list(spec.shape)
        if x.ndim == len(shape) - 1:
            x = x[None]
        if x.ndim != len(shape) or list(x.shape[1:]) != shape[1:]:
            raise ClientError(f"input of shape {list(x.shape)} does not fit this bundle's model, which takes "
                              f"{['N', *shape[1:]]}; resize the input")
        if spec.dtype == "int64":
            if not np.issubdtype(x.dtype, np.integer):
                raise ClientError(f"this bundle's model takes integer token ids, not {x.dtype} values")
            if x.size and not (spec.low <= int(x.min()) and int(x.max()) <= spec.high):
                raise ClientError(f"token ids run from {int(x.min())} to {int(x.max())}, and this bundle's model "
                                  f"takes ids {int(spec.low)}..{int(spec.high)}; send ids from its tokenizer")
            return np.ascontiguousarray(x, dtype=np.int64)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _shape_outputs(self, leaves: list[np.ndarray]) -> list[np.ndarray]:
        """What a server returns for these output leaves: all of them (floats as float32), or the top-k of the first."""
        if not self.top_k:
            return [leaf.astype(np.float32) if np.issubdtype(leaf.dtype, np.floating) else leaf for leaf in leaves]
        first = leaves[0].astype(np.float32)
        k = min(self.top_k, first.shape[-1])
        indices = np.argsort(-first, axis=-1, kind="stable")[..., :k]
        return [np.take_along_axis(first, indices, axis=-1), indices.astype(np.int64)]


class _Unavailable(Exception):
    """The server answered, but is not ready (5xx on a status call)."""


# ---- a run over many inputs: `python -m edgesplit.device`, the summary of `edgesplit infer` --------------------------

def run_device_inference(client: DeviceClient, images: np.ndarray, labels: np.ndarray | None, names: list[str],
                         source: str, *, batch: int = 1, check: bool = True) -> dict:
    """Send every input (``batch`` per request) through ``client``: ``{"summary": ..., "records": [...]}`` as
    `edgesplit infer --json` writes it (``runtime.summary.InferSummary``, built the way ``run_inference`` builds
    it; ``agreement`` and ``max_abs_diff`` are against the bundle's whole model run here)."""
    from edgesplit.runtime.summary import InferSummary, LatencyMs, SwitchRecord

    count = len(images)
    records: list[dict] = []
    predictions: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    client.connect()
    started = time.perf_counter()
    for first in range(0, count, batch):
        chunk = images[first:first + batch]
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
            "labels": None if labels is None else labels[first:first + batch].tolist(),
            "names": names[first:first + batch]})
    seconds = time.perf_counter() - started
    accuracy = agreement = max_abs_diff = None
    if predictions and labels is not None:
        accuracy = round(float((np.concatenate(predictions) == labels[:count]).mean()), 4)
    if check and count:
        local = [client.run_locally(images[i:i + 64]) for i in range(0, count, 64)]
        whole = np.concatenate([o[0] for o in local])
        max_abs_diff = float(np.abs(np.concatenate(outputs).astype(np.float32) - whole.astype(np.float32)).max())
        if predictions:
            mine = np.concatenate([o[1][:, 0] for o in local]) if client.top_k else whole.argmax(-1)
            agreement = round(float((np.concatenate(predictions) == mine).mean()), 4)
    stats = client.stats
    fixed_ms = None if client.fixed_cost_s is None else round(float(client.fixed_cost_s * 1e3), 3)
    routes: dict[str, int] = {}
    for record in records:
        routes[record["route"]] = routes.get(record["route"], 0) + 1
    manifest = client.deployment.manifest
    summary = InferSummary(
        model=manifest.model, model_id=manifest.model_id, server=client.url, source=source, images=count,
        requests=len(records), batch=batch, seconds=round(seconds, 4),
        throughput_ips=round(count / seconds, 3) if seconds > 0 else None,
        latency_ms=LatencyMs.of([r["ms"] for r in records]),
        bytes_sent=stats.bytes_sent, bytes_per_image=round(stats.bytes_sent / count, 1) if count else 0,
        switch_count=len(stats.switches),
        switches=[SwitchRecord(request=s.request, from_label=s.from_label, to_label=s.to_label,
                               mbps=round(s.mbps, 4)) for s in stats.switches],
        routes=routes, server_results=stats.server_results, device_results=stats.device_results,
        fallbacks=stats.fallbacks, outages=stats.outages, recoveries=stats.recoveries, retries=stats.retries,
        probes=stats.probes, final_route=client.label,
        final_mbps=None if client.mbps is None else round(float(client.mbps), 4),
        final_mbps_is_lower_bound=client.estimator.censored, fixed_cost_ms=fixed_ms, rtt_floor_ms=fixed_ms,
        accuracy=accuracy, agreement=agreement, max_abs_diff=max_abs_diff)
    return {"summary": summary.to_json(), "records": records}


def _predictions(result: DeviceResult, top_k: int) -> np.ndarray | None:
    if top_k:
        return result.outputs[1][:, 0] if len(result.outputs) > 1 and result.outputs[1].ndim == 2 else None
    return result.logits.argmax(-1) if result.logits.ndim == 2 else None
