"""What goes over the uplink: crossing tensors through a codec, or the input itself as raw pixels, PNG or JPEG."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from edgesplit.codecs import Codec, CodecError, decode, parse_codec
from edgesplit.compress.pictures import round_trip_pictures
from edgesplit.model.graph import TensorSpec

__all__ = ["InputFormat", "PlanCodec", "ReportedCodec", "fit_fixed_per_byte", "measure_codec", "measure_input_formats",
           "node_outputs", "parse_codecs"]


class PlanCodec:
    """How one codec costs the tensors it sends: payload bytes and this host's encode/decode time per tensor.

    Fixed-rate codecs (casts, plain quantization) know their payload from the shape; entropy-coded ones use
    the mean payload measured on sample inputs for each value. Times are a line fitted to this host's
    measurements (fixed part + per input byte); the cost model scales them to each machine by memory bandwidth.
    """

    def __init__(self, codec: Codec, measured_bytes: dict[str, float] | None = None,
                 encode_fit: tuple[float, float] = (0.0, 0.0), decode_fit: tuple[float, float] = (0.0, 0.0)) -> None:
        self.codec, self.name = codec, codec.spec
        self.measured_bytes = measured_bytes or {}
        self.encode_fit, self.decode_fit = encode_fit, decode_fit

    @property
    def timed(self) -> bool:
        """Whether this host's encode/decode times were measured (else: one pass through memory is assumed)."""
        return self.encode_fit != (0.0, 0.0) or self.decode_fit != (0.0, 0.0)

    @property
    def sends_as_is(self) -> bool:
        return self.codec.sends_as_is

    def payload_bytes(self, tensor: TensorSpec) -> int:
        if tensor.name in self.measured_bytes:
            return round(self.measured_bytes[tensor.name] * (tensor.shape[0] if tensor.shape else 1))
        dtype = _TORCH_DTYPES.get(tensor.dtype)
        fixed = self.codec.payload_bytes(tensor.shape, dtype) if dtype is not None else None
        if fixed is None:  # not measured (not a tensor the samples produced): assume it is sent as it is
            return tensor.nbytes + FRAME_HEADER_BYTES
        return fixed

    def encode_host_ms(self, tensor: TensorSpec) -> float:
        return 0.0 if self.sends_as_is else self.encode_fit[0] + self.encode_fit[1] * tensor.nbytes

    def decode_host_ms(self, tensor: TensorSpec) -> float:
        return 0.0 if self.sends_as_is else self.decode_fit[0] + self.decode_fit[1] * tensor.nbytes


class ReportedCodec(PlanCodec):
    """A configuration `edgesplit compress` measured at one cut: bytes, times and accuracy taken from its report."""

    def __init__(self, codec: Codec, name: str, bytes_per_inference: float, encode_ms: float, decode_ms: float,
                 tensors: int, accuracy_drop: float) -> None:
        super().__init__(codec)
        self.name, self.per_tensor_bytes = name, bytes_per_inference / max(tensors, 1)
        self.encode_ms, self.decode_ms, self.tensors = encode_ms, decode_ms, max(tensors, 1)
        self.accuracy_drop = accuracy_drop

    @property
    def sends_as_is(self) -> bool:
        return False

    @property
    def timed(self) -> bool:
        return True

    def payload_bytes(self, tensor: TensorSpec) -> int:
        return round(self.per_tensor_bytes * (tensor.shape[0] if tensor.shape else 1))

    def encode_host_ms(self, tensor: TensorSpec) -> float:
        return self.encode_ms / self.tensors * (tensor.shape[0] if tensor.shape else 1)

    def decode_host_ms(self, tensor: TensorSpec) -> float:
        return self.decode_ms / self.tensors * (tensor.shape[0] if tensor.shape else 1)


_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16,
                                                           torch.float64, torch.uint8, torch.int8, torch.int16,
                                                           torch.int32, torch.int64, torch.bool)}
FRAME_HEADER_BYTES = 16  # a frame's header for an unmeasured tensor sent as it is (magic, dtype, shape)


