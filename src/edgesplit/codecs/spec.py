"""Codecs as composable stages named by a spec string: ``fp16``, ``int8``, ``int4:channel,p99.9+zstd``, ``int2+ans``.

Grammar: an optional *transform* (``fp32``, ``fp16``, ``bf16``, or ``intB`` for B = 1–8 bits, with options
``channel``, ``token`` or ``axis=K`` for one range per channel, per token or along axis K, ``minmax`` or ``pXX`` for
the clipping range) followed by an optional *lossless* stage (``zstd[:LEVEL]`` over bytes, or
``ans[:adaptive|calibrated]`` over quantized symbols).

``channel`` follows the tensor's layout: the last axis of a 3-D token tensor [B, N, D] (a transformer's
features, whose outliers sit in a few of the D channels), axis 1 of any other ([B, C, H, W], [B, F]).
``token`` is axis 1 of a [B, N, D] tensor. A codec calibrated per channel or per token records the axis it was
calibrated along (``Codec.to_json``), so its ranges keep their meaning whatever the layout rule says later.

The grammar and the stages are in ``grammar`` (no torch there: the device client parses the same specs); this
module adds what encoding and calibrating a torch tensor takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from edgesplit.codecs import entropy, quantize
from edgesplit.codecs.frame import (MAX_NDIM, AnsRecord, CastRecord, CodecError, Frame, QuantRecord, StageRecord,
                                    ZstdRecord, header, write)
from edgesplit.codecs.grammar import (FP16_MAX, SPEC_HELP, Ans, Cast, CodecSpec, Quantize, Zstd, channel_axis,
                                      parse_spec, spec_from_json)

__all__ = ["SPEC_HELP", "Ans", "Cast", "Codec", "Quantize", "Zstd", "channel_axis", "codec_from_json", "parse_codec"]

CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Codec(CodecSpec):
    """A transform and a lossless stage; ``encode`` writes a self-describing frame that ``decode`` reads back."""

    def encode(self, tensor: torch.Tensor) -> bytes:
        """One tensor as a frame: header (dtype, shape, stages with their scales and models) and body."""
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"a codec encodes a torch.Tensor, not {type(tensor).__name__}")
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype not in _ENCODABLE:
            raise CodecError(f"cannot encode a {tensor.dtype} tensor; cast it to float32 first")
        if tensor.ndim > MAX_NDIM:
            raise CodecError(f"cannot encode a {tensor.ndim}-dimensional tensor: frames hold up to {MAX_NDIM} "
                             "dimensions; reshape it first")
        stages: list[StageRecord] = []
        symbols: np.ndarray | None = None
        quant: QuantRecord | None = None
        floating = tensor.dtype.is_floating_point
        if isinstance(self.transform, Cast) and floating:
            body = _cast(tensor, self.transform)
            stages.append(CastRecord(CASTS[self.transform.name]))
        elif isinstance(self.transform, Quantize) and floating:
            quant, symbols = _quantize(tensor, self.transform)
            stages.append(quant)
            body = quantize.pack_bits(symbols, quant.bits)
        else:
            body = _raw_bytes(tensor)
        if isinstance(self.lossless, Zstd):
            stages.append(ZstdRecord(len(body)))
            body = entropy.zstd_compress(body, self.lossless.level)
        elif isinstance(self.lossless, Ans) and symbols is not None and quant is not None:
            if self.needs_calibration:
                raise CodecError(f"codec {self.spec} needs calibration first: call calibrate(sample features) "
                                 "or use ans:adaptive")
            if self.lossless.counts is not None:
                first, counts = 0, np.array(self.lossless.counts, dtype=np.uint16)
            else:
                first, counts = entropy.compact_counts(entropy.histogram(symbols, 1 << quant.bits), keep_all=False)
            body = entropy.ans_encode(symbols, first, counts)
            stages.append(AnsRecord(self.lossless.model, first, counts, len(body) // 4))
        return write(Frame(tensor.dtype, tuple(tensor.shape), stages, body))

    def calibrate(self, features: torch.Tensor) -> Codec:
        """This codec with its clipping ranges (and a calibrated ANS model) fitted to sample ``features``.

        ``features`` holds many examples along dimension 0; ranges per channel use the codec's channel axis (for
        ``channel`` and ``token``, the one the features' rank picks, then kept with the ranges).
        """
        transform, lossless = self.transform, self.lossless
        if not isinstance(transform, Quantize) or not features.dtype.is_floating_point:
            return self
        values = _finite_values(features.detach().cpu().float(), self.spec)
        axis = transform.axis_for(values.ndim, self.spec)
        low, high = quantize.clip_ranges(values, axis, transform.percentile)
        transform = replace(transform, axis=axis, low=tuple(map(float, low)), high=tuple(map(float, high)))
        if isinstance(lossless, Ans) and lossless.model == "calibrated":
            symbols = quantize.quantize(values, low, high, transform.bits, axis)
            _, counts = entropy.compact_counts(entropy.histogram(symbols, 1 << transform.bits), keep_all=True)
            lossless = replace(lossless, counts=tuple(int(c) for c in counts))
        return replace(self, transform=transform, lossless=lossless)

    def payload_bytes(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int | None:
        """Exact frame size for a tensor of ``shape`` when the rate is fixed; None when entropy coding decides."""
        if not self.fixed_rate:
            return None
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        stages: list[StageRecord] = []
        body = numel * itemsize
        if isinstance(self.transform, Cast) and dtype.is_floating_point:
            stages.append(CastRecord(CASTS[self.transform.name]))
            body = numel * 2
        elif isinstance(self.transform, Quantize) and dtype.is_floating_point:
            axis = self.transform.axis_for(len(shape), self.spec)
            ranges = 1 if axis is None else shape[axis]
            stages.append(QuantRecord(self.transform.bits, axis,
                                      np.zeros(ranges, np.float32), np.zeros(ranges, np.float32)))
            body = quantize.packed_size(numel, self.transform.bits)
        return len(header(dtype, tuple(shape), stages)) + body


_ENCODABLE = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int8,
                        torch.int16, torch.int32, torch.int64, torch.bool})


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    array = tensor.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _cast(tensor: torch.Tensor, cast: Cast) -> bytes:
    """The tensor in the cast's dtype; finite values the cast (or reading it back) makes infinite are refused."""
    dtype = CASTS[cast.name]
    cast_tensor = tensor.to(dtype)
    back = cast_tensor.to(tensor.dtype) if tensor.dtype == torch.float16 else cast_tensor
    if bool(torch.isinf(back).any()) and bool((torch.isinf(back) & torch.isfinite(tensor)).any()):
        largest = float(tensor[torch.isfinite(tensor)].abs().max())
        if dtype == torch.float16:
            raise CodecError(f"values up to {largest:.3g} overflow float16 (max {FP16_MAX:g}); "
                             "use bf16 or an intB codec")
        where = " read back as float16 (max 65504)" if tensor.dtype == torch.float16 else " (max 3.39e38)"
        raise CodecError(f"values up to {largest:.3g} overflow bfloat16{where}; use fp32 or an intB codec")
    return _raw_bytes(cast_tensor)


