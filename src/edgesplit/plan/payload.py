"""What goes over the uplink: crossing tensors through a codec, or the input itself as raw pixels, PNG or JPEG."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import EdgesplitError
from ..graph import TensorSpec

FRAME_HEADER_BYTES = 64  # per tensor: shape, dtype and codec fields of a self-describing frame (upper bound)


class CodecError(EdgesplitError):
    """A codec spec the planner does not know."""


@dataclass(frozen=True)
class CastCodec:
    """Send floating-point tensors as ``bits``-bit floats; encoding and decoding each stream the tensor once."""

    name: str
    bits: int

    def payload_bytes(self, tensor: TensorSpec) -> int:
        if not tensor.dtype.startswith(("float", "bfloat")):
            return tensor.nbytes + FRAME_HEADER_BYTES
        numel = math.prod(tensor.shape)
        return math.ceil(numel * self.bits / 8) + FRAME_HEADER_BYTES

    def work_bytes(self, tensor: TensorSpec) -> int:
        """Bytes read plus bytes written by encoding (and again by decoding) this tensor; 0 for a plain send."""
        if self.bits == 32 or not tensor.dtype.startswith(("float", "bfloat")):
            return 0
        return tensor.nbytes + self.payload_bytes(tensor)


CODECS = {codec.name: codec for codec in (CastCodec("fp32", 32), CastCodec("fp16", 16), CastCodec("bf16", 16))}


def parse_codec(spec: str) -> CastCodec:
    """The codec a spec names (``fp32`` sends tensors as they are)."""
    key = spec.strip().lower()
    if key in ("", "none", "raw", "float32"):
        key = "fp32"
    if key not in CODECS:
        raise CodecError(f"unknown codec '{spec}'; the planner knows {', '.join(CODECS)}")
    return CODECS[key]


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
    from PIL import Image

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pictures = [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
    formats = [InputFormat("uint8", float(pixels[0].size), 0.0, 0.0, len(pictures))]
    for name, options in (("png", {"format": "PNG", "optimize": False}),
                          ("jpeg", {"format": "JPEG", "quality": jpeg_quality})):
        sizes, encode_s, decode_s = [], [], []
        for picture in pictures:
            buffer = io.BytesIO()
            start = time.perf_counter()
            picture.save(buffer, **options)
            encode_s.append(time.perf_counter() - start)
            payload = buffer.getvalue()
            sizes.append(len(payload))
            start = time.perf_counter()
            with Image.open(io.BytesIO(payload)) as decoded:
                np.asarray(decoded)
            decode_s.append(time.perf_counter() - start)
        formats.append(InputFormat(name, float(np.mean(sizes)), float(np.median(encode_s)) * 1e3,
                                   float(np.median(decode_s)) * 1e3, len(pictures)))
    return formats