def parse_codecs(specs: str | list[str]) -> list[Codec]:
    """The codecs to plan with (``fp32`` sends tensors as they are); raises CodecError on a bad spec."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        return [parse_codec("fp32")]
    return [parse_codec(s) for s in specs]


def measure_codec(codec: Codec, traced, inputs: torch.Tensor, values: list[str]) -> PlanCodec:  # noqa: ANN001
    """Run the model on ``inputs`` (a batch of samples), encode each sample's ``values`` alone with ``codec``
    (calibrated on the batch), and fit this host's encode/decode time; entropy-coded sizes are kept per value."""
    if codec.sends_as_is:
        return PlanCodec(codec)
    outputs = node_outputs(traced, inputs, set(values))
    sizes: dict[str, float] = {}
    samples: list[tuple[int, float, float]] = []
    for name, batch in outputs.items():
        if not isinstance(batch, torch.Tensor) or batch.dim() == 0 or not batch.is_floating_point():
            continue
        try:
            calibrated = codec.calibrate(batch)
            payloads = []
            for i in range(len(batch)):
                start = time.perf_counter()
                payload = calibrated.encode(batch[i:i + 1])
                middle = time.perf_counter()
                decode(payload)
                samples.append((batch[i:i + 1].numel() * 4, (middle - start) * 1e3, (time.perf_counter() - middle) * 1e3))
                payloads.append(len(payload))
        except CodecError:
            continue  # e.g. NaN or inf in this value: the plan costs it as sent uncompressed
        if not codec.fixed_rate:
            sizes[name] = float(np.mean(payloads))
    return PlanCodec(codec, sizes, fit_fixed_per_byte(samples, 1), fit_fixed_per_byte(samples, 2))


def fit_fixed_per_byte(samples: list[tuple[int, float, float]], column: int) -> tuple[float, float]:
    """Least-squares ms = fixed + per_byte × bytes over ``samples`` (bytes, then times in ms; ``column`` picks the
    time), both kept non-negative: (fixed ms, ms per byte). Codec timings and the chain planner's per-message work
    are fitted with it."""
    if not samples:
        return (0.0, 0.0)
    nbytes = np.array([s[0] for s in samples], dtype=float)
    ms = np.array([s[column] for s in samples], dtype=float)
    if np.ptp(nbytes) == 0:
        return (float(np.median(ms)), 0.0)
    slope, intercept = np.polyfit(nbytes, ms, 1)
    slope = max(float(slope), 0.0)
    return (max(float(np.median(ms - slope * nbytes)), 0.0), slope)


@torch.no_grad()
def node_outputs(traced, inputs: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The values named in ``names`` (node outputs and inputs) when the traced graph runs on ``inputs``."""
    captured: dict[str, torch.Tensor] = {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, node):  # noqa: ANN001, ANN202
            result = super().run_node(node)
            if node.name in names:
                captured[node.name] = result
            return result

    Capture(traced.graph_module).run(inputs)
    return captured


@dataclass(frozen=True)
class InputFormat:
    """The input sent whole to the server: mean payload bytes and this host's encode/decode time per input."""

    name: str
    payload_bytes: float
    encode_host_ms: float
    decode_host_ms: float
    samples: int


def measure_input_formats(images: torch.Tensor, jpeg_quality: int = 90) -> list[InputFormat]:
    """Encode sample images (N×C×H×W in [0, 1], C = 1 or 3) as 8-bit raw, PNG and JPEG; measure bytes and time."""
    formats = [InputFormat("uint8", float(images[0].numel()), 0.0, 0.0, len(images))]
    for name, options in (("png", {"format": "PNG", "optimize": False}),
                          ("jpeg", {"format": "JPEG", "quality": jpeg_quality})):
        trip = round_trip_pictures(images, options)
        formats.append(InputFormat(name, float(np.mean(trip.sizes)), float(np.median(trip.encode_s)) * 1e3,
                                   float(np.median(trip.decode_s)) * 1e3, len(images)))
    return formats