def _finite_values(tensor: torch.Tensor, spec: str) -> np.ndarray:
    values = tensor.numpy()
    if values.size and not np.isfinite(values).all():
        raise CodecError(f"codec {spec} quantizes, and the tensor holds NaN or inf; quantization needs finite "
                         "values (use fp32, fp16 or zstd to send them as they are)")
    return values


def _quantize(tensor: torch.Tensor, spec: Quantize) -> tuple[QuantRecord, np.ndarray]:
    values = _finite_values(tensor.float(), f"int{spec.bits}")
    axis = spec.axis_for(values.ndim, f"int{spec.bits}")
    if spec.calibrated:
        low, high = np.array(spec.low, np.float32), np.array(spec.high, np.float32)
        rows = 1 if axis is None else values.shape[axis]
        if len(low) != rows:
            raise CodecError(f"codec was calibrated on {len(low)} channels, this tensor has {rows}; "
                             "calibrate on features from the same cut")
    else:
        low, high = quantize.clip_ranges(values, axis, spec.percentile)
    symbols = quantize.quantize(values, low, high, spec.bits, axis)
    return QuantRecord(spec.bits, axis, low, high), symbols


def parse_codec(spec: str) -> Codec:
    """The codec a spec string names; raises ``CodecError`` saying what is wrong and what would work."""
    return parse_spec(spec, Codec)


def codec_from_json(data: dict) -> Codec:
    """A codec ``Codec.to_json`` wrote, calibration included."""
    return spec_from_json(data, Codec)
