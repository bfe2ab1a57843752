"""Codecs as composable stages named by a spec string: ``fp16``, ``int8``, ``int4:channel,p99.9+zstd``, ``int2+ans``.

Grammar: an optional *transform* (``fp32``, ``fp16``, ``bf16``, or ``intB`` for B = 1–8 bits, with options
``channel``, ``token`` or ``axis=K`` for one range per channel, per token or along axis K, ``minmax`` or ``pXX`` for
the clipping range) followed by an optional *lossless* stage (``zstd[:LEVEL]`` over bytes, or
``ans[:adaptive|calibrated]`` over quantized symbols).

``channel`` follows the tensor's layout: the last axis of a 3-D token tensor [B, N, D] (a transformer's
features, whose outliers sit in a few of the D channels), axis 1 of any other ([B, C, H, W], [B, F]).
``token`` is axis 1 of a [B, N, D] tensor. A codec calibrated per channel or per token records the axis it was
calibrated along (``Codec.to_json``), so its ranges keep their meaning whatever the layout rule says later.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import torch

from edgesplit.codecs import entropy, quantize
from edgesplit.codecs.frame import (MAX_NDIM, AnsRecord, CastRecord, CodecError, Frame, QuantRecord, StageRecord,
                                    ZstdRecord, header, write)

__all__ = ["SPEC_HELP", "Ans", "Cast", "Codec", "Quantize", "Zstd", "channel_axis", "codec_from_json", "parse_codec"]

CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Cast:
    dtype: torch.dtype
    name: str


@dataclass(frozen=True)
class Quantize:
    """Uniform ``bits``-bit quantization; ``low``/``high`` set by calibration, else taken from each payload."""

    bits: int
    axis: int | None = None  # None: one range for the whole tensor, unless ``per`` names one by the layout
    percentile: float | None = None  # None: min/max
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    per: str | None = None  # "channel" or "token": the axis follows the tensor's rank until calibration fixes it

    @property
    def calibrated(self) -> bool:
        return self.low is not None

    @property
    def per_tensor(self) -> bool:
        return self.axis is None and self.per is None

    def axis_for(self, ndim: int, spec: str) -> int | None:
        """The axis whose every index gets its own range in a tensor of ``ndim`` dimensions (None: one range)."""
        if self.axis is not None or self.per is None:
            _check_axis(self.axis, ndim, spec)
            return self.axis
        if self.per == "token":
            if ndim != 3:
                raise CodecError(f"codec {spec} quantizes per token, which needs a [B, N, D] token tensor; this "
                                 f"one has {ndim} dimensions: use channel, axis=K or one range per tensor")
            return 1
        axis = channel_axis(ndim)
        _check_axis(axis, ndim, spec)
        return axis


def channel_axis(ndim: int) -> int:
    """The channel axis of a tensor of ``ndim`` dimensions: the last of [B, N, D] tokens, axis 1 of any other."""
    return 2 if ndim == 3 else 1


@dataclass(frozen=True)
class Zstd:
    level: int = 3


@dataclass(frozen=True)
class Ans:
    model: str = "adaptive"  # adaptive: this payload's symbol counts; calibrated: counts from sample data
    counts: tuple[int, ...] | None = None  # calibrated model, over the whole alphabet


@dataclass(frozen=True)
class Codec:
    """A transform and a lossless stage; ``encode`` writes a self-describing frame that ``decode`` reads back."""

    spec: str
    transform: Cast | Quantize | None = None
    lossless: Zstd | Ans | None = None

    @property
    def is_lossless(self) -> bool:
        """Whether decode(encode(x)) == x exactly (no cast, no quantization)."""
        return self.transform is None

    @property
    def fixed_rate(self) -> bool:
        """Whether the payload size depends only on the tensor's shape (no entropy coding)."""
        return self.lossless is None

    @property
    def sends_as_is(self) -> bool:
        """Whether frames carry the tensor's own bytes (``fp32``: no transform, no lossless stage)."""
        return self.transform is None and self.lossless is None

    @property
    def needs_calibration(self) -> bool:
        return isinstance(self.lossless, Ans) and self.lossless.model == "calibrated" and self.lossless.counts is None

    def with_range(self, low: float, high: float) -> Codec:
        """This quantizing codec with one clipping range, [low, high] for the whole tensor, given instead of
        calibrated: e.g. ``parse_codec("uint8").with_range(0.0, 1.0)`` sends images in [0, 1] as exact 8-bit levels."""
        if not isinstance(self.transform, Quantize) or not self.transform.per_tensor:
            raise CodecError(f"codec {self.spec} takes no range: give one to an intB codec with one range per tensor")
        return replace(self, transform=replace(self.transform, low=(float(low),), high=(float(high),)))

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
            stages.append(CastRecord(self.transform.dtype))
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
            stages.append(CastRecord(self.transform.dtype))
            body = numel * 2
        elif isinstance(self.transform, Quantize) and dtype.is_floating_point:
            axis = self.transform.axis_for(len(shape), self.spec)
            ranges = 1 if axis is None else shape[axis]
            stages.append(QuantRecord(self.transform.bits, axis,
                                      np.zeros(ranges, np.float32), np.zeros(ranges, np.float32)))
            body = quantize.packed_size(numel, self.transform.bits)
        return len(header(dtype, tuple(shape), stages)) + body

    def to_json(self) -> dict:
        """The codec with its calibration, as plain data (``codec_from_json`` reads it back)."""
        data: dict = {"spec": self.spec}
        if isinstance(self.transform, Quantize) and self.transform.calibrated:
            data["low"], data["high"] = list(self.transform.low), list(self.transform.high)  # type: ignore[arg-type]
            if self.transform.per is not None and self.transform.axis != LEGACY_CHANNEL_AXIS:
                data["axis"] = self.transform.axis  # records without it were calibrated along axis 1
        if isinstance(self.lossless, Ans) and self.lossless.counts is not None:
            data["counts"] = list(self.lossless.counts)
        return data


