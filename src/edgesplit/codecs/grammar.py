"""The codec grammar without tensors: codecs as composable stages named by a spec string: ``fp16``, ``int8``, ``int4:channel,p99.9+zstd``, ``int2+ans``.

Grammar: an optional *transform* (``fp32``, ``fp16``, ``bf16``, or ``intB`` for B = 1–8 bits, with options
``channel``, ``token`` or ``axis=K`` for one range per channel, per token or along axis K, ``minmax`` or ``pXX`` for
the clipping range) followed by an optional *lossless* stage (``zstd[:LEVEL]`` over bytes, or
``ans[:adaptive|calibrated]`` over quantized symbols).

``channel`` follows the tensor's layout: the last axis of a 3-D token tensor [B, N, D] (a transformer's
features, whose outliers sit in a few of the D channels), axis 1 of any other ([B, C, H, W], [B, F]).
``token`` is axis 1 of a [B, N, D] tensor. A codec calibrated per channel or per token records the axis it was
calibrated along (``Codec.to_json``), so its ranges keep their meaning whatever the layout rule says later.

``parse_spec`` reads a spec into a ``CodecSpec`` (its stages and calibration, no torch here), which
``edgesplit.codecs.spec.Codec`` (PyTorch) and ``edgesplit.device.codecs.NumpyCodec`` (numpy) extend with
``encode``; both write the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Self, TypeVar

from edgesplit.codecs import entropy
from edgesplit.codecs.layout import MAX_NDIM, CodecError

__all__ = ["CASTS", "LEGACY_CHANNEL_AXIS", "SPEC_HELP", "Ans", "Cast", "CodecSpec", "Quantize", "Zstd",
           "channel_axis", "parse_spec", "spec_from_json"]

CASTS = {"fp16": "float16", "bf16": "bfloat16"}  # a cast's spec name: the frame dtype it sends
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Cast:
    name: str  # "fp16" or "bf16"

    @property
    def dtype_name(self) -> str:
        """The frame dtype (``layout.DTYPE_NAMES``) the values are sent as."""
        return CASTS[self.name]


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
class CodecSpec:
    """A transform and a lossless stage, with their calibration: what a spec string and a codec record name.

    ``Codec`` (torch) and ``NumpyCodec`` (the device's) add ``encode``; this class is what both share."""

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

    def with_range(self, low: float, high: float) -> Self:
        """This quantizing codec with one clipping range, [low, high] for the whole tensor, given instead of
        calibrated: e.g. ``parse_codec("uint8").with_range(0.0, 1.0)`` sends images in [0, 1] as exact 8-bit levels."""
        if not isinstance(self.transform, Quantize) or not self.transform.per_tensor:
            raise CodecError(f"codec {self.spec} takes no range: give one to an intB codec with one range per tensor")
        return replace(self, transform=replace(self.transform, low=(float(low),), high=(float(high),)))

    def to_json(self) -> dict:
        """The codec with its calibration, as plain data (``spec_from_json`` and ``codec_from_json`` read it back)."""
        data: dict = {"spec": self.spec}
        if isinstance(self.transform, Quantize) and self.transform.calibrated:
            data["low"], data["high"] = list(self.transform.low), list(self.transform.high)  # type: ignore[arg-type]
            if self.transform.per is not None and self.transform.axis != LEGACY_CHANNEL_AXIS:
                data["axis"] = self.transform.axis  # records without it were calibrated along axis 1
        if isinstance(self.lossless, Ans) and self.lossless.counts is not None:
            data["counts"] = list(self.lossless.counts)
        return data


C = TypeVar("C", bound=CodecSpec)

LEGACY_CHANNEL_AXIS = 1  # the axis ``channel`` meant for every rank before token tensors had their own

def _check_axis(axis: int | None, ndim: int, spec: str) -> None:
    if axis is not None and axis >= ndim:
        raise CodecError(f"codec {spec} quantizes per channel along axis {axis}, but the tensor has {ndim} "
                         "dimensions; use a smaller axis or one range per tensor")


# ---- parsing ---------------------------------------------------------------------------------------------------

SPEC_HELP = ("fp32, fp16, bf16, or intB (B = 1–8; options :channel, :token, :axis=K, :minmax, :pXX like p99.9), "
             "optionally followed by +zstd[:LEVEL] or +ans[:adaptive|calibrated]")


def parse_spec(spec: str, kind: type[C] = CodecSpec) -> C:  # type: ignore[assignment]
    """The codec a spec string names, as a ``kind`` (a ``CodecSpec`` or a subclass of it); raises ``CodecError``
    saying what is wrong and what would work."""
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
            transform = Cast(name)
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
    return kind(text, transform, lossless)


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


def spec_from_json(data: dict, kind: type[C] = CodecSpec) -> C:  # type: ignore[assignment]
    """A codec ``CodecSpec.to_json`` wrote, calibration included, as a ``kind``."""
    if not isinstance(data, dict) or not isinstance(data.get("spec"), str):
        raise CodecError("a codec record needs a 'spec' string")
    codec = parse_spec(data["spec"], kind)
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