LEGACY_CHANNEL_AXIS = 1  # the axis ``channel`` meant for every rank before token tensors had their own

_ENCODABLE = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int8,
                        torch.int16, torch.int32, torch.int64, torch.bool})


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    array = tensor.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _cast(tensor: torch.Tensor, cast: Cast) -> bytes:
    """The tensor in the cast's dtype; finite values the cast (or reading it back) makes infinite are refused."""
    cast_tensor = tensor.to(cast.dtype)
    back = cast_tensor.to(tensor.dtype) if tensor.dtype == torch.float16 else cast_tensor
    if bool(torch.isinf(back).any()) and bool((torch.isinf(back) & torch.isfinite(tensor)).any()):
        largest = float(tensor[torch.isfinite(tensor)].abs().max())
        if cast.dtype == torch.float16:
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


def _check_axis(axis: int | None, ndim: int, spec: str) -> None:
    if axis is not None and axis >= ndim:
        raise CodecError(f"codec {spec} quantizes per channel along axis {axis}, but the tensor has {ndim} "
                         "dimensions; use a smaller axis or one range per tensor")


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


# ---- parsing ---------------------------------------------------------------------------------------------------

SPEC_HELP = ("fp32, fp16, bf16, or intB (B = 1–8; options :channel, :token, :axis=K, :minmax, :pXX like p99.9), "
             "optionally followed by +zstd[:LEVEL] or +ans[:adaptive|calibrated]")


def parse_codec(spec: str) -> Codec:
    """The codec a spec string names; raises ``CodecError`` saying what is wrong and what would work."""
    if not isinstance(spec, str) or not spec.strip():
        raise CodecError(f"empty codec spec; use {SPEC_HELP}")
    text = spec.strip().lower()
    parts = [p.strip() for p in text.split("+")]
    transform: Cast | Quantize | None = None
    lossless: Zstd | Ans | None = None
    for index, part in enumerate(parts):
        name, _, options = part.partition(":")
        if name in ("fp32", "float32", "none", "raw") and index == 0 and not options:
            continue
        if name in CASTS and index == 0 and not options:
            transform = Cast(CASTS[name], name)
        elif re.fullmatch(r"u?int[1-8]", name) and index == 0:
            transform = _quantize_stage(int(name[-1]), options, spec)
        elif name == "zstd" and lossless is None and index == len(parts) - 1:
            lossless = _zstd_stage(options, spec)
        elif name == "ans" and lossless is None and index == len(parts) - 1:
            if not isinstance(transform, Quantize):
                raise CodecError(f"codec '{spec}': ans codes quantized symbols, so it follows an intB stage "
                                 "(e.g. int4+ans); use zstd after fp32/fp16/bf16")
            model = options or "adaptive"
            if model not in ("adaptive", "calibrated"):
                raise CodecError(f"codec '{spec}': ans model '{model}' does not exist; use adaptive or calibrated")
            lossless = Ans(model)
        else:
            raise CodecError(f"codec '{spec}': cannot read '{part}' there; use {SPEC_HELP}")
    return Codec(text, transform, lossless)


def _quantize_stage(bits: int, options: str, spec: str) -> Quantize:
    axis, percentile, per = None, None, None
    for option in filter(None, (o.strip() for o in options.split(","))):
        if option in ("channel", "token", "axis=channel", "axis=token"):
            axis, per = None, option.removeprefix("axis=")
        elif option == "tensor":
            axis, per = None, None
        elif re.fullmatch(r"axis=\d", option):
            axis, per = int(option[5:]), None
        elif option == "minmax":
            percentile = None
        elif re.fullmatch(r"p\d+(\.\d+)?", option) and 50 < float(option[1:]) <= 100:
            percentile = float(option[1:])
        else:
            raise CodecError(f"codec '{spec}': unknown quantization option '{option}'; use channel, token, "
                             "axis=K, minmax or pXX (a percentile above 50, e.g. p99.9)")
    return Quantize(bits, axis, percentile, per=per)


def _zstd_stage(options: str, spec: str) -> Zstd:
    if not options:
        return Zstd()
    if options.isdigit() and 1 <= int(options) <= 22:
        return Zstd(int(options))
    raise CodecError(f"codec '{spec}': zstd level '{options}' is not 1–22")


def codec_from_json(data: dict) -> Codec:
    """A codec ``Codec.to_json`` wrote, calibration included."""
    if not isinstance(data, dict) or not isinstance(data.get("spec"), str):
        raise CodecError("a codec record needs a 'spec' string")
    codec = parse_codec(data["spec"])
    if isinstance(codec.transform, Quantize) and "low" in data:
        low, high = data.get("low"), data.get("high")
        if not (isinstance(low, list) and isinstance(high, list) and len(low) == len(high)):
            raise CodecError("a calibrated codec record needs 'low' and 'high' lists of equal length")
        axis = codec.transform.axis
        if codec.transform.per is not None:  # the axis the ranges were calibrated along; axis 1 before it was kept
            axis = data.get("axis", LEGACY_CHANNEL_AXIS)
            if not (isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < MAX_NDIM):
                raise CodecError(f"a calibrated codec record's 'axis' is an integer 0–{MAX_NDIM - 1}, not {axis!r}")
        codec = replace(codec, transform=replace(codec.transform, axis=axis, low=tuple(map(float, low)),
                                                 high=tuple(map(float, high))))
    if isinstance(codec.lossless, Ans) and "counts" in data:
        counts = data["counts"]
        if not (isinstance(counts, list) and len(counts) == 1 << codec.transform.bits  # type: ignore[union-attr]
                and all(isinstance(c, int) and 0 <= c <= entropy.COUNT_MAX for c in counts) and any(counts)):
            raise CodecError("a calibrated ANS record needs 2**bits counts in 0–65535, not all zero")
        codec = replace(codec, lossless=replace(codec.lossless, counts=tuple(counts)))
    return codec
